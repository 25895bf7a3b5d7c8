"""``kubectl tracecar counters``: a .NET process's System.Runtime counters as a
terminal table refreshed every interval until Ctrl-C (as dotnet-counters shows them)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any, TextIO

from kubectl_tracecar._kube import Kube
from kubectl_tracecar.commands import _reach
from kubectl_tracecar.commands._base import (
    PID_MAX,
    Command,
    Interrupt,
    Pods,
    Wire,
    add_target,
    pods_from,
)
from kubectl_tracecar.errors import OK

_EP = "GET /dotnet/{pid}/counters"
INTERVAL = Wire("--interval", _EP, "interval_s", ge=1, le=60)
PID = Wire("--pid", _EP, "pid", ge=1, le=PID_MAX)


@dataclass(frozen=True, slots=True)
class CountersOptions:
    pods: Pods
    pid: int
    interval_s: int = 1


def flags(p: argparse.ArgumentParser) -> None:
    add_target(p, selector=False)
    PID.add(p, "--pid", required=True, help="the .NET process")
    INTERVAL.add(p, "--interval", default=1, help="seconds per refresh (default 1)")


def complete(ns: argparse.Namespace) -> CountersOptions:
    return CountersOptions(pods=pods_from(ns, selector=False), pid=ns.pid, interval_s=ns.interval)


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


def run(
    kube: Kube, o: CountersOptions, *, out: TextIO | None = None, rounds: int | None = None
) -> int:
    """Refresh the table each interval until Ctrl-C (or ``rounds``, for tests)."""
    stream = out or sys.stdout
    pod = _reach.one_pod(kube, o.pods, "counters for")
    with _reach.reach(kube, pod) as (client, _):
        drawn = 0
        done = 0
        try:
            with Interrupt():
                while rounds is None or done < rounds:
                    answer = client.get_json(
                        f"/dotnet/{o.pid}/counters",
                        "reading the counters",
                        params={"duration_s": o.interval_s + 0.5, "interval_s": o.interval_s},
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


COMMAND = Command(
    name="counters",
    help="a .NET process's System.Runtime counters, live (Ctrl-C ends)",
    example="kubectl tracecar counters web-7d9f-abcde --pid 7       # Ctrl-C ends it",
    flags=flags,
    complete=complete,
    run=run,
    wires=(INTERVAL, PID),
)
