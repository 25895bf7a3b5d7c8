"""``tracecar-agent healthcheck [--wait S]``: the exec probes' light client (no settings
model, no pydantic), against a real loopback HTTP server."""

from __future__ import annotations

import http.server
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import __main__ as cli


class _Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    srv = http.server.HTTPServer(("127.0.0.1", 0), _Healthz)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_healthy_agent(server: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACECAR_AGENT_PORT", str(server))
    assert cli.healthcheck() == 0
    assert cli.healthcheck(wait_s=5) == 0


def test_no_agent_after_the_wait(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TRACECAR_AGENT_PORT", str(_free_port()))
    assert cli.healthcheck(wait_s=0.2) == 1
    assert "unhealthy" in capsys.readouterr().err


@pytest.mark.parametrize("port", ["0", "70000", "web", ""])
def test_a_bad_port_is_unhealthy_and_says_why(
    port: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TRACECAR_AGENT_PORT", port)
    assert cli.healthcheck() == 1
    assert "is not a port" in capsys.readouterr().err


def test_the_healthcheck_stays_light() -> None:
    """No pydantic, ssl or importlib.metadata: the exec probe's CPU is the idle agent's."""
    import subprocess
    import sys

    code = (
        "import sys, agent.__main__; "
        "print(sorted(m for m in ('pydantic', 'ssl', 'importlib.metadata') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def test_an_unusable_token_file_ends_the_agent_with_status_2_and_says_why(
    tmp_path: Path,
) -> None:
    """The app loads after the port answers (agent.boot); a configuration it refuses still
    ends the process with its own status and the reason, not a served agent."""
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "TRACECAR_AGENT_PORT": str(port),
        "TRACECAR_AGENT_DATA_DIR": str(tmp_path / "data"),
        "TRACECAR_AGENT_TOKEN_FILE": str(tmp_path / "missing-token"),
        "TRACECAR_AGENT_LTTNG_START_SESSIOND": "false",
        "TRACECAR_AGENT_LOG_FORMAT": "text",
    }
    out = subprocess.run(
        [sys.executable, "-m", "agent"], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "missing-token" in out.stderr and "cannot serve" in out.stderr


def test_serving_loads_uvicorn_without_its_command_line() -> None:
    """The agent serves with uvicorn's Config and Server only: its package __init__ would
    also import click and the multiprocess supervisors (1.6 MB of the idle RSS budget).
    The names uvicorn's own modules import from the package are there."""
    import subprocess
    import sys

    code = (
        "import sys, agent.__main__ as m; config, server = m._uvicorn(); "
        "import uvicorn, uvicorn.lifespan.on; "
        "assert uvicorn.Config is config and uvicorn.Server is server, 'names'; "
        "print(sorted(x for x in ('click', 'uvicorn.main', 'multiprocessing') if x in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr[-2000:]
