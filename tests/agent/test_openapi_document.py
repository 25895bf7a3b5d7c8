"""The OpenAPI document's declarations, checked without an agent running (the
conformance run against a real one is tests/agent/test_openapi_conformance.py)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from agent.app import create_app
from agent.settings import Settings


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    # No `with`: the lifespan (tool services) is not started; these paths do not need it.
    return TestClient(create_app(Settings(data_dir=tmp_path_factory.mktemp("data"))))


@pytest.fixture(scope="module")
def doc(client: TestClient) -> dict[str, object]:
    d: dict[str, object] = client.get("/openapi.json").json()
    return d


def _operations(doc: dict[str, object]) -> list[tuple[str, str, dict[str, object]]]:
    paths = doc["paths"]
    assert isinstance(paths, dict)
    return [(m.upper(), p, op) for p, item in paths.items() for m, op in item.items()]


def test_every_error_has_the_agents_own_model(doc: dict[str, object]) -> None:
    text = json.dumps(doc)
    assert "HTTPValidationError" not in text  # FastAPI's default 422 body is not what we send
    for method, path, op in _operations(doc):
        responses = op["responses"]
        assert isinstance(responses, dict)
        if path != "/healthz":
            assert "401" in responses, (method, path)  # behind the token
        for status, entry in responses.items():
            if int(status) >= 400:
                ref = entry["content"]["application/json"]["schema"]["$ref"]
                want = "InvalidBody" if status == "422" else "ErrorBody"
                assert ref == f"#/components/schemas/{want}", (method, path, status)


@pytest.mark.parametrize(
    ("path", "media"),
    [
        ("/profiles/{job_id}/flamegraph.svg", ["image/svg+xml"]),
        ("/profiles/{job_id}/profile.pb.gz", ["application/octet-stream"]),
        ("/profiles/{job_id}/folded", ["text/plain; charset=utf-8"]),
        ("/probes/{probe_id}/events", ["application/x-ndjson", "text/event-stream"]),
        ("/lttng/sessions/{session_id}/trace", ["application/gzip"]),
        (
            "/lttng/sessions/{session_id}/events",
            ["text/plain; charset=utf-8", "application/x-ndjson"],
        ),
        ("/metrics", ["text/plain; version=0.0.4; charset=utf-8"]),
    ],
)
def test_media_types(doc: dict[str, object], path: str, media: list[str]) -> None:
    paths = doc["paths"]
    assert isinstance(paths, dict)
    assert list(paths[path]["get"]["responses"]["200"]["content"]) == media


def test_405_names_every_method_of_the_path(client: TestClient) -> None:
    r = client.put("/probes/0123abcd")
    assert r.status_code == 405 and r.headers["allow"] == "GET, DELETE"
    r = client.get("/lttng/sessions/0123456789ab/start")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    # .../trace and .../events are GET only, though a POST looks like an action
    r = client.post("/lttng/sessions/0123456789ab/trace")
    assert r.status_code == 405 and r.headers["allow"] == "GET"


def test_an_unknown_session_action_says_which_there_are(client: TestClient) -> None:
    r = client.post("/lttng/sessions/0123456789ab/explode")
    assert r.status_code == 422
    assert r.json()["field"] == "action" and "start, stop, rotate, snapshot" in r.json()["detail"]


def test_validation_errors_match_the_declared_model(client: TestClient) -> None:
    r = client.get("/processes", params={"sample_ms": "lots"})
    assert r.status_code == 422
    body = r.json()
    assert isinstance(body["detail"], str) and body["detail"].startswith("sample_ms:")
    assert body["errors"][0]["loc"] == ["query", "sample_ms"]
