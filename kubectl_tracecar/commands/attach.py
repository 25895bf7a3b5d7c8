"""``kubectl tracecar attach``: add the agent to a running pod as an ephemeral container
(no restart); a pod whose agent already runs is left as it is. The mechanics are
:func:`._reach.attach_agent`, which ``--attach`` of the other commands shares."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from kubectl_tracecar import _output, _pods
from kubectl_tracecar._attach import DEFAULT_IDLE_S
from kubectl_tracecar._kube import Kube
from kubectl_tracecar._targets import Target, parse_duration, parse_target
from kubectl_tracecar.commands import _reach
from kubectl_tracecar.commands._base import Command, add_json_output, add_target
from kubectl_tracecar.errors import OK, UsageError


@dataclass(frozen=True, slots=True)
class AttachOptions:
    pod: str
    request: _reach.AttachRequest
    json: bool = False


def flags(p: argparse.ArgumentParser) -> None:
    add_target(p, selector=False)
    p.add_argument(
        "-c", "--container", help="the app container to join (default: the pod's default)"
    )
    p.add_argument(
        "--privileged", action="store_true", help="a privileged agent (default: capabilities only)"
    )
    p.add_argument("--image", help="the agent image (default: the one the webhook injects)")
    p.add_argument(
        "--idle-timeout",
        default=f"{DEFAULT_IDLE_S:g}s",
        help="the agent exits after this long without requests (default 30m)",
    )
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for it to start")
    add_json_output(p)


def complete(ns: argparse.Namespace) -> AttachOptions:
    target: Target = parse_target(ns.target, selector=None)
    idle = parse_duration(ns.idle_timeout, flag="--idle-timeout")
    if target.kind != "pod":
        raise UsageError("attach takes one pod: POD or pod/NAME")
    return AttachOptions(
        pod=target.name,
        request=_reach.AttachRequest(
            container=ns.container,
            image=ns.image,
            privileged=ns.privileged,
            idle_s=idle,
            timeout_s=ns.timeout,
        ),
        json=ns.output == "json",
    )


def run(kube: Kube, o: AttachOptions) -> int:
    pod = kube.pod(o.pod)
    _pods.require_running(pod)
    container = _pods.target_container(pod, o.request.container)
    existing = _pods.find_agent(pod)
    if existing.how != "none" and existing.running:
        result = {"pod": o.pod, "agent": existing.how, "container": existing.container}
        if o.json:
            _output.emit_json({**result, "added": False})
        else:
            print(f"pod/{o.pod} already has a running {existing.how} agent ({existing.container})")
        return OK
    _, name = _reach.attach_agent(kube, pod, o.request)
    if o.json:
        _output.emit_json({"pod": o.pod, "agent": "attached", "container": name, "added": True})
    else:
        print(
            f"pod/{o.pod}: agent {name} attached to container {container}; "
            f"it exits after {o.request.idle_s:g}s without requests"
        )
    return OK


COMMAND = Command(
    name="attach",
    help="add the agent to a running pod as an ephemeral container (no restart)",
    example=(
        "kubectl tracecar attach web-7d9f-abcde            # the agent joins the app, no restart\n"
        "  kubectl tracecar attach web-7d9f-abcde -c app --idle-timeout 1h"
    ),
    flags=flags,
    complete=complete,
    run=run,
)
