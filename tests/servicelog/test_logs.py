"""One log format for both services, read off real servers (uvicorn, our middleware).

Each test starts `python -m agent` or `python -m webhook` as a process, sends it a few
requests (one with a bearer token and a token in the query string), stops it with
SIGTERM and checks every line it wrote: JSON with the same base keys and the same
access-line keys in both services, ISO 8601 UTC timestamps, nothing secret; and the
plain-text choice for terminals.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from certs import ensure_local_certs
from servicelog import ACCESS_FIELDS, BASE_KEYS

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-t0ken-value"
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(
    module: str,
    env: dict[str, str],
    tmp: Path,
    requests: Callable[[], None],
    ready: str,
    *,
    serving: Callable[[httpx.Response], bool] = lambda r: r.status_code == 200,
) -> list[str]:
    """Run `python -m module`, wait until `ready` answers as `serving` wants, run
    `requests`, stop it (SIGTERM) and return the lines of its stdout and stderr. The
    start-up deadline is generous: on a busy machine the app's import takes seconds."""
    tmp.mkdir(parents=True, exist_ok=True)
    log = tmp / f"{module}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=out,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"{module} exited:\n{log.read_text()}"
            try:
                if serving(httpx.get(ready, verify=False, timeout=10)):
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"{module} did not come up:\n{log.read_text()}"
            time.sleep(0.1)
        requests()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return log.read_text().splitlines()


def _agent_lines(tmp: Path, *, fmt: str, extra: dict[str, str] | None = None) -> list[str]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "TRACECAR_AGENT_PORT": str(port),
        "TRACECAR_AGENT_DATA_DIR": str(tmp / "data"),
        "TRACECAR_AGENT_LTTNG_START_SESSIOND": "false",
        "TRACECAR_AGENT_LTTNG_RUN_DIR": str(tmp / "lttng"),
        "TRACECAR_AGENT_LOG_FORMAT": fmt,
        "TRACECAR_AGENT_TOKEN": SECRET,
        **(extra or {}),
    }

    def requests() -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            c.get("/healthz")
            c.get(f"/capabilities?token={SECRET}", headers={"Authorization": f"Bearer {SECRET}"})
            c.get("/capabilities", headers={"Authorization": "Bearer wrong"})
            c.get("/no/such/path")

    # The boot answers /healthz "starting" while the app loads (agent.boot): the requests
    # go once the app itself answers, so none waits behind the import on a busy machine.
    return _serve(
        "agent",
        env,
        tmp,
        requests,
        f"{url}/healthz",
        serving=lambda r: r.status_code == 200 and r.json().get("status") == "ok",
    )


def _webhook_lines(tmp: Path, *, extra: dict[str, str] | None = None) -> list[str]:
    paths = ensure_local_certs(tmp / "certs", dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    port = _free_port()
    url = f"https://127.0.0.1:{port}"
    env = {
        "TRACECAR_WEBHOOK_CERT_FILE": str(paths.cert),
        "TRACECAR_WEBHOOK_KEY_FILE": str(paths.key),
        "TRACECAR_WEBHOOK_HOST": "127.0.0.1",
        "TRACECAR_WEBHOOK_PORT": str(port),
        **(extra or {}),
    }

    def requests() -> None:
        with httpx.Client(
            base_url=url, verify=ssl.create_default_context(cafile=str(paths.ca_cert)), timeout=10
        ) as c:
            c.get(f"/healthz?token={SECRET}", headers={"Authorization": f"Bearer {SECRET}"})
            c.post("/mutate", content=b"{not json", headers={"content-type": "application/json"})
            c.get("/metrics")

    return _serve("webhook", env, tmp, requests, f"{url}/healthz")


def _parsed(lines: list[str]) -> list[dict[str, Any]]:
    assert lines
    out = []
    for line in lines:
        assert SECRET not in line  # neither the Authorization header nor the query string
        obj = json.loads(line)  # every line: uvicorn's, ours, the access log
        assert isinstance(obj, dict), line
        assert tuple(obj)[: len(BASE_KEYS)] == BASE_KEYS, line
        assert TS.match(obj["ts"]), line
        assert obj["level"] in {"debug", "info", "warning", "error", "critical"}, line
        out.append(obj)
    return out


def _access(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    lines = [o for o in objs if o["logger"].endswith(".access")]
    for o in lines:
        assert tuple(o) == BASE_KEYS + ACCESS_FIELDS, o
        assert "?" not in o["path"], o
    return lines


def test_both_services_write_one_json_format(tmp_path: Path) -> None:
    agent = _parsed(_agent_lines(tmp_path / "agent", fmt="json"))
    webhook = _parsed(_webhook_lines(tmp_path / "webhook"))
    # uvicorn's own lines come through our format too.
    assert any(o["logger"] == "uvicorn.error" for o in agent)
    assert any(o["logger"] == "uvicorn.error" for o in webhook)

    # The readiness polls of /healthz come first.
    agent_access = _access(agent)[-4:]
    assert [(o["method"], o["path"], o["status"]) for o in agent_access] == [
        ("GET", "/healthz", 200),
        ("GET", "/capabilities", 200),
        ("GET", "/capabilities", 401),
        ("GET", "/no/such/path", 404),
    ]
    webhook_access = _access(webhook)[-3:]
    assert [(o["method"], o["path"], o["status"]) for o in webhook_access] == [
        ("GET", "/healthz", 200),
        ("POST", "/mutate", 400),
        ("GET", "/metrics", 200),
    ]
    for o in agent_access + webhook_access:
        assert isinstance(o["duration_ms"], float) and o["duration_ms"] >= 0
        assert o["client"] == "127.0.0.1"


def test_agent_text_format_is_readable(tmp_path: Path) -> None:
    lines = _agent_lines(tmp_path, fmt="text")
    head = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (info|warning|error|debug) +\S+: ")
    for line in lines:
        assert SECRET not in line
        assert head.match(line), line
        assert not line.startswith("{"), line
    assert any(
        "agent.access: request method=GET path=/healthz status=200 duration_ms=" in line
        for line in lines
    ), lines


TEXT_HEAD = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (info|warning|error|debug) +\S+: ")


def test_webhook_text_format_is_readable(tmp_path: Path) -> None:
    lines = _webhook_lines(tmp_path, extra={"TRACECAR_WEBHOOK_LOG_FORMAT": "text"})
    for line in lines:
        assert SECRET not in line
        assert TEXT_HEAD.match(line), line
    assert any(
        "webhook.access: request method=POST path=/mutate status=400 duration_ms=" in line
        for line in lines
    ), lines


def test_the_level_comes_from_the_environment(tmp_path: Path) -> None:
    # warning: the access lines (info) and uvicorn's start-up lines go, for the same
    # requests that log them at info; debug keeps them.
    agent = _agent_lines(tmp_path / "a", fmt="json", extra={"TRACECAR_AGENT_LOG_LEVEL": "warning"})
    webhook = _webhook_lines(tmp_path / "w", extra={"TRACECAR_WEBHOOK_LOG_LEVEL": "warning"})
    for line in agent + webhook:
        assert json.loads(line)["level"] in {"warning", "error", "critical"}, line
    debug = _parsed(
        _agent_lines(tmp_path / "d", fmt="json", extra={"TRACECAR_AGENT_LOG_LEVEL": "debug"})
    )
    assert len(_access(debug)) >= 4 and len(debug) > len(agent)


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_exceptions_stay_in_the_format(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    import servicelog

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        servicelog.configure(level="info", fmt=fmt)  # type: ignore[arg-type]
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("x").exception("failed", extra={"fields": {"k": "a b"}})
        logging.getLogger("x").debug("hidden below the level")
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    err = capsys.readouterr().err
    assert "hidden" not in err
    if fmt == "json":
        (line,) = err.splitlines()
        obj = json.loads(line)
        assert obj["msg"] == "failed" and obj["k"] == "a b" and "ValueError: boom" in obj["exc"]
    else:
        assert ' x: failed k="a b"\nTraceback' in err
