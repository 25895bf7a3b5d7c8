"""The gdb-Python program that finds where CPython keeps its small-object allocator's
(pymalloc's) state in a libpython or python binary (pure: the program's text and the
argv that runs it).

Why this way: the figures ``sys._debugmallocstats()`` prints live in the
interpreter's memory, and libpython's debug info (CPython builds with ``-g`` unless a
distribution strips it) says where. gdb reads that debug info from the *file*, not
the process: the addresses of the allocator's globals and the offsets of their
fields, once per binary (``_pymalloc`` caches them and reads the live values from
/proc/PID/mem, without stopping the process). The alternatives were worse: running
code in the target (``PyRun_SimpleString`` through gdb, as pyrasite does) needs the
GIL and can deadlock a process stopped inside malloc; gdb attached to read the
values stops the process for the whole time gdb takes to load the debug info
(0.3 .. 5 s here); py-spy reads frames, not the allocator; memray must be loaded
into the process.

The program prints one JSON line after ``TRACECAR-PYLAYOUT``: for 3.12+, where the
main interpreter's ``obmalloc.mgmt`` is (an address; or, in 3.13 where ``obmalloc``
is a pointer, where that pointer is and the offset of ``mgmt`` in what it points
to) and each counter's offset and size in ``struct _obmalloc_mgmt``; for 3.8 ..
3.11, the address and size of each global of obmalloc.c. Addresses are the file's
(link-time): the reader adds the load bias.
"""

from __future__ import annotations

FIELDS = (
    "arenas",
    "maxarenas",
    "narenas_currently_allocated",
    "ntimes_arena_allocated",
    "narenas_highwater",
)

PROGRAM = r"""
import json
def _tracecar_layout(minor, names):
    ev = lambda e: int(gdb.parse_and_eval(e))
    out = {"minor": minor}
    try:
        if minor >= 12:
            obm = gdb.parse_and_eval("_PyRuntime._main_interpreter.obmalloc")
            if obm.type.strip_typedefs().code == gdb.TYPE_CODE_PTR:
                out["obmalloc_ptr"] = ev("(long)&_PyRuntime._main_interpreter.obmalloc")
                out["mgmt_offset"] = ev("(long)&((struct _obmalloc_state *)0)->mgmt")
            else:
                out["mgmt"] = ev("(long)&_PyRuntime._main_interpreter.obmalloc.mgmt")
            out["fields"] = {
                n: [ev("(long)&((struct _obmalloc_mgmt *)0)->" + n),
                    ev("sizeof(((struct _obmalloc_mgmt *)0)->" + n + ")")]
                for n in names
            }
        else:
            out["globals"] = {n: [ev("(long)&" + n), ev("sizeof(" + n + ")")] for n in names}
        out["arena_object_size"] = ev("sizeof(struct arena_object)")
    except gdb.error as e:
        out = {"error": "the allocator's state is not in this file's debug info "
               "(a stripped libpython?): %s" % e}
    print("TRACECAR-PYLAYOUT " + json.dumps(out))
"""


def argv(gdb: str, binary: str, *, minor: int) -> list[str]:
    """gdb on ``binary`` (a file: no process is attached), printing the layout."""
    return [
        gdb,
        "-nx",
        "-batch",
        "-iex",
        "set auto-load off",
        "-iex",
        "set debuginfod enabled off",
        binary,
        "-ex",
        "python exec(" + repr(PROGRAM) + ")",
        "-ex",
        f"python _tracecar_layout({int(minor)}, {list(FIELDS)!r})",
    ]
