"""``kubectl tracecar memory``: where a pod's memory is: a snapshot table of its
processes (RSS, PSS, anonymous, file-backed, swap), or one process in detail (totals,
largest mappings, the JVM's heap and classes, CPython's allocator), from the agent's
``GET /processes/{pid}/memory``."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kubectl_tracecar import _output
from kubectl_tracecar._kube import JsonObject, Kube
from kubectl_tracecar.commands import _reach
from kubectl_tracecar.commands._base import (
    PID_MAX,
    Command,
    Pods,
    Wire,
    add_json_output,
    add_target,
    pods_from,
)
from kubectl_tracecar.errors import OK, PluginError

if TYPE_CHECKING:  # httpx is imported when a command runs, never for --help
    from kubectl_tracecar._agent import AgentClient

_EP = "GET /processes/{pid}/memory"
PID = Wire("--pid", _EP, "pid", ge=1, le=PID_MAX)
TOP = Wire("--top", _EP, "top", ge=1, le=500)
_MI = 1 << 20


@dataclass(frozen=True, slots=True)
class MemoryOptions:
    pods: Pods
    pid: int | None = None
    container: str | None = None
    runtime: bool = False
    top: int = 10
    json: bool = False


def flags(p: argparse.ArgumentParser) -> None:
    add_target(p)
    PID.add(p, "--pid", help="one process in detail (mappings, runtime's figures)")
    p.add_argument("-c", "--container", help="only this container's processes")
    p.add_argument(
        "--runtime",
        action="store_true",
        help="ask every process's runtime too (JVM: jcmd; CPython: a live read); --pid always does",
    )
    TOP.add(p, "--top", default=10, help="largest mappings listed (default 10)")
    add_json_output(p)


def complete(ns: argparse.Namespace) -> MemoryOptions:
    return MemoryOptions(
        pods=pods_from(ns),
        pid=ns.pid,
        container=ns.container,
        runtime=ns.runtime,
        top=ns.top,
        json=ns.output == "json",
    )


def _mi(n: int | None) -> str:
    return "-" if n is None else f"{n / _MI:.1f}Mi"


def runtime_summary(snap: dict[str, Any]) -> str:
    """One cell: what the runtime says, shortly (or why it says nothing)."""
    rt = snap.get("runtime_memory")
    if not rt:
        return ""
    if not rt.get("available"):
        return "-"
    heap = rt.get("java_heap")
    if heap:
        return f"heap {_mi(heap.get('used_bytes'))} of {_mi(heap.get('committed_bytes'))}"
    alloc = rt.get("python_allocator")
    if alloc:
        return f"pymalloc {_mi(alloc['bytes_in_use'])} in use of {_mi(alloc['held_bytes'])}"
    return ""


def snapshot_rows(snaps: list[dict[str, Any]]) -> str:
    rows = [
        (
            s["container"],
            s["pid"],
            s["runtime"],
            _mi(s["totals"]["rss_bytes"]),
            _mi(s["totals"]["pss_bytes"]),
            _mi(s["totals"]["anonymous_bytes"]),
            _mi(s["totals"]["file_bytes"]),
            _mi(s["totals"]["swap_bytes"]),
            s["comm"],
            runtime_summary(s),
        )
        for s in sorted(snaps, key=lambda s: (s["container"], s["pid"]))
    ]
    headers = ["container", "pid", "runtime", "rss", "pss", "anon", "file", "swap", "comm"]
    return _output.table(rows, [*headers, "runtime memory"])


def detail(snap: dict[str, Any]) -> str:
    """One process: the table's row, the largest mappings, the runtime's own figures."""
    out = [snapshot_rows([snap])]
    out.append("\nlargest mappings\n")
    out.append(
        _output.table(
            [
                (m["kind"], m["perms"], _mi(m["rss_bytes"]), _mi(m["size_bytes"]), m["path"])
                for m in snap["largest_mappings"]
            ],
            ["kind", "perms", "rss", "size", "path"],
        )
    )
    rt = snap.get("runtime_memory") or {}
    if rt and not rt.get("available"):
        out.append(f"\n{rt['runtime']}: {rt.get('reason')}\n")
    heap = rt.get("java_heap")
    if heap:
        out.append(f"\nJVM heap ({heap['collector']})\n{heap['text']}\n")
    histo = rt.get("class_histogram")
    if histo:
        out.append(
            f"\nclasses by bytes ({histo['total_bytes'] / _MI:.1f}Mi in "
            f"{histo['total_instances']} objects)\n"
        )
        out.append(
            _output.table(
                [
                    (e["rank"], e["instances"], _mi(e["bytes"]), e["class_name"])
                    for e in histo["entries"]
                ],
                ["#", "instances", "bytes", "class"],
            )
        )
    alloc = rt.get("python_allocator")
    if alloc:
        out.append(
            f"\npymalloc (Python {alloc['python_version']}): {alloc['arenas']} arenas "
            f"({_mi(alloc['held_bytes'])}, high-water {alloc['arenas_highwater']}), "
            f"{alloc['blocks_in_use']} blocks in use ({_mi(alloc['bytes_in_use'])})\n"
        )
        out.append(
            _output.table(
                [(c["block_bytes"], c["blocks"], _mi(c["bytes"])) for c in alloc["size_classes"]],
                ["block", "blocks", "bytes"],
            )
        )
    return "".join(out)


def request_params(o: MemoryOptions) -> dict[str, str]:
    """``GET /processes/{pid}/memory``'s query: the runtime is asked for one process
    (``--pid``) or with ``--runtime``."""
    runtime = o.pid is not None or o.runtime
    return {"runtime": "true" if runtime else "false", "top": str(o.top)}


def _snapshots(client: AgentClient, pod: JsonObject, o: MemoryOptions) -> list[dict[str, Any]]:
    names: dict[int, str] = {}
    if o.pid is not None:
        pids = [o.pid]
    else:
        procs = _reach.processes(client, pod)
        names = {p["pid"]: p["container"] for p in procs}  # the pod's names for containers
        pids = [p["pid"] for p in procs if not o.container or p["container"] == o.container]
    params = request_params(o)
    snaps = []
    for pid in pids:
        try:
            snap = client.get_json(f"/processes/{pid}/memory", "reading its memory", params=params)
            snap["container"] = names.get(pid, snap["container"])
            snaps.append(snap)
        except PluginError:
            if o.pid is not None:
                raise
            # A process of the listing that exited since: the others are still the answer.
    return snaps


def run(kube: Kube, o: MemoryOptions) -> int:
    result: list[dict[str, Any]] = []
    for pod in _reach.resolve(kube, o.pods):
        with _reach.reach(kube, pod) as (client, _):
            snaps = _snapshots(client, pod, o)
        result.append({"pod": _reach.name_of(pod), "processes": snaps})
    if o.json:
        _output.emit_json(result if len(result) > 1 else result[0])
        return OK
    for entry in result:
        if len(result) > 1:
            print(f"pod/{entry['pod']}")
        if o.pid is not None and entry["processes"]:
            print(detail(entry["processes"][0]), end="")
        else:
            print(snapshot_rows(entry["processes"]), end="")
    return OK


COMMAND = Command(
    name="memory",
    help="where the memory is: every process's RSS, PSS, anon, file, swap",
    example=(
        "kubectl tracecar memory web-7d9f-abcde              # every process: RSS, PSS, anon...\n"
        "  kubectl tracecar memory web-7d9f-abcde --pid 7    # one: mappings, JVM heap, pymalloc\n"
        "  kubectl tracecar memory -l app=web -o json"
    ),
    flags=flags,
    complete=complete,
    run=run,
    wires=(PID, TOP),
)
