"""``kubectl tracecar status``: is a tracecar agent in the pod (injected, attached,
none), what works, and the state of each store it sends to."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from kubectl_tracecar import _output, _pods, _sinks
from kubectl_tracecar._kube import Kube
from kubectl_tracecar.commands import _reach
from kubectl_tracecar.commands._base import Command, Pods, add_json_output, add_target, pods_from
from kubectl_tracecar.errors import OK


@dataclass(frozen=True, slots=True)
class StatusOptions:
    pods: Pods
    json: bool = False


def flags(p: argparse.ArgumentParser) -> None:
    add_target(p)
    add_json_output(p)


def complete(ns: argparse.Namespace) -> StatusOptions:
    return StatusOptions(pods=pods_from(ns), json=ns.output == "json")


def run(kube: Kube, o: StatusOptions) -> int:
    rows: list[dict[str, Any]] = []
    for pod in _reach.resolve(kube, o.pods):
        agent = _pods.find_agent(pod)
        row: dict[str, Any] = {
            "pod": _reach.name_of(pod),
            "agent": agent.how,
            "container": agent.container,
            "state": agent.state,
            "image": agent.image,
            **_sinks.injected_policy(pod),
        }
        if agent.running:
            with _reach.reach(kube, pod) as (client, _):
                health = client.get_json("/healthz", "agent health")
                caps = client.get_json("/capabilities", "agent capabilities")
            row["version"] = health.get("version")
            row["capabilities"] = caps
            row["sinks"] = _sinks.sink_states(caps)
        rows.append(row)
    if o.json:
        _output.emit_json(rows if len(rows) > 1 else rows[0])
        return OK
    for row in rows:
        print(f"pod/{row['pod']}: agent {row['agent']}", end="")
        if row["container"]:
            print(f" (container {row['container']}, {row['state']})", end="")
        print()
        caps = row.get("capabilities") or {}
        for name, check in sorted(caps.items()):
            if isinstance(check, dict) and "available" in check:
                mark = "yes" if check["available"] else "no "
                reason = check.get("reason") or ""
                print(f"  {mark}  {name:<12} {reason}")
        for line in _sinks.status_lines(row):
            print(line)
    return OK


COMMAND = Command(
    name="status",
    help="is a tracecar agent in the pod (injected, attached, none), what works, and the "
    "state of each store it sends to (Pyroscope, S3)",
    example=(
        "kubectl tracecar status pod/web-7d9f-abcde   # the agent, what works, each store's state\n"
        "  kubectl tracecar status -l app=web -o json"
    ),
    flags=flags,
    complete=complete,
    run=run,
)
