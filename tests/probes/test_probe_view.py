"""A probe's view, built typed (``Probe.view``): what GET shows (every field) and what
POST's answer and an error's ``probe`` field send (the fields the view sets)."""

from __future__ import annotations

from agent.probes import _perfprobe
from agent.probes._model import BpftracePlan, ProbeRequest
from agent.probes._plan import Spec
from agent.probes._probe import Probe
from agent.probes._stream import EventStream


def _probe(spec: Spec | None) -> Probe:
    return Probe(
        id="0123abcd",
        request=ProbeRequest(pid=7, function="work"),
        spec=spec,
        backend="bpftrace",
        backend_reason="the default",
        plan=BpftracePlan(program="uprobe:/srv/app:work { }", argv=[]),
        stream=EventStream(capacity=16, rate=100),
        duration_s=10.0,
        max_events=100,
        hits=3,
        started_at=1000.0,
    )


def _spec(**usdt: str) -> Spec:
    return Spec(
        pid=7, binary="/srv/app", host_binary="/proc/7/root/srv/app", function="work",
        address=0x4010, mode="events", of="calls", args=(), retval=False, retval_type="int",
        stack=False, duration_s=10.0, max_events=100, **usdt,
    )  # fmt: skip


def test_a_uprobes_answer_names_no_usdt_fields_and_no_deleted() -> None:
    probe = _probe(_spec())
    answer = probe.answer()
    assert answer["target"] == {
        "pid": 7, "binary": "/srv/app", "function": "work", "address": "0x4010"
    }  # fmt: skip
    assert "deleted" not in answer and answer["ends_at"] == 1010.0
    assert answer["summary"] == {"hits": 3, "per_pid": {"7": 3}}
    # GET goes through the response model: every field, the USDT ones null.
    full = probe.view().model_dump(mode="json")
    assert full["target"]["usdt"] is None and full["deleted"] is False and full["notes"] == []
    assert list(answer) == [k for k in full if k not in ("deleted", "notes")]  # the same order


def test_a_usdt_probes_target_names_them_null_or_not() -> None:
    answer = _probe(_spec(usdt="python:function__entry")).answer()
    assert answer["target"]["usdt"] == "python:function__entry"
    assert answer["target"]["usdt_return"] is None and answer["target"]["python_file"] is None


def test_a_raw_program_has_no_target() -> None:
    answer = _probe(None).answer()
    assert answer["target"] is None and answer["summary"] == {"hits": 3}


def test_a_perf_start_race_restart_is_a_note_in_the_answer() -> None:
    probe = _probe(_spec())
    probe.backend = "perf-probe"
    plan = _perfprobe.plan(_spec(), group="tracecar_x", probe_id="abcd1234", control_dir="/tmp/c")
    probe.session = _perfprobe.Session(_spec(), plan)
    assert "notes" not in probe.answer()
    probe.session.restarts = 2
    (note,) = probe.answer()["notes"]
    assert "started again 2 time(s)" in note and "no hit is missing" in note
