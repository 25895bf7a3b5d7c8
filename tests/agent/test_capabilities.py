"""Unit tests of agent.capabilities: decoding CapEff, and the checks on this machine."""

from __future__ import annotations

import asyncio

from agent import capabilities


def test_decode_caps() -> None:
    assert capabilities.decode_caps(0) == []
    assert capabilities.decode_caps(1 << 21) == ["SYS_ADMIN"]
    assert capabilities.decode_caps((1 << 38) | (1 << 39) | (1 << 19)) == [
        "SYS_PTRACE",
        "PERFMON",
        "BPF",
    ]
    # A full root set as /proc/self/status shows it (CapEff: 000001ffffffffff).
    full = capabilities.decode_caps(0x000001FFFFFFFFFF)
    assert len(full) == 41 and full[-1] == "CHECKPOINT_RESTORE"


def test_general_facts_here() -> None:
    capabilities.clear_cache()
    facts = asyncio.run(capabilities.general()).model_dump()
    tools = facts["tools"]
    assert isinstance(tools, dict)
    assert tools["perf"]["available"] is True and tools["perf"]["version"]
    assert isinstance(facts["perf_event_paranoid"], int)
    kernel = facts["kernel_tracing"]
    assert isinstance(kernel, dict) and kernel["reason"]
    assert set(facts) >= {"capabilities", "tracefs", "bpf", "perf_permitted"}


def test_missing_tool_says_so() -> None:
    check = asyncio.run(capabilities.tool_version("no-such-tool-tracecar"))
    assert check == {
        "available": False,
        "reason": "no-such-tool-tracecar is not installed (not on PATH)",
    }
