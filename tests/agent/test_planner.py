"""Unit tests of the pure profile planner: bounds, call-graph choice, argv."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.errors import Invalid
from agent.profiling.planner import (
    DWARF_STACK_BYTES,
    Limits,
    ProfileRequest,
    TargetFacts,
    choose_call_graph,
    expected_unresolved,
    plan,
)

LIMITS = Limits(
    default_duration_s=10,
    max_duration_s=300,
    default_frequency_hz=99,
    max_frequency_hz=999,
    timeout_slack_s=60,
)
C = TargetFacts(pid=7, comm="server", container="app", runtime="native", exe="/app/server")
PY312 = TargetFacts(
    pid=9, comm="python3.12", container="py", runtime="python", runtime_version="3.12",
    perf_map=True,
)  # fmt: skip


def make(req: ProfileRequest, targets: list[TargetFacts] | None = None) -> object:
    return plan(
        req, targets=targets or [C], target="t", limits=LIMITS, output=Path("/d/perf.data.part")
    )


def test_defaults_and_argv() -> None:
    p = plan(
        ProfileRequest(pid=7), targets=[C], target="t", limits=LIMITS, output=Path("/d/x.part")
    )
    assert p.argv == [
        "perf", "record", "-F", "99", "-g", "-p", "7", "-o", "/d/x.part", "--", "sleep", "10",
    ]  # fmt: skip
    assert p.duration_s == 10 and p.frequency_hz == 99 and p.call_graph == "fp"
    assert p.timeout_s == 70
    assert p.unresolved == []


def test_several_pids_sorted_and_unique() -> None:
    t2 = TargetFacts(pid=3, comm="a", container="c", runtime="go")
    p = plan(
        ProfileRequest(duration_s=1.5, frequency_hz=49),
        targets=[C, t2, C],
        target="t",
        limits=LIMITS,
        output=Path("/o"),
    )
    assert p.pids == [3, 7]
    assert p.argv[p.argv.index("-p") + 1] == "3,7"
    assert p.argv[-1] == "1.5" and p.argv[3] == "49"


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("duration_s", 0, "between 0.1 and 300 seconds"),
        ("duration_s", -1, "between 0.1 and 300 seconds"),
        ("duration_s", 301, "between 0.1 and 300 seconds"),
        ("frequency_hz", 0, "between 1 and 999 Hz"),
        ("frequency_hz", 1000, "between 1 and 999 Hz"),
    ],
)
def test_bounds_name_the_allowed_range(field: str, value: float, words: str) -> None:
    with pytest.raises(Invalid) as e:
        plan(
            ProfileRequest(**{field: value}),  # type: ignore[arg-type]
            targets=[C],
            target="t",
            limits=LIMITS,
            output=Path("/o"),
        )
    assert words in e.value.detail and e.value.extra["field"] == field
    assert e.value.status_code == 422


def test_request_schema_rejects_bad_values() -> None:
    for bad in ({"pid": 0}, {"pid": -4}, {"pid": 10**9}, {"pids": []}, {"call_graph": "lbr"},
                {"container": "a b"}, {"container": "../x"}, {"extra": 1}):  # fmt: skip
        with pytest.raises(ValidationError):
            ProfileRequest.model_validate(bad)
    assert ProfileRequest.model_validate({"container": "web-1.a_b"}).container == "web-1.a_b"


def test_auto_call_graph_rule() -> None:
    assert choose_call_graph("auto", [C])[0] == "fp"
    mode, why = choose_call_graph("auto", [C, PY312])
    assert mode == "dwarf" and "perf trampoline" in why
    no_map = TargetFacts(pid=9, comm="p", container="c", runtime="python", runtime_version="3.12")
    assert choose_call_graph("auto", [no_map])[0] == "fp"
    old = TargetFacts(
        pid=9, comm="p", container="c", runtime="python", runtime_version="3.11", perf_map=True
    )
    assert choose_call_graph("auto", [old])[0] == "fp"
    no_fp = TargetFacts(pid=5, comm="x", container="c", runtime="native", frame_pointers=False)
    mode, why = choose_call_graph("auto", [no_fp])
    assert mode == "dwarf" and "without frame pointers" in why
    assert choose_call_graph("fp", [PY312]) == ("fp", "fp requested")
    assert choose_call_graph("dwarf", [C])[0] == "dwarf"


def test_dwarf_argv() -> None:
    p = plan(ProfileRequest(), targets=[PY312], target="t", limits=LIMITS, output=Path("/o"))
    assert ["--call-graph", f"dwarf,{DWARF_STACK_BYTES}"] == p.argv[4:6]


def test_expected_unresolved_reasons() -> None:
    java = TargetFacts(pid=11, comm="java", container="j", runtime="java")
    stripped = TargetFacts(
        pid=12, comm="srv", container="s", runtime="native", exe="/srv", stripped=True
    )
    py_no_map = TargetFacts(
        pid=13, comm="py", container="p", runtime="python", runtime_version="3.13"
    )
    reasons = expected_unresolved([java, stripped, py_no_map, PY312, C], mode="dwarf")
    assert len(reasons) == 5
    assert "PreserveFramePointer" in reasons[0] and "callers are missing" in reasons[0]
    assert "perf-11.map" in reasons[1] and "jattach is not installed" in reasons[1]
    assert "stripped" in reasons[2]
    assert "PYTHONPERFSUPPORT" in reasons[3]
    assert "trampoline" in reasons[4] and "no Python frame" not in reasons[4]
    # With jattach the agent asks the JVM for its map; with the flag its stacks are whole.
    java_fp = TargetFacts(
        pid=11, comm="java", container="j", runtime="java",
        runtime_flags=("-XX:+PreserveFramePointer",),
    )  # fmt: skip
    assert expected_unresolved([java_fp], jattach=True) == []
    (fp_reason,) = expected_unresolved([PY312], mode="fp")
    assert "no Python frame shows" in fp_reason


def test_no_targets() -> None:
    with pytest.raises(Invalid):
        plan(ProfileRequest(), targets=[], target="t", limits=LIMITS, output=Path("/o"))


def test_dotnet_notes_name_the_spelling_its_version_reads() -> None:
    old = TargetFacts(
        pid=11, comm="dotnet", container="app", runtime="dotnet", runtime_version="3.1.23",
        runtime_flags=("DOTNET_PerfMapEnabled=1",),
    )  # fmt: skip
    (no_map, fp) = expected_unresolved([old], mode="fp")
    assert "no perf map /tmp/perf-11.map" in no_map
    assert "set COMPlus_PerfMapEnabled=1" in no_map and "restart" in no_map
    assert "DOTNET_PerfMapEnabled=1, a spelling .NET 3.1.23 does not read" in no_map
    assert "frame pointer" in fp and "COMPlus_JITMinOpts=1" in fp
    new = TargetFacts(
        pid=12, comm="App", container="app", runtime="dotnet", runtime_version="8.0.1",
    )  # fmt: skip
    (no_map,) = expected_unresolved([new], mode="dwarf")
    assert "set DOTNET_PerfMapEnabled=1" in no_map and "a spelling" not in no_map
    mapped = TargetFacts(
        pid=13, comm="App", container="app", runtime="dotnet", runtime_version="8.0.1",
        perf_map=True, runtime_flags=("DOTNET_JITMinOpts=1",),
    )  # fmt: skip
    assert expected_unresolved([mapped], mode="fp") == []
