"""``kubectl tracecar recorder``: the agent's flight recorder from the terminal.

``recorder TARGET start`` starts it (the pod, a container or a pid; rate and bounds),
``status`` says what it holds and how far behind real time it is, ``stop`` drops it,
and ``--last 5m -o flame.svg`` (or ``--from``/``--to``) writes the flame graph (or
folded, speedscope, pprof) of the recent past. Times are the agent's: ``--last`` counts
back from the newest second the pod's recorder has complete, so a laptop's clock
does not matter. Several pods (``-l``, ``deploy/NAME --all-pods``): each is asked in
turn, and a query writes one merged graph (svg, folded) plus one file per pod.
"""

from __future__ import annotations

import argparse
import datetime
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubectl_tracecar import _output
from kubectl_tracecar._kube import JsonObject, Kube
from kubectl_tracecar._merge import merge_folded, per_pod_path
from kubectl_tracecar._targets import parse_duration, parse_target
from kubectl_tracecar.commands import _reach
from kubectl_tracecar.commands._base import (
    CONTAINER,
    PID_MAX,
    Command,
    Pods,
    Wire,
    add_target,
    one_of,
    output_format,
    say,
)
from kubectl_tracecar.errors import FAILED, OK, PluginError, Unsupported, UsageError

if TYPE_CHECKING:
    from kubectl_tracecar._agent import AgentClient

_START = "POST /recorder"
PID = Wire("--pid", _START, "pid", ge=1, le=PID_MAX)
CONTAINER_FLAG = Wire("-c", _START, "container", pattern=CONTAINER)
FREQUENCY = Wire("-F", _START, "frequency_hz")  # bounded by the agent's settings
RETAIN = Wire("--retain", _START, "retain_s")
MAX_BYTES = Wire("--max-bytes", _START, "max_bytes")
# The profile's format comes from -o's extension (perf.data is profile's alone).
FORMAT = Wire(
    "-o", "GET /recorder/profile", "format", choices=("svg", "folded", "speedscope", "pprof")
)

ACTIONS = ("start", "status", "stop")
_BYTES = re.compile(r"^(\d+)(Ki|Mi|Gi|K|M|G)?$")
_UNIT = {None: 1, "K": 1000, "M": 10**6, "G": 10**9, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}


def parse_bytes(text: str) -> int:
    """``16Mi``, ``500K`` or plain bytes."""
    m = _BYTES.fullmatch(text.strip())
    if not m:
        raise UsageError(
            f"invalid size for --max-bytes: {text!r}: a whole number with an optional unit "
            "K, M, G, Ki, Mi or Gi (e.g. 16Mi)"
        )
    return int(m.group(1)) * _UNIT[m.group(2)]


def parse_time(text: str, *, flag: str) -> float:
    """A Unix time in seconds, or an ISO 8601 time (``2026-12-06T10:02:00Z``; UTC when
    it names no zone)."""
    t = text.strip()
    try:
        return float(t)
    except ValueError:
        pass
    try:
        when = datetime.datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"invalid time for {flag}: {text!r}: use Unix seconds (1796570260) or ISO 8601 "
            "(2026-12-06T10:02:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def iso(t: float) -> str:
    try:
        return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, ValueError, OSError):
        return f"{t:.3f}"  # no calendar date (1e20): the number itself


@dataclass(frozen=True, slots=True)
class RecorderOptions:
    pods: Pods
    action: str = "status"  # start, status, stop, or query (--last / --from)
    container: str | None = None
    pid: int | None = None
    frequency_hz: int | None = None
    retain_s: float | None = None
    max_bytes: int | None = None
    last_s: float | None = None
    from_t: float | None = None
    to_t: float | None = None
    output: Path = Path("flame.svg")
    format: str = "svg"
    by_pod: bool = False
    json: bool = False


def flags(p: argparse.ArgumentParser) -> None:
    add_target(p, all_pods=True)
    p.add_argument(
        "action",
        nargs="?",
        choices=list(ACTIONS),
        help="start, status (the default) or stop; with --last/--from: the profile",
    )
    CONTAINER_FLAG.add(p, "-c", "--container", help="start: record this container only")
    PID.add(p, "--pid", help="start: record this process only")
    FREQUENCY.add(p, "-F", "--frequency", type=int, help="start: samples per second (default 19)")
    RETAIN.add(p, "--retain", help="start: how much time the ring keeps (default 10m)")
    MAX_BYTES.add(p, "--max-bytes", help="start: the ring's size bound (default 16Mi)")
    p.add_argument("--last", help="the profile of the last D (5m, 90s) the recorder holds")
    p.add_argument(
        "--from", dest="from_", metavar="T", help="the profile from T (Unix seconds or ISO 8601)"
    )
    p.add_argument("--to", metavar="T", help="... to T (default: now)")
    p.add_argument(
        "-o",
        "--output-file",
        default="flame.svg",
        metavar="FILE",
        help="the profile: flame.svg, x.folded, x.speedscope.json or x.pb.gz (by extension)",
    )
    p.add_argument("--by-pod", action="store_true", help="merged graph: a root frame per pod")
    p.add_argument("--json", dest="output", action="store_const", const="json", help="JSON")


def output_check(out: Path) -> str:
    fmt = output_format(out)
    if fmt not in FORMAT.choices:
        raise UsageError(
            f"the recorder writes svg, folded, speedscope or pprof, not {fmt}: name the file "
            "flame.svg, x.folded, x.speedscope.json or x.pb.gz"
        )
    return fmt


def complete(ns: argparse.Namespace) -> RecorderOptions:
    target, action = ns.target, ns.action
    if target in ACTIONS and action is None and ns.selector:
        # `recorder -l app=web start`: the action came where TARGET goes.
        target, action = None, target
    query = ns.last is not None or ns.from_ is not None or ns.to is not None
    action = action or ("query" if query else "status")
    if action != "query" and query:
        raise UsageError(f"--last/--from/--to ask for a profile: drop {action!r}")
    if action == "start":
        one_of(("-c/--container", "--pid"), (ns.container, ns.pid))
    if ns.last is not None and (ns.from_ is not None or ns.to is not None):
        raise UsageError("give --last, or --from (and --to), not both")
    if query and ns.last is None and ns.from_ is None:
        raise UsageError("--to needs --from (or ask for --last D)")
    out = Path(ns.output_file)
    o = RecorderOptions(
        pods=Pods(parse_target(target, selector=ns.selector), all_pods=ns.all_pods),
        action=action,
        container=ns.container,
        pid=ns.pid,
        frequency_hz=ns.frequency,
        retain_s=parse_duration(ns.retain, flag="--retain") if ns.retain is not None else None,
        max_bytes=parse_bytes(ns.max_bytes) if ns.max_bytes is not None else None,
        last_s=parse_duration(ns.last, flag="--last") if ns.last is not None else None,
        from_t=parse_time(ns.from_, flag="--from") if ns.from_ is not None else None,
        to_t=parse_time(ns.to, flag="--to") if ns.to is not None else None,
        output=out,
        format=output_check(out) if query else "svg",
        by_pod=ns.by_pod,
        json=ns.output == "json",
    )
    if o.from_t is not None and o.to_t is not None and not o.from_t < o.to_t:
        raise UsageError(f"--from ({iso(o.from_t)}) must be before --to ({iso(o.to_t)})")
    return o


def start_body(o: RecorderOptions) -> dict[str, Any]:
    """``POST /recorder``'s body: only what was given (the agent's defaults otherwise)."""
    body: dict[str, Any] = {}
    if o.pid is not None:
        body["pid"] = o.pid
    elif o.container is not None:
        body["container"] = o.container
    if o.frequency_hz is not None:
        body["frequency_hz"] = o.frequency_hz
    if o.retain_s is not None:
        body["retain_s"] = o.retain_s
    if o.max_bytes is not None:
        body["max_bytes"] = o.max_bytes
    return body


def query_interval(o: RecorderOptions, complete_until: float) -> tuple[float, float]:
    """``[from, to)`` of a query: ``--last D`` back from what the recorder has complete,
    or ``--from`` (and ``--to``, default: what is complete)."""
    if o.last_s is not None:
        return complete_until - o.last_s, complete_until
    assert o.from_t is not None  # complete() saw to it
    end = o.to_t if o.to_t is not None else complete_until
    if not o.from_t < end:
        raise UsageError(f"--from ({iso(o.from_t)}) must be before --to ({iso(end)})")
    return o.from_t, end


def status_line(pod: str, s: dict[str, Any]) -> str:
    """One pod's recorder, in words."""
    if s.get("state") == "stopped":
        return f"pod/{pod}: the flight recorder is stopped"
    parts = [f"pod/{pod}: {s.get('state')}"]
    w = s.get("window")
    if w:
        parts.append(f"window {iso(w['start'])} .. {iso(w['end'])} ({w['end'] - w['start']:g} s)")
    if s.get("lag_s") is not None:
        parts.append(f"lag {s['lag_s']:.1f} s")
    if s.get("bytes") is not None:
        parts.append(f"{s['bytes'] / 1e6:.1f} MB, {s.get('samples', 0)} samples")
    line = ", ".join(parts)
    if s.get("message"):
        line += f"\n  {s['message']}"
    for pid, p in sorted((s.get("python") or {}).items(), key=lambda kv: int(kv[0])):
        line += f"\n  python pid {pid} ({p.get('comm')}): {p.get('profiler')}, {p.get('state')}"
        if p.get("message"):
            line += f": {p['message']}"
    return line


def _status(client: AgentClient) -> dict[str, Any]:
    status: dict[str, Any] = client.get_json("/recorder", "the recorder's status")
    return status


def _query_one(
    client: AgentClient, pod: str, o: RecorderOptions
) -> tuple[bytes, str, dict[str, str]]:
    status = _status(client)
    if status.get("state") == "stopped":
        raise Unsupported(
            f"the flight recorder is not running in pod {pod}",
            hint=f"start it with `kubectl tracecar recorder {pod} start`, then ask later",
        )
    if status.get("complete_until") is None:
        raise PluginError(f"the flight recorder of pod {pod} has recorded nothing yet")
    start, end = query_interval(o, float(status["complete_until"]))
    params = {"from": f"{start:.3f}", "to": f"{end:.3f}"}
    data, headers = client.download_with_headers(
        "/recorder/profile",
        f"the recorder's profile of pod {pod}",
        params={**params, "format": o.format},
    )
    folded = (
        data.decode()
        if o.format == "folded"
        else client.download(
            "/recorder/profile", "folded stacks", params={**params, "format": "folded"}
        ).decode()
    )
    return data, folded, headers


def _coverage(pod: str, headers: dict[str, str]) -> str:
    got = f"{iso(float(headers['x-tracecar-from']))} .. {iso(float(headers['x-tracecar-to']))}"
    if headers.get("x-tracecar-coverage") != "partial":
        return f"pod/{pod}: {got}"
    asked = (
        f"{iso(float(headers['x-tracecar-requested-from']))} .. "
        f"{iso(float(headers['x-tracecar-requested-to']))}"
    )
    return f"pod/{pod}: {got} (asked {asked}: only that part is retained)"


def run(kube: Kube, o: RecorderOptions) -> int:
    pods = _reach.resolve(kube, o.pods)
    if o.action == "query":
        return _query(kube, o, pods)
    body = start_body(o) if o.action == "start" else {}
    rows: dict[str, Any] = {}
    failures: dict[str, str] = {}
    for pod in pods:
        name = _reach.name_of(pod)
        try:
            with _reach.reach(kube, pod) as (client, _):
                if o.action == "start":
                    rows[name] = client.post_json("/recorder", body, f"starting in {name}")
                elif o.action == "stop":
                    client.delete("/recorder", f"stopping the recorder of {name}")
                    rows[name] = {"state": "stopped", "window": None}
                else:
                    rows[name] = _status(client)
        except PluginError as e:
            if len(pods) == 1:
                raise
            failures[name] = e.message
    if o.json:
        _output.emit_json(
            next(iter(rows.values())) if len(pods) == 1 else {"pods": rows, "failed": failures}
        )
    else:
        for name, s in rows.items():
            print(status_line(name, s))
        for name, msg in failures.items():
            print(f"pod/{name}: FAILED: {msg}")
    return OK if not failures else FAILED


def _query(kube: Kube, o: RecorderOptions, pods: list[JsonObject]) -> int:
    out = o.output
    if len(pods) > 1 and o.format not in ("svg", "folded"):
        raise UsageError(f"{o.format} output cannot merge several pods: use a .svg or .folded file")
    results: dict[str, tuple[bytes, str, dict[str, str]]] = {}
    failures: dict[str, str] = {}
    for pod in pods:
        name = _reach.name_of(pod)
        try:
            with _reach.reach(kube, pod) as (client, _):
                results[name] = _query_one(client, name, o)
        except PluginError as e:
            if len(pods) == 1:
                raise
            failures[name] = e.message + (f" ({e.hint})" if e.hint else "")
    if len(pods) == 1:
        data, _, headers = next(iter(results.values()))
        _output.write_whole(out, data)
        say(_coverage(_reach.name_of(pods[0]), headers))
        print(f"pod/{_reach.name_of(pods[0])}: -> {out}")
    else:
        for name, (data, _, headers) in sorted(results.items()):
            path = per_pod_path(out, name)
            _output.write_whole(path, data)
            say(_coverage(name, headers))
            print(f"pod/{name}: -> {path}")
        if results:
            from tracecar_formats.collapse import format_folded
            from tracecar_formats.flamegraph import render_svg

            stacks = merge_folded({p: r[1] for p, r in results.items()}, by_pod=o.by_pod)
            if o.format == "folded":
                merged = format_folded(stacks).encode()
            else:
                first = next(iter(results.values()))[2]
                span = f"{iso(float(first['x-tracecar-from']))} .. "
                span += iso(float(first["x-tracecar-to"]))
                merged = render_svg(
                    stacks,
                    title=f"Flight recorder of {len(results)} pods, {span}",
                    subtitle=", ".join(sorted(results)),
                ).encode()
            _output.write_whole(out, merged)
            print(f"merged flame graph of {len(results)} pods -> {out}")
        for name, msg in sorted(failures.items()):
            print(f"pod/{name}: FAILED: {msg}")
    return OK if not failures else FAILED


COMMAND = Command(
    name="recorder",
    help="the flight recorder: start, status, stop, or the flame graph of the recent past",
    example=(
        "kubectl tracecar recorder web-7d9f-abcde start              # the pod, 19 Hz, 10 min\n"
        "  kubectl tracecar recorder web-7d9f-abcde start -c app --retain 30m\n"
        "  kubectl tracecar recorder web-7d9f-abcde --last 5m -o flame.svg\n"
        "  kubectl tracecar recorder web-7d9f-abcde --from 2026-12-06T10:02:00Z \\\n"
        "      --to 2026-12-06T10:05:00Z -o spike.folded\n"
        "  kubectl tracecar recorder web-7d9f-abcde status      # window, lag, Python processes\n"
        "  kubectl tracecar recorder web-7d9f-abcde stop"
    ),
    flags=flags,
    complete=complete,
    run=run,
    wires=(PID, CONTAINER_FLAG, FREQUENCY, RETAIN, MAX_BYTES, FORMAT),
)
