"""The agent's access rule: where the token comes from, the check, and what never leaks.

In-process (TestClient without the lifespan: no tool service is started); the real
agent in a simulated pod is covered by test_profiles_integration.test_bearer_token and
the real pod by tests/e2e.
"""

from __future__ import annotations

import logging
import stat
from pathlib import Path
from typing import Any

import pytest
from fastapi import Depends
from fastapi.testclient import TestClient

from agent import capabilities
from agent.app import create_app
from agent.auth import (
    MAX_HEADER_BYTES,
    TokenConfigError,
    load_access,
    remove_generated,
    require_token,
)
from agent.settings import Settings

TOKEN = "tok-" + "A1b2C3d4E5f6G7h8I9j0"


@pytest.fixture(autouse=True)
def _no_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    async def general() -> capabilities.NodeFacts:
        off: capabilities.Check = {"available": False, "reason": "not checked here"}
        return capabilities.NodeFacts(
            kernel="", arch="", perf_event_paranoid=None,
            capabilities=capabilities.Privileges(effective=[]), perf_permitted=off, tools={},
            tracefs=off, bpf=off, kernel_tracing=off,
        )  # fmt: skip

    monkeypatch.setattr(capabilities, "general", general)


def client_of(tmp_path: Path, **settings: Any) -> TestClient:
    settings.setdefault("generated_token_file", tmp_path / "run" / "agent-token")
    app = create_app(Settings(data_dir=tmp_path / "data", **settings))

    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    app.add_api_route("/ping", ping, dependencies=[Depends(require_token)])
    return TestClient(app)


def test_healthz_is_open_everything_else_needs_the_token(tmp_path: Path) -> None:
    client = client_of(tmp_path, token=TOKEN)
    assert client.get("/healthz").status_code == 200
    for path in ("/ping", "/capabilities", "/processes", "/profiles", "/probes"):
        r = client.get(path)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"] == "Bearer"
    ok = client.get("/ping", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.json() == {"pong": "yes"}
    # The scheme is case-insensitive (RFC 7235); surrounding spaces are tolerated.
    assert client.get("/ping", headers={"Authorization": f"bearer  {TOKEN} "}).status_code == 200


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("missing", {}, "no Authorization header"),
    ("wrong", {"Authorization": "Bearer " + "x" * 30}, "the bearer token is wrong"),
    ("prefix", {"Authorization": "Bearer " + TOKEN[:-1]}, "the bearer token is wrong"),
    ("longer", {"Authorization": "Bearer " + TOKEN + "x"}, "the bearer token is wrong"),
    ("empty", {"Authorization": "Bearer "}, "the bearer token is empty"),
    ("blank", {"Authorization": "   "}, "no Authorization header"),
    ("scheme", {"Authorization": f"Basic {TOKEN}"}, "not of the Bearer scheme"),
    ("bare", {"Authorization": TOKEN}, "not of the Bearer scheme"),
    (
        "non-ascii",
        {"Authorization": "Bearer caf\u00e9-tok\u00e9n-\u00e9\u00e9\u00e9".encode("latin-1")},
        "non-ASCII",
    ),
    ("utf-8", {"Authorization": ("Bearer " + "\u2603" * 20).encode()}, "non-ASCII"),
    ("very long", {"Authorization": "Bearer " + "A" * 100_000}, "too long"),
    ("just over", {"Authorization": "Bearer " + "A" * MAX_HEADER_BYTES}, "too long"),
]


@pytest.mark.parametrize(("case", "headers", "words"), BAD, ids=[b[0] for b in BAD])
def test_bad_tokens_are_401_with_a_clear_message(
    tmp_path: Path, case: str, headers: dict[str, Any], words: str
) -> None:
    client = client_of(tmp_path, token=TOKEN)
    r = client.get("/ping", headers=headers)
    assert r.status_code == 401, r.text
    detail = r.json()["detail"]
    assert words in detail
    assert "Authorization: Bearer <token>" in detail
    assert "TRACECAR_AGENT_TOKEN" in detail and "kubectl get pod" in detail
    assert TOKEN not in r.text


def test_generated_token_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "run" / "agent-token"
    client = client_of(tmp_path, generated_token_file=path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text().strip()
    assert len(token) >= 40
    r = client.get("/ping")
    assert r.status_code == 401 and str(path) in r.json()["detail"]
    assert token not in r.text
    assert client.get("/ping", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    caps = client.get("/capabilities", headers={"Authorization": f"Bearer {token}"}).json()
    assert caps["auth"] == {
        "required": True,
        "scheme": "Bearer",
        "source": "generated",
        "token_file": str(path),
    }
    # Where it is, as a structured field (servicelog's "fields"); never the value.
    said = [getattr(r, "fields", {}) for r in caplog.records]
    assert {"path": str(path)} in said and token not in caplog.text and token not in str(said)
    assert [p.name for p in path.parent.iterdir()] == ["agent-token"]  # no temp file left


def test_each_start_generates_a_new_token_and_shutdown_removes_it(tmp_path: Path) -> None:
    path = tmp_path / "agent-token"
    first = load_access(auth="token", token=None, token_file=None, generated_token_file=path)
    text = path.read_text()
    second = load_access(auth="token", token=None, token_file=None, generated_token_file=path)
    assert first.token != second.token and path.read_text() != text
    remove_generated(second)
    assert not path.exists()
    remove_generated(second)  # already gone: fine


def test_token_file(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    client = client_of(tmp_path, token_file=f)
    assert client.get("/ping", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert str(f) in client.get("/ping").json()["detail"]
    assert not (tmp_path / "run").exists()  # nothing generated


@pytest.mark.parametrize(
    ("token", "words"),
    [
        ("short", "16 to 1024 characters"),
        ("x" * 2000, "16 to 1024 characters"),
        ("has spaces inside it!!", "printable ASCII"),
        ("caf\u00e9" * 5, "printable ASCII"),
    ],
)
def test_unusable_configured_token_is_refused_without_quoting_it(
    tmp_path: Path, token: str, words: str
) -> None:
    with pytest.raises(TokenConfigError) as info:
        load_access(auth="token", token=token, token_file=None, generated_token_file=tmp_path / "t")
    assert words in str(info.value) and token not in str(info.value)
    assert not (tmp_path / "t").exists()


def test_unreadable_token_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TokenConfigError, match="cannot read it"):
        load_access(
            auth="token",
            token=None,
            token_file=tmp_path / "missing",
            generated_token_file=tmp_path / "t",
        )


def test_auth_none_serves_everyone_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    client = client_of(tmp_path, auth="none")
    assert client.get("/ping").status_code == 200
    caps = client.get("/capabilities").json()
    assert caps["auth"]["required"] is False and "every container" in caps["auth"]["warning"]
    assert "authentication is OFF" in caplog.text
    assert not (tmp_path / "run").exists()


def test_the_token_is_not_in_the_settings_repr_nor_the_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = Settings(token=TOKEN, data_dir=tmp_path)  # type: ignore[arg-type]
    assert TOKEN not in repr(settings) and TOKEN not in str(settings.model_dump())
    client = client_of(tmp_path, token=TOKEN)
    client.get("/ping", headers={"Authorization": "Bearer nope-nope-nope-nope"})
    client.get("/ping", headers={"Authorization": f"Bearer {TOKEN}"})
    assert TOKEN not in caplog.text


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Env alone configures access: what an ephemeral (attached) agent gets."""
    monkeypatch.setenv("TRACECAR_AGENT_TOKEN", TOKEN)
    s = Settings()
    assert s.token is not None and s.token.get_secret_value() == TOKEN
    monkeypatch.delenv("TRACECAR_AGENT_TOKEN")
    monkeypatch.setenv("TRACECAR_AGENT_AUTH", "none")
    assert Settings().auth == "none"
    monkeypatch.setenv("TRACECAR_AGENT_GENERATED_TOKEN_FILE", str(tmp_path / "x"))
    assert Settings().generated_token_file == tmp_path / "x"
