"""``kubectl tracecar profile``: a CPU (or off-CPU) profile of one pod or many, written
as a flame graph or another format (by the file's extension); many pods are profiled
at once and merged, each pod's own file written beside the merged one."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubectl_tracecar import _output, _sinks
from kubectl_tracecar._kube import JsonObject, Kube
from kubectl_tracecar._merge import merge_folded, per_pod_path
from kubectl_tracecar._targets import parse_duration
from kubectl_tracecar.commands import _reach
from kubectl_tracecar.commands._base import (
    CONTAINER,
    PID_MAX,
    Command,
    Pods,
    Wire,
    add_attach,
    add_target,
    one_of,
    output_format,
    pods_from,
    say,
)
from kubectl_tracecar.errors import FAILED, OK, PluginError, UsageError

if TYPE_CHECKING:
    from kubectl_tracecar._agent import AgentClient

_EP = "POST /profiles"
TYPE = Wire("--type", _EP, "type", choices=("cpu", "off-cpu", "alloc", "leak"))
PROFILER = Wire("--profiler", _EP, "profiler", choices=("auto", "perf", "py-spy"))
PID = Wire("--pid", _EP, "pid", ge=1, le=PID_MAX)
CONTAINER_FLAG = Wire("-c", _EP, "container", pattern=CONTAINER)
FREQUENCY = Wire("-F", _EP, "frequency_hz")  # bounded by the agent's settings, not its schema
DURATION = Wire("-d", _EP, "duration_s")
PYTHON_NATIVE = Wire("--python-native", _EP, "python_native")
PYTHON_FRAMES = Wire("--python-frames", _EP, "python_frames", ge=0, le=128)
PUSH = Wire("--push", _EP, "push")

# The link names of the agent's profile view, per output format.
_LINKS = {
    "svg": "flamegraph",
    "folded": "folded",
    "speedscope": "speedscope",
    "pprof": "pprof",
    "perf_data": "perf_data",
}


@dataclass(frozen=True, slots=True)
class ProfileOptions:
    pods: Pods
    duration_s: float = 30.0
    output: Path = Path("flame.svg")
    format: str = "svg"
    container: str | None = None
    pid: int | None = None
    process: str | None = None
    frequency_hz: int | None = None
    type: str = "cpu"
    profiler: str = "auto"
    python_native: bool = False
    python_frames: int | None = None
    by_pod: bool = False
    parallel: int = 4
    push: bool = False
    json: bool = False
    open: bool = False
    attach: bool = False


def flags(p: argparse.ArgumentParser) -> None:
    add_target(p, all_pods=True)
    CONTAINER_FLAG.add(
        p, "-c", "--container", help="profile this container only (default: every app)"
    )
    PID.add(p, "--pid", help="profile this process only")
    p.add_argument("--process", help="profile the processes of this name (comm or argv[0])")
    DURATION.add(p, "-d", "--duration", default="30s", help="how long to record (default 30s)")
    FREQUENCY.add(p, "-F", "--frequency", type=int, help="samples per second (default 99)")
    TYPE.add(
        p,
        "--type",
        default="cpu",
        help="cpu: time on CPU; off-cpu: time blocked or waiting, weighted by that time; "
        "alloc: where memory is allocated (C allocator; Java methods too), by bytes; leak: "
        "allocations not freed by the end, by bytes",
    )
    PROFILER.add(
        p,
        "--profiler",
        default="auto",
        help="auto: py-spy for Python processes (whole Python stacks), perf for the rest",
    )
    PYTHON_NATIVE.add(
        p,
        "--python-native",
        action="store_true",
        help="py-spy: native frames under the Python ones (pauses the process per sample)",
    )
    PYTHON_FRAMES.add(
        p,
        "--python-frames",
        metavar="N",
        help="alloc and leak: Python frames kept per allocation for CPython processes "
        "(default 16); 0: the C-allocator view for them, as for other runtimes",
    )
    p.add_argument(
        "-o",
        "--output-file",
        default="flame.svg",
        metavar="FILE",
        help="flame.svg, x.folded, x.speedscope.json, x.pb.gz or perf.data (by extension)",
    )
    p.add_argument("--by-pod", action="store_true", help="merged graph: a root frame per pod")
    p.add_argument("--parallel", type=int, default=4, help="pods profiled at once (default 4)")
    PUSH.add(
        p,
        "--push",
        action="store_true",
        help="also send each pod's profile to the profile store its agent is configured "
        "with (Pyroscope; labelled source=on-demand), where a query merges the pods",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--open", action="store_true", help="open the file when it is written")
    add_attach(p)


def complete(ns: argparse.Namespace) -> ProfileOptions:
    one_of(("--pid", "--process"), (ns.pid, ns.process))
    if ns.python_frames is not None and ns.type not in ("alloc", "leak"):
        raise UsageError("--python-frames applies to --type alloc and leak")
    out = Path(ns.output_file)
    return ProfileOptions(
        pods=pods_from(ns, all_pods=True),
        duration_s=parse_duration(ns.duration),
        output=out,
        format=output_format(out),
        container=ns.container,
        pid=ns.pid,
        process=ns.process,
        frequency_hz=ns.frequency,
        type=ns.type,
        profiler=ns.profiler,
        python_native=ns.python_native,
        python_frames=ns.python_frames,
        by_pod=ns.by_pod,
        parallel=ns.parallel,
        push=ns.push,
        json=ns.json,
        open=ns.open,
        attach=ns.attach,
    )


def request_body(o: ProfileOptions, *, pids: list[int] | None = None) -> dict[str, Any]:
    """``POST /profiles``'s body: only what differs from the agent's defaults, so an
    older agent keeps working. ``pids``: ``--process`` resolved in one pod."""
    body: dict[str, Any] = {"duration_s": o.duration_s}
    if o.pid is not None:
        body["pid"] = o.pid
    elif pids is not None:
        body["pids"] = pids
    elif o.container:
        body["container"] = o.container
    if o.frequency_hz is not None:
        body["frequency_hz"] = o.frequency_hz
    if o.type != "cpu":
        body["type"] = o.type
    if o.profiler != "auto":
        body["profiler"] = o.profiler
    if o.python_native:
        body["python_native"] = True
    if o.python_frames is not None:
        body["python_frames"] = o.python_frames
    if o.push:
        body["push"] = True
    return body


class Progress:
    """A bar per pod on a terminal (redrawn in place), a line per 10% otherwise."""

    def __init__(self, pods: list[str]) -> None:
        self.tty = sys.stderr.isatty()
        self.pods = pods
        self.state: dict[str, tuple[float, str]] = {p: (0.0, "pending") for p in pods}
        self.printed: dict[str, float] = {}
        self.drawn = False
        self._lock = threading.Lock()  # pods report from their own threads

    def update(self, pod: str, fraction: float, phase: str) -> None:
        with self._lock:
            self._update(pod, fraction, phase)

    def _update(self, pod: str, fraction: float, phase: str) -> None:
        self.state[pod] = (fraction, phase)
        if not self.tty:
            if fraction - self.printed.get(pod, -1.0) >= 0.1 or fraction >= 1.0:
                say(f"{pod}: {phase} {fraction:.0%}")
                self.printed[pod] = fraction
            return
        width = max(len(p) for p in self.pods)
        lines = []
        for p in self.pods:
            f, ph = self.state[p]
            bar = "#" * round(30 * f)
            lines.append(f"{p.ljust(width)} [{bar.ljust(30)}] {f:4.0%} {ph}")
        up = f"\x1b[{len(self.pods)}F" if self.drawn else ""
        sys.stderr.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
        sys.stderr.flush()
        self.drawn = True


def _profile_one(
    kube: Kube, pod: JsonObject, o: ProfileOptions, progress: Progress
) -> tuple[bytes, str, dict[str, Any]]:
    """(the artifact, the folded stacks, the profile's view) of one pod."""
    name = _reach.name_of(pod)
    auto = _reach.AutoAttach(o.attach, o.container)
    with _reach.reach(kube, pod, auto=auto) as (client, _):
        pids = None
        if o.process is not None:
            pids = _reach.pids_named(client, pod, o.process, o.container)
        body = request_body(o, pids=pids)
        job = client.post_json("/profiles", body, f"starting a profile in {name}")
        while job["state"] not in ("succeeded", "failed", "cancelled"):
            time.sleep(1.0)
            job = client.get_json(f"/profiles/{job['id']}", "profile status")
            progress.update(name, float(job.get("progress") or 0.0), job.get("phase") or "")
        progress.update(name, 1.0, job["state"])
        if job["state"] != "succeeded":
            why = job.get("error") or job.get("message")
            raise PluginError(f"the profile of pod {name} {job['state']}: {why}")
        folded = client.download(job["links"]["folded"], "downloading folded stacks").decode()
        if o.push and "push" not in job:
            # The agent sends it once done (its spool, then the store): say where that
            # stands, from its own view of each store.
            job = {**job, "push": _push_state(client)}
        data = (
            folded.encode()
            if o.format == "folded"
            else client.download(
                job["links"][_LINKS[o.format]], f"downloading the {o.format} output"
            )
        )
    return data, folded, job


def _push_state(client: AgentClient) -> dict[str, str]:
    return _sinks.push_state(client.get_json("/capabilities", "agent capabilities"))


Result = tuple[bytes, str, dict[str, Any]]
"""One pod's profile: the artifact, its folded stacks, the agent's view of the job."""


def run(kube: Kube, o: ProfileOptions) -> int:
    pods = _reach.resolve(kube, o.pods)
    if len(pods) > 1 and o.format not in ("svg", "folded"):
        raise UsageError(
            f"{o.format} output cannot merge several pods: use a .svg or .folded file "
            "(each pod's own file is written beside it in every format)"
        )
    names = [_reach.name_of(p) for p in pods]
    say(f"profiling {len(pods)} pod(s) for {o.duration_s:g}s: {', '.join(names)}")
    results: dict[str, Result] = {}
    errors: dict[str, PluginError] = {}
    progress = Progress(names)

    def one(pod: JsonObject) -> None:
        try:
            results[_reach.name_of(pod)] = _profile_one(kube, pod, o, progress)
        except PluginError as e:
            errors[_reach.name_of(pod)] = e

    from concurrent.futures import ThreadPoolExecutor  # (logging, queue...: not for --help)

    with ThreadPoolExecutor(max_workers=max(1, min(o.parallel, len(pods)))) as pool:
        list(pool.map(one, pods))
    if len(pods) == 1 and errors:
        raise errors[names[0]]  # as it is: its own exit code (5: no agent) and hint line
    failures = {p: e.message + (f" ({e.hint})" if e.hint else "") for p, e in errors.items()}
    report = {
        "output": str(o.output),
        "pods": _write(o, results, single=len(pods) == 1),
        "failed": failures,
    }
    if o.json:
        _output.emit_json(report)
    else:
        _print(o, report, pods, merged=len(pods) > 1 and bool(results))
    if o.open and o.output.exists():
        import webbrowser

        if not webbrowser.open(o.output.resolve().as_uri()):
            say(f"cannot open {o.output}: no browser found (set BROWSER)")
    return OK if not failures else FAILED


def _write(o: ProfileOptions, results: dict[str, Result], *, single: bool) -> dict[str, Any]:
    """Each pod's file (``-o`` itself for one pod), and the merged one of many pods;
    each pod's summary."""
    if single:
        [(pod, (data, _, job))] = results.items()
        _output.write_whole(o.output, data)
        return {pod: _summary(job, str(o.output))}
    summaries = {}
    for pod, (data, _, job) in sorted(results.items()):
        path = per_pod_path(o.output, pod)
        _output.write_whole(path, data)
        summaries[pod] = _summary(job, str(path))
    if results:
        from tracecar_formats.collapse import format_folded
        from tracecar_formats.flamegraph import render_svg

        stacks = merge_folded({p: r[1] for p, r in results.items()}, by_pod=o.by_pod)
        if o.format == "folded":
            merged = format_folded(stacks).encode()
        else:
            memory = o.type in ("alloc", "leak")
            what = {"alloc": "Allocation", "leak": "Leak"}.get(o.type, "CPU")
            title = f"{what} profile of {len(results)} pods ({o.duration_s:g}s)"
            merged = render_svg(
                stacks,
                title=title,
                subtitle=", ".join(sorted(results)),
                count_name="bytes" if memory else "samples",
            ).encode()
        _output.write_whole(o.output, merged)
    return summaries


def _print(
    o: ProfileOptions, report: dict[str, Any], pods: list[JsonObject], *, merged: bool
) -> None:
    for pod, s in sorted(report["pods"].items()):
        print(f"pod/{pod}: {s['samples']} samples -> {s['file']}")
        if "push" in s:
            print(f"  pushed: {_sinks.push_line(s['push'])}")
        for w in s["warnings"]:
            print(f"  warning: {w}")
    for pod, msg in sorted(report["failed"].items()):
        print(f"pod/{pod}: FAILED: {msg}")
    if merged:
        print(f"merged flame graph of {len(report['pods'])} pods -> {o.output}")
    if o.push and report["pods"]:
        print(_sinks.push_hint(pods))


def _summary(job: dict[str, Any], file: str) -> dict[str, Any]:
    meta = job.get("metadata") or {}
    warnings = [str(w) for w in meta.get("warnings") or []]
    warnings += [str(w) for w in (meta.get("plan") or {}).get("unresolved") or []]
    # A memory profile's count is its sampled allocations.
    samples = meta.get("samples", (meta.get("memory") or {}).get("sampled"))
    summary = {"id": job["id"], "samples": samples, "file": file, "warnings": warnings}
    if "push" in job:
        summary["push"] = job["push"]
    return summary


COMMAND = Command(
    name="profile",
    help="record a CPU profile; write a flame graph or another format",
    example=(
        "kubectl tracecar profile web-7d9f-abcde -d 30s -o flame.svg\n"
        "  kubectl tracecar profile web-7d9f-abcde --attach -o flame.svg   # no agent yet\n"
        "  kubectl tracecar profile deploy/web --all-pods -o flame.svg   # merged + one per pod\n"
        "  kubectl tracecar profile -l app=web -c app -o web.folded\n"
        "  kubectl tracecar profile deploy/web --all-pods --push -o flame.svg  # and to Pyroscope"
    ),
    flags=flags,
    complete=complete,
    run=run,
    wires=(TYPE, PROFILER, PID, CONTAINER_FLAG, FREQUENCY, DURATION, PYTHON_NATIVE, PUSH),
)
