"""Error paths of the app that must answer 4xx/5xx JSON, never an unhandled 500."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from agent import _proc
from agent.app import create_app
from agent.settings import Settings


def _client(tmp_path: Path, **settings: object) -> TestClient:
    # No `with`: the lifespan (tool services) is not started; these paths do not need it.
    return TestClient(create_app(Settings(data_dir=tmp_path, **settings)))  # type: ignore[arg-type]


def test_non_ascii_token_is_401_not_500(tmp_path: Path) -> None:
    client = _client(tmp_path, token="s3cret-token-of-the-test")
    r = client.get("/capabilities", headers={"Authorization": "Bearer caf\u00e9".encode("latin-1")})
    assert r.status_code == 401
    assert "bearer token" in r.json()["detail"]


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (_proc.ToolNotFound("perf is not installed", argv=["perf", "script"]), 503),
        (_proc.ToolTimeout("perf did not finish within 1 s", argv=["perf", "script"]), 504),
        (
            _proc.ToolFailed(
                "perf failed: bad file", argv=["perf", "script"], returncode=1, stderr="bad file"
            ),
            502,
        ),
    ],
)
def test_untranslated_tool_errors_say_what_the_tool_said(
    tmp_path: Path, exc: _proc.ProcError, status: int
) -> None:
    client = _client(tmp_path)

    async def boom() -> None:
        raise exc

    client.app.add_api_route("/boom", boom)  # type: ignore[attr-defined]
    r = client.get("/boom")
    assert r.status_code == status
    assert r.json() == {"detail": str(exc), "tool": "perf"}
