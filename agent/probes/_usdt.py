"""USDT probes: find the one a request names, in the object that carries it, and say
why when there is none.

Owned here: the lookup of ``usdt: provider:name`` (or a Python function's
``python:function__entry`` / ``function__return`` pair) in the target's executable,
then its libraries (a shared CPython keeps its notes in libpython3.X.so); the
argument checks against the probe's own argument list; the probes a CPython needs
enabled for entry to fire; and the 404/409 that say what exists instead (the
stack snapshot and the profiler for a Python built without probes).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from agent import procfs
from agent import symbols as _symbols
from agent.errors import AgentError, Conflict, Invalid, NotFound
from agent.probes._model import PATH_RE, ArgType, ProbeRequest
from agent.probes._plan import Spec

PY_ENTRY = "python:function__entry"
PY_RETURN = "python:function__return"
USDT_PAIRS = (("__entry", "__return"), ("__start", "__done"))
"""How a USDT point names the probe that closes it, for latency (CPython's, and the
common DTrace convention)."""
USDT_ENABLERS: dict[str, tuple[str, ...]] = {
    # CPython 3.11 (Debian's, seen here) fires function__entry only on its tracing path,
    # which it takes while the python:line semaphore is set: without line attached,
    # entry never fires although function__return does. The line probe is attached with
    # no action; its cost is one uprobe hit per executed line while the probe runs.
    PY_ENTRY: ("python:line",),
}
USDT_ENABLE_NOTE = (
    "python:line is attached (no action) because this CPython fires function__entry only "
    "while line tracing is on: every executed Python line costs one uprobe hit while the "
    "probe runs (mode count needs only function__return and avoids this)"
)


def _closing_probe(syms: _symbols.ObjectSymbols, name: str) -> str | None:
    """``python:function__entry`` -> ``python:function__return`` when the object has it."""
    for opening, closing in USDT_PAIRS:
        if name.endswith(opening):
            other = name[: -len(opening)] + closing
            if syms.probe(other) is not None:
                return other
    return None


def object_paths(pid: int, view: str) -> tuple[str, str]:
    """An object as ``pid`` sees it -> (its canonical path, the same via /proc/PID/root)."""
    host = procfs.resolve_in_root(pid, view)
    root = str(procfs.proc_root(pid))
    canonical = str(host)[len(root) :] or "/"
    if not PATH_RE.fullmatch(canonical):
        raise Invalid(
            f"binary: {view!r} resolves to {canonical!r}, which has characters a probe "
            "cannot name (allowed: letters, digits, _ . + @ = , % - /)",
            field="binary",
        )
    if not host.is_file():
        raise NotFound(f"binary: {view!r} is not a file in the filesystem of pid {pid}")
    return canonical, f"{root}{canonical}"


def resolve(req: ProbeRequest, pid: int, *, duration_s: float, max_events: int) -> Spec:
    """A USDT probe (or a Python function's pair of them) in the object that carries it."""
    python = req.python_function is not None
    name = PY_ENTRY if python else req.usdt
    assert name is not None
    candidates: list[str]
    if req.binary is None:
        # The executable first, then its libraries: a shared CPython build carries
        # its notes in libpython3.X.so, a static one in the executable.
        candidates = _symbols.mapped_objects(pid)
    elif req.binary.startswith("/"):
        candidates = [req.binary]
    else:
        candidates = [_symbols.resolve_library(pid, req.binary)]
    found: tuple[str, str, _symbols.ObjectSymbols, _symbols.Symbol] | None = None
    with_notes: dict[str, _symbols.ObjectSymbols] = {}
    for view in candidates:
        try:
            canonical, host_binary = object_paths(pid, view)
            syms = _symbols.object_symbols(Path(host_binary))
        except (NotFound, Invalid):
            if req.binary is not None:
                raise
            continue
        if syms.usdt:
            with_notes[canonical] = syms
        probe = syms.probe(name)
        if probe is not None:
            found = (canonical, host_binary, syms, probe)
            break
    if found is None:
        raise _no_usdt(req, pid, name, candidates, with_notes)
    canonical, host_binary, syms, probe = found
    closing = _closing_probe(syms, name)
    if python:
        if closing is None:
            raise Conflict(
                f"python_function: {canonical} has {PY_ENTRY} but no {PY_RETURN}; "
                f"use the stack snapshot GET /processes/{pid}/stack or the profiler "
                "POST /profiles",
                binary=canonical,
            )
    elif req.mode == "histogram" and req.of == "latency":
        if closing is None:
            raise Invalid(
                f"of: latency is not defined for a single USDT point ({name} has no "
                f"closing probe in {canonical}; pairs are X__entry/X__return and "
                "X__start/X__done); give `of`: argN, or mode count or events",
                field="of",
            )
    else:
        closing = None
    n_args = len(probe.args)
    if len(req.args) > n_args:
        raise Invalid(
            f"args: {name} in {canonical} has {n_args} argument(s) "
            f"({' '.join(probe.args) or 'none'}); {len(req.args)} were typed",
            field="args",
        )
    args: tuple[ArgType, ...] = tuple(req.args)
    of = req.of
    if python:
        of = "latency"
    elif req.mode == "histogram" and req.of.startswith("arg"):
        n = int(req.of[3:])
        if n >= n_args:
            raise Invalid(
                f"of: {req.of} does not exist: {name} in {canonical} has {n_args} "
                f"argument(s) ({' '.join(probe.args) or 'none'})",
                field="of",
            )
        filler: ArgType = "int"
        args += (filler,) * (n + 1 - len(args))
    needs_entry = not (python and req.mode == "count")
    enable = tuple(
        e for e in USDT_ENABLERS.get(name, ()) if needs_entry and syms.probe(e) is not None
    )
    return Spec(
        pid=pid,
        binary=canonical,
        host_binary=host_binary,
        function=name,
        address=probe.address,
        mode=req.mode,
        of=of,
        args=args,
        retval=False,
        retval_type=req.retval_type,
        stack=req.stack,
        duration_s=duration_s,
        max_events=max_events,
        usdt=name,
        usdt_return=closing,
        usdt_enable=enable,
        python_function=req.python_function,
        python_file=req.python_file,
    )


def _no_usdt(
    req: ProbeRequest,
    pid: int,
    name: str,
    candidates: list[str],
    with_notes: dict[str, _symbols.ObjectSymbols],
) -> AgentError:
    """Why the probe is not there: a build without probes (409), or another name (404)."""
    field = "python_function" if req.python_function is not None else "usdt"
    try:
        info = procfs.process_info(pid)
        runtime, version = info.runtime, info.runtime_version
    except NotFound:
        runtime, version = "native", None
    # The executable and any libpython: where a CPython keeps its notes.
    objs = candidates[:1] + [c for c in candidates[1:] if "libpython" in os.path.basename(c)]
    where = ", ".join(objs) or "its executable"
    if runtime == "python":
        if with_notes:
            listed = sorted({s.name for syms in with_notes.values() for s in syms.usdt})
            return NotFound(
                f"{field}: no USDT probe {name} in pid {pid} (it has: {', '.join(listed)})",
                closest=difflib.get_close_matches(name, listed, n=5, cutoff=0.6),
            )
        build = f"Python {version}" if version else "this Python"
        return Conflict(
            f"{field}: pid {pid} runs {build} built without USDT probes (no "
            f".note.stapsdt in {where}; CPython has them when built --with-dtrace), so "
            "its functions cannot be traced without a restart. Without restarting: the "
            f"stack snapshot GET /processes/{pid}/stack (what it is doing now) or the "
            "profiler POST /profiles (where its time goes)",
            runtime=runtime,
            runtime_version=version,
        )
    if req.python_function is not None:
        return Conflict(
            f"python_function: pid {pid} is not a CPython process (it runs "
            f"{candidates[0] if candidates else 'an unknown executable'}, detected as "
            f"{runtime}); python_function needs a CPython with USDT probes. "
            "Use `function` (uprobes) or `usdt` for native code",
            runtime=runtime,
        )
    if not with_notes:
        return Conflict(
            f"usdt: pid {pid} has no USDT probes in {where} (no .note.stapsdt); "
            f"use `function` for a uprobe, or GET /processes/{pid}/symbols to list what "
            "can be probed",
            runtime=runtime,
        )
    listed = sorted({s.name for syms in with_notes.values() for s in syms.usdt})
    return NotFound(
        f"usdt: no USDT probe {name} in pid {pid}; it has: {', '.join(listed[:50])}",
        closest=difflib.get_close_matches(name, listed, n=5, cutoff=0.6),
    )
