"""``kubectl tracecar memory`` and ``kubectl tracecar heapdump``: where a pod's memory
is (a snapshot table of its processes, or one process in detail: totals, largest
mappings, the JVM's heap and classes, CPython's allocator), and a heap dump of one
process downloaded to a file (a JVM's .hprof, else a core dump).

This module owns those two commands; it reaches the agent through
:func:`kubectl_tracecar._commands.reach` (the port-forward + client seam) and the
dump job's polling through :func:`kubectl_tracecar._dotnet.wait_dump`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kubectl_tracecar import _commands, _dotnet, _output
from kubectl_tracecar._agent import AgentClient
from kubectl_tracecar.errors import OK, PluginError, UsageError

_MI = 1 << 20


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


def _snapshots(client: AgentClient, pod: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    names: dict[int, str] = {}
    if args.pid is not None:
        pids = [args.pid]
    else:
        procs = _commands.processes(client, pod)
        names = {p["pid"]: p["container"] for p in procs}  # the pod's names for containers
        pids = [p["pid"] for p in procs if not args.container or p["container"] == args.container]
    runtime = args.pid is not None or args.runtime
    params = {"runtime": "true" if runtime else "false", "top": str(args.top)}
    snaps = []
    for pid in pids:
        try:
            snap = client.get_json(f"/processes/{pid}/memory", "reading its memory", params=params)
            snap["container"] = names.get(pid, snap["container"])
            snaps.append(snap)
        except PluginError:
            if args.pid is not None:
                raise
            # A process of the listing that exited since: the others are still the answer.
    return snaps


def cmd_memory(kube: Any, args: argparse.Namespace) -> int:
    result: list[dict[str, Any]] = []
    for pod in _commands.resolve(kube, args):
        with _commands.reach(kube, pod) as (client, _):
            snaps = _snapshots(client, pod, args)
        result.append({"pod": pod["metadata"]["name"], "processes": snaps})
    if args.output == "json":
        _output.emit_json(result if len(result) > 1 else result[0])
        return OK
    for entry in result:
        if len(result) > 1:
            print(f"pod/{entry['pod']}")
        if args.pid is not None and entry["processes"]:
            print(detail(entry["processes"][0]), end="")
        else:
            print(snapshot_rows(entry["processes"]), end="")
    return OK


def cmd_heapdump(kube: Any, args: argparse.Namespace) -> int:
    pods = _commands.resolve(kube, args)
    if len(pods) != 1:
        raise UsageError(
            "heapdump one pod at a time: name a pod (or deploy/NAME for one of its pods)"
        )
    body: dict[str, Any] = {"live": not args.all_objects}
    if args.type:
        body["type"] = args.type
    with _commands.reach(kube, pods[0]) as (client, _):
        job = client.post_json(f"/processes/{args.pid}/heapdump", body, "writing the heap dump")
        _commands.say(f"dumping pid {args.pid} with {job['writer']}")
        job = _dotnet.wait_dump(client, job)
        if job["state"] != "succeeded":
            raise PluginError(f"the heap dump of pid {args.pid} {job['state']}: {job.get('error')}")
        hprof = job.get("format") == "hprof"
        link = job.get("links", {}).get("hprof" if hprof else "core")
        link = link or f"/dumps/{job['id']}/{'heap.hprof' if hprof else 'core'}"
        out = Path(args.output_file or (f"heap.{args.pid}.hprof" if hprof else f"core.{args.pid}"))
        data = client.download(link, "downloading the heap dump")
        _output.write_whole(out, data)
        if not args.keep:
            client.delete(f"/dumps/{job['id']}", "removing the dump from the agent")
    kind = "Java heap dump" if hprof else "core dump"
    _commands.say(f"wrote {out} ({len(data) / _MI:.1f} MiB, a {kind})")
    return OK
