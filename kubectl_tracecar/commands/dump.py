"""``kubectl tracecar dump``: a core dump of one process (.NET: the runtime's
createdump; others: gdb's gcore), its progress shown while it is written, downloaded
to a file, then removed from the agent unless ``--keep``."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubectl_tracecar._kube import Kube
from kubectl_tracecar.commands import _reach
from kubectl_tracecar.commands._base import PID_MAX, Command, Pods, Wire, add_target, pods_from, say
from kubectl_tracecar.errors import OK, PluginError

_EP = "POST /processes/{pid}/dump"
TYPE = Wire("--type", _EP, "type", choices=("mini", "heap", "full"))
PID = Wire("--pid", _EP, "pid", ge=1, le=PID_MAX)


@dataclass(frozen=True, slots=True)
class DumpOptions:
    pods: Pods
    pid: int
    type: str | None = None
    output: Path | None = None
    keep: bool = False


def flags(p: argparse.ArgumentParser) -> None:
    add_target(p, selector=False)
    PID.add(p, "--pid", required=True, help="the process (GET /processes, ps)")
    TYPE.add(
        p,
        "--type",
        help=".NET: mini, heap (default) or full (createdump); others: full (gdb gcore)",
    )
    p.add_argument("-o", "--output-file", metavar="FILE", help="where to write it (core.PID)")
    p.add_argument("--keep", action="store_true", help="keep the dump on the agent too")


def complete(ns: argparse.Namespace) -> DumpOptions:
    return DumpOptions(
        pods=pods_from(ns, selector=False),
        pid=ns.pid,
        type=ns.type,
        output=Path(ns.output_file) if ns.output_file else None,
        keep=ns.keep,
    )


def request_body(o: DumpOptions) -> dict[str, Any]:
    """``POST /processes/{pid}/dump``'s body: the type, when one was asked for."""
    return {"type": o.type} if o.type else {}


def run(kube: Kube, o: DumpOptions) -> int:
    pod = _reach.one_pod(kube, o.pods, "dump")
    body = request_body(o)
    out = o.output or Path(f"core.{o.pid}")
    with _reach.reach(kube, pod) as (client, _):
        job = client.post_json(f"/processes/{o.pid}/dump", body, "writing the dump")
        say(f"dumping pid {o.pid} with {job['writer']} ({job['type']})")
        job = _reach.wait_dump(client, job)
        if job["state"] != "succeeded":
            raise PluginError(f"the dump of pid {o.pid} {job['state']}: {job.get('error')}")
        data = client.download(f"/dumps/{job['id']}/core", "downloading the dump")
        out.write_bytes(data)
        if not o.keep:
            client.delete(f"/dumps/{job['id']}", "removing the dump from the agent")
    say(f"wrote {out} ({len(data) / (1 << 20):.1f} MiB)")
    return OK


COMMAND = Command(
    name="dump",
    help="write a core dump of one process and download it",
    example=(
        "kubectl tracecar dump web-7d9f-abcde --pid 7 -o core.dmp      # .NET: createdump\n"
        "  kubectl tracecar dump web-7d9f-abcde --pid 7 --type full     # others: gdb gcore"
    ),
    flags=flags,
    complete=complete,
    run=run,
    wires=(TYPE, PID),
)
