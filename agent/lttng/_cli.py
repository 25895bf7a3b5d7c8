"""The ``lttng`` command-line tool, driven with argument lists.

Each function builds one argv (every value already validated by
:mod:`agent.lttng._model`), runs it through :func:`agent._proc.run` with a
timeout, and returns what it needs from ``lttng --mi xml`` (the machine
interface) rather than from the human text. A non-zero exit becomes
:class:`LttngFailed` carrying lttng's own message, which the service maps to
the right HTTP status.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from agent import _proc
from agent.lttng._model import DOMAIN_FLAG, ChannelStats, ProcessTracepoints, Tracepoint

if TYPE_CHECKING:
    import xml.etree.ElementTree as ET

TIMEOUT_S = 30.0
_NS = "{https://lttng.org/xml/ns/lttng-mi}"
#: lttng --mi names of the domains, back to ours.
_MI_DOMAIN = {"UST": "userspace", "PYTHON": "python", "JUL": "jul", "LOG4J": "log4j"}


class LttngFailed(Exception):
    """lttng exited non-zero; ``message`` is what it said (its ``Error:`` lines)."""

    def __init__(self, message: str, *, returncode: int, argv: Sequence[str]) -> None:
        super().__init__(message)
        self.message = message
        self.returncode = returncode
        self.argv = list(argv)


class SessionSummary(TypedDict):
    name: str
    path: str
    enabled: bool
    snapshot: bool


class SessionDetail(TypedDict):
    enabled: bool
    channels: list[ChannelStats]


class Lttng:
    """The lttng CLI with this agent's environment (its own LTTNG_HOME)."""

    def __init__(self, *, home: Path, timeout_s: float = TIMEOUT_S) -> None:
        self.home = home
        self.timeout_s = timeout_s

    def env(self) -> dict[str, str]:
        # A private LTTNG_HOME: lttng's "current session" file and any user config
        # of whoever runs the agent stay out of the way. As root, lttng still talks
        # to the root session daemon in /var/run/lttng.
        self.home.mkdir(parents=True, exist_ok=True)
        return {**os.environ, "LTTNG_HOME": str(self.home)}

    async def run(
        self, args: Sequence[str], *, mi: bool = False, timeout_s: float | None = None
    ) -> str:
        argv = ["lttng", *(["--mi", "xml"] if mi else []), *args]
        try:
            done = await _proc.run(
                argv, timeout=timeout_s or self.timeout_s, env=self.env(), check=False
            )
        except _proc.ToolTimeout as e:
            raise LttngFailed(str(e), returncode=-1, argv=argv) from e
        if done.returncode != 0:
            raise LttngFailed(
                _message(done.err, done.text if not mi else "", done.returncode),
                returncode=done.returncode,
                argv=argv,
            )
        return done.text

    # --- queries -------------------------------------------------------------
    async def version(self) -> str:
        out = await self.run(["--version"])
        return out.strip().splitlines()[0] if out.strip() else "unknown"

    async def list_sessions(self) -> list[SessionSummary]:
        root = _parse(await self.run(["list"], mi=True))
        sessions: list[SessionSummary] = []
        for s in root.iter(f"{_NS}session"):
            sessions.append(
                {
                    "name": _text(s, "name"),
                    "path": _text(s, "path"),
                    "enabled": _text(s, "enabled") == "true",
                    "snapshot": _text(s, "snapshot_mode") == "1",
                }
            )
        return sessions

    async def session_detail(self, session: str) -> SessionDetail:
        root = _parse(await self.run(["list", session], mi=True))
        sess = root.find(f".//{_NS}session")
        if sess is None:
            raise LttngFailed(f"session {session} not listed", returncode=0, argv=["list"])
        channels: list[ChannelStats] = []
        for dom in sess.iter(f"{_NS}domain"):
            domain = _MI_DOMAIN.get(_text(dom, "type"), _text(dom, "type").lower())
            for ch in dom.iter(f"{_NS}channel"):
                attrs = ch.find(f"{_NS}attributes")
                channels.append(
                    {
                        "name": _text(ch, "name"),
                        "domain": domain,
                        "discarded_events": _int(attrs, "discarded_events"),
                        "lost_packets": _int(attrs, "lost_packets"),
                        "overwrite": _text(attrs, "overwrite_mode") == "OVERWRITE",
                        "subbuf_size": _int(attrs, "subbuffer_size"),
                        "num_subbuf": _int(attrs, "subbuffer_count"),
                    }
                )
        return {"enabled": _text(sess, "enabled") == "true", "channels": channels}

    async def tracepoints(self, domain: str) -> list[ProcessTracepoints]:
        """Registered processes of a domain and the tracepoints/loggers they offer."""
        root = _parse(await self.run(["list", DOMAIN_FLAG[domain]], mi=True))
        out: list[ProcessTracepoints] = []
        for pid in root.iter(f"{_NS}pid"):
            events: list[Tracepoint] = []
            for ev in pid.iter(f"{_NS}event"):
                level = _text(ev, "loglevel") or None
                events.append({"name": _text(ev, "name"), "loglevel": level})
            out.append(
                {
                    "pid": _int(pid, "id"),
                    "name": _text(pid, "name"),
                    "domain": domain,
                    "events": events,
                }
            )
        return out

    # --- actions ---------------------------------------------------------------
    async def start(self, session: str) -> None:
        await self.run(["start", session])

    async def stop(self, session: str) -> None:
        await self.run(["stop", session])

    async def rotate(self, session: str) -> None:
        await self.run(["rotate", session])

    async def snapshot(self, session: str) -> None:
        await self.run(["snapshot", "record", "-s", session])

    async def destroy(self, session: str) -> None:
        await self.run(["destroy", session])


def _message(stderr: str, stdout: str, returncode: int) -> str:
    """lttng's own explanation: its Error/Warning lines (and the filter parser's)."""
    lines = [ln.strip() for ln in (stderr + "\n" + stdout).splitlines() if ln.strip()]
    picked = [ln for ln in lines if ln.startswith(("Error", "Warning", "error", "Parse error"))]
    text = "; ".join(picked or lines[-5:])
    return text or f"lttng exited with status {returncode} and printed nothing"


def _parse(text: str) -> ET.Element:
    # Imported on first use: an idle agent never parses lttng's output (0.3 MB of RSS).
    import xml.etree.ElementTree as ET

    try:
        return ET.fromstring(text)  # noqa: S314 - trusted: our own lttng's machine interface
    except ET.ParseError as e:
        raise LttngFailed(f"unreadable lttng --mi output: {e}", returncode=0, argv=[]) from e


def _text(el: ET.Element | None, tag: str) -> str:
    if el is None:
        return ""
    child = el.find(f"{_NS}{tag}")
    return (child.text or "").strip() if child is not None else ""


def _int(el: ET.Element | None, tag: str) -> int:
    try:
        return int(_text(el, tag))
    except ValueError:
        return 0
