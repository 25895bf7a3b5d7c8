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
from pathlib import Path
from typing import Any

from kubectl_tracecar import _output
from kubectl_tracecar._agent import AgentClient
from kubectl_tracecar._commands import _name, output_format, reach, resolve, say
from kubectl_tracecar._kube import JsonObject, Kube
from kubectl_tracecar._merge import merge_folded, per_pod_path
from kubectl_tracecar._targets import parse_duration
from kubectl_tracecar.errors import FAILED, OK, PluginError, Unsupported, UsageError

ACTIONS = ("start", "status", "stop")
_FORMATS = {"svg": "svg", "folded": "folded", "speedscope": "speedscope", "pprof": "pprof"}
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


def start_body(args: argparse.Namespace) -> dict[str, Any]:
    """``POST /recorder``'s body: only what was given (the agent's defaults otherwise)."""
    body: dict[str, Any] = {}
    if args.pid is not None and args.container is not None:
        raise UsageError("give -c/--container or --pid, not both")
    if args.pid is not None:
        body["pid"] = args.pid
    elif args.container is not None:
        body["container"] = args.container
    if args.frequency is not None:
        body["frequency_hz"] = args.frequency
    if args.retain is not None:
        body["retain_s"] = parse_duration(args.retain, flag="--retain")
    if args.max_bytes is not None:
        body["max_bytes"] = parse_bytes(args.max_bytes)
    return body


def query_interval(args: argparse.Namespace, complete_until: float) -> tuple[float, float]:
    """``[from, to)`` of a query: ``--last D`` back from what the recorder has complete,
    or ``--from`` (and ``--to``, default: what is complete)."""
    if args.last is not None and (args.from_ is not None or args.to is not None):
        raise UsageError("give --last, or --from (and --to), not both")
    if args.last is not None:
        return complete_until - parse_duration(args.last, flag="--last"), complete_until
    if args.from_ is None:
        raise UsageError("--to needs --from (or ask for --last D)")
    start = parse_time(args.from_, flag="--from")
    end = parse_time(args.to, flag="--to") if args.to is not None else complete_until
    if not start < end:
        raise UsageError(f"--from ({iso(start)}) must be before --to ({iso(end)})")
    return start, end


def is_query(args: argparse.Namespace) -> bool:
    return args.last is not None or args.from_ is not None or args.to is not None


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
    client: AgentClient, pod: str, args: argparse.Namespace, fmt: str
) -> tuple[bytes, str, dict[str, str]]:
    status = _status(client)
    if status.get("state") == "stopped":
        raise Unsupported(
            f"the flight recorder is not running in pod {pod}",
            hint=f"start it with `kubectl tracecar recorder {pod} start`, then ask later",
        )
    if status.get("complete_until") is None:
        raise PluginError(f"the flight recorder of pod {pod} has recorded nothing yet")
    start, end = query_interval(args, float(status["complete_until"]))
    params = {"from": f"{start:.3f}", "to": f"{end:.3f}"}
    data, headers = client.download_with_headers(
        "/recorder/profile",
        f"the recorder's profile of pod {pod}",
        params={**params, "format": fmt},
    )
    folded = (
        data.decode()
        if fmt == "folded"
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


def cmd_recorder(kube: Kube, args: argparse.Namespace) -> int:
    action = args.action or ("query" if is_query(args) else "status")
    if action != "query" and is_query(args):
        raise UsageError(f"--last/--from/--to ask for a profile: drop {action!r}")
    if action == "start":
        body = start_body(args)
    if action == "query":
        # Every flag checked before any pod is reached.
        output_check(Path(args.output_file))
        query_interval(args, complete_until=float("inf"))
    pods = resolve(kube, args)
    if action == "query":
        return _query(kube, args, pods)
    rows: dict[str, Any] = {}
    failures: dict[str, str] = {}
    for pod in pods:
        name = _name(pod)
        try:
            with reach(kube, pod) as (client, _):
                if action == "start":
                    rows[name] = client.post_json("/recorder", body, f"starting in {name}")
                elif action == "stop":
                    client.delete("/recorder", f"stopping the recorder of {name}")
                    rows[name] = {"state": "stopped", "window": None}
                else:
                    rows[name] = _status(client)
        except PluginError as e:
            if len(pods) == 1:
                raise
            failures[name] = e.message
    if args.output == "json":
        _output.emit_json(
            next(iter(rows.values())) if len(pods) == 1 else {"pods": rows, "failed": failures}
        )
    else:
        for name, s in rows.items():
            print(status_line(name, s))
        for name, msg in failures.items():
            print(f"pod/{name}: FAILED: {msg}")
    return OK if not failures else FAILED


def output_check(out: Path) -> str:
    fmt = output_format(out)
    if fmt not in _FORMATS:
        raise UsageError(
            f"the recorder writes svg, folded, speedscope or pprof, not {fmt}: name the file "
            "flame.svg, x.folded, x.speedscope.json or x.pb.gz"
        )
    return fmt


def _query(kube: Kube, args: argparse.Namespace, pods: list[JsonObject]) -> int:
    out = Path(args.output_file)
    fmt = output_check(out)
    if len(pods) > 1 and fmt not in ("svg", "folded"):
        raise UsageError(f"{fmt} output cannot merge several pods: use a .svg or .folded file")
    results: dict[str, tuple[bytes, str, dict[str, str]]] = {}
    failures: dict[str, str] = {}
    for pod in pods:
        name = _name(pod)
        try:
            with reach(kube, pod) as (client, _):
                results[name] = _query_one(client, name, args, _FORMATS[fmt])
        except PluginError as e:
            if len(pods) == 1:
                raise
            failures[name] = e.message + (f" ({e.hint})" if e.hint else "")
    if len(pods) == 1:
        data, _, headers = next(iter(results.values()))
        _output.write_whole(out, data)
        say(_coverage(_name(pods[0]), headers))
        print(f"pod/{_name(pods[0])}: -> {out}")
    else:
        for name, (data, _, headers) in sorted(results.items()):
            path = per_pod_path(out, name)
            _output.write_whole(path, data)
            say(_coverage(name, headers))
            print(f"pod/{name}: -> {path}")
        if results:
            from tracecar_formats.collapse import format_folded
            from tracecar_formats.flamegraph import render_svg

            stacks = merge_folded({p: r[1] for p, r in results.items()}, by_pod=args.by_pod)
            if fmt == "folded":
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
