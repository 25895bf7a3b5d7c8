"""``kubectl tracecar probe``: a uprobe, a USDT probe or a Python function in one
process; each call printed as it happens, Ctrl-C (or ``-d``) ends it and removes it,
a histogram or a count at the end."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from typing import Any

from kubectl_tracecar import _output, _pods
from kubectl_tracecar._kube import Kube
from kubectl_tracecar._targets import parse_duration
from kubectl_tracecar.commands import _reach
from kubectl_tracecar.commands._base import (
    PID_MAX,
    Command,
    Interrupt,
    Pods,
    Wire,
    add_attach,
    add_target,
    pods_from,
    say,
)
from kubectl_tracecar.errors import FAILED, OK

_EP = "POST /probes"
PID = Wire("--pid", _EP, "pid", ge=1, le=PID_MAX)
FUNCTION = Wire("--function", _EP, "function")  # checked by the agent (its 422 says how)
BINARY = Wire("--binary", _EP, "binary")  # a path or a library name: the agent checks
USDT = Wire(
    "--usdt", _EP, "usdt", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}:[A-Za-z_][A-Za-z0-9_]{0,63}$"
)
PY_FUNCTION = Wire(
    "--python-function",
    _EP,
    "python_function",
    pattern=r"^(?:[A-Za-z_][A-Za-z0-9_]{0,127}|<(?:module|lambda|listcomp|dictcomp|setcomp|genexpr)>)$",
)
PY_FILE = Wire("--python-file", _EP, "python_file", pattern=r"^[A-Za-z0-9_.+@=,%/-]{1,128}$")
ARGS = Wire(
    "--args", _EP, "args", choices=("int", "uint", "int32", "uint32", "str", "ptr"), items=True
)
RETVAL = Wire("--retval", _EP, "retval")
HISTOGRAM = Wire("--histogram", _EP, "of", pattern=r"^(latency|retval|arg[0-5])$")
BACKEND = Wire(
    "--backend",
    _EP,
    "backend",
    choices=("bpftrace", "perf-probe"),
    not_offered=("auto",),  # the agent's choice: what it does when the flag is not given
)
DURATION = Wire("-d", _EP, "duration_s")


@dataclass(frozen=True, slots=True)
class ProbeOptions:
    pods: Pods
    function: str | None = None
    usdt: str | None = None
    python_function: str | None = None
    python_file: str | None = None
    binary: str | None = None
    container: str | None = None
    pid: int | None = None
    args: list[str] = field(default_factory=list)
    retval: bool = False
    histogram: str | None = None
    count: bool = False
    backend: str | None = None
    duration_s: float | None = None
    json: bool = False
    attach: bool = False

    @property
    def what(self) -> str:
        return self.function or self.usdt or f"Python function {self.python_function}"


def flags(p: argparse.ArgumentParser) -> None:
    add_target(p)
    point = p.add_mutually_exclusive_group(required=True)
    FUNCTION.add(point, "--function", help="symbol, symbol+0xOFF or 0xADDRESS")
    USDT.add(point, "--usdt", metavar="PROVIDER:NAME", help="a USDT probe (bpftrace)")
    PY_FUNCTION.add(
        point, "--python-function", metavar="NAME", help="a Python function (CPython's USDT probes)"
    )
    PY_FILE.add(p, "--python-file", metavar="PART", help="with --python-function: its file")
    BINARY.add(p, "--binary", help="path as the app sees it, or a library name (libc)")
    p.add_argument("-c", "--container", help="the app container (default: the pod's default)")
    PID.add(p, "--pid", help="the process (default: the container's main one)")
    ARGS.add(p, "--args", help=f"argument types, comma-separated: {','.join(ARGS.choices)}")
    RETVAL.add(p, "--retval", action="store_true", help="capture the return value")
    HISTOGRAM.add(
        p, "--histogram", metavar="OF", help="latency, retval or argN: a histogram at the end"
    )
    p.add_argument("--count", action="store_true", help="count calls only")
    BACKEND.add(p, "--backend", help="force a tracer")
    DURATION.add(p, "-d", "--duration", help="stop after this long (default: until Ctrl-C)")
    p.add_argument("--json", action="store_true", help="events as NDJSON, the final state as JSON")
    add_attach(p)


def complete(ns: argparse.Namespace) -> ProbeOptions:
    return ProbeOptions(
        pods=pods_from(ns),
        function=ns.function,
        usdt=ns.usdt,
        python_function=ns.python_function,
        python_file=ns.python_file,
        binary=ns.binary,
        container=ns.container,
        pid=ns.pid,
        args=ARGS.items_of(ns.args) if ns.args else [],
        retval=ns.retval,
        histogram=ns.histogram,
        count=ns.count,
        backend=ns.backend,
        duration_s=parse_duration(ns.duration) if ns.duration else None,
        json=ns.json,
        attach=ns.attach,
    )


def request_body(o: ProbeOptions, pid: int) -> dict[str, Any]:
    """``POST /probes``'s body for the process ``pid``."""
    body: dict[str, Any] = {"pid": pid}
    for key, value in (
        ("function", o.function),
        ("usdt", o.usdt),
        ("python_function", o.python_function),
        ("python_file", o.python_file),
        ("binary", o.binary),
    ):
        if value:
            body[key] = value
    if o.args:
        body["args"] = list(o.args)
    if o.retval:
        body["retval"] = True
    if o.histogram:
        body["mode"] = "histogram"
        body["of"] = o.histogram
    elif o.count:
        body["mode"] = "count"
    if o.duration_s is not None:
        body["duration_s"] = o.duration_s
    if o.backend:
        body["backend"] = o.backend
    return body


def run(kube: Kube, o: ProbeOptions) -> int:
    pod = _reach.one_pod(kube, o.pods, "probe")
    auto = _reach.AutoAttach(o.attach, o.container)
    with _reach.reach(kube, pod, auto=auto) as (client, _):
        pid = o.pid or _reach.main_process(client, pod, _pods.target_container(pod, o.container))
        probe = client.post_json("/probes", request_body(o, pid), "attaching the probe")
        pid_text = f"pid {pid} in pod {_reach.name_of(pod)}"
        say(f"probing {o.what} in {pid_text} ({probe.get('backend')}); Ctrl-C to stop")
        final: dict[str, Any] = {}
        try:
            with Interrupt():
                for rec in client.stream_ndjson(f"/probes/{probe['id']}/events", "probe events"):
                    kind = rec.get("type")
                    if kind == "hit":
                        line = _json_line(rec) if o.json else _output.event_line(rec)
                        print(line, flush=True)
                    elif kind == "drops":
                        say(f"warning: events dropped: {rec}")
                    elif kind == "end":
                        final = rec
                        break
        except KeyboardInterrupt:
            say("stopping the probe")
        finally:
            # A running probe is detached (and stays readable); an ended one is kept by
            # the agent among its last few, for `GET /probes/ID` later.
            state = client.get_json(f"/probes/{probe['id']}", "probe state")
            if state.get("state") in ("starting", "running"):
                client.delete(f"/probes/{probe['id']}", "removing the probe")
                state = client.get_json(f"/probes/{probe['id']}", "probe state")
    summary = state.get("summary") or final.get("summary") or {}
    if o.json:
        _output.emit_json(state)
    else:
        say(f"{state.get('state')}: {state.get('hits', 0)} hits ({state.get('reason') or ''})")
        if o.histogram:
            print(
                _output.histogram(summary.get("histogram") or [], unit=summary.get("unit")), end=""
            )
    return OK if state.get("state") != "failed" else FAILED


def _json_line(rec: dict[str, Any]) -> str:
    return json.dumps(rec, separators=(",", ":"))


COMMAND = Command(
    name="probe",
    help="attach a uprobe or USDT probe (or a Python function); print each call",
    example=(
        "kubectl tracecar probe web-7d9f-abcde --function add3 --args int,int,int --retval\n"
        "  kubectl tracecar probe web-7d9f-abcde --binary libc --function malloc \\\n"
        "      --histogram arg0 -d 10s\n"
        "  kubectl tracecar probe web-7d9f-abcde --python-function handle --histogram latency"
    ),
    flags=flags,
    complete=complete,
    run=run,
    wires=(
        PID,
        FUNCTION,
        BINARY,
        USDT,
        PY_FUNCTION,
        PY_FILE,
        ARGS,
        RETVAL,
        HISTOGRAM,
        BACKEND,
        DURATION,
    ),
)
