"""``kubectl tracecar diff``: real folded files in, the agent's own diff out (the same
lines as tracecar_formats.diff, the same red/blue graph), and each bad input named
with its exit code. Run through ``main`` with a kubeconfig that does not exist: the
command must not need one."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kubectl_tracecar.__main__ import main
from kubectl_tracecar.errors import FAILED, NOT_FOUND, OK, USAGE
from tracecar_formats.diff import diff_folded, format_diff

SVG_NS = "{http://www.w3.org/2000/svg}"
# Twice the samples in the target: normalising scales the base by 2 first.
BASE = b"main;handle;parse 40\nmain;handle;render 40\nmain;idle 20\nmain;gone 0x1f 10\n"
TARGET = b"main;handle;parse 40\nmain;handle;render 120\nmain;idle 40\nmain;new 0xab 20\n"


@pytest.fixture(autouse=True)
def _no_kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    monkeypatch.chdir(tmp_path)


def _files(tmp_path: Path, base: bytes = BASE, target: bytes = TARGET) -> tuple[str, str]:
    (tmp_path / "a.folded").write_bytes(base)
    (tmp_path / "b.folded").write_bytes(target)
    return str(tmp_path / "a.folded"), str(tmp_path / "b.folded")


@pytest.mark.parametrize(
    ("flags", "normalize", "strip_hex"),
    [([], True, False), (["--raw"], False, False), (["--strip-hex"], True, True)],
)
def test_folded_output_is_the_agents_diff(
    tmp_path: Path, flags: list[str], normalize: bool, strip_hex: bool
) -> None:
    a, b = _files(tmp_path)
    out = tmp_path / "d.folded"
    assert main(["diff", a, b, "-o", str(out), *flags]) == OK
    expected = format_diff(diff_folded(BASE, TARGET, normalize=normalize, strip_hex=strip_hex))
    assert out.read_bytes() == expected
    if normalize:  # the base doubled to the target's total, as difffolded.pl -n
        assert b"main;handle;render 80 120\n" in expected


def _fills(svg: bytes) -> dict[str, str]:
    out = {}
    for g in ET.fromstring(svg).iter(f"{SVG_NS}g"):
        title, rect = g.find(f"{SVG_NS}title"), g.find(f"{SVG_NS}rect")
        if title is not None and rect is not None and title.text:
            out[title.text.split(" (")[0]] = rect.get("fill", "")
    return out


def _hue(fill: str) -> str:
    r, _, b = (int(x) for x in fill.removeprefix("rgb(").removesuffix(")").split(","))
    return "red" if r > b else "blue" if b > r else "white"


def test_svg_is_red_where_the_target_grew_and_blue_where_it_shrank(tmp_path: Path) -> None:
    a, b = _files(tmp_path)
    assert main(["diff", a, b, "-o", "d.svg"]) == OK
    svg = (tmp_path / "d.svg").read_bytes()
    fills = _fills(svg)
    # Normalised: render 80 -> 120 grew, parse 80 -> 40 shrank, idle 40 -> 40 the same.
    assert _hue(fills["render"]) == "red" and _hue(fills["new 0xab"]) == "red"
    assert _hue(fills["parse"]) == "blue"
    assert _hue(fills["idle"]) == "white"
    assert "gone 0x1f" not in fills  # no width in the target
    assert b"red: more in b.folded than in a.folded" in svg

    # The base's widths show what vanished, still blue (drawn negated from swapped rows).
    assert main(["diff", a, b, "-o", "w.svg", "--widths", "base"]) == OK
    fills = _fills((tmp_path / "w.svg").read_bytes())
    assert _hue(fills["gone 0x1f"]) == "blue" and _hue(fills["render"]) == "red"
    assert "new 0xab" not in fills


def test_errors_name_the_file_with_their_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = _files(tmp_path)
    (tmp_path / "flame.svg").write_text('<?xml version="1.0"?>\n<svg>\n</svg>\n')
    (tmp_path / "empty.folded").write_bytes(b"")
    (tmp_path / "dir.folded").mkdir()
    cases = [
        (["diff", "missing.folded", b, "-o", "d.svg"], NOT_FOUND, "no such file: missing.folded"),
        (["diff", a, "flame.svg", "-o", "d.svg"], USAGE, "flame.svg is not folded stacks: line 1"),
        (["diff", a, "dir.folded", "-o", "d.svg"], FAILED, "cannot read dir.folded"),
        (["diff", "empty.folded", b, "-o", "d.svg"], FAILED, "empty.folded has no samples"),
    ]
    for argv, code, message in cases:
        assert main(argv) == code, argv
        err = capsys.readouterr().err
        assert message in err, err
        assert "kubeconfig" not in err
    # A flag that cannot work is refused with the usage, before any file is read.
    with pytest.raises(SystemExit) as e:
        main(["diff", a, b, "-o", "d.png"])
    assert e.value.code == USAGE
    err = capsys.readouterr().err
    assert "'d.png' from its name: use .svg, .folded" in err and "usage:" in err
    assert not list(tmp_path.glob("d.*"))  # nothing written for a failed diff
    # An empty base compares as raw counts, as the hint says.
    assert main(["diff", "empty.folded", b, "-o", "d.svg"]) == FAILED
    assert "hint: compare raw counts with --raw" in capsys.readouterr().err
    assert main(["diff", "empty.folded", b, "-o", "d.folded", "--raw"]) == OK


def test_missing_files_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["diff", "a.folded"])
    assert e.value.code == USAGE
    assert "TARGET" in capsys.readouterr().err
