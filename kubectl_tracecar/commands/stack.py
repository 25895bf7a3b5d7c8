"""``kubectl tracecar stack``: what is it doing right now: every thread's stack of a
process (the container's main one, ``--pid`` or ``--process``), once."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from kubectl_tracecar import _output, _pods
from kubectl_tracecar._kube import Kube
from kubectl_tracecar.commands import _reach
from kubectl_tracecar.commands._base import (
    PID_MAX,
    Command,
    Pods,
    Wire,
    add_attach,
    add_target,
    one_of,
    pods_from,
)
from kubectl_tracecar.errors import OK, UsageError

_EP = "GET /processes/{pid}/stack"
RUNTIME = Wire("--runtime", _EP, "runtime", choices=("auto", "python", "java", "native"))
NATIVE = Wire("--native", _EP, "native")
PID = Wire("--pid", _EP, "pid", ge=1, le=PID_MAX)


@dataclass(frozen=True, slots=True)
class StackOptions:
    pods: Pods
    container: str | None = None
    pid: int | None = None
    process: str | None = None
    runtime: str = "auto"
    native: bool = False
    json: bool = False
    attach: bool = False


def flags(p: argparse.ArgumentParser) -> None:
    add_target(p)
    p.add_argument("-c", "--container", help="the app container (default: the pod's default)")
    PID.add(p, "--pid", help="this process (default: the container's main one)")
    p.add_argument("--process", help="the processes of this name (comm or argv[0])")
    RUNTIME.add(
        p,
        "--runtime",
        default="auto",
        help="auto: Python/Java frames for those runtimes, native otherwise",
    )
    NATIVE.add(p, "--native", action="store_true", help="Python: C frames mixed in")
    p.add_argument("-o", "--output", choices=["json"], help="json: machine-readable output")
    add_attach(p)


def complete(ns: argparse.Namespace) -> StackOptions:
    one_of(("--pid", "--process"), (ns.pid, ns.process))
    return StackOptions(
        pods=pods_from(ns),
        container=ns.container,
        pid=ns.pid,
        process=ns.process,
        runtime=ns.runtime,
        native=ns.native,
        json=ns.output == "json",
        attach=ns.attach,
    )


def query(o: StackOptions) -> dict[str, str]:
    """``GET /processes/{pid}/stack``'s query: only what differs from the defaults."""
    params = {"format": "json" if o.json else "text"}
    if o.runtime != "auto":
        params["runtime"] = o.runtime
    if o.native:
        params["native"] = "true"
    return params


def run(kube: Kube, o: StackOptions) -> int:
    pods = _reach.resolve(kube, o.pods)
    if len(pods) != 1:
        raise UsageError("one pod at a time: name a pod (or deploy/NAME for one of its pods)")
    pod = pods[0]
    snapshots: list[Any] = []
    auto = _reach.AutoAttach(o.attach, o.container)
    with _reach.reach(kube, pod, auto=auto) as (client, _):
        if o.pid is not None:
            pids = [o.pid]
        elif o.process is not None:
            pids = _reach.pids_named(client, pod, o.process, o.container)
        else:
            container = _pods.target_container(pod, o.container)
            pids = [_reach.main_process(client, pod, container)]
        for pid in pids:
            what = f"the stack snapshot of pid {pid}"
            if o.json:
                snapshots.append(client.get_json(f"/processes/{pid}/stack", what, params=query(o)))
                continue
            if len(pids) > 1:
                print(f"--- pid {pid}")
            raw = client.download(f"/processes/{pid}/stack", what, params=query(o))
            text = raw.decode("utf-8", "replace")
            print(text, end="" if text.endswith("\n") else "\n")
    if o.json:
        _output.emit_json(snapshots if len(snapshots) > 1 else snapshots[0])
    return OK


COMMAND = Command(
    name="stack",
    help="what is it doing right now: every thread's stack, once",
    example=(
        "kubectl tracecar stack web-7d9f-abcde            # every thread of the main process\n"
        "  kubectl tracecar stack web-7d9f-abcde --process gunicorn -o json\n"
        "  kubectl tracecar stack web-7d9f-abcde --pid 7 --native --attach"
    ),
    flags=flags,
    complete=complete,
    run=run,
    wires=(RUNTIME, NATIVE, PID),
)
