"""`kubectl tracecar profile --type alloc|leak`: the flag reaches the agent's request."""

from __future__ import annotations

from kubectl_tracecar.commands import profile
from tests.plugin.support import options


def test_memory_types_pass_through() -> None:
    for kind in ("alloc", "leak"):
        o = options(["profile", "web", "--type", kind, "-d", "60s", "-o", "mem.svg"])
        assert profile.request_body(o) == {"duration_s": 60.0, "type": kind}
