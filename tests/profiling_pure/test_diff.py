"""Differential folded stacks against FlameGraph's own difffolded.pl (run with the real
perl on the same inputs), and the differential flame graph's colours.

``data/difffolded.pl`` is FlameGraph's script unchanged (brendangregg/FlameGraph at
41fee1f99f9276008b7cd112fca19dc3ea84ac32, GPL-2.0-or-later as its header says).
It prints in Perl's hash order, which changes from run to run; ours is sorted, so
the comparison is with its output sorted the same way, byte for byte.
"""

from __future__ import annotations

import random
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import need
from tracecar_formats.diff import EmptyBase, diff_folded, format_diff
from tracecar_formats.flamegraph import diff_colour, render_svg

DATA = Path(__file__).resolve().parent / "data"
SCRIPT = DATA / "difffolded.pl"
RESULTS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "flamegraph-perf" / "results"
SVG_NS = "{http://www.w3.org/2000/svg}"
FLAGS = ((), ("-n",), ("-s",), ("-n", "-s"))


def perl_diff(tmp: Path, base: bytes, target: bytes, flags: tuple[str, ...]) -> bytes | None:
    (tmp / "1").write_bytes(base)
    (tmp / "2").write_bytes(target)
    r = subprocess.run(
        ["perl", str(SCRIPT), *flags, str(tmp / "1"), str(tmp / "2")],
        capture_output=True, timeout=60,
    )  # fmt: skip
    if r.returncode != 0:
        return None
    return b"".join(sorted(r.stdout.splitlines(keepends=True)))


def ours(base: bytes, target: bytes, flags: tuple[str, ...]) -> bytes | None:
    try:
        rows = diff_folded(base, target, normalize="-n" in flags, strip_hex="-s" in flags)
    except EmptyBase:
        return None
    return format_diff(rows)


def _random_folded(rng: random.Random) -> bytes:
    frames = [b"main", b"a", b"b", b"0x1f3a", b"x 0xAB", b"f\tg", b"caf\xc3\xa9", b"[unknown]"]
    lines = []
    for _ in range(rng.randint(0, 30)):
        stack = b";".join(rng.choice(frames) for _ in range(rng.randint(1, 5)))
        count = rng.choice([str(rng.randint(0, 10**6)).encode(), b"3.5", b"7.", b"0"])
        lines.append(stack + rng.choice([b" ", b"  ", b"\t"]) + count)
    if rng.random() < 0.2:
        lines.append(b"a line with no count")
    if rng.random() < 0.2:
        lines.append(b"")
    data = b"\n".join(lines)
    return data + b"\n" if lines and rng.random() < 0.8 else data


@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: "".join(f) or "raw")
def test_matches_difffolded_pl_on_random_inputs(tmp_path: Path, flags: tuple[str, ...]) -> None:
    need("perl")
    rng = random.Random("".join(flags))
    for _ in range(60):
        base, target = _random_folded(rng), _random_folded(rng)
        assert ours(base, target, flags) == perl_diff(tmp_path, base, target, flags)


@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: "".join(f) or "raw")
def test_matches_difffolded_pl_on_real_profiles(tmp_path: Path, flags: tuple[str, ...]) -> None:
    need("perl")
    files = sorted(RESULTS.glob("*-collapsed-*.txt"))
    assert len(files) >= 20
    rng = random.Random(1)
    for _ in range(10):
        a, b = rng.sample(files, 2)
        base, target = a.read_bytes(), b.read_bytes()
        got = ours(base, target, flags)
        assert got is not None and got == perl_diff(tmp_path, base, target, flags)


def test_normalised_and_raw_counts() -> None:
    rows = diff_folded(b"a;x 10\na;y 30\n", b"a;x 200\na;z 200\n", normalize=True)
    assert format_diff(rows) == b"a;x 100 200\na;y 300 0\na;z 0 200\n"
    raw = diff_folded(b"a;x 10\na;y 30\n", b"a;x 200\na;z 200\n", normalize=False)
    assert format_diff(raw) == b"a;x 10 200\na;y 30 0\na;z 0 200\n"
    with pytest.raises(EmptyBase):
        diff_folded(b"", b"a 1\n", normalize=True)


def _frames(svg: str) -> dict[str, tuple[str, str]]:
    root = ET.fromstring(svg)
    out = {}
    for g in root.iter(f"{SVG_NS}g"):
        title, rect = g.find(f"{SVG_NS}title"), g.find(f"{SVG_NS}rect")
        if title is not None and rect is not None and title.text:
            out[title.text.split(" (")[0]] = (rect.get("fill", ""), title.text)
    return out


def test_differential_svg_is_red_where_it_grew_and_blue_where_it_shrank() -> None:
    stacks = {"main;grew": 90, "main;shrank": 10, "main;same": 50}
    deltas = {"main;grew": 60.0, "main;shrank": -30.0, "main;same": 0.0}
    frames = _frames(render_svg(stacks, title="d", deltas=deltas))
    assert frames["grew"][0] == "rgb(255,0,0)" == diff_colour(60, 60)  # the largest change
    assert frames["shrank"][0] == "rgb(105,105,255)"  # half the largest, as flamegraph.pl
    assert frames["same"][0] == frames["main"][0] == "rgb(255,255,255)"
    assert re.search(r"; \+40\.00%\)$", frames["grew"][1])  # 60 of 150: flamegraph.pl's title
    assert frames["shrank"][1].endswith("; -20.00%)")
    # negate (the graph drawn with the base's widths from swapped rows) swaps the hues.
    swapped = _frames(render_svg(stacks, title="d", deltas=deltas, negate=True))
    assert swapped["grew"][0] == "rgb(0,0,255)" and swapped["grew"][1].endswith("; -40.00%)")
