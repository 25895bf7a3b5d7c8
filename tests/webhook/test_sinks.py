"""The stores' settings the webhook hands the agent: labels, sinks, credentials, grace.

Pure (in-process): the workload and service name, the sink env from the webhook's
settings, the namespace policy (the path the webhook entry calls) and the pod's
annotations, credentials only by reference, and the corpus with every store
configured, against golden files of its own (golden/sinks/; UPDATE_GOLDEN=1).
"""

from __future__ import annotations

import base64
import copy
import json
import os
from typing import Any

import httpx
import jsonpatch
import pytest

from tests.webhook.support import (
    GOLDEN,
    agent_of,
    annotated,
    corpus_pods,
    env_of,
    golden_name,
    golden_token,
    inject,
    labelled,
    pod,
    review,
    validate_pod,
)
from webhook.inject import plan_injection
from webhook.options import parse_options
from webhook.review import answer, parse_review
from webhook.settings import Settings
from webhook.sinks import Workload, workload_of

UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
SINKS_GOLDEN = GOLDEN / "sinks"

STORES = Settings(
    pyroscope_url="http://pyroscope.observability.svc:4040",
    pyroscope_tenant="team-a",
    pyroscope_auth="basic",
    s3_endpoint="http://minio.observability.svc:9000",
    s3_bucket="tracecar-artifacts",
    s3_prefix="prod/",
    s3_region="us-east-1",
    s3_path_style=True,
    spool_max_bytes=64 << 20,
    continuous_interval_s=15,
)
PLAIN = Settings()


def owned(p: dict[str, Any], kind: str, name: str) -> dict[str, Any]:
    p["metadata"]["ownerReferences"] = [
        {"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "u", "controller": True}
    ]
    return p


# --- the workload and the service name ----------------------------------------------


def test_workload_of_a_deployment_pod_is_the_deployment() -> None:
    p = owned(pod(), "ReplicaSet", "web-7d9f8c6b5")
    p["metadata"]["labels"]["pod-template-hash"] = "7d9f8c6b5"
    assert workload_of(p) == Workload(kind="Deployment", name="web")


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        (lambda p: owned(p, "StatefulSet", "db"), Workload(kind="StatefulSet", name="db")),
        (lambda p: owned(p, "DaemonSet", "agent"), Workload(kind="DaemonSet", name="agent")),
        (lambda p: owned(p, "Job", "backup-29"), Workload(kind="Job", name="backup-29")),
        # A ReplicaSet not made by a Deployment (no matching hash): the ReplicaSet itself.
        (
            lambda p: owned(p, "ReplicaSet", "plain-rs"),
            Workload(kind="ReplicaSet", name="plain-rs"),
        ),
        (lambda p: p, Workload(kind="Pod", name="p")),
        (
            lambda p: p["metadata"].update(name=None, generateName="batch-") or p,
            Workload(kind="Pod", name="batch"),
        ),
        (
            lambda p: p["metadata"].update(name=None, labels={"app": "shop"}) or p,
            Workload(kind="Pod", name="shop"),
        ),
    ],
)
def test_workload_of(change: Any, expect: Workload) -> None:
    assert workload_of(change(pod())) == expect


def test_labels_are_always_there_and_service_name_defaults_to_namespace_workload() -> None:
    p = owned(pod(), "ReplicaSet", "web-abc12")
    p["metadata"]["labels"]["pod-template-hash"] = "abc12"
    result = plan_injection(p, settings=PLAIN, namespace="shop")
    env = env_of(agent_of(result.pod))
    assert env["TRACECAR_AGENT_NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["TRACECAR_AGENT_WORKLOAD"] == "deployment/web"
    assert env["TRACECAR_AGENT_SERVICE_NAME"] == "shop/web"
    assert result.status["service_name"] == "shop/web"
    # No store configured: nothing about sinks, the pod's grace period untouched.
    assert not any(k.startswith(("TRACECAR_AGENT_PYROSCOPE", "TRACECAR_AGENT_S3")) for k in env)
    assert result.status["sinks"] == [] and result.status["continuous"] is False
    assert "terminationGracePeriodSeconds" not in result.pod["spec"]


def test_service_name_annotation_overrides_and_a_bad_one_warns() -> None:
    p, _ = inject(annotated(pod(), service_name="checkout"), STORES)
    assert env_of(agent_of(p))["TRACECAR_AGENT_SERVICE_NAME"] == "checkout"
    parsed = parse_options({"tracecar.dev/service-name": "a b;rm"}, settings=STORES)
    assert parsed.options.service_name is None
    assert "tracecar.dev/service-name" in parsed.warnings[0]
    assert "letters, digits" in parsed.warnings[0]


# --- the sinks --------------------------------------------------------------------


def test_every_store_configured_reaches_the_agent_and_no_credential_is_in_clear() -> None:
    p, warnings = inject(pod(), STORES)
    agent = agent_of(p)
    env = {e["name"]: e for e in agent["env"]}
    values = env_of(agent)
    assert values["TRACECAR_AGENT_PYROSCOPE_URL"] == "http://pyroscope.observability.svc:4040"
    assert values["TRACECAR_AGENT_PYROSCOPE_TENANT"] == "team-a"
    assert values["TRACECAR_AGENT_PYROSCOPE_USER_FILE"] == (
        "/var/run/secrets/tracecar/sinks/pyroscope-username"
    )
    assert values["TRACECAR_AGENT_PYROSCOPE_PASSWORD_FILE"] == (
        "/var/run/secrets/tracecar/sinks/pyroscope-password"
    )
    assert values["TRACECAR_AGENT_S3_ENDPOINT"] == "http://minio.observability.svc:9000"
    assert values["TRACECAR_AGENT_S3_BUCKET"] == "tracecar-artifacts"
    assert values["TRACECAR_AGENT_S3_PREFIX"] == "prod/"
    assert values["TRACECAR_AGENT_S3_REGION"] == "us-east-1"
    assert values["TRACECAR_AGENT_S3_PATH_STYLE"] == "true"
    assert values["TRACECAR_AGENT_SPOOL_MAX_BYTES"] == str(64 << 20)
    # Credentials: references to the user's Secret, optional so the pod always starts.
    for name, key in (
        ("AWS_ACCESS_KEY_ID", "aws-access-key-id"),
        ("AWS_SECRET_ACCESS_KEY", "aws-secret-access-key"),
    ):
        assert "value" not in env[name]
        assert env[name]["valueFrom"] == {
            "secretKeyRef": {"name": "tracecar-sinks", "key": key, "optional": True}
        }
    volume = next(v for v in p["spec"]["volumes"] if v["name"] == "tracecar-sinks")
    assert volume["secret"] == {
        "secretName": "tracecar-sinks",
        "optional": True,
        "defaultMode": 256,
    }
    assert {
        "name": "tracecar-sinks",
        "mountPath": "/var/run/secrets/tracecar/sinks",
        "readOnly": True,
    } in agent["volumeMounts"]
    # Only the agent mounts the Secret.
    for c in p["spec"]["containers"]:
        assert all(m["name"] != "tracecar-sinks" for m in c.get("volumeMounts", []))
    # Not continuous unless asked for.
    assert "TRACECAR_AGENT_CONTINUOUS" not in values
    assert warnings == []
    status = json.loads(p["metadata"]["annotations"]["tracecar.dev/status"])
    assert status["sinks"] == ["pyroscope", "s3"]
    assert "tracecar-sinks" in status["volumes"]


def test_bearer_auth_and_pod_credentials_for_s3() -> None:
    settings = STORES.model_copy(update={"pyroscope_auth": "bearer", "s3_credentials": "pod"})
    p, _ = inject(pod(), settings)
    values = env_of(agent_of(p))
    assert values["TRACECAR_AGENT_PYROSCOPE_TOKEN_FILE"] == (
        "/var/run/secrets/tracecar/sinks/pyroscope-token"
    )
    assert "TRACECAR_AGENT_PYROSCOPE_USER_FILE" not in values
    # The SDK's own chain (web identity from the service account) finds them.
    assert "AWS_ACCESS_KEY_ID" not in values and "AWS_SECRET_ACCESS_KEY" not in values


def test_no_auth_mounts_no_secret() -> None:
    settings = Settings(pyroscope_url="http://pyroscope:4040")
    p, _ = inject(pod(), settings)
    assert all(v["name"] != "tracecar-sinks" for v in p["spec"]["volumes"])
    assert env_of(agent_of(p))["TRACECAR_AGENT_PYROSCOPE_URL"] == "http://pyroscope:4040"


def test_the_secret_volume_name_never_collides() -> None:
    p = pod(volumes=[{"name": "tracecar-sinks", "emptyDir": {}}])
    out, _ = inject(p, STORES)
    names = [v["name"] for v in out["spec"]["volumes"]]
    assert len(names) == len(set(names)) and "tracecar-sinks-2" in names


@pytest.mark.parametrize(
    ("policy", "ann", "continuous", "push"),
    [
        ("default", {}, False, True),
        ("continuous", {}, True, True),
        ("continuous", {"continuous": "false"}, False, True),
        ("default", {"continuous": "true"}, True, True),
        ("no-push", {}, False, False),
        ("no-push", {"push": "true"}, False, True),
        ("default", {"push": "false"}, False, False),
        ("continuous", {"push": "false"}, False, False),
    ],
)
def test_namespace_policy_and_annotations(
    policy: Any, ann: dict[str, str], continuous: bool, push: bool
) -> None:
    """The pod's annotation wins over its namespace's label, which wins over the settings."""
    p = annotated(pod(), **ann)
    result = plan_injection(p, settings=STORES, policy=policy, namespace="ns")
    values = env_of(agent_of(result.pod))
    assert ("TRACECAR_AGENT_CONTINUOUS" in values) is continuous
    if continuous:
        assert values["TRACECAR_AGENT_CONTINUOUS"] == "true"
        assert values["TRACECAR_AGENT_CONTINUOUS_INTERVAL_S"] == "15"
    assert ("TRACECAR_AGENT_PYROSCOPE_URL" in values) is push
    assert ("TRACECAR_AGENT_S3_BUCKET" in values) is push
    assert result.status["continuous"] is continuous
    assert result.status["sinks"] == (["pyroscope", "s3"] if push else [])
    if ann.get("push") == "false" and policy == "continuous":
        assert any("continuous ignored" in w for w in result.warnings)


def test_continuous_without_a_profile_store_warns() -> None:
    result = plan_injection(annotated(pod(), continuous="true"), settings=PLAIN)
    assert env_of(agent_of(result.pod))["TRACECAR_AGENT_CONTINUOUS"] == "true"
    assert any("no profile store is configured" in w for w in result.warnings)


@pytest.mark.parametrize(("asked", "expect"), [(None, None), (5, 30), (30, None), (120, None)])
def test_grace_period_budget_for_the_flush(asked: int | None, expect: int | None) -> None:
    p = pod() if asked is None else pod(terminationGracePeriodSeconds=asked)
    out, warnings = inject(p, STORES)
    if expect is None:
        assert out["spec"].get("terminationGracePeriodSeconds") == asked
        assert not any("terminationGracePeriodSeconds" in w for w in warnings)
    else:
        assert out["spec"]["terminationGracePeriodSeconds"] == expect
        assert any("raised to 30" in w for w in warnings)
    # Without pushing, the pod's own value stays whatever it is.
    no_push, _ = inject(annotated(copy.deepcopy(p), push="false"), STORES)
    assert no_push["spec"].get("terminationGracePeriodSeconds") == asked


def test_bad_push_annotation_warns_and_keeps_the_default() -> None:
    parsed = parse_options({"tracecar.dev/push": "yes"}, settings=STORES)
    assert parsed.options.push is True
    assert 'is not "true" or "false"' in parsed.warnings[0]


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"pyroscope_url": "ftp://x"}, "pyroscope_url"),
        ({"pyroscope_url": "http://a b"}, "pyroscope_url"),
        ({"s3_bucket": "Bad_Bucket"}, "s3_bucket"),
        ({"sinks_secret": "Not A Name"}, "sinks_secret"),
        ({"flush_grace_s": -1}, "flush_grace_s"),
    ],
)
def test_bad_store_settings_are_refused(env: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Settings(**env)


# --- the corpus with every store configured -------------------------------------------

CASES = [c for c in corpus_pods() if not c.pod["spec"].get("hostNetwork")]


def test_corpus_with_every_store_and_continuous_namespace() -> None:
    """Every corpus pod injected with all sinks and its namespace's continuous policy:
    a valid Pod, the patch reproduces it, and it equals its golden file."""
    SINKS_GOLDEN.mkdir(exist_ok=True)
    expected_names = set()
    for case in CASES:
        body = review(labelled(case.pod), namespace="shop", uid="golden")
        out = answer(
            parse_review(json.dumps(body).encode()),
            settings=STORES,
            new_token=golden_token,
            policy="continuous",
        ).review
        ops = json.loads(base64.b64decode(out["response"]["patch"]))
        patched = jsonpatch.apply_patch(labelled(case.pod), ops)
        validate_pod(patched)
        agent = agent_of(patched)
        assert env_of(agent)["TRACECAR_AGENT_CONTINUOUS"] == "true", case.id
        assert all("value" not in e for e in agent["env"] if e["name"].startswith("AWS_"))
        name = golden_name(case.id)
        expected_names.add(name)
        text = json.dumps(ops, indent=1) + "\n"
        golden = SINKS_GOLDEN / name
        if UPDATE:
            golden.write_text(text)
        assert golden.exists(), f"no golden file sinks/{name}: run with UPDATE_GOLDEN=1"
        assert golden.read_text() == text, f"sinks/{name} is stale: run with UPDATE_GOLDEN=1"
    present = {p.name for p in SINKS_GOLDEN.glob("*.json")}
    if UPDATE:
        for stale in present - expected_names:
            (SINKS_GOLDEN / stale).unlink()
        present &= expected_names
    assert present == expected_names


# --- the server: the namespace policy comes in the path ---------------------------------


def test_policy_paths_on_the_server(client: httpx.Client) -> None:
    r = client.post("/mutate/continuous", json=review(labelled(pod())))
    assert r.status_code == 200, r.text
    ops = json.loads(base64.b64decode(r.json()["response"]["patch"]))
    patched = jsonpatch.apply_patch(labelled(pod()), ops)
    assert env_of(agent_of(patched))["TRACECAR_AGENT_CONTINUOUS"] == "true"
    r = client.post("/mutate/no-push", json=review(labelled(pod())))
    assert r.status_code == 200
    r = client.post("/mutate/everything", json=review(labelled(pod())))
    assert r.status_code == 404
    assert "/mutate/continuous" in r.json()["detail"]
    assert client.post("/mutate/default", json=review(labelled(pod()))).status_code == 404
