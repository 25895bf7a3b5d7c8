"""What the flame graph shows at a glance: each frame kind has a range of colours no
other kind shares (FlameGraph's java palette: red native, orange kernel, green JIT,
aqua inlined; blue Python), every frame of a real recording is coloured in its own
kind's range and in no other's, and the legend's swatch for a kind is in that range."""

from __future__ import annotations

import itertools
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tracecar_formats.collapse import CollapseOptions, collapse_text
from tracecar_formats.flamegraph import PALETTE, FrameKind, render_svg

DATA = Path(__file__).resolve().parent / "data"
SVG_NS = "{http://www.w3.org/2000/svg}"
_HSL = re.compile(r"^hsl\((\d+),(\d+)%,(\d+)%\)$")


def _hsl(fill: str) -> tuple[float, float, float]:
    m = _HSL.fullmatch(fill)
    assert m, f"not an hsl() colour: {fill}"
    h, s, lum = m.groups()
    return float(h), float(s), float(lum)


def _kinds_holding(fill: str) -> set[FrameKind]:
    h, s, lum = _hsl(fill)
    return {kind for kind, sw in PALETTE.items() if sw.holds(h, s, lum)}


def test_no_two_kinds_share_a_colour() -> None:
    for (a, sa), (b, sb) in itertools.combinations(PALETTE.items(), 2):
        if sa.saturation != sb.saturation:
            continue  # greys (saturation 0) and colours never meet
        hues_meet = sa.hue[0] <= sb.hue[1] and sb.hue[0] <= sa.hue[1]
        lights_meet = sa.lightness[0] <= sb.lightness[1] and sb.lightness[0] <= sa.lightness[1]
        assert not (hues_meet and lights_meet), f"{a} and {b} share colours"
    coloured = [sw.hue for sw in PALETTE.values() if sw.saturation > 0]
    for x, y in itertools.combinations(coloured, 2):
        assert x[1] < y[0] or y[1] < x[0], f"hue ranges {x} and {y} overlap"


def _stacks_of_every_kind() -> dict[str, int]:
    """Real recordings (a C program with its kernel frames, Python 3.12 through the perf
    trampoline) plus annotated frames of the kinds they lack, under many names so the
    per-name hash spreads over each range."""
    stacks: dict[str, int] = {}
    kernel = collapse_text((DATA / "c-syscalls-kernel-default-fields.txt").read_bytes())
    py = collapse_text(
        (DATA / "python312-perf-trampoline-dwarf.txt").read_bytes(), CollapseOptions(jit=True)
    )
    hot = collapse_text((DATA / "c-hotcold-fp.txt").read_bytes())
    for source in (kernel, py, hot):
        total = sum(source.values())
        for stack, count in source.items():
            stacks[stack] = stacks.get(stack, 0) + max(1, count * 1000 // total)
    for i in range(200):
        stacks[f"main;Lcom/shop/Cart;::add{i}_[j];inl{i}_[i];sys{i}_[k]"] = 5
        stacks[f"main;py::handler{i}:app.py;[unknown]"] = 5
    return stacks


def test_every_frame_is_in_its_kinds_colours_and_no_others() -> None:
    svg = render_svg(_stacks_of_every_kind(), title="t", width=4000, minwidth=0.0)
    seen: dict[str, int] = {}
    for g in ET.fromstring(svg).iter(f"{SVG_NS}g"):
        kind, rect = g.get("data-k"), g.find(f"{SVG_NS}rect")
        if kind is None or rect is None:
            continue
        fill = rect.get("fill", "")
        name = g.findtext(f"{SVG_NS}title")
        assert _kinds_holding(fill) == {kind}, f"{name}: {kind} drawn {fill}"
        seen[kind] = seen.get(kind, 0) + 1
    assert set(seen) == set(PALETTE), seen  # every kind was drawn
    assert min(seen.values()) >= 1


def test_a_c_programs_own_functions_are_not_the_kernels_orange() -> None:
    """The reported case: `main` and its hot function came out the legend's orange."""
    hot = collapse_text((DATA / "c-hotcold-fp.txt").read_bytes())
    svg = render_svg(hot, title="t")
    fills = {
        (g.findtext(f"{SVG_NS}title") or "").rsplit(" (", 1)[0]: g.find(f"{SVG_NS}rect")
        for g in ET.fromstring(svg).iter(f"{SVG_NS}g")
        if g.get("data-k") == "native"
    }
    assert "main" in fills
    for name, rect in fills.items():
        assert rect is not None
        assert _kinds_holding(rect.get("fill", "")) == {"native"}, name


@pytest.mark.parametrize("label", ["native", "kernel", "JIT", "Python", "inlined", "unresolved"])
def test_the_legend_shows_each_kinds_own_colour(label: str) -> None:
    svg = render_svg({"main;f": 1}, title="t")
    for g in ET.fromstring(svg).iter(f"{SVG_NS}g"):
        if g.get("class") == "legend" and g.findtext(f"{SVG_NS}text") == label:
            rect = g.find(f"{SVG_NS}rect")
            assert rect is not None
            kinds = _kinds_holding(rect.get("fill", ""))
            assert len(kinds) == 1 and "root" not in kinds, (label, kinds)
            return
    pytest.fail(f"no legend item {label!r}")
