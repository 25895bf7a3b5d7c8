"""``kubectl tracecar ps``: the pod's processes, by container, as its agent sees them."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from kubectl_tracecar import _output
from kubectl_tracecar._kube import Kube
from kubectl_tracecar.commands import _reach
from kubectl_tracecar.commands._base import Command, Pods, add_json_output, add_target, pods_from
from kubectl_tracecar.errors import OK


@dataclass(frozen=True, slots=True)
class PsOptions:
    pods: Pods
    container: str | None = None
    json: bool = False


def flags(p: argparse.ArgumentParser) -> None:
    add_target(p)
    p.add_argument("-c", "--container", help="only this container's processes")
    add_json_output(p)


def complete(ns: argparse.Namespace) -> PsOptions:
    return PsOptions(pods=pods_from(ns), container=ns.container, json=ns.output == "json")


def run(kube: Kube, o: PsOptions) -> int:
    result: list[dict[str, Any]] = []
    for pod in _reach.resolve(kube, o.pods):
        with _reach.reach(kube, pod) as (client, _):
            procs = _reach.processes(client, pod)
        if o.container:
            procs = [p for p in procs if p["container"] == o.container]
        result.append({"pod": _reach.name_of(pod), "processes": procs})
    if o.json:
        _output.emit_json(result if len(result) > 1 else result[0])
        return OK
    for entry in result:
        if len(result) > 1:
            print(f"pod/{entry['pod']}")
        rows = [
            (
                p["container"],
                p["pid"],
                p["runtime"] + (f" {p['runtime_version']}" if p.get("runtime_version") else ""),
                f"{p['cpu_percent']:.1f}",
                f"{p['rss_bytes'] / 1048576:.0f}Mi",
                " ".join(p["cmdline"])[:80] or f"[{p['comm']}]",
            )
            for p in sorted(entry["processes"], key=lambda p: (p["container"], p["pid"]))
        ]
        print(
            _output.table(rows, ["container", "pid", "runtime", "cpu%", "rss", "command"]), end=""
        )
    return OK


COMMAND = Command(
    name="ps",
    help="the pod's processes, by container",
    example="kubectl tracecar ps deploy/web\n  kubectl tracecar ps web-7d9f-abcde -c app -o json",
    flags=flags,
    complete=complete,
    run=run,
)
