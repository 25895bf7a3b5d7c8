"""The speedscope and pprof parsers the output tests check against, and playwright-core
(which drives Debian's chromium over the flame graph), from npm.

`scripts/setup` installs them into .cache/npm-tools; the tests call :func:`ensure`
too, so a fresh clone works either way (npm reaches the registry here). They are
the real projects' own artifacts: speedscope's published JSON schema
(dist/release/file-format-schema.json) and Datadog's `pprof-format` decoder.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

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


# pprof-format's decoder (Datadog's, from npm), printing what the tests check: the
# sample and period types, the header's numbers, and each sample's stack and values.
_DECODE_JS = """
const zlib = require("zlib");
const fs = require("fs");
const { Profile } = require(process.argv[2]);
const p = Profile.decode(zlib.gunzipSync(fs.readFileSync(process.argv[3])));
const s = (i) => p.stringTable.strings[Number(i)];
const fn = new Map(p.function.map((f) => [Number(f.id), f]));
const loc = new Map(p.location.map((l) => [Number(l.id), l]));
const stacks = {};
for (const smp of p.sample) {
  const names = smp.locationId.map((id) => {
    const l = loc.get(Number(id));
    return s(fn.get(Number(l.line[0].functionId)).systemName);
  });
  stacks[names.reverse().join(";")] = smp.value.map(Number);
}
console.log(JSON.stringify({
  strings0: s(0),
  sampleType: p.sampleType.map((v) => [s(v.type), s(v.unit)]),
  periodType: [s(p.periodType.type), s(p.periodType.unit)],
  defaultSampleType: s(p.defaultSampleType),
  period: Number(p.period), timeNanos: Number(p.timeNanos),
  durationNanos: Number(p.durationNanos),
  nFunctions: p.function.length, nLocations: p.location.length, stacks,
}));
"""


def decode_pprof(blob: bytes, tmp: Path) -> dict[str, Any]:
    """``blob`` (a gzipped pprof profile) as pprof-format decodes it (:func:`ensure` first)."""
    (tmp / "p.pb.gz").write_bytes(blob)
    (tmp / "decode.js").write_text(_DECODE_JS)
    out = subprocess.run(
        [node(), str(tmp / "decode.js"), str(PPROF_FORMAT_DIR), str(tmp / "p.pb.gz")],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    decoded: dict[str, Any] = json.loads(out.stdout)
    return decoded
