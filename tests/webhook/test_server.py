"""The webhook process over real TLS: bad input, skips with warnings, health, metrics, logs.

Bad requests get a 4xx with a JSON detail; well-formed reviews the webhook does not
handle are allowed without a patch and with a warning; nothing gets a 500 or hangs
(every request has the client's 10 s timeout).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jsonpatch
import pytest

from tests.webhook.conftest import OWN_NAMESPACE, ROOT, Webhook
from tests.webhook.support import decode_patch, labelled, review, tokens_in, validate_pod

POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web", "namespace": "default"},
    "spec": {"containers": [{"name": "app", "image": "app:1"}]},
}


def detail(r: httpx.Response) -> str:
    body = r.json()
    assert set(body) == {"detail"}, body
    assert isinstance(body["detail"], str) and body["detail"]
    return body["detail"]


def ok(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    assert out["response"]["allowed"] is True
    return out


@pytest.mark.parametrize(
    ("body", "expect"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe garbage", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"[1, 2]", "not an object"),
        (b"[" * 100_000, "not valid JSON"),
        (
            b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", '
            b'"request": {"uid": NaN}}',
            "not valid JSON",
        ),
        (
            json.dumps({**review(POD), "apiVersion": "admission.k8s.io/v1beta1"}).encode(),
            'only "admission.k8s.io/v1"',
        ),
        (json.dumps({**review(POD), "kind": "Pod"}).encode(), 'only "AdmissionReview"'),
        (
            json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode(),
            'no "request"',
        ),
    ],
    ids=[
        "truncated",
        "not-utf8",
        "empty",
        "array",
        "deep-nesting",
        "nan",
        "v1beta1",
        "wrong-kind",
        "no-request",
    ],
)
def test_malformed_reviews_are_400(client: httpx.Client, body: bytes, expect: str) -> None:
    r = client.post("/mutate", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert expect in detail(r)


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        (lambda r: r["request"].pop("uid"), "request.uid is missing"),
        (lambda r: r["request"].update(uid=""), "request.uid is missing or empty"),
        (lambda r: r["request"].update(uid=7), "request.uid"),
        (lambda r: r["request"].pop("kind"), "request.kind must be"),
        (lambda r: r["request"].pop("operation"), "request.operation is missing"),
        (lambda r: r["request"].pop("object"), "request.object must be the Pod"),
        (lambda r: r["request"].update(object=[1]), "request.object must be the Pod"),
    ],
)
def test_incomplete_requests_are_400(client: httpx.Client, change: Any, expect: str) -> None:
    body = review(labelled(POD))
    change(body)
    r = client.post("/mutate", json=body)
    assert r.status_code == 400
    assert expect in detail(r)


@pytest.mark.parametrize(
    ("kwargs", "expect"),
    [
        (
            {"kind": ("apps", "v1", "Deployment")},
            "apps/v1 Deployment ignored; the webhook only mutates Pods",
        ),
        ({"kind": ("", "v1", "ConfigMap")}, "v1 ConfigMap ignored"),
        ({"operation": "UPDATE"}, '"UPDATE" ignored; only CREATE is mutated'),
        ({"operation": "DELETE"}, '"DELETE" ignored'),
    ],
)
def test_reviews_of_other_things_are_allowed_with_a_warning(
    client: httpx.Client, kwargs: Any, expect: str
) -> None:
    body = review(labelled(POD), **kwargs)
    out = ok(client.post("/mutate", json=body))
    assert out["response"]["uid"] == body["request"]["uid"]
    assert decode_patch(out) == []
    assert any(expect in w for w in out["response"]["warnings"]), out


def test_subresource_is_allowed_with_a_warning(client: httpx.Client) -> None:
    body = review(labelled(POD))
    body["request"]["subResource"] = "ephemeralcontainers"
    out = ok(client.post("/mutate", json=body))
    assert decode_patch(out) == [] and "pods/ephemeralcontainers" in out["response"]["warnings"][0]


@pytest.mark.parametrize(
    ("change", "namespace", "expect"),
    [
        (lambda p: p["spec"].update(hostNetwork=True), "default", "uses the host network"),
        (
            lambda p: p["metadata"].update(annotations={"kubernetes.io/config.mirror": "h"}),
            "default",
            "mirror",
        ),
        (lambda p: None, OWN_NAMESPACE, f"webhook's own namespace {OWN_NAMESPACE}"),
    ],
)
def test_skipped_pods_say_why(
    client: httpx.Client, change: Any, namespace: str, expect: str
) -> None:
    p = labelled(POD)
    change(p)
    out = ok(client.post("/mutate", json=review(p, namespace=namespace)))
    assert decode_patch(out) == []
    assert any(expect in w for w in out["response"]["warnings"])


def test_unlabelled_pod_gets_nothing(client: httpx.Client) -> None:
    out = ok(client.post("/mutate", json=review(POD)))
    assert decode_patch(out) == [] and "warnings" not in out["response"]


def test_bad_annotations_never_block(client: httpx.Client) -> None:
    p = labelled(POD)
    p["metadata"]["annotations"] = {"tracecar.dev/privileged": "sure", "tracecar.dev/port": "99999"}
    out = ok(client.post("/mutate", json=review(p)))
    patched = jsonpatch.apply_patch(p, decode_patch(out))
    validate_pod(patched)
    warnings = out["response"]["warnings"]
    assert any(w.startswith('tracecar.dev/privileged: "sure" is not') for w in warnings)
    assert any(
        w.startswith('tracecar.dev/port: "99999" is not a port in 1024-65535') for w in warnings
    )


def test_wrong_content_type_is_415(client: httpx.Client) -> None:
    r = client.post("/mutate", content=b"{}", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "application/json" in detail(r)


def test_wrong_method_and_path(client: httpx.Client) -> None:
    assert client.get("/mutate").status_code == 405
    r = client.post("/nope", json={})
    assert r.status_code == 404 and detail(r)


def _chunks(size: int) -> Iterator[bytes]:
    chunk = b" " * 65536
    for _ in range(size // len(chunk)):
        yield chunk


def test_ten_megabyte_body_is_413(client: httpx.Client) -> None:
    big = review(labelled(POD))
    big["request"]["object"]["metadata"]["annotations"] = {"x": "y" * (10 << 20)}
    r = client.post("/mutate", json=big)
    assert r.status_code == 413
    assert "limit is" in detail(r)
    # The same without a Content-Length (chunked): counted while read.
    r = client.post(
        "/mutate", content=_chunks(10 << 20), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413
    assert "too large" in detail(r)
    # The server is fine afterwards.
    ok(client.post("/mutate", json=review(labelled(POD))))


def test_pod_with_1500_env_vars_is_injected(client: httpx.Client) -> None:
    p = labelled(POD)
    p["spec"]["containers"][0]["env"] = [
        {"name": f"VAR_{i}", "value": "v" * 20} for i in range(1500)
    ]
    out = ok(client.post("/mutate", json=review(p)))
    patched = jsonpatch.apply_patch(p, decode_patch(out))
    validate_pod(patched)
    assert len(patched["spec"]["containers"][0]["env"]) == 1501


def test_health_and_metrics(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    ok(client.post("/mutate", json=review(labelled(POD))))
    text = client.get("/metrics").text
    for line in (
        'tracecar_webhook_reviews_total{outcome="injected"}',
        "tracecar_webhook_injections_total",
        "tracecar_webhook_review_duration_seconds_bucket",
    ):
        assert line in text
    # Only reviews run by other tests of this session can be counted; these always exist.
    ok(client.post("/mutate", json=review(POD)))
    text = client.get("/metrics").text
    assert 'tracecar_webhook_skips_total{reason="not-labelled"}' in text
    assert 'tracecar_webhook_errors_total{kind="internal"}' not in text


def test_one_json_log_line_per_review(webhook: Webhook, client: httpx.Client) -> None:
    body = review(labelled(copy.deepcopy(POD)), namespace="shop")
    out = ok(client.post("/mutate", json=body))
    (token,) = tokens_in(decode_patch(out))
    uid = body["request"]["uid"]
    deadline = time.monotonic() + 5
    while True:
        lines = [json.loads(line) for line in webhook.log.read_text().splitlines() if uid in line]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(lines) == 1
    assert lines[0]["uid"] == uid
    assert lines[0]["namespace"] == "shop"
    assert lines[0]["pod"] == "web"
    assert lines[0]["decision"] == "injected"
    assert lines[0]["auth"] == "token"
    assert token not in webhook.log.read_text()  # the agent's token is never logged


@pytest.mark.parametrize(
    ("env", "expect"),
    [
        ({}, "set TRACECAR_WEBHOOK_CERT_FILE and TRACECAR_WEBHOOK_KEY_FILE"),
        ({"TRACECAR_WEBHOOK_PORT": "https"}, "TRACECAR_WEBHOOK_PORT='https': Input should be"),
        (
            {
                "TRACECAR_WEBHOOK_CERT_FILE": "/nonexistent.crt",
                "TRACECAR_WEBHOOK_KEY_FILE": "/x.key",
            },
            "cannot load the certificate",
        ),
    ],
)
def test_bad_settings_stop_the_process_with_a_message(env: dict[str, str], expect: str) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TRACECAR_WEBHOOK_")}
    proc = subprocess.run(
        [sys.executable, "-m", "webhook"],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert expect in proc.stderr
