"""Helpers for the webhook tests: corpus pods, AdmissionReviews, patch decoding, validation."""

from __future__ import annotations

import base64
import copy
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate
import yaml

from webhook.inject import plan_injection
from webhook.settings import Settings

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "istio-inject"
GOLDEN = Path(__file__).resolve().parent / "golden"
K8S_VERSION = "1.33"  # native sidecars (restartPolicy: Always on init containers) are GA


@dataclass(frozen=True)
class CorpusPod:
    id: str
    """file.yaml#N: the Nth workload of the file (after expanding Lists)."""
    pod: dict[str, Any]


def _workloads(doc: Any) -> Iterator[dict[str, Any]]:
    if not isinstance(doc, dict):
        return
    if doc.get("kind") == "List" or (str(doc.get("kind", "")).endswith("List") and "items" in doc):
        for item in doc.get("items") or []:
            yield from _workloads(item)
        return
    yield doc


def pod_template(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The pod (template) of a workload, as a Pod object; None for non-workloads."""
    kind = obj.get("kind")
    if kind == "Pod":
        template = {"metadata": obj.get("metadata") or {}, "spec": obj.get("spec")}
    elif kind == "CronJob":
        template = obj["spec"]["jobTemplate"]["spec"]["template"]
    elif isinstance(obj.get("spec"), dict) and isinstance(obj["spec"].get("template"), dict):
        template = obj["spec"]["template"]
    else:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": copy.deepcopy(template.get("metadata") or {}),
        "spec": copy.deepcopy(template["spec"]),
    }


def corpus_pods() -> list[CorpusPod]:
    out: list[CorpusPod] = []
    for path in sorted(CORPUS.glob("*.yaml")):
        n = 0
        for doc in yaml.safe_load_all(path.read_text()):
            for obj in _workloads(doc):
                pod = pod_template(obj)
                if pod is None:
                    continue
                out.append(CorpusPod(id=f"{path.name}#{n}", pod=pod))
                n += 1
    return out


def labelled(pod: dict[str, Any], *, value: str = "enabled") -> dict[str, Any]:
    pod = copy.deepcopy(pod)
    pod.setdefault("metadata", {})
    if not isinstance(pod["metadata"].get("labels"), dict):
        pod["metadata"]["labels"] = {}
    pod["metadata"]["labels"]["profiling"] = value
    return pod


def review(
    pod: Any,
    *,
    namespace: str = "default",
    operation: str = "CREATE",
    kind: tuple[str, str, str] = ("", "v1", "Pod"),
    uid: str | None = None,
) -> dict[str, Any]:
    group, version, k = kind
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid or str(uuid.uuid4()),
            "kind": {"group": group, "version": version, "kind": k},
            "resource": {"group": group, "version": version, "resource": k.lower() + "s"},
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "test"},
            "object": pod,
            "dryRun": False,
        },
    }


def decode_patch(response: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSONPatch of an AdmissionReview response ([] when there is none)."""
    r = response["response"]
    if "patch" not in r:
        assert "patchType" not in r
        return []
    assert r["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(r["patch"]))
    assert isinstance(ops, list)
    return ops


def validate_pod(pod: dict[str, Any]) -> None:
    """Structural validation against the official schema, unknown fields rejected."""
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def golden_name(case_id: str) -> str:
    return case_id.replace("#", ".") + ".json"


GOLDEN_TOKEN = "golden-agent-token-0123456789"
"""The token the golden files hold: injections through the seam (``new_token``) use it."""
TOKEN_ENV = "TRACECAR_AGENT_TOKEN"  # the env var's name


def golden_token() -> str:
    return GOLDEN_TOKEN


def tokens_in(value: Any) -> list[str]:
    """Every TRACECAR_AGENT_TOKEN env value anywhere in `value` (a pod, a patch)."""
    if isinstance(value, dict):
        if value.get("name") == TOKEN_ENV and isinstance(value.get("value"), str):
            return [value["value"]]
        return [t for v in value.values() for t in tokens_in(v)]
    if isinstance(value, list):
        return [t for v in value for t in tokens_in(v)]
    return []


def with_token(value: Any, token: str) -> Any:
    """A copy of `value` with every TRACECAR_AGENT_TOKEN env value replaced by `token`."""
    if isinstance(value, dict):
        if value.get("name") == TOKEN_ENV and "value" in value:
            return {**value, "value": token}
        return {k: with_token(v, token) for k, v in value.items()}
    if isinstance(value, list):
        return [with_token(v, token) for v in value]
    return value


# --- injecting pods in the pure tests -----------------------------------------------


S = Settings()


def pod(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "labels": {"profiling": "enabled"}},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    }
    base["spec"].update(spec)
    return base


def annotated(p: dict[str, Any], **ann: str) -> dict[str, Any]:
    p["metadata"]["annotations"] = {
        f"tracecar.dev/{k.replace('_', '-')}": v for k, v in ann.items()
    }
    return p


def inject(p: dict[str, Any], settings: Settings = S) -> tuple[dict[str, Any], list[str]]:
    """Inject, check the patch reproduces the mutated copy exactly, return (pod, warnings)."""
    original = copy.deepcopy(p)
    result = plan_injection(p, settings=settings)
    assert p == original, "plan_injection must not touch its input"
    assert jsonpatch.apply_patch(p, result.ops) == result.pod
    validate_pod(result.pod)
    return result.pod, list(result.warnings)


def agent_of(p: dict[str, Any]) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        c
        for c in p["spec"].get("initContainers", []) + p["spec"]["containers"]
        if c["name"] == "tracecar-agent"
    ]
    assert len(found) == 1
    return found[0]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}
