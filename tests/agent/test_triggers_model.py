"""The trigger request's schema and a trigger's view (pure; the real thing is in
test_triggers_integration.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agent.profiling import Trigger, TriggerRequest


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
    t.captures.append({"profile_id": "abcdefabcdef", "fired_at": 1.5, "cpu_percent": 99.0})
    view = t.view()
    assert view["captures"] == [
        {"profile_id": "abcdefabcdef", "fired_at": 1.5, "cpu_percent": 99.0,
         "links": {"profile": "/profiles/abcdefabcdef"}}
    ]  # fmt: skip
    assert view["state"] == "armed" and view["links"] == {"self": "/triggers/0123456789ab"}
