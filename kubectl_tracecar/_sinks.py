"""The stores, as the plugin shows them: each sink's state from the agent's
``/capabilities`` (``sinks``), what the webhook configured from the pod's
``tracecar.dev/status`` annotation, and the lines ``status`` and ``profile --push``
print. Pure: it reads dicts the commands fetched."""

from __future__ import annotations

import json
from typing import Any

from kubectl_tracecar._kube import JsonObject

STATUS_ANNOTATION = "tracecar.dev/status"
CPU_TYPE = "process_cpu:cpu:nanoseconds:cpu:nanoseconds"
SINK_FIELDS = ("configured", "state", "last_success", "last_error", "queued_bytes", "dropped")


def injected_policy(pod: JsonObject) -> dict[str, Any]:
    """What the webhook set up for this pod's agent: ``service_name``, ``continuous``
    and ``configured_sinks`` (empty for a pod injected by an older webhook, or none)."""
    meta = pod.get("metadata") or {}
    raw = (meta.get("annotations") or {}).get(STATUS_ANNOTATION)
    try:
        status = json.loads(raw) if isinstance(raw, str) else {}
    except ValueError:
        return {}
    if not isinstance(status, dict):
        return {}
    out: dict[str, Any] = {}
    if isinstance(status.get("service_name"), str):
        out["service_name"] = status["service_name"]
    if isinstance(status.get("continuous"), bool):
        out["continuous"] = status["continuous"]
    if isinstance(status.get("sinks"), list):
        out["configured_sinks"] = [str(s) for s in status["sinks"]]
    return out


def sink_states(caps: JsonObject) -> dict[str, dict[str, Any]] | None:
    """Each sink's state as the agent reports it; None from an agent without sinks."""
    sinks = caps.get("sinks")
    if not isinstance(sinks, dict):
        return None
    out: dict[str, dict[str, Any]] = {}
    for name, value in sorted(sinks.items()):
        if isinstance(value, dict):
            out[str(name)] = {k: value.get(k) for k in SINK_FIELDS if k in value} | {
                k: v for k, v in value.items() if k not in SINK_FIELDS
            }
    return out


def _bytes(n: object) -> str:
    if not isinstance(n, int) or isinstance(n, bool):
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # unreachable


def status_lines(row: dict[str, Any]) -> list[str]:
    """The ``stores`` block of ``kubectl tracecar status`` for one pod."""
    lines: list[str] = []
    policy = []
    if "service_name" in row:
        policy.append(f"service_name={row['service_name']}")
    if "continuous" in row:
        policy.append(f"continuous={'on' if row['continuous'] else 'off'}")
    sinks = row.get("sinks")
    if not policy and sinks is None:
        return lines
    lines.append("  stores" + (f" ({', '.join(policy)})" if policy else "") + ":")
    if sinks is None:
        if row.get("capabilities") is not None:
            lines.append("    (this agent reports no sinks: an older version)")
        return lines
    for name, s in sinks.items():
        if not s.get("configured"):
            lines.append(f"    {name:<10} not configured")
            continue
        state = str(s.get("state") or "?")
        parts = [
            f"last success {s.get('last_success') or 'never'}",
            f"queued {_bytes(s.get('queued_bytes'))}",
            f"dropped {s.get('dropped', '?')}",
        ]
        lines.append(f"    {name:<10} {state:<9} {', '.join(parts)}")
        if s.get("last_error"):
            lines.append(f"      last error: {s['last_error']}")
    return lines


def push_state(caps: JsonObject) -> dict[str, str]:
    """Each configured store's state right after a pushed profile finished (the agent
    sends it from its spool): ``{"pyroscope": "ok, queued 2.0 KiB"}``."""
    out: dict[str, str] = {}
    for name, s in (sink_states(caps) or {}).items():
        if s.get("configured"):
            text = f"{s.get('state') or '?'}, queued {_bytes(s.get('queued_bytes'))}"
            if s.get("last_error"):
                text += f" (last error: {s['last_error']})"
            out[name] = text
    return out


def push_line(push: object) -> str:
    """A pushed profile's outcome as the agent's job reports it (a dict per sink, a
    state, or a bare flag), in one line."""
    if isinstance(push, dict):
        parts = []
        for name, value in sorted(push.items()):
            if isinstance(value, dict):
                detail = value.get("state") or value.get("status") or value
                parts.append(f"{name}: {detail}")
            else:
                parts.append(f"{name}: {value}")
        return ", ".join(parts) or "nothing"
    if push is True:
        return "yes"
    return str(push)


def push_hint(pods: list[JsonObject]) -> str:
    """Where the pushed profiles are: the Pyroscope query that merges them."""
    names = sorted(
        {str(n) for p in pods if (n := injected_policy(p).get("service_name")) is not None}
    )
    if len(names) == 1:
        selector = f'{{service_name="{names[0]}",source="on-demand"}}'
    else:
        selector = '{source="on-demand"}'
    return (
        f"sent to each pod's profile store; in Pyroscope or Grafana: {CPU_TYPE}{selector} "
        '(every pod of the query merged; add pod="NAME" for one)'
    )
