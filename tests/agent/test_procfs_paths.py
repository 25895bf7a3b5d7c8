"""Paths the app controls, read by the agent through /proc/PID/root (the JIT perf map)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent import procfs
from tests import podsim


def _own_map() -> Path:
    # This test process's /proc/self/root is the host's /: its map lives in the host's /tmp.
    path = Path("/tmp") / f"perf-{os.getpid()}.map"
    path.unlink(missing_ok=True)
    return path


def test_perf_map_regular_file() -> None:
    path = _own_map()
    try:
        path.write_bytes(b"7f0000001000 10 py::main:app.py\n")
        with procfs.open_perf_map(os.getpid()) as f:
            assert f.read() == b"7f0000001000 10 py::main:app.py\n"
    finally:
        path.unlink(missing_ok=True)


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_perf_map_that_is_not_a_file_is_refused(kind: str) -> None:
    path = _own_map()
    try:
        if kind == "fifo":
            os.mkfifo(path)  # reading it would block until a writer came
        else:
            path.symlink_to("/dev/zero")  # reading it would never end
        with pytest.raises(OSError, match="not a regular file"):
            procfs.open_perf_map(os.getpid())
    finally:
        path.unlink(missing_ok=True)


@pytest.mark.integration
def test_perf_map_symlink_stays_in_the_app_root(pod: podsim.SimPod, tmp_path: Path) -> None:
    secret = tmp_path / "agent-secret"  # in the agent's filesystem, not the app's
    secret.write_text("not for the app\n")
    app = pod.run("maplink", ["sleep", "30"])
    try:
        link = Path(f"/proc/{app.host_pid}/root/tmp/perf-{app.host_pid}.map")
        link.symlink_to(secret)
        assert link.read_text() == "not for the app\n"  # what a plain open would read
        with pytest.raises(FileNotFoundError):
            procfs.open_perf_map(app.host_pid)
    finally:
        app.stop()
