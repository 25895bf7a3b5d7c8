"""The OpenAPI document's declarations, checked without an agent running (the
conformance run against a real one is tests/agent/test_openapi_conformance.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from agent.app import create_app
from agent.settings import Settings


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    # No `with`: the lifespan (tool services) is not started; these paths do not need it.
    return TestClient(create_app(Settings(data_dir=tmp_path_factory.mktemp("data"), auth="none")))


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


# Nested fields still untyped, and why: each echoes the request as a dict because the
# router's body is a subclass of the capability's request model (it adds `push`), or
# holds facts whose keys vary with the profile's type and targets.
UNTYPED_FIELDS = {
    "ProfileView.request": "POST /profiles' body as stored in job.json (ProfileBody, with push)",
    "TriggerView.request": "POST /triggers' body (TriggerBody: TriggerRequest with push)",
    "RecorderStatus.request": "POST /recorder's body (RecorderBody: RecorderRequest with push)",
    "ProfileResult.symbols[]": "per object: where its names came from (keys vary by source)",
    "ProfileResult.sampling": "alloc/leak: the sampling in numbers and words (per allocator)",
    "ProfileResult.memory": "alloc/leak: counts per allocator and pid (keys vary)",
    "Speedscope.tracecar": "what the agent adds to speedscope's format for scripts",
}


def _untyped(doc: dict[str, Any]) -> list[str]:
    """Where a 2xx JSON answer's schema says nothing: ``{}`` or an object with neither
    properties nor a typed ``additionalProperties``, at any depth of its components."""
    components = doc["components"]["schemas"]
    seen: set[str] = set()
    found: list[str] = []

    def walk(schema: dict[str, Any], where: str) -> None:
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[1]
            if name not in seen:
                seen.add(name)
                walk(components[name], name)
            return
        for branch in (*schema.get("anyOf", ()), *schema.get("oneOf", ())):
            walk(branch, where)
        if "items" in schema:
            walk(schema["items"], f"{where}[]")
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            walk(extra, f"{where}{{}}")
        for name, sub in schema.get("properties", {}).items():
            walk(sub, f"{where}.{name}")
        branches = "anyOf" in schema or "oneOf" in schema
        bare_object = schema.get("type") == "object" and not schema.get("properties")
        if (not schema and not branches) or (bare_object and not isinstance(extra, dict)):
            found.append(where)

    for method, path, op in _operations(doc):
        for status, entry in op["responses"].items():
            schema = entry.get("content", {}).get("application/json", {}).get("schema")
            if status.startswith("2") and schema is not None:
                walk(schema, f"{method} {path} {status}")
    return sorted(set(found))


def test_every_json_answer_has_a_schema_that_says_something(doc: dict[str, Any]) -> None:
    untyped = _untyped(doc)
    # No route's answer itself is untyped (those would be named "METHOD /path status").
    assert not [u for u in untyped if " " in u], untyped
    assert untyped == sorted(UNTYPED_FIELDS), "a new untyped field: type it, or say why here"


def test_the_checker_sees_an_untyped_answer() -> None:
    doc = {
        "paths": {"/x": {"get": {"responses": {"200": {"content": {"application/json": {
            "schema": {"type": "object", "additionalProperties": True}}}}}}}},
        "components": {"schemas": {}},
    }  # fmt: skip
    assert _untyped(doc) == ["GET /x 200"]


def test_probe_and_session_answers_name_their_parts(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    probe = schemas["ProbeView"]["properties"]
    assert probe["request"]["$ref"].endswith("/ProbeRequest")
    assert probe["summary"]["$ref"].endswith("/ProbeSummary")
    plans = {b["$ref"].rsplit("/", 1)[1] for b in probe["plan"]["anyOf"]}
    assert plans == {"BpftracePlan", "PerfProbePlan"}
    assert schemas["SessionView"]["properties"]["request"]["$ref"].endswith("/SessionRequest")
    assert schemas["Check"]["required"] == ["available"]
    assert schemas["Capabilities"]["additionalProperties"]["$ref"].endswith("/Check")
