"""Every workload of the Istio injector's input corpus, through the real server over TLS.

For each pod template (labelled profiling=enabled): the patch applies, the result is
a valid Pod (kubernetes-validate --strict), the app containers are unchanged but for
the documented additions, there is exactly one agent, re-sending the patched pod
returns no patch (the agent keeps its token), and the patch equals its golden file
(UPDATE_GOLDEN=1 rewrites them). The server's tokens are random: the golden files are
made in-process through the token seam (``new_token``), and the server's patch must be
that same patch once its token is replaced by the seam's.
"""

from __future__ import annotations

import copy
import json
import os
import re
from typing import Any

import httpx
import jsonpatch
import orjson
import pytest

from tests.webhook.support import (
    CORPUS,
    GOLDEN,
    GOLDEN_TOKEN,
    corpus_pods,
    decode_patch,
    golden_name,
    golden_token,
    labelled,
    review,
    tokens_in,
    validate_pod,
    with_token,
)
from webhook.review import answer, parse_review
from webhook.settings import Settings

CASES = corpus_pods()
RUNTIME_ENV = {
    "DOTNET_PerfMapEnabled",
    "COMPlus_PerfMapEnabled",
    "DOTNET_EnableEventLog",
    "COMPlus_EnableEventLog",
    "PYTHONPERFSUPPORT",
    "NODE_OPTIONS",
    "JAVA_TOOL_OPTIONS",
}
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
RANDOM_TOKEN = re.compile(r"^[A-Za-z0-9_-]{43}$")


def seam_patch(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The patch of the same review in-process, its token from the golden seam."""
    request = parse_review(orjson.dumps(body))
    out = answer(request, settings=Settings(), new_token=golden_token).review
    return decode_patch(dict(out))


def post(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/mutate", json=body)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    assert out["apiVersion"] == "admission.k8s.io/v1"
    assert out["kind"] == "AdmissionReview"
    assert out["response"]["uid"] == body["request"]["uid"]
    assert out["response"]["allowed"] is True
    return out


def agents(pod: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod["spec"]
    return [
        c
        for c in (spec.get("containers") or []) + (spec.get("initContainers") or [])
        if c["name"] == "tracecar-agent"
    ]


def without_additions(container: dict[str, Any], volumes: set[str]) -> dict[str, Any]:
    """The container minus what the webhook documents adding to app containers."""
    c = copy.deepcopy(container)
    env = [e for e in c.get("env", []) if e["name"] != "TRACECAR_CONTAINER"]
    mounts = [m for m in c.get("volumeMounts", []) if m["name"] not in volumes]
    for key, items in (("env", env), ("volumeMounts", mounts)):
        if items:
            c[key] = items
        else:
            c.pop(key, None)
    return c


def check_patched(original: dict[str, Any], patched: dict[str, Any]) -> dict[str, Any]:
    """Assertions shared by every injected pod; returns the parsed status annotation."""
    validate_pod(patched)
    assert len(agents(patched)) == 1
    status: dict[str, Any] = json.loads(patched["metadata"]["annotations"]["tracecar.dev/status"])
    assert status["container"] == "tracecar-agent"
    volumes = set(status["volumes"])
    spec, new_spec = original["spec"], patched["spec"]
    for key in ("containers", "initContainers"):
        before = spec.get(key) or []
        after = [c for c in new_spec.get(key) or [] if c["name"] != "tracecar-agent"]
        assert [c["name"] for c in after] == [c["name"] for c in before]
        for old, new in zip(before, after, strict=True):
            assert without_additions(new, volumes) == without_additions(old, volumes)
            if key == "containers":
                assert {"name": "TRACECAR_CONTAINER", "value": old["name"]} in new["env"] or any(
                    e["name"] == "TRACECAR_CONTAINER" for e in old.get("env", [])
                )
    names = [v["name"] for v in new_spec.get("volumes", [])]
    assert len(names) == len(set(names)), "volume names collide"
    assert [v for v in new_spec.get("volumes", []) if v["name"] not in volumes] == (
        spec.get("volumes") or []
    )
    rest = {
        k: v for k, v in new_spec.items() if k not in ("containers", "initContainers", "volumes")
    }
    rest.pop("shareProcessNamespace", None)
    old_rest = {
        k: v for k, v in spec.items() if k not in ("containers", "initContainers", "volumes")
    }
    old_rest.pop("shareProcessNamespace", None)
    assert rest == old_rest
    if not spec.get("hostPID"):
        assert new_spec["shareProcessNamespace"] is True
    return status


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_corpus_pod(client: httpx.Client, case: Any) -> None:
    pod = labelled(case.pod)
    body = review(pod)
    out = post(client, body)
    ops = decode_patch(out)
    tokens = tokens_in(ops)
    if ops:
        assert len(tokens) == 1 and RANDOM_TOKEN.match(tokens[0]), "one random token per pod"
    expected = seam_patch(body)
    assert with_token(ops, GOLDEN_TOKEN) == expected
    golden = GOLDEN / golden_name(case.id)
    text = json.dumps(expected, indent=1) + "\n"
    if UPDATE:
        golden.write_text(text)
    assert golden.exists(), f"no golden file {golden.name}: run with UPDATE_GOLDEN=1"
    assert golden.read_text() == text, f"{golden.name} is stale: run with UPDATE_GOLDEN=1"

    if pod["spec"].get("hostNetwork"):
        assert ops == []
        assert any("host network" in w for w in out["response"]["warnings"])
        return
    patched = jsonpatch.apply_patch(pod, ops)
    check_patched(pod, patched)

    again = post(client, review(patched))
    assert decode_patch(again) == []  # re-invoked: not re-tokened
    assert "warnings" not in again["response"]
    assert tokens_in(patched) == tokens

    unlabelled = post(client, review(case.pod))
    assert decode_patch(unlabelled) == []


def test_corpus_is_there() -> None:
    assert CORPUS.is_dir(), (
        f"the input corpus {CORPUS} is missing (../shared/corpus next to the repo)"
    )
    assert len(CASES) >= 100


def test_no_stale_golden_files() -> None:
    expected = {golden_name(c.id) for c in CASES}
    present = {p.name for p in GOLDEN.glob("*.json")}
    if UPDATE:
        for name in present - expected:
            (GOLDEN / name).unlink()
        present &= expected
    assert present == expected


ALL_OPT_INS = {
    "tracecar.dev/privileged": "true",
    "tracecar.dev/runtime-symbols": "true",
    "tracecar.dev/share-tmp": "true",
    "tracecar.dev/host-paths": "true",
}


@pytest.mark.parametrize("native", ["true", "false"])
def test_corpus_with_every_opt_in(client: httpx.Client, native: str) -> None:
    """Every injected corpus pod, with all opt-ins in both sidecar modes, stays valid."""
    for case in CASES:
        pod = labelled(case.pod)
        if pod["spec"].get("hostNetwork"):
            continue
        annotations = pod["metadata"].setdefault("annotations", {})
        annotations.update(ALL_OPT_INS)
        annotations["tracecar.dev/native-sidecar"] = native
        out = post(client, review(pod))
        patched = jsonpatch.apply_patch(pod, decode_patch(out))
        validate_pod(patched)
        assert len(agents(patched)) == 1, case.id
        agent = agents(patched)[0]
        assert agent["securityContext"]["privileged"] is True
        if native == "true":
            assert patched["spec"]["initContainers"][0] is agent
            assert agent["restartPolicy"] == "Always" and "postStart" in agent["lifecycle"]
        else:
            assert patched["spec"]["containers"][-1] is agent
            assert "restartPolicy" not in agent
        for c in patched["spec"]["containers"]:
            if c is agent:
                continue
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert {"/var/run/lttng", "/tmp"} <= mounts, case.id
            assert {e["name"] for e in c["env"]} >= RUNTIME_ENV, case.id
        assert decode_patch(post(client, review(patched))) == []
