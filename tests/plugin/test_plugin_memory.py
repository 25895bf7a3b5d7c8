"""`kubectl tracecar profile --type alloc|leak`: the flag reaches the agent's request."""

from __future__ import annotations

from kubectl_tracecar import _cli
from kubectl_tracecar._commands import profile_body


def test_memory_types_pass_through() -> None:
    for kind in ("alloc", "leak"):
        args = _cli.parse(["profile", "web", "--type", kind, "-d", "60s", "-o", "mem.svg"])
        assert profile_body(args, 60.0) == {"duration_s": 60.0, "type": kind}
