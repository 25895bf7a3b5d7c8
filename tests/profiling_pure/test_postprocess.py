"""perf.data -> folded through the real `perf script` (agent.profiling.perf_script).

Drives the real perf on a small recording made here, so it is an integration test;
it needs no pod. Checks: streamed result == collapsing the whole text at once,
totals == perf report's sample count, perf's own message on failure, the
timeout kills and reaps perf.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path

import pytest

from agent import _proc
from agent.profiling.perf_script import PERF_SCRIPT_FIELDS, perf_data_to_folded, perf_script_argv
from tests.conftest import need
from tracecar_formats.collapse import CollapseOptions, collapse_text

pytestmark = pytest.mark.integration
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="module")
def perf_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need("perf", "gcc")
    d = tmp_path_factory.mktemp("pp")
    exe = d / "hotcold"
    subprocess.run(
        ["gcc", "-O1", "-fno-omit-frame-pointer", "-o", str(exe), str(DATA / "hotcold.c")],
        check=True,
    )
    out = d / "perf.data"
    subprocess.run(
        ["perf", "record", "-q", "-F", "999", "-g", "-o", str(out), str(exe), "60000"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


def test_argv_is_the_documented_one(perf_data: Path) -> None:
    argv = perf_script_argv(perf_data)
    assert argv == ["perf", "script", "-i", str(perf_data), "--no-inline", "-F", PERF_SCRIPT_FIELDS]


def test_streamed_equals_whole_text_and_perf_report_totals(perf_data: Path) -> None:
    stacks = asyncio.run(perf_data_to_folded(perf_data, timeout=60))
    text = subprocess.run(perf_script_argv(perf_data), check=True, capture_output=True).stdout
    assert stacks == collapse_text(text)
    report = subprocess.run(
        ["perf", "report", "-i", str(perf_data), "--stdio", "--sort", "comm", "-n", "-g", "none"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    m = re.search(r"^# Samples: (\d+) ", report, re.M)  # exact below 1000 samples
    assert m is not None, report
    per_comm = [int(x) for x in re.findall(r"^\s+[\d.]+%\s+[\d.]+%\s+(\d+)\s+\S", report, re.M)]
    assert sum(stacks.values()) == sum(per_comm) == int(m.group(1)) > 100
    hot = sum(v for k, v in stacks.items() if k.endswith(";hot"))
    assert hot >= 0.7 * sum(stacks.values())
    annotated = asyncio.run(
        perf_data_to_folded(perf_data, options=CollapseOptions(tid=True), timeout=60)
    )
    # Every stack starts with its thread, "comm-pid/tid". Not every comm is hotcold's:
    # samples taken between perf's fork and the exec are "perf-exec"'s, and a loaded
    # machine widens that window.
    assert all(re.match(r"^[^;]+-\d+/\d+;", k) for k in annotated), list(annotated)[:5]
    mine = sum(v for k, v in annotated.items() if re.match(r"^hotcold-\d+/\d+;", k))
    assert mine >= 0.7 * sum(annotated.values()), {k.split(";")[0] for k in annotated}
    assert not _proc.live_children()


def test_perf_failure_carries_perfs_message(tmp_path: Path) -> None:
    bogus = tmp_path / "not-perf.data"
    bogus.write_bytes(b"this is not a perf.data file\n" * 10)
    with pytest.raises(_proc.ToolFailed) as e:
        asyncio.run(perf_data_to_folded(bogus, timeout=30))
    assert "perf script failed" in str(e.value) and "exit status" not in str(e.value)
    assert not _proc.live_children()


def test_timeout_kills_and_reaps_perf(perf_data: Path) -> None:
    with pytest.raises(_proc.ToolTimeout):
        asyncio.run(perf_data_to_folded(perf_data, timeout=0.001))
    assert not _proc.live_children()


def test_missing_perf_binary(perf_data: Path) -> None:
    with pytest.raises(_proc.ToolNotFound):
        asyncio.run(perf_data_to_folded(perf_data, timeout=5, perf="perf-not-installed-here"))
