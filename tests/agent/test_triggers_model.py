"""The trigger request's schema and a trigger's view (pure; the real thing is in
test_triggers_integration.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agent.profiling import Capture, Skip, Trigger, TriggerRequest


def test_request_defaults_and_one_target() -> None:
    req = TriggerRequest(container="app", cpu_percent=80)
    assert (req.for_s, req.cooldown_s, req.max_captures, req.profile.type) == (5.0, 60.0, 3, "cpu")
    with pytest.raises(ValidationError, match="at most one of"):
        TriggerRequest(pid=3, container="app", cpu_percent=80)
    with pytest.raises(ValidationError):
        TriggerRequest.model_validate({"cpu_percent": 80, "profile": {"pid": 3}})
    with pytest.raises(ValidationError):
        TriggerRequest.model_validate({"cpu_percent": 80, "profile": {"type": "wall"}})


def test_view_links_each_capture_to_its_profile() -> None:
    t = Trigger(id="0123456789ab", request=TriggerRequest(pid=7, cpu_percent=50))
    t.captures.append(Capture(profile_id="abcdefabcdef", fired_at=1.5, cpu_percent=99.0))
    t.skipped.append(Skip(at=2.5, cpu_percent=98.0, reason="2 profile job(s) already running"))
    view = t.view().model_dump(mode="json")
    # A capture names only what its condition measured (no null of the others).
    assert view["captures"] == [
        {"profile_id": "abcdefabcdef", "fired_at": 1.5, "cpu_percent": 99.0,
         "links": {"profile": "/profiles/abcdefabcdef"}}
    ]  # fmt: skip
    assert view["skipped"] == [
        {"at": 2.5, "cpu_percent": 98.0, "reason": "2 profile job(s) already running"}
    ]
    assert view["state"] == "armed" and view["links"] == {"self": "/triggers/0123456789ab"}
    assert view["cpu_percent_now"] is None and "rss_mib_now" in view  # the figures: always


def test_an_expired_capture_says_so_from_then_on() -> None:
    t = Trigger(id="0123456789ab", request=TriggerRequest(pid=7, rss_mib=64, retain_s=1))
    t.captures.append(Capture(profile_id="abcdefabcdef", fired_at=1.5, rss_mib=70.2))
    t.captures[0].expired = True
    (capture,) = t.view().model_dump(mode="json")["captures"]
    assert capture == {
        "profile_id": "abcdefabcdef", "fired_at": 1.5, "rss_mib": 70.2, "expired": True,
        "links": {"profile": "/profiles/abcdefabcdef"},
    }  # fmt: skip
