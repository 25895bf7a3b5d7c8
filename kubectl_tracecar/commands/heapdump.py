"""``kubectl tracecar heapdump``: a heap dump of one process (a JVM's .hprof through
the agent's ``POST /processes/{pid}/heapdump``, else a core dump), its progress shown
while it is written, downloaded to a file, then removed from the agent unless
``--keep``."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubectl_tracecar import _output
from kubectl_tracecar._kube import Kube
from kubectl_tracecar.commands import _reach
from kubectl_tracecar.commands._base import PID_MAX, Command, Pods, Wire, add_target, pods_from, say
from kubectl_tracecar.errors import OK, PluginError

_EP = "POST /processes/{pid}/heapdump"
# mini: a .NET-only dump type without the heap, which is not a heap dump (``dump`` has it).
TYPE = Wire("--type", _EP, "type", choices=("heap", "full"), not_offered=("mini",))
PID = Wire("--pid", _EP, "pid", ge=1, le=PID_MAX)
_MI = 1 << 20


@dataclass(frozen=True, slots=True)
class HeapdumpOptions:
    pods: Pods
    pid: int
    type: str | None = None
    all_objects: bool = False
    output: Path | None = None
    keep: bool = False


def flags(p: argparse.ArgumentParser) -> None:
    add_target(p, selector=False)
    PID.add(p, "--pid", required=True, help="the process (GET /processes, ps)")
    TYPE.add(p, "--type", help="Java: heap (.hprof, default) or full (core)")
    p.add_argument(
        "--all-objects",
        action="store_true",
        help="Java: unreachable objects too (no full GC first)",
    )
    p.add_argument("-o", "--output-file", metavar="FILE", help="where (heap.PID.hprof or core.PID)")
    p.add_argument("--keep", action="store_true", help="keep the dump on the agent too")


def complete(ns: argparse.Namespace) -> HeapdumpOptions:
    return HeapdumpOptions(
        pods=pods_from(ns, selector=False),
        pid=ns.pid,
        type=ns.type,
        all_objects=ns.all_objects,
        output=Path(ns.output_file) if ns.output_file else None,
        keep=ns.keep,
    )


def request_body(o: HeapdumpOptions) -> dict[str, Any]:
    """``POST /processes/{pid}/heapdump``'s body: live objects only unless
    ``--all-objects``, and the type when one was asked for."""
    body: dict[str, Any] = {"live": not o.all_objects}
    if o.type:
        body["type"] = o.type
    return body


def run(kube: Kube, o: HeapdumpOptions) -> int:
    pod = _reach.one_pod(kube, o.pods, "heapdump")
    with _reach.reach(kube, pod) as (client, _):
        job = client.post_json(
            f"/processes/{o.pid}/heapdump", request_body(o), "writing the heap dump"
        )
        say(f"dumping pid {o.pid} with {job['writer']}")
        job = _reach.wait_dump(client, job)
        if job["state"] != "succeeded":
            raise PluginError(f"the heap dump of pid {o.pid} {job['state']}: {job.get('error')}")
        hprof = job.get("format") == "hprof"
        link = job.get("links", {}).get("hprof" if hprof else "core")
        link = link or f"/dumps/{job['id']}/{'heap.hprof' if hprof else 'core'}"
        out = o.output or Path(f"heap.{o.pid}.hprof" if hprof else f"core.{o.pid}")
        data = client.download(link, "downloading the heap dump")
        _output.write_whole(out, data)
        if not o.keep:
            client.delete(f"/dumps/{job['id']}", "removing the dump from the agent")
    kind = "Java heap dump" if hprof else "core dump"
    say(f"wrote {out} ({len(data) / _MI:.1f} MiB, a {kind})")
    return OK


COMMAND = Command(
    name="heapdump",
    help="a heap dump of one process, downloaded: Java .hprof, else core",
    example=(
        "kubectl tracecar heapdump web-7d9f-abcde --pid 7 -o heap.hprof   # Java: the JVM's\n"
        "  kubectl tracecar heapdump web-7d9f-abcde --pid 9 -o core.9       # others: gcore"
    ),
    flags=flags,
    complete=complete,
    run=run,
    wires=(TYPE, PID),
)
