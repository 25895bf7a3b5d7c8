"""The core agent image names what needs the full one (agent.variant), in /capabilities
and in the 409 that replaces a "tool missing" error; a full agent's errors are as
they were."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from agent import _proc, variant
from agent.app import create_app
from agent.errors import AgentError, Conflict, NotFound, Unavailable
from agent.settings import Settings


def _client(tmp_path: Path, exc: Exception, image_variant: str) -> TestClient:
    settings = Settings(data_dir=tmp_path, auth="none", image_variant=image_variant)  # type: ignore[arg-type]
    client = TestClient(create_app(settings))

    async def boom() -> None:
        raise exc

    client.app.add_api_route("/boom", boom)  # type: ignore[attr-defined]
    return client


@pytest.mark.parametrize(
    ("exc", "tool"),
    [
        (
            Unavailable("the flight recorder needs bpftrace, which is not installed here"),
            "bpftrace",
        ),
        (
            Unavailable("LTTng is not usable here: lttng-tools is not installed (lttng, ...)"),
            "lttng",
        ),
        (Unavailable("gdb is not installed here", tool="gdb"), "gdb"),
        (Conflict("cannot attach", tool="gdb"), "gdb"),
        (
            _proc.ToolNotFound("babeltrace2 is not installed", argv=["babeltrace2", "x"]),
            "babeltrace2",
        ),
    ],
)
def test_a_core_agent_answers_409_naming_the_full_image(
    tmp_path: Path, exc: Exception, tool: str
) -> None:
    r = _client(tmp_path, exc, "core").get("/boom")
    assert r.status_code == 409, r.text
    body = r.json()
    assert body["tool"] == tool
    assert body["image_variant"] == "core" and body["needs_image_variant"] == "full"
    assert "tracecar.dev/image-variant: full" in body["detail"]
    assert "kubectl tracecar attach POD --variant full" in body["detail"]
    assert variant.FULL_ONLY[tool] in body["detail"]


@pytest.mark.parametrize(
    "exc",
    [
        Unavailable("perf is not installed"),  # the core image has perf: not its variant
        Conflict("the recorder mentions bpftrace but names no tool"),  # a 409 must name it
        NotFound("no pid 7"),
    ],
)
def test_other_errors_of_a_core_agent_are_unchanged(tmp_path: Path, exc: AgentError) -> None:
    r = _client(tmp_path, exc, "core").get("/boom")
    assert r.status_code == exc.status_code
    assert r.json()["detail"] == exc.detail


def test_a_full_agent_keeps_its_503(tmp_path: Path) -> None:
    r = _client(tmp_path, Unavailable("bpftrace is not installed"), "full").get("/boom")
    assert r.status_code == 503
    assert r.json() == {"detail": "bpftrace is not installed"}


def test_describe_and_tool_reason() -> None:
    assert variant.describe("full")["variant"] == "full"
    core = variant.describe("core")
    assert set(core["needs_full_image"]) == set(variant.FULL_ONLY)  # type: ignore[arg-type]
    assert variant.tool_reason("full", "bpftrace") is None
    assert variant.tool_reason("core", "perf") is None
    reason = variant.tool_reason("core", "bpftrace")
    assert reason is not None and "core image" in reason
    assert variant.missing_tool("needs lttng-sessiond here") == "lttng-sessiond"
    assert variant.missing_tool("lttng-tools is missing") is None
