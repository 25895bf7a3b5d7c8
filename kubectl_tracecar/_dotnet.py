"""``kubectl tracecar dump`` and ``kubectl tracecar counters``: a core dump of one
process downloaded to a file, and a .NET process's System.Runtime counters as a
terminal table refreshed every second until Ctrl-C.

This module owns those two commands; it reaches the agent through
:func:`kubectl_tracecar._commands.reach` (the port-forward + client seam).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from kubectl_tracecar import _commands
from kubectl_tracecar._agent import AgentClient
from kubectl_tracecar.errors import OK, PluginError, UsageError

POLL_S = 0.5


def _one_pod(kube: Any, args: argparse.Namespace, what: str) -> Any:
    pods = _commands.resolve(kube, args)
    if len(pods) != 1:
        raise UsageError(
            f"{what} one pod at a time: name a pod (or deploy/NAME for one of its pods)"
        )
    return pods[0]


def wait_dump(
    client: AgentClient, job: dict[str, Any], *, poll_s: float = POLL_S
) -> dict[str, Any]:
    """Poll the dump job until it is written, showing its progress on stderr."""
    while job["state"] not in ("succeeded", "failed", "cancelled"):
        est = job.get("result", {}).get("estimate", {}).get("bytes", 0)
        written = job.get("result", {}).get("written_bytes", 0)
        _commands.say(
            f"writing: {written / (1 << 20):.0f} MiB of at most {est / (1 << 20):.0f} MiB "
            f"({100 * job.get('progress', 0):.0f}%)"
        )
        time.sleep(poll_s)
        job = client.get_json(f"/dumps/{job['id']}", "the dump's state")
    return job


def cmd_dump(kube: Any, args: argparse.Namespace) -> int:
    pod = _one_pod(kube, args, "dump")
    body = {"type": args.type} if args.type else {}
    out = Path(args.output_file or f"core.{args.pid}")
    with _commands.reach(kube, pod) as (client, _):
        job = client.post_json(f"/processes/{args.pid}/dump", body, "writing the dump")
        _commands.say(f"dumping pid {args.pid} with {job['writer']} ({job['type']})")
        job = wait_dump(client, job)
        if job["state"] != "succeeded":
            raise PluginError(f"the dump of pid {args.pid} {job['state']}: {job.get('error')}")
        # A JVM's default dump is its .hprof: the job's own link says which file it is.
        links = job.get("links") or {}
        link = links.get("core") or links.get("hprof") or f"/dumps/{job['id']}/core"
        data = client.download(link, "downloading the dump")
        out.write_bytes(data)
        if not args.keep:
            client.delete(f"/dumps/{job['id']}", "removing the dump from the agent")
    _commands.say(f"wrote {out} ({len(data) / (1 << 20):.1f} MiB)")
    return OK


_ORDER = (
    "cpu-usage",
    "working-set",
    "gc-heap-size",
    "gen-0-gc-count",
    "gen-1-gc-count",
    "gen-2-gc-count",
    "time-in-gc",
    "alloc-rate",
    "exception-count",
    "threadpool-thread-count",
    "threadpool-queue-length",
    "threadpool-completed-items-count",
    "monitor-lock-contention-count",
)


def table(answer: dict[str, Any]) -> list[str]:
    """The counters as dotnet-counters lays them out: name, value, units."""
    counters: dict[str, Any] = answer.get("counters", {})
    names = [n for n in _ORDER if n in counters] + sorted(set(counters) - set(_ORDER))
    rows = [f"[System.Runtime] pid {answer.get('pid')} (.NET {answer.get('runtime_version')})"]
    for n in names:
        c = counters[n]
        label = c.get("display_name") or n
        units = c.get("units") or ""
        per = f" / {answer.get('interval_s', 1)} s" if c.get("type") == "Sum" else ""
        title = f"{label} ({units}{per})" if units or per else label
        rows.append(f"    {title:<52}{c['value']:>16,.2f}")
    return rows


def cmd_counters(
    kube: Any, args: argparse.Namespace, *, out: TextIO | None = None, rounds: int | None = None
) -> int:
    """Refresh the table each interval until Ctrl-C (or ``rounds``, for tests)."""
    stream = out or sys.stdout
    pod = _one_pod(kube, args, "counters for")
    interval = args.interval
    with _commands.reach(kube, pod) as (client, _):
        drawn = 0
        done = 0
        try:
            with _commands._Interrupt():
                while rounds is None or done < rounds:
                    answer = client.get_json(
                        f"/dotnet/{args.pid}/counters",
                        "reading the counters",
                        params={"duration_s": interval + 0.5, "interval_s": interval},
                    )
                    rows = table(answer)
                    if drawn and stream.isatty():
                        stream.write(f"\x1b[{drawn}F\x1b[J")  # back over the last table
                    stream.write("\n".join(rows) + "\n")
                    stream.flush()
                    drawn = len(rows)
                    done += 1
        except KeyboardInterrupt:
            pass
    return OK
