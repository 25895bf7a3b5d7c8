"""Collapse: byte-compatibility with stackcollapse-perf.pl (FlameGraph's own corpus)
and real perf script outputs recorded on this machine (tests/profiling_pure/data)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tracecar_formats.collapse import (
    CollapseOptions,
    Collapser,
    collapse_text,
    format_folded,
    parse_folded,
)

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "flamegraph-perf"
DATA = Path(__file__).resolve().parent / "data"
OPTIONS = ("pid", "tid", "kernel", "jit", "all", "addrs")
INPUTS = sorted(p.stem for p in CORPUS.glob("perf-*.txt"))


def _expected_cases() -> list[tuple[str, str]]:
    return [(name, opt) for name in INPUTS for opt in OPTIONS]


def test_corpus_is_there() -> None:
    # 13 inputs x 6 options: the parametrized test below must not silently shrink.
    assert len(INPUTS) == 13
    assert len(list((CORPUS / "results").glob("*-collapsed-*.txt"))) == 78


@pytest.mark.parametrize(("name", "option"), _expected_cases())
def test_reproduces_stackcollapse_perf_pl(name: str, option: str) -> None:
    expected = (CORPUS / "results" / f"{name}-collapsed-{option}.txt").read_bytes()
    got = collapse_text((CORPUS / f"{name}.txt").read_bytes(), CollapseOptions(**{option: True}))
    assert format_folded(got).encode("utf-8", "surrogateescape") == expected


@pytest.mark.parametrize("name", INPUTS)
def test_any_chunk_boundaries_give_the_same_result(name: str) -> None:
    data = (CORPUS / f"{name}.txt").read_bytes()
    whole = collapse_text(data, CollapseOptions(all=True, tid=True))
    rng = random.Random(name)
    collapser = Collapser(CollapseOptions(all=True, tid=True))
    i = 0
    while i < len(data):
        n = rng.choice((1, 2, 3, 7, 64, 1000, 65536))
        collapser.feed(data[i : i + n])
        i += n
    assert collapser.finish() == whole


def test_str_and_bytes_inputs_agree() -> None:
    data = (CORPUS / "perf-vertx-stacks-01.txt").read_bytes()
    assert collapse_text(data.decode("utf-8", "surrogateescape")) == collapse_text(data)


def test_one_letter_comm_is_not_an_event_line_for_the_perl_pattern() -> None:
    # `^(\S.+?)\s+(\d+)...` needs two characters of comm: faithful, if surprising.
    assert collapse_text(b"a 1/1 cpu-clock: \n\t1 f (/x)\n\n") == {}


def test_sample_without_trailing_empty_line_is_not_counted() -> None:
    # stackcollapse-perf.pl only counts a stack when it meets the empty line after it.
    text = b"app 1/1 cpu-clock: \n\t1 f (/x)\n\napp 1/1 cpu-clock: \n\t1 g (/x)\n"
    assert collapse_text(text) == {"app;f": 1}


def test_first_event_only_and_period_weighting() -> None:
    text = (
        b"app 1 [000] 1.0: 5 cycles: \n\t1 f (/x)\n\n"
        b"app 1 [000] 1.1: 7 instructions: \n\t1 g (/x)\n\n"
        b"app 1 [000] 1.2: 3 cycles: \n\t1 f (/x)\n\n"
    )
    assert collapse_text(text) == {"app;f": 8}


def test_folded_round_trip_and_sorting() -> None:
    stacks = {"b;x": 2, "a;y": 1, "a;x;\u00e9": 3, "A": 4}
    text = format_folded(stacks)
    assert text == "A 4\na;x;\u00e9 3\na;y 1\nb;x 2\n"
    assert parse_folded(text) == stacks
    with pytest.raises(ValueError, match="line 1"):
        parse_folded("no-count-here\n")


def test_finish_twice_and_feed_after_finish() -> None:
    c = Collapser()
    c.feed(b"app 1/1 cpu-clock: \n\t1 f (/x)\n\n")
    assert c.finish() == c.finish() == {"app;f": 1}
    with pytest.raises(RuntimeError):
        c.feed(b"x")


# -- real recordings from this machine ------------------------------------------------


def _samples(text: bytes) -> int:
    return sum(1 for block in text.split(b"\n\n") if block.strip())


def test_real_c_hot_cold_deep_recursion() -> None:
    text = (DATA / "c-hotcold-fp.txt").read_bytes()
    stacks = collapse_text(text)
    assert sum(stacks.values()) == _samples(text) == 100
    hot = sum(v for k, v in stacks.items() if k.endswith(";hot"))
    cold = sum(v for k, v in stacks.items() if k.endswith(";cold"))
    assert hot >= 0.7 * 100 and cold > 0 and hot > 3 * cold
    deepest = max(stacks, key=lambda k: k.count(";"))
    assert deepest.startswith("hotcold;__libc_start_call_main;main;recurse;")
    assert deepest.count(";recurse") >= 30


def test_real_kernel_frames_weighted_by_period() -> None:
    text = (DATA / "c-syscalls-kernel-default-fields.txt").read_bytes()
    periods = [
        int(line.split()[-2]) for line in text.splitlines() if line and not line[:1].isspace()
    ]
    plain = collapse_text(text)
    assert sum(plain.values()) == sum(periods)  # default fields print the period: weights
    annotated = collapse_text(text, CollapseOptions(kernel=True))
    frames = {f for k in annotated for f in k.split(";")}
    assert {"entry_SYSCALL_64_after_hwframe_[k]", "do_syscall_64_[k]", "ksys_read_[k]"} <= frames
    # user frames are not annotated, and the unresolvable root stays [unknown]
    assert "read" in frames and "[unknown]" in frames
    assert not any(f.endswith("_[k]") for f in {f for k in plain for f in k.split(";")})


def test_real_unknown_frames_use_the_dso_name() -> None:
    text = (DATA / "c-stripped-nofp-unknown.txt").read_bytes()
    stacks = collapse_text(text)
    assert stacks == {"hc_nofp;[hc_nofp]": _samples(text)}
    with_addrs = collapse_text(text, CollapseOptions(addrs=True))
    assert sum(with_addrs.values()) == _samples(text)
    assert all(k.startswith("hc_nofp;[hc_nofp <") for k in with_addrs)


def test_real_python312_perf_trampoline_frames() -> None:
    text = (DATA / "python312-perf-trampoline-dwarf.txt").read_bytes()
    stacks = collapse_text(text, CollapseOptions(jit=True))
    assert sum(stacks.values()) == _samples(text)
    frames = {f for k in stacks for f in k.split(";")}
    assert any(f.startswith("py::hot_python_loop:") and f.endswith("_[j]") for f in frames)
    assert any(f.startswith("py::fib:") for f in frames)
    assert "_PyEval_EvalFrameDefault" in frames


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.txt")))
def test_sample_cache_gives_up_on_unique_samples_without_changing_results(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tracecar_formats import collapse

    text = (DATA / name).read_bytes()
    expected = collapse_text(text, CollapseOptions(all=True))
    monkeypatch.setattr(collapse, "_SEEN_CHECK", 16)
    monkeypatch.setattr(collapse, "_HEADERS_MAX", 4)
    c = Collapser(CollapseOptions(all=True))
    for i in range(0, len(text), 997):
        c.feed(text[i : i + 997])
    assert c.finish() == expected
    if name.startswith("c-syscalls"):  # time stamps: every sample is new
        assert c._seen_blocks is None
    if name.startswith("c-hotcold"):  # 100 samples, 13 distinct: kept
        assert c._seen_blocks is not None
