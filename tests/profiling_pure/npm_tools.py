"""The speedscope and pprof parsers the output tests check against, and playwright-core
(which drives Debian's chromium over the flame graph), from npm.

`scripts/setup` installs them into .cache/npm-tools; the tests call :func:`ensure`
too, so a fresh clone works either way (npm reaches the registry here). They are
the real projects' own artifacts: speedscope's published JSON schema
(dist/release/file-format-schema.json) and Datadog's `pprof-format` decoder.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".cache" / "npm-tools"
SPEEDSCOPE = "speedscope@1.25.0"
PPROF_FORMAT = "pprof-format@2.3.2"
SCHEMA = TOOLS / "speedscope" / "package" / "dist" / "release" / "file-format-schema.json"
PPROF_FORMAT_DIR = TOOLS / "node_modules" / "pprof-format"
PLAYWRIGHT = "playwright-core@1.64.1"
# A prefix of its own: `npm install --no-save` prunes what a prefix holds unsaved.
PLAYWRIGHT_PREFIX = TOOLS / "playwright"
PLAYWRIGHT_DIR = PLAYWRIGHT_PREFIX / "node_modules" / "playwright-core"
CHROMIUM = Path("/usr/bin/chromium")


def _npm(*args: str, cwd: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is missing: run scripts/setup (it installs nodejs/npm)")
    subprocess.run(
        [npm, *args, "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=cwd,
        check=True,
        timeout=180,
        stdout=subprocess.DEVNULL,
    )


def ensure() -> None:
    TOOLS.mkdir(parents=True, exist_ok=True)
    if not SCHEMA.is_file():
        dest = TOOLS / "speedscope"
        dest.mkdir(exist_ok=True)
        _npm("pack", SPEEDSCOPE, "--pack-destination", str(dest), cwd=dest)
        (tgz,) = dest.glob("speedscope-*.tgz")
        with tarfile.open(tgz) as tar:
            member = tar.getmember("package/dist/release/file-format-schema.json")
            tar.extractall(dest, members=[member], filter="data")
    if not (PPROF_FORMAT_DIR / "package.json").is_file():
        _npm(
            "install",
            "--ignore-scripts",
            "--no-save",
            "--prefix",
            str(TOOLS),
            PPROF_FORMAT,
            cwd=TOOLS,
        )


def ensure_playwright() -> Path:
    """playwright-core's directory (for ``require``), installed if missing. It never
    downloads a browser: the tests launch Debian's chromium (:data:`CHROMIUM`)."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup (it installs Debian's chromium)")
    if not (PLAYWRIGHT_DIR / "package.json").is_file():
        PLAYWRIGHT_PREFIX.mkdir(parents=True, exist_ok=True)
        _npm(
            "install",
            "--ignore-scripts",
            "--no-save",
            "--prefix",
            str(PLAYWRIGHT_PREFIX),
            PLAYWRIGHT,
            cwd=PLAYWRIGHT_PREFIX,
        )
    return PLAYWRIGHT_DIR


def node() -> str:
    exe = shutil.which("node")
    if exe is None:
        pytest.fail("node is missing: run scripts/setup (it installs nodejs/npm)")
    return exe
