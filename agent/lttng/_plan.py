"""The pure planner: a validated session request -> the lttng commands that set it up.

No I/O here: :func:`plan_session` returns the argument lists (what follows
``lttng``) in the order LTTng needs them (create, channel, events, contexts
after the channels exist, process tracking), so ``POST /lttng/sessions?dry_run=true``
can show exactly what would run, and the service executes the same list.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

from agent.lttng._model import DOMAIN_FLAG, SessionRequest

#: Our user-space channel (buffer sizes apply to it). The agent domains (python,
#: jul, log4j) record through LTTng's own per-domain channels.
CHANNEL = "tracecar"


class Step(TypedDict):
    what: str
    args: list[str]


def plan_session(req: SessionRequest, *, session: str, output: Path) -> list[Step]:
    steps: list[Step] = []
    create = ["create", session, f"--output={output}"]
    if req.mode == "snapshot":
        create.append("--snapshot")
    steps.append({"what": "create the session", "args": create})

    has_ust = any(e.domain == "userspace" for e in req.events)
    if has_ust or req.contexts:
        channel = ["enable-channel", "-u", CHANNEL, "-s", session]
        if req.subbuf_size is not None:
            channel.append(f"--subbuf-size={req.subbuf_size}")
        if req.num_subbuf is not None:
            channel.append(f"--num-subbuf={req.num_subbuf}")
        steps.append({"what": "create the user-space channel", "args": channel})

    for i, ev in enumerate(req.events):
        args = ["enable-event", DOMAIN_FLAG[ev.domain], ",".join(ev.names), "-s", session]
        if ev.domain == "userspace":
            args += ["-c", CHANNEL]
        if ev.loglevel is not None:
            flag = "--loglevel-only" if ev.loglevel_only else "--loglevel"
            args.append(f"{flag}={ev.loglevel}")
        if ev.filter is not None:
            # One argv element: the expression never meets a shell.
            args += ["--filter", ev.filter]
        if ev.exclude:
            args.append("--exclude=" + ",".join(ev.exclude))
        steps.append({"what": f"enable events[{i}] ({ev.domain})", "args": args})

    if req.contexts:
        # After the channels exist: add-context applies to the existing channels.
        ctx = ["add-context", "-u", "-s", session]
        for c in req.contexts:
            ctx += ["-t", c]
        steps.append({"what": "add contexts", "args": ctx})

    if req.pids:
        steps.append(
            {
                "what": "record only these processes",
                "args": ["track", "-u", "-s", session, "--vpid=" + ",".join(map(str, req.pids))],
            }
        )
    if req.start:
        steps.append({"what": "start recording", "args": ["start", session]})
    return steps
