"""The flame graph SVG, speedscope.json and pprof outputs, from real recordings
(tests/profiling_pure/data) collapsed by our collapser, checked with real parsers:
xml.etree for the SVG, speedscope's published JSON schema, Datadog's pprof-format."""

from __future__ import annotations

import gzip
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest

from tests.profiling_pure import npm_tools
from tests.profiling_pure.support import wire_fields
from tracecar_formats.collapse import CollapseOptions, collapse_text
from tracecar_formats.flamegraph import frame_kind, render_svg
from tracecar_formats.pprof import to_pprof
from tracecar_formats.speedscope import to_speedscope

DATA = Path(__file__).resolve().parent / "data"
SVG_NS = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module", params=sorted(p.name for p in DATA.glob("*.txt")))
def stacks(request: pytest.FixtureRequest) -> dict[str, int]:
    return collapse_text((DATA / request.param).read_bytes(), CollapseOptions(all=True))


# -- SVG -----------------------------------------------------------------------------


def _frames(svg: str) -> list[ET.Element]:
    root = ET.fromstring(svg.encode())
    return [g for g in root.iter(f"{SVG_NS}g") if g.get("data-x") is not None]


def test_svg_is_well_formed_self_contained_and_has_the_names(stacks: dict[str, int]) -> None:
    svg = render_svg(stacks, title="CPU profile of pid 42 <x> & y", subtitle="10 s at 999 Hz")
    root = ET.fromstring(svg.encode())
    assert root.tag == f"{SVG_NS}svg"
    # self-contained: inline script and style, no external references
    assert root.find(f"{SVG_NS}script") is not None and root.find(f"{SVG_NS}style") is not None
    assert not re.search(r"(href|src)\s*=", svg)
    assert "CPU profile of pid 42 &lt;x&gt; &amp; y" in svg
    total = sum(stacks.values())
    frames = _frames(svg)
    titles = {g.findtext(f"{SVG_NS}title") or "" for g in frames}
    assert f"all ({total:,} samples, 100.00%)" in titles
    names = {t.rsplit(" (", 1)[0] for t in titles}
    heaviest = max(stacks, key=lambda k: stacks[k])
    assert set(heaviest.split(";")) <= names
    # the interactive parts: zoom, reset, search with a match percentage
    for needle in ("Reset Zoom", "Search", "Matched: ", 'addEventListener("click"'):
        assert needle in svg


def test_svg_colours_by_kind() -> None:
    kernel = collapse_text((DATA / "c-syscalls-kernel-default-fields.txt").read_bytes())
    py = collapse_text(
        (DATA / "python312-perf-trampoline-dwarf.txt").read_bytes(), CollapseOptions(jit=True)
    )
    kinds: dict[str, set[str]] = {}
    # (rendered apart: the kernel file's weights are periods, 10^6 times the python counts)
    for g in _frames(render_svg(kernel, title="t")) + _frames(render_svg(py, title="t")):
        name = (g.findtext(f"{SVG_NS}title") or "").rsplit(" (", 1)[0]
        kinds.setdefault(g.get("data-k") or "", set()).add(name)
    # kernel frames found without annotations (entry points and everything above them)
    assert {"entry_SYSCALL_64_after_hwframe", "do_syscall_64", "vfs_read"} <= kinds["kernel"]
    assert any(n.startswith("py::hot_python_loop") for n in kinds["interpreted"])
    assert {"_PyEval_EvalFrameDefault", "read"} <= kinds["native"]
    assert "[unknown]" in kinds["unknown"]
    assert frame_kind("foo_[k]") == "kernel"
    assert frame_kind("Lfoo;bar_[j]") == "jit"
    assert frame_kind("inlined_[i]") == "inlined"


def test_svg_escapes_hostile_names_and_drops_narrow_frames() -> None:
    stacks = {
        'app;<script>alert("x")</script>;a&b': 1000,
        "app;operator<<(std::ostream&);\x01ctl": 500,
        "app;tiny": 1,  # 1/1501 of 1180 px: narrower than 0.1 px? no: 0.79 px, kept
        **{f"app;speck{i}": 1 for i in range(3)},
    }
    svg = render_svg(stacks, title="t", width=1200)
    ET.fromstring(svg.encode())
    assert "<script>alert" not in svg and "&lt;script&gt;" in svg
    many = {f"app;f{i:05d}": 1 for i in range(100_000)} | {"app;big": 100_000}
    small = render_svg(many, title="t")
    # 100k frames of 0.006 px each are dropped; the big one and the ancestors stay
    assert len(_frames(small)) == 3
    assert len(small) < 50_000


def test_svg_of_nothing() -> None:
    ET.fromstring(render_svg({}, title="empty").encode())


# -- speedscope ----------------------------------------------------------------------


def test_speedscope_validates_against_the_official_schema(
    tools: None, stacks: dict[str, int]
) -> None:
    schema = json.loads(npm_tools.SCHEMA.read_text())
    doc = to_speedscope(stacks, name="pid 42", unit="nanoseconds", weight_per_sample=1_001_001)
    text = json.dumps(doc)
    jsonschema.validate(json.loads(text), schema)
    (profile,) = doc["profiles"]  # type: ignore[misc]
    frames = doc["shared"]["frames"]  # type: ignore[index]
    assert sum(profile["weights"]) == sum(stacks.values()) * 1_001_001
    assert profile["endValue"] == sum(profile["weights"])
    # samples are root-first indices into the shared frames
    rebuilt = {}
    for sample, weight in zip(profile["samples"], profile["weights"], strict=True):
        names = []
        for i in sample:
            f = frames[i]
            names.append(f"py::{f['name']}:{f['file']}_[j]" if "file" in f else f["name"])
        rebuilt[";".join(names)] = weight // 1_001_001
    assert rebuilt == stacks


def test_speedscope_rejects_nothing_and_counts_units(tools: None) -> None:
    schema = json.loads(npm_tools.SCHEMA.read_text())
    doc = to_speedscope({}, name="empty")
    jsonschema.validate(doc, schema)
    bad = json.loads(json.dumps(to_speedscope({"a;b": 1}, name="x")))
    bad["profiles"][0]["unit"] = "parsecs"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


# -- pprof ---------------------------------------------------------------------------


def test_pprof_decodes_with_pprof_format(
    tools: None, stacks: dict[str, int], tmp_path: Path
) -> None:
    blob = to_pprof(stacks, period_ns=1_001_001, duration_ns=3_000_000_000, time_ns=1_700_000_000)
    assert blob[:2] == b"\x1f\x8b"
    got = npm_tools.decode_pprof(blob, tmp_path)
    assert got["strings0"] == ""
    assert got["sampleType"] == [["samples", "count"], ["cpu", "nanoseconds"]]
    assert got["periodType"] == ["cpu", "nanoseconds"] and got["period"] == 1_001_001
    assert got["timeNanos"] == 1_700_000_000 and got["durationNanos"] == 3_000_000_000
    frames = {f for k in stacks for f in k.split(";")}
    assert got["nFunctions"] == got["nLocations"] == len(frames)
    assert got["stacks"] == {k: [v, v * 1_001_001] for k, v in stacks.items()}


def test_pprof_ids_and_string_table_are_consistent() -> None:
    stacks = {"app;main;work": 3, "app;main": 1, "app;py::f:/x.py_[j]": 2}
    fields = wire_fields(gzip.decompress(to_pprof(stacks, period_ns=10, duration_ns=0, time_ns=0)))
    strings = [v for f, _, v in fields if f == 6]
    assert strings[0] == b"" and len(set(strings)) == len(strings)
    functions = [dict((f, v) for f, _, v in wire_fields(v)) for f, _, v in fields if f == 5]  # type: ignore[arg-type]
    ids = [fn[1] for fn in functions]
    assert ids == list(range(1, len(ids) + 1))
    names = {strings[fn[2]] for fn in functions}  # type: ignore[index]
    assert {b"app", b"main", b"work", b"f"} <= names
    assert any(strings[fn.get(4, 0)] == b"/x.py" for fn in functions)  # type: ignore[index]
    assert not any(f == 10 for f, _, _ in fields)  # zero duration: proto3 default, omitted


# The SVG's script (zoom, reset, search) runs in a real browser: test_flamegraph_browser.py.
