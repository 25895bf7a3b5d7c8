"""The commands: resolve the target to pods, reach each pod's agent, do the work.

Each command takes the parsed arguments and a :class:`Kube`, writes human output (or
JSON with ``-o json``) to stdout and progress to stderr, and returns an exit code.
Errors are raised as :class:`~kubectl_tracecar.errors.PluginError` and reported by
``__main__`` in one line.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import signal
import string
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from kubectl_tracecar import _attach, _output, _pods, _sinks
from kubectl_tracecar._agent import AgentClient
from kubectl_tracecar._forward import port_forward
from kubectl_tracecar._kube import JsonObject, Kube
from kubectl_tracecar._merge import merge_folded, per_pod_path
from kubectl_tracecar._targets import Target, parse_duration, parse_target
from kubectl_tracecar.errors import (
    FAILED,
    OK,
    NoAgent,
    NotFound,
    PluginError,
    Unsupported,
    UsageError,
)
from tracecar_contract import DEFAULT_IMAGE

WEBHOOK_NAMESPACE = "tracecar-system"
WEBHOOK_DEPLOYMENT = "tracecar-webhook"


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- targets -------------------------------------------------------------------------


def resolve(kube: Kube, args: argparse.Namespace) -> list[JsonObject]:
    target = parse_target(args.target, selector=getattr(args, "selector", None))
    return pods_of(kube, target, all_pods=getattr(args, "all_pods", False))


def pods_of(kube: Kube, target: Target, *, all_pods: bool) -> list[JsonObject]:
    if target.kind == "pod":
        return [kube.pod(target.name)]
    selector = target.name
    if target.kind == "deployment":
        selector = kube.deployment_selector(target.name)
    pods = [p for p in kube.pods(selector) if not p["metadata"].get("deletionTimestamp")]
    running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
    if not running:
        raise NotFound(f"no running pod matches {target} in namespace {kube.namespace}")
    running.sort(key=lambda p: p["metadata"]["name"])
    if target.kind == "deployment" and not all_pods:
        return running[:1]  # what `kubectl exec deploy/NAME` does: one of its pods
    return running


def _name(pod: JsonObject) -> str:
    return str(pod["metadata"]["name"])


@contextmanager
def reach(kube: Kube, pod: JsonObject) -> Iterator[tuple[AgentClient, _pods.Agent]]:
    """A client of the pod's running agent, through a port-forward of our own."""
    agent = _pods.find_agent(pod)
    if agent.how == "none":
        raise NoAgent(
            f"pod {_name(pod)} has no tracecar agent",
            hint=f"attach one with `kubectl tracecar attach {_name(pod)}` "
            "(no restart), or label the pod template profiling=enabled",
        )
    if not agent.running:
        hint = None
        if agent.how == "attached":
            hint = (
                "an attached agent stops after its idle time: "
                f"`kubectl tracecar attach {_name(pod)}` adds a fresh one"
            )
        raise NoAgent(f"the agent of pod {_name(pod)} is not running ({agent.state})", hint=hint)
    with (
        port_forward(kube.conn, _name(pod), agent.port) as url,
        AgentClient(url, token=agent.token) as client,
    ):
        yield client, agent


# --- status / ps ---------------------------------------------------------------------


def cmd_status(kube: Kube, args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    for pod in resolve(kube, args):
        agent = _pods.find_agent(pod)
        row: dict[str, Any] = {
            "pod": _name(pod),
            "agent": agent.how,
            "container": agent.container,
            "state": agent.state,
            "image": agent.image,
            **_sinks.injected_policy(pod),
        }
        if agent.running:
            with reach(kube, pod) as (client, _):
                health = client.get_json("/healthz", "agent health")
                caps = client.get_json("/capabilities", "agent capabilities")
            row["version"] = health.get("version")
            row["capabilities"] = caps
            row["sinks"] = _sinks.sink_states(caps)
        rows.append(row)
    if args.output == "json":
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


def _container_names(pod: JsonObject) -> dict[str, str]:
    """Container id -> name from the pod's status, for agents that only see ids."""
    out: dict[str, str] = {}
    status = pod.get("status") or {}
    for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"):
        for s in status.get(key) or []:
            cid = str(s.get("containerID") or "").partition("://")[2]
            if cid:
                out[cid] = s["name"]
    return out


def processes(client: AgentClient, pod: JsonObject) -> list[dict[str, Any]]:
    procs: list[dict[str, Any]] = client.get_json("/processes", "listing processes")
    names = _container_names(pod)
    for p in procs:
        cid = p.get("container_id")
        if cid in names and p.get("container") == str(cid)[:12]:
            p["container"] = names[cid]
    return procs


def cmd_ps(kube: Kube, args: argparse.Namespace) -> int:
    result: list[dict[str, Any]] = []
    for pod in resolve(kube, args):
        with reach(kube, pod) as (client, _):
            procs = processes(client, pod)
        if args.container:
            procs = [p for p in procs if p["container"] == args.container]
        result.append({"pod": _name(pod), "processes": procs})
    if args.output == "json":
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


# --- profile -------------------------------------------------------------------------

_FORMATS: list[tuple[str, str]] = [
    (".speedscope.json", "speedscope"),
    (".pb.gz", "pprof"),
    (".svg", "svg"),
    (".folded", "folded"),
    (".txt", "folded"),
    (".data", "perf_data"),
]
_LINKS = {
    "svg": "flamegraph",
    "folded": "folded",
    "speedscope": "speedscope",
    "pprof": "pprof",
    "perf_data": "perf_data",
}


def output_format(path: Path) -> str:
    for ext, fmt in _FORMATS:
        if path.name.endswith(ext):
            return fmt
    allowed = ", ".join(ext for ext, _ in _FORMATS)
    raise UsageError(f"cannot tell the format of {path.name!r} from its name: use one of {allowed}")


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
    kube: Kube, pod: JsonObject, body: dict[str, Any], fmt: str, progress: Progress
) -> tuple[bytes, str, dict[str, Any]]:
    """(the artifact, the folded stacks, the profile's view) of one pod."""
    with reach(kube, pod) as (client, _):
        body = dict(body)
        process = body.pop("process", None)
        if process is not None:
            body.setdefault("pids", _pids_named(client, pod, process, body.pop("container", None)))
        job = client.post_json("/profiles", body, f"starting a profile in {_name(pod)}")
        while job["state"] not in ("succeeded", "failed", "cancelled"):
            time.sleep(1.0)
            job = client.get_json(f"/profiles/{job['id']}", "profile status")
            progress.update(_name(pod), float(job.get("progress") or 0.0), job.get("phase") or "")
        progress.update(_name(pod), 1.0, job["state"])
        if job["state"] != "succeeded":
            raise PluginError(
                f"the profile of pod {_name(pod)} {job['state']}: "
                f"{job.get('error') or job.get('message')}"
            )
        folded = client.download(job["links"]["folded"], "downloading folded stacks").decode()
        if body.get("push") and "push" not in job:
            # The agent sends it once done (its spool, then the store): say where that
            # stands, from its own view of each store.
            caps = client.get_json("/capabilities", "agent capabilities")
            job = {**job, "push": _sinks.push_state(caps)}
        data = (
            folded.encode()
            if fmt == "folded"
            else client.download(job["links"][_LINKS[fmt]], f"downloading the {fmt} output")
        )
    return data, folded, job


def _pids_named(
    client: AgentClient, pod: JsonObject, name: str, container: str | None
) -> list[int]:
    procs = processes(client, pod)
    found = [
        int(p["pid"])
        for p in procs
        if (container is None or p["container"] == container)
        and (p["comm"] == name or (p["cmdline"] and Path(p["cmdline"][0]).name == name))
    ]
    if not found:
        where = f"container {container!r}" if container else f"pod {_name(pod)}"
        names = sorted({str(p["comm"]) for p in procs})
        raise NotFound(f"no process named {name!r} in {where}", hint=f"there: {', '.join(names)}")
    return found


def profile_body(args: argparse.Namespace, duration_s: float) -> dict[str, Any]:
    body: dict[str, Any] = {"duration_s": duration_s}
    if sum(x is not None for x in (args.pid, args.process)) > 1:
        raise UsageError("give --pid or --process, not both")
    if args.pid is not None:
        body["pid"] = args.pid
    elif args.process is not None:
        body["process"] = args.process  # resolved to pids in each pod
        if args.container:
            body["container"] = args.container
    elif args.container:
        body["container"] = args.container
    if args.frequency is not None:
        body["frequency_hz"] = args.frequency
    # Only what differs from the agent's defaults: an older agent keeps working.
    if getattr(args, "type", "cpu") != "cpu":
        body["type"] = args.type
    if getattr(args, "profiler", "auto") != "auto":
        body["profiler"] = args.profiler
    if getattr(args, "python_native", False):
        body["python_native"] = True
    if getattr(args, "push", False):
        body["push"] = True
    return body


def cmd_profile(kube: Kube, args: argparse.Namespace) -> int:
    duration = parse_duration(args.duration)
    out = Path(args.output_file)
    fmt = output_format(out)
    pods = resolve(kube, args)
    if len(pods) > 1 and fmt not in ("svg", "folded"):
        raise UsageError(
            f"{fmt} output cannot merge several pods: use a .svg or .folded file "
            "(each pod's own file is written beside it in every format)"
        )
    body = profile_body(args, duration)
    say(f"profiling {len(pods)} pod(s) for {duration:g}s: {', '.join(map(_name, pods))}")
    results: dict[str, tuple[bytes, str, dict[str, Any]]] = {}
    failures: dict[str, str] = {}
    progress = Progress([_name(p) for p in pods])

    def one(pod: JsonObject) -> None:
        try:
            results[_name(pod)] = _profile_one(kube, pod, body, fmt, progress)
        except PluginError as e:
            failures[_name(pod)] = e.message + (f" ({e.hint})" if e.hint else "")

    with ThreadPoolExecutor(max_workers=max(1, min(args.parallel, len(pods)))) as pool:
        list(pool.map(one, pods))
    report: dict[str, Any] = {"output": str(out), "pods": {}, "failed": failures}
    if len(pods) == 1:
        if not results:
            raise PluginError(next(iter(failures.values())))
        data, _, job = next(iter(results.values()))
        _output.write_whole(out, data)
        report["pods"][_name(pods[0])] = _summary(job, str(out))
    else:
        for pod, (data, _, job) in sorted(results.items()):
            path = per_pod_path(out, pod)
            _output.write_whole(path, data)
            report["pods"][pod] = _summary(job, str(path))
        if results:
            from tracecar_formats.collapse import format_folded
            from tracecar_formats.flamegraph import render_svg

            stacks = merge_folded({p: r[1] for p, r in results.items()}, by_pod=args.by_pod)
            if fmt == "folded":
                merged = format_folded(stacks).encode()
            else:
                title = f"CPU profile of {len(results)} pods ({duration:g}s)"
                merged = render_svg(
                    stacks, title=title, subtitle=", ".join(sorted(results))
                ).encode()
            _output.write_whole(out, merged)
    if args.json:
        _output.emit_json(report)
    else:
        for pod, s in sorted(report["pods"].items()):
            print(f"pod/{pod}: {s['samples']} samples -> {s['file']}")
            if "push" in s:
                print(f"  pushed: {_sinks.push_line(s['push'])}")
            for w in s["warnings"]:
                print(f"  warning: {w}")
        for pod, msg in sorted(failures.items()):
            print(f"pod/{pod}: FAILED: {msg}")
        if len(pods) > 1 and results:
            print(f"merged flame graph of {len(results)} pods -> {out}")
        if args.push and results:
            print(_sinks.push_hint(pods))
    if args.open and out.exists():
        import webbrowser

        if not webbrowser.open(out.resolve().as_uri()):
            say(f"cannot open {out}: no browser found (set BROWSER)")
    return OK if not failures else FAILED


def _summary(job: dict[str, Any], file: str) -> dict[str, Any]:
    meta = job.get("metadata") or {}
    warnings = [str(w) for w in meta.get("warnings") or []]
    warnings += [str(w) for w in (meta.get("plan") or {}).get("unresolved") or []]
    summary = {"id": job["id"], "samples": meta.get("samples"), "file": file, "warnings": warnings}
    if "push" in job:
        summary["push"] = job["push"]
    return summary


# --- probe ---------------------------------------------------------------------------


class _Interrupt:
    """Ctrl-C (or SIGTERM) ends a live command cleanly instead of with a traceback."""

    def __init__(self) -> None:
        self.hit = False

    def __enter__(self) -> _Interrupt:
        self._old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in self._old:
            signal.signal(s, self._handler)
        return self

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True
        raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def _main_process(client: AgentClient, pod: JsonObject, container: str) -> int:
    procs = [p for p in processes(client, pod) if p["container"] == container]
    if not procs:
        raise NotFound(f"no process of container {container!r} is visible to the agent")
    roots = [p for p in procs if p["ppid"] not in {q["pid"] for q in procs}]
    if len(roots) == 1:
        return int(roots[0]["pid"])
    listed = ", ".join(f"{p['pid']} ({p['comm']})" for p in procs[:10])
    raise UsageError(
        f"container {container!r} has several processes ({listed}): pick one with --pid"
    )


def probe_body(args: argparse.Namespace, pid: int, duration_s: float | None) -> dict[str, Any]:
    body: dict[str, Any] = {"pid": pid}
    for key in ("function", "usdt", "python_function", "python_file"):
        if getattr(args, key, None):
            body[key] = getattr(args, key)
    if args.binary:
        body["binary"] = args.binary
    if args.args:
        body["args"] = [a.strip() for a in args.args.split(",") if a.strip()]
    if args.retval:
        body["retval"] = True
    if args.histogram:
        body["mode"] = "histogram"
        body["of"] = args.histogram
    elif args.count:
        body["mode"] = "count"
    if duration_s is not None:
        body["duration_s"] = duration_s
    if args.backend:
        body["backend"] = args.backend
    return body


def stack_params(args: argparse.Namespace, *, text: bool) -> dict[str, str]:
    params = {"format": "text" if text else "json"}
    if args.runtime != "auto":
        params["runtime"] = args.runtime
    if args.native:
        params["native"] = "true"
    return params


def cmd_stack(kube: Kube, args: argparse.Namespace) -> int:
    if args.pid is not None and args.process is not None:
        raise UsageError("give --pid or --process, not both")
    pods = resolve(kube, args)
    if len(pods) != 1:
        raise UsageError("one pod at a time: name a pod (or deploy/NAME for one of its pods)")
    pod = pods[0]
    as_json = args.output == "json"
    snapshots: list[Any] = []
    with reach(kube, pod) as (client, _):
        if args.pid is not None:
            pids = [args.pid]
        elif args.process is not None:
            pids = _pids_named(client, pod, args.process, args.container)
        else:
            pids = [_main_process(client, pod, _pods.target_container(pod, args.container))]
        for pid in pids:
            params = stack_params(args, text=not as_json)
            what = f"the stack snapshot of pid {pid}"
            if as_json:
                snapshots.append(client.get_json(f"/processes/{pid}/stack", what, params=params))
                continue
            if len(pids) > 1:
                print(f"--- pid {pid}")
            raw = client.download(f"/processes/{pid}/stack", what, params=params)
            text = raw.decode("utf-8", "replace")
            print(text, end="" if text.endswith("\n") else "\n")
    if as_json:
        _output.emit_json(snapshots if len(snapshots) > 1 else snapshots[0])
    return OK


def cmd_probe(kube: Kube, args: argparse.Namespace) -> int:
    duration = parse_duration(args.duration) if args.duration else None
    pods = resolve(kube, args)
    if len(pods) != 1:
        raise UsageError("probe one pod at a time: name a pod (or deploy/NAME for one of its pods)")
    pod = pods[0]
    with reach(kube, pod) as (client, _):
        pid = args.pid or _main_process(client, pod, _pods.target_container(pod, args.container))
        probe = client.post_json("/probes", probe_body(args, pid, duration), "attaching the probe")
        pid_text = f"pid {pid} in pod {_name(pod)}"
        what = args.function or args.usdt or f"Python function {args.python_function}"
        say(f"probing {what} in {pid_text} ({probe.get('backend')}); Ctrl-C to stop")
        final: dict[str, Any] = {}
        try:
            with _Interrupt():
                for rec in client.stream_ndjson(f"/probes/{probe['id']}/events", "probe events"):
                    kind = rec.get("type")
                    if kind == "hit":
                        line = _json_line(rec) if args.json else _output.event_line(rec)
                        print(line, flush=True)
                    elif kind == "drops":
                        say(f"warning: events dropped: {rec}")
                    elif kind == "end":
                        final = rec
                        break
        except KeyboardInterrupt:
            say("stopping the probe")
        finally:
            # A running probe is detached (and stays readable); an ended one is kept by
            # the agent among its last few, for `GET /probes/ID` later.
            state = client.get_json(f"/probes/{probe['id']}", "probe state")
            if state.get("state") in ("starting", "running"):
                client.delete(f"/probes/{probe['id']}", "removing the probe")
                state = client.get_json(f"/probes/{probe['id']}", "probe state")
    summary = state.get("summary") or final.get("summary") or {}
    if args.json:
        _output.emit_json(state)
    else:
        say(f"{state.get('state')}: {state.get('hits', 0)} hits ({state.get('reason') or ''})")
        if args.histogram:
            print(
                _output.histogram(summary.get("histogram") or [], unit=summary.get("unit")), end=""
            )
    return OK if state.get("state") != "failed" else FAILED


def _json_line(rec: dict[str, Any]) -> str:
    import json

    return json.dumps(rec, separators=(",", ":"))


# --- trace ---------------------------------------------------------------------------


TRACE_GRACE_S = 300.0


def trace_body(args: argparse.Namespace, duration_s: float | None) -> dict[str, Any]:
    events: list[dict[str, Any]] = []
    for domain, names in (("python", args.python), ("userspace", args.ust), ("jul", args.jul)):
        if names:
            events.append({"domain": domain, "names": names})
    if not events:
        raise UsageError(
            "name what to trace: --python 'NAME*', --ust 'provider:*' or --jul 'NAME*'"
        )
    body: dict[str, Any] = {"events": events, "start": True}
    if duration_s is not None:
        # The agent destroys a session (files too) at its max_duration_s: that is the
        # safety net should this command vanish, with time left to stop and download.
        body["max_duration_s"] = duration_s + TRACE_GRACE_S
    return body


def cmd_trace(kube: Kube, args: argparse.Namespace) -> int:
    duration = parse_duration(args.duration) if args.duration else None
    pods = resolve(kube, args)
    if len(pods) != 1:
        raise UsageError("trace one pod at a time")
    pod = pods[0]
    out = Path(args.output_file)
    with reach(kube, pod) as (client, _):
        session = client.post_json(
            "/lttng/sessions", trace_body(args, duration), "starting the LTTng session"
        )
        sid = session["id"]
        say(
            f"tracing in pod {_name(pod)} (session {sid}); "
            + (f"{duration:g}s" if duration else "Ctrl-C to stop")
        )
        try:
            with _Interrupt():
                deadline = time.monotonic() + duration if duration else None
                while deadline is None or time.monotonic() < deadline:
                    time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        try:
            state = client.post_json(f"/lttng/sessions/{sid}/stop", {}, "stopping the session")
            if args.events:
                text = client.download(f"/lttng/sessions/{sid}/events", "reading events")
                sys.stdout.write(text.decode("utf-8", "replace"))
            else:
                _output.write_whole(
                    out, client.download(f"/lttng/sessions/{sid}/trace", "downloading the trace")
                )
        finally:
            with contextlib.suppress(NotFound):  # already gone: its time ran out
                client.delete(f"/lttng/sessions/{sid}", "removing the session")
    if not args.events:
        say(f"{state.get('events', '?')} events -> {out} (open with babeltrace2 or Trace Compass)")
    return OK


def wait_healthy(kube: Kube, pod: JsonObject, *, timeout_s: float) -> None:
    """The agent answers /healthz. A container that runs but does not listen yet makes
    kubectl port-forward give up on its first refused connection, so each try takes a
    fresh forward."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with reach(kube, pod) as (client, _):
                client.get_json("/healthz", "agent health")
            return
        except PluginError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


# --- attach --------------------------------------------------------------------------


def _suffix() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(5))


def agent_image(kube: Kube, args: argparse.Namespace) -> str:
    """``--image``, else the image the installed webhook injects, else its default."""
    if args.image:
        return str(args.image)
    try:
        env = kube.deployment_env(WEBHOOK_NAMESPACE, WEBHOOK_DEPLOYMENT, "webhook")
    except PluginError:
        return DEFAULT_IMAGE
    return env.get("TRACECAR_WEBHOOK_AGENT_IMAGE", DEFAULT_IMAGE)


def cmd_attach(kube: Kube, args: argparse.Namespace) -> int:
    target = parse_target(args.target, selector=None)
    if target.kind != "pod":
        raise UsageError("attach takes one pod: POD or pod/NAME")
    pod = kube.pod(target.name)
    _pods.require_running(pod)
    container = _pods.target_container(pod, args.container)
    existing = _pods.find_agent(pod)
    if existing.how != "none" and existing.running:
        result = {
            "pod": target.name,
            "agent": existing.how,
            "container": existing.container,
            "added": False,
        }
        if args.output == "json":
            _output.emit_json(result)
        else:
            print(
                f"pod/{target.name} already has a running {existing.how} agent "
                f"({existing.container})"
            )
        return OK
    kube.require_ephemeral_containers()
    idle = parse_duration(args.idle_timeout, flag="--idle-timeout")
    spec = _attach.render(
        pod,
        options=_attach.AttachOptions(
            image=agent_image(kube, args),
            target=container,
            token=secrets.token_urlsafe(32),
            suffix=_suffix(),
            privileged=args.privileged,
            idle_exit_s=idle,
            container_names=_container_names(pod),
        ),
    )
    say(f"adding ephemeral container {spec['name']} to pod/{target.name} (target {container})")
    kube.add_ephemeral_container(target.name, spec)
    deadline = time.monotonic() + args.timeout
    agent = existing
    while time.monotonic() < deadline:
        pod = kube.pod(target.name)
        agent = _pods.find_agent(pod)
        if agent.container == spec["name"] and agent.running:
            break
        if agent.container == spec["name"] and agent.state.startswith("terminated"):
            raise PluginError(
                f"the attached agent {spec['name']} exited at once ({agent.state})",
                hint=f"see: kubectl logs -n {kube.namespace} {target.name} -c {spec['name']}",
            )
        time.sleep(1.0)
    else:
        raise Unsupported(
            f"the attached agent did not start within {args.timeout:g}s ({agent.state})",
            hint=f"see: kubectl describe pod -n {kube.namespace} {target.name}",
        )
    wait_healthy(kube, pod, timeout_s=60.0)
    result = {"pod": target.name, "agent": "attached", "container": spec["name"], "added": True}
    if args.output == "json":
        _output.emit_json(result)
    else:
        print(
            f"pod/{target.name}: agent {spec['name']} attached to container {container}; "
            f"it exits after {idle:g}s without requests"
        )
    return OK
