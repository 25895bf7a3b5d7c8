"""The FastAPI app in-process, for what the real server cannot be made to do on demand:
a bug inside the review must admit the pod (without the agent), never 500 or block."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

import webhook.routers.admission as admission
from tests.webhook.support import decode_patch, labelled, review
from webhook.app import create_app
from webhook.settings import Settings


def call(settings: Settings, *requests: tuple[str, str, Any]) -> list[httpx.Response]:
    """Send requests (method, path, json) to a fresh app in-process, in order."""

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_app(settings))
        async with httpx.AsyncClient(transport=transport, base_url="https://test") as c:
            return [await c.request(m, path, json=body) for m, path, body in requests]

    return asyncio.run(run())


POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web"},
    "spec": {"containers": [{"name": "app", "image": "app:1"}]},
}


def test_a_bug_admits_the_pod_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(admission, "answer", broken)
    body = review(labelled(POD))
    r, metrics = call(Settings(), ("POST", "/mutate", body), ("GET", "/metrics", None))
    assert r.status_code == 200
    out = r.json()
    assert out["response"]["uid"] == body["request"]["uid"]
    assert out["response"]["allowed"] is True
    assert decode_patch(out) == []
    assert "internal error" in out["response"]["warnings"][0]
    assert 'tracecar_webhook_errors_total{kind="internal"} 1.0' in metrics.text


def test_settings_given_to_the_app_are_used() -> None:
    r, floor = call(
        Settings(namespace="profilers"),
        ("POST", "/mutate", review(labelled(POD), namespace="profilers")),
        ("POST", "/floor", {}),
    )
    out = r.json()
    assert decode_patch(out) == []
    assert "own namespace profilers" in out["response"]["warnings"][0]
    assert floor.status_code == 404  # bench_floor is off
