"""py-spy's output, read: its summary line, and its raw stacks folded as perf's are.

py-spy (``record --format raw --threads --full-filenames``) writes one line per
distinct stack, root first: ``thread (TID);<module> (/app/x.py:11);main (/app/x.py:10) 61``
(``thread (TID): MainThread;...`` for some Python versions: the name is dropped).
:func:`fold` turns that into the folded format every other backend emits, with the
process's name as the root frame (``comm``, ``comm-PID`` or ``comm-PID/TID``, as
stackcollapse-perf's ``--pid``/``--tid`` spell it), so Python and perf stacks merge
into one flame graph. Native frames of ``--native`` that py-spy could not name
(``0x7f.. (libc.so.6)``) become ``[libc.so.6]``, the collapser's spelling of an
unresolved frame.

Pure: no process is started here (the agent's ``agent.profiling._pyspy_record`` runs py-spy).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SUMMARY = re.compile(r"Samples: (\d+) Errors: (\d+)")
# "thread (TID)", and on some Pythons (3.11 here) "thread (TID): NAME".
_THREAD = re.compile(r"^thread \((?:0x[0-9a-fA-F]+|\d+)\)(?:: .*)?$")
_THREAD_ID = re.compile(r"\((0x[0-9a-fA-F]+|\d+)\)")
_ADDRESS_ONLY = re.compile(r"^0x[0-9a-fA-F]+ \(([^()]+)\)$")
_NOISE = (
    "Sampling process",
    "Press Control-C",
    "You can use the flamegraph.pl",
    "Wrote raw flamegraph data",
    "Stopped sampling because",
)


@dataclass(frozen=True, slots=True)
class Summary:
    samples: int | None
    errors: int
    """Samples py-spy could not take (the interpreter's state was unreadable at that
    instant): reported as dropped, never hidden."""
    exited: bool
    warnings: list[str]


def parse_stderr(stderr: str) -> Summary:
    m = _SUMMARY.search(stderr)
    warnings = []
    for line in stderr.splitlines():
        text = line.removeprefix("py-spy> ").strip()
        if text and not text.startswith(_NOISE):
            warnings.append(text)
    return Summary(
        samples=int(m.group(1)) if m else None,
        errors=int(m.group(2)) if m else 0,
        exited="because process exited" in stderr,
        warnings=warnings[:20],
    )


def _root(comm: str, pid: int, tid: str | None, *, with_pid: bool, with_tid: bool) -> str:
    name = comm.replace(" ", "_").replace(";", ":") or "[unknown]"
    if with_tid:
        return f"{name}-{pid}/{tid or '?'}"
    if with_pid:
        return f"{name}-{pid}"
    return name


def fold(
    raw: str, *, comm: str, pid: int, with_pid: bool = False, with_tid: bool = False
) -> dict[str, int]:
    """py-spy's raw lines -> ``{"comm;frame;...": count}`` (root first)."""
    out: dict[str, int] = {}
    for line in raw.splitlines():
        stack, sep, count = line.rpartition(" ")
        if not sep or not count.isdigit():
            continue
        frames = stack.split(";")
        tid = None
        if frames and _THREAD.match(frames[0]):
            m = _THREAD_ID.search(frames[0])
            tid = str(int(m.group(1), 0)) if m else None
            frames = frames[1:]
        named = []
        for f in frames:
            m = _ADDRESS_ONLY.match(f)
            named.append(f"[{m.group(1)}]" if m else f)
        key = ";".join([_root(comm, pid, tid, with_pid=with_pid, with_tid=with_tid), *named])
        out[key] = out.get(key, 0) + int(count)
    return out
