"""``kubectl tracecar trace``: an LTTng session on the pod's instrumented apps (Python
loggers, LTTng-UST tracepoints, java.util.logging); Ctrl-C or ``-d`` stops it, then
the CTF trace is downloaded or its events printed, and the session removed."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubectl_tracecar import _output
from kubectl_tracecar._kube import Kube
from kubectl_tracecar._targets import parse_duration
from kubectl_tracecar.commands import _reach
from kubectl_tracecar.commands._base import (
    Command,
    Interrupt,
    Pods,
    Wire,
    add_attach,
    add_target,
    pods_from,
    say,
)
from kubectl_tracecar.errors import OK, NotFound, UsageError

_EP = "POST /lttng/sessions"
NAMES = Wire(
    "--python",
    _EP,
    "events.names",
    pattern=r"^[A-Za-z0-9_*$][A-Za-z0-9_.:*$\-]{0,255}$",
    items=True,
)
DOMAINS = Wire(
    "--python",
    _EP,
    "events.domain",
    choices=("python", "userspace", "jul"),
    # log4j: no flag yet (--jul is Java's own logging); kernel: LTTng's kernel domain needs
    # its kernel modules, which a pod cannot load.
    not_offered=("log4j", "kernel"),
)
DURATION = Wire("-d", _EP, "max_duration_s")
TRACE_GRACE_S = 300.0


@dataclass(frozen=True, slots=True)
class TraceOptions:
    pods: Pods
    python: tuple[str, ...] = ()
    ust: tuple[str, ...] = ()
    jul: tuple[str, ...] = ()
    duration_s: float | None = None
    output: Path = Path("trace.tar.gz")
    events: bool = False
    attach: bool = False


def flags(p: argparse.ArgumentParser) -> None:
    add_target(p)
    NAMES.add(p, "--python", action="append", metavar="NAME", help="Python logger names")
    p.add_argument(
        "--ust",
        action="append",
        type=NAMES.check,
        metavar="PROV:EVENT",
        help="LTTng-UST tracepoints",
    )
    p.add_argument(
        "--jul", action="append", type=NAMES.check, metavar="NAME", help="java.util.logging loggers"
    )
    DURATION.add(p, "-d", "--duration", help="stop after this long (default: until Ctrl-C)")
    p.add_argument(
        "-o", "--output-file", default="trace.tar.gz", metavar="FILE", help="the CTF trace"
    )
    p.add_argument(
        "--events", action="store_true", help="print the events instead of saving the trace"
    )
    add_attach(p)


def complete(ns: argparse.Namespace) -> TraceOptions:
    o = TraceOptions(
        pods=pods_from(ns),
        python=tuple(ns.python or ()),
        ust=tuple(ns.ust or ()),
        jul=tuple(ns.jul or ()),
        duration_s=parse_duration(ns.duration) if ns.duration else None,
        output=Path(ns.output_file),
        events=ns.events,
        attach=ns.attach,
    )
    if not (o.python or o.ust or o.jul):
        raise UsageError(
            "name what to trace: --python 'NAME*', --ust 'provider:*' or --jul 'NAME*'"
        )
    return o


def request_body(o: TraceOptions) -> dict[str, Any]:
    """``POST /lttng/sessions``'s body: the events of each domain, started at once."""
    events = [
        {"domain": domain, "names": list(names)}
        for domain, names in (("python", o.python), ("userspace", o.ust), ("jul", o.jul))
        if names
    ]
    body: dict[str, Any] = {"events": events, "start": True}
    if o.duration_s is not None:
        # The agent destroys a session (files too) at its max_duration_s: that is the
        # safety net should this command vanish, with time left to stop and download.
        body["max_duration_s"] = o.duration_s + TRACE_GRACE_S
    return body


def run(kube: Kube, o: TraceOptions) -> int:
    pod = _reach.one_pod(kube, o.pods, "trace")
    auto = _reach.AutoAttach(o.attach)
    with _reach.reach(kube, pod, auto=auto) as (client, _):
        session = client.post_json("/lttng/sessions", request_body(o), "starting the LTTng session")
        sid = session["id"]
        say(
            f"tracing in pod {_reach.name_of(pod)} (session {sid}); "
            + (f"{o.duration_s:g}s" if o.duration_s else "Ctrl-C to stop")
        )
        try:
            with Interrupt():
                deadline = time.monotonic() + o.duration_s if o.duration_s else None
                while deadline is None or time.monotonic() < deadline:
                    time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        try:
            state = client.post_json(f"/lttng/sessions/{sid}/stop", {}, "stopping the session")
            if o.events:
                text = client.download(f"/lttng/sessions/{sid}/events", "reading events")
                sys.stdout.write(text.decode("utf-8", "replace"))
            else:
                _output.write_whole(
                    o.output,
                    client.download(f"/lttng/sessions/{sid}/trace", "downloading the trace"),
                )
        finally:
            with contextlib.suppress(NotFound):  # already gone: its time ran out
                client.delete(f"/lttng/sessions/{sid}", "removing the session")
    if not o.events:
        say(
            f"{state.get('events', '?')} events -> {o.output} "
            "(open with babeltrace2 or Trace Compass)"
        )
    return OK


COMMAND = Command(
    name="trace",
    help="an LTTng session on the pod's instrumented apps",
    example=(
        "kubectl tracecar trace web-7d9f-abcde --python 'app*' -d 10s -o trace.tar.gz\n"
        "  kubectl tracecar trace web-7d9f-abcde --ust 'myprov:*' --events"
    ),
    flags=flags,
    complete=complete,
    run=run,
    wires=(NAMES, DOMAINS, DURATION),
)
