"""The gdb-Python program that reads CPython's small-object allocator (pymalloc) out of
a live process, read-only (pure: the program's text and the argv that runs it).

Why gdb and this: the figures ``sys._debugmallocstats()`` prints live in the
interpreter's memory, and gdb with libpython's debug info (CPython builds with
``-g`` unless the distribution strips it) knows where. Running code *in* the target
(``PyRun_SimpleString`` through gdb, as pyrasite does) would need the GIL and can
deadlock a process stopped inside malloc; py-spy reads frames, not the allocator;
memray needs to be loaded into the process. Reading memory does none of that: the
target is stopped only while gdb reads (about 0.3 s), and nothing of it changes.

The program finds the arena table (3.12+: ``_PyRuntime._main_interpreter.obmalloc
.mgmt``, a pointer in 3.13; before: the globals of obmalloc.c), reads it in one
piece, then every carved pool's header (its block count and size class), up to
``MAX_ARENAS`` arenas, and prints one JSON line after ``TRACECAR-PYMALLOC``.
"""

from __future__ import annotations

MAX_ARENAS = 1024
"""Arenas walked at most (1 GiB with 3.10+'s 1 MiB arenas): bounds the time attached."""

PROGRAM = r"""
import json, struct
def _tracecar_pymalloc(limit, minor):
    out = {"version": "3.%d" % minor}
    try:
        if minor >= 12:
            st = gdb.parse_and_eval("_PyRuntime._main_interpreter.obmalloc")
            if st.type.strip_typedefs().code == gdb.TYPE_CODE_PTR:
                st = st.dereference()
            mgmt = st["mgmt"]
            get = lambda name: mgmt[name]
        else:
            get = lambda name: gdb.parse_and_eval(name)
        arenas = int(get("arenas"))
        maxarenas = int(get("maxarenas"))
        out["arenas"] = int(get("narenas_currently_allocated"))
        out["highwater"] = int(get("narenas_highwater"))
        out["allocated_total"] = int(get("ntimes_arena_allocated"))
    except gdb.error as e:
        out["error"] = "the allocator's state is not readable (no debug info for " \
            "libpython?): %s" % e
        print("TRACECAR-PYMALLOC " + json.dumps(out))
        return
    arena_bytes, pool_bytes = (1 << 20, 1 << 14) if minor >= 10 else (1 << 18, 1 << 12)
    out["arena_bytes"], out["pool_bytes"] = arena_bytes, pool_bytes
    inf = gdb.selected_inferior()
    size = int(gdb.parse_and_eval("sizeof(struct arena_object)"))
    table = bytes(inf.read_memory(arenas, size * maxarenas)) if maxarenas else b""
    blocks, pools, walked = {}, 0, 0
    for i in range(maxarenas):
        address, pool_address = struct.unpack_from("QQ", table, i * size)
        if address == 0:
            continue
        if walked >= limit:
            break
        walked += 1
        pool = (address + pool_bytes - 1) & ~(pool_bytes - 1)
        while pool < pool_address:
            head = bytes(inf.read_memory(pool, 40))
            count = struct.unpack_from("I", head, 0)[0]
            szidx = struct.unpack_from("I", head, 36)[0]
            pools += 1
            if count:
                block = (szidx + 1) << 4
                blocks[block] = blocks.get(block, 0) + count
            pool += pool_bytes
    out.update(pools=pools, walked=walked, blocks_by_size=blocks)
    print("TRACECAR-PYMALLOC " + json.dumps(out))
"""


def argv(gdb: str, pid: int, *, minor: int, limit: int = MAX_ARENAS) -> list[str]:
    """gdb attached to ``pid`` (libraries from its own root), running the program."""
    return [
        gdb,
        "-nx",
        "-batch",
        "-iex",
        "set auto-load off",
        "-iex",
        "set debuginfod enabled off",
        "-iex",
        f"set sysroot /proc/{pid}/root",
        "-ex",
        "set pagination off",
        "-p",
        str(pid),
        "-ex",
        "python exec(" + repr(PROGRAM) + ")",
        "-ex",
        f"python _tracecar_pymalloc({int(limit)}, {int(minor)})",
        "-ex",
        "detach",
    ]
