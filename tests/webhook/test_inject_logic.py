"""Pure logic of the webhook: decision, annotation options, rendering, the JSONPatch."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import jsonpatch
import pytest

from tests.webhook.support import (
    S,
    agent_of,
    annotated,
    env_of,
    inject,
    labelled,
    pod,
    review,
    validate_pod,
)
from webhook.decision import inject_required
from webhook.inject import plan_injection
from webhook.options import parse_options, quantity_value
from webhook.patch import PatchBuilder, escape
from webhook.review import answer, parse_review
from webhook.settings import Settings

# --- JSON pointers and the builder -------------------------------------------------


def test_pointer_escaping() -> None:
    assert escape("tracecar.dev/status") == "tracecar.dev~1status"
    assert escape("a~b/c") == "a~0b~1c"


def test_builder_creates_and_appends() -> None:
    doc: dict[str, Any] = {"a": {"x/y": 1}, "list": [1]}
    before = copy.deepcopy(doc)
    b = PatchBuilder()
    b.set_in_map(doc, "", "m", "k~/", "v")  # absent map: created
    b.set_in_map(doc, "", "m", "k2", "w")  # then added to
    b.set_in_map(doc, "", "a", "x/y", 2)  # present key: replaced
    b.append(doc, "", "list", 2)
    b.append(doc, "", "new", {"n": 1})
    b.append(doc, "", "new", {"n": 2})
    b.prepend(doc, "", "list", 0)
    assert doc == {
        "a": {"x/y": 2},
        "list": [0, 1, 2],
        "m": {"k~/": "v", "k2": "w"},
        "new": [{"n": 1}, {"n": 2}],
    }
    assert jsonpatch.apply_patch(before, b.ops) == doc
    assert b.ops[0] == {"op": "add", "path": "/m", "value": {"k~/": "v"}}
    assert b.ops[2]["path"] == "/a/x~1y" and b.ops[2]["op"] == "replace"


# --- the decision ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "namespace", "reason"),
    [
        (lambda p: p["metadata"].pop("labels"), "default", "not-labelled"),
        (lambda p: p["metadata"]["labels"].update(profiling="disabled"), "default", "not-labelled"),
        (lambda p: None, "tracecar-system", "own-namespace"),
        (lambda p: p["spec"].update(hostNetwork=True), "default", "host-network"),
        (
            lambda p: p["metadata"].update(annotations={"kubernetes.io/config.mirror": "x"}),
            "default",
            "mirror-pod",
        ),
        (
            lambda p: p["metadata"].update(annotations={"tracecar.dev/status": "{}"}),
            "default",
            "already-injected",
        ),
        (
            lambda p: p["spec"].update(initContainers=[{"name": "tracecar-agent", "image": "x"}]),
            "default",
            "already-injected",
        ),
        (lambda p: p["spec"].update(containers=[]), "default", "no-containers"),
        (lambda p: None, "default", "injected"),
    ],
)
def test_decision(change: Any, namespace: str, reason: str) -> None:
    p = pod()
    change(p)
    d = inject_required(p, namespace=namespace, settings=S)
    assert d.reason == reason
    assert d.inject is (reason == "injected")
    assert d.message


# --- annotations -------------------------------------------------------------------


def test_options_defaults_and_overrides() -> None:
    o = parse_options(None, settings=S)
    assert o.warnings == ()
    assert o.options.native_sidecar and not o.options.privileged
    assert o.options.port == 7780 and o.options.image == S.agent_image
    o = parse_options(
        {
            "tracecar.dev/privileged": "True",
            "tracecar.dev/native-sidecar": "false",
            "tracecar.dev/image": "registry.example/tracecar/agent@sha256:abc",
            "tracecar.dev/port": "9000",
            "tracecar.dev/cpu": "20m",
            "tracecar.dev/memory": "2Gi",
            "other.io/x": "y",
        },
        settings=S,
    )
    assert o.warnings == ()
    assert o.options.privileged and not o.options.native_sidecar
    assert o.options.image == "registry.example/tracecar/agent@sha256:abc"
    assert o.options.port == 9000
    # The CPU limit is below the default request: the request follows it down.
    assert (o.options.cpu_request, o.options.cpu_limit) == ("20m", "20m")
    assert (o.options.memory_request, o.options.memory_limit) == (S.agent_memory_request, "2Gi")


def test_image_variant_picks_the_image() -> None:
    core = parse_options({"tracecar.dev/image-variant": " Core "}, settings=S)
    assert core.warnings == () and core.options.image == S.agent_core_image
    full = parse_options({"tracecar.dev/image-variant": "full"}, settings=S)
    assert full.options.image == S.agent_image
    # an explicit image wins over the variant
    both = parse_options(
        {"tracecar.dev/image-variant": "core", "tracecar.dev/image": "reg.example/a:1"},
        settings=S,
    )
    assert both.warnings == () and both.options.image == "reg.example/a:1"
    # the webhook's default variant
    settings = S.model_copy(update={"default_image_variant": "core"})
    assert parse_options(None, settings=settings).options.image == S.agent_core_image


@pytest.mark.parametrize(
    ("key", "value", "expect"),
    [
        ("privileged", "yes", 'is not "true" or "false"; using false'),
        ("share-tmp", "", 'is not "true" or "false"'),
        ("image", "evil image; rm -rf /", "is not an image reference"),
        ("port", "80", "is not a port in 1024-65535; using 7780"),
        ("port", "seventy", "is not a port"),
        ("cpu", "lots", "is not a positive quantity"),
        ("memory", "0", "is not a positive quantity"),
        ("privilege", "true", "unknown annotation"),
        ("auth", "off", 'is not "token" or "none"; using token'),
        ("auth", "", 'is not "token" or "none"'),
        ("image-variant", "slim", "is not full or core; using full"),
    ],
)
def test_bad_annotation_values_warn_and_default(key: str, value: str, expect: str) -> None:
    o = parse_options({f"tracecar.dev/{key}": value}, settings=S)
    assert len(o.warnings) == 1
    assert o.warnings[0].startswith(f"tracecar.dev/{key}: ")
    assert expect in o.warnings[0]
    assert o.options == parse_options(None, settings=S).options


def test_quantity() -> None:
    assert quantity_value("250m") == quantity_value("0.25")
    assert quantity_value("1Ki") == 1024
    with pytest.raises(ValueError):
        quantity_value("1 Gi")


# --- rendering -----------------------------------------------------------------------


def test_default_injection_matches_the_contract() -> None:
    out, warnings = inject(pod())
    assert warnings == []
    agent = out["spec"]["initContainers"][0]
    assert agent["name"] == "tracecar-agent" and agent["command"] == ["tracecar-agent"]
    assert agent["restartPolicy"] == "Always"
    assert agent["livenessProbe"]["exec"]["command"] == ["tracecar-agent", "healthcheck"]
    # one exec, run as the container starts, that returns once the agent serves
    hook = agent["lifecycle"]["postStart"]
    assert hook["exec"]["command"] == ["tracecar-agent", "healthcheck", "--wait", "60"]
    assert "startupProbe" not in agent
    assert "readinessProbe" not in agent
    env = env_of(agent)
    assert env["TRACECAR_AGENT_HOST"] == "127.0.0.1"
    assert env["TRACECAR_AGENT_PORT"] == "7780"
    assert env["TRACECAR_AGENT_DATA_DIR"] == "/var/lib/tracecar"
    assert isinstance(env["TRACECAR_AGENT_TOKEN"], str) and len(env["TRACECAR_AGENT_TOKEN"]) == 43
    assert "TRACECAR_AGENT_AUTH" not in env
    assert env["TRACECAR_AGENT_POD_UID"] == {"fieldRef": {"fieldPath": "metadata.uid"}}
    assert env["TRACECAR_AGENT_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["TRACECAR_AGENT_POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    sc = agent["securityContext"]
    assert sc["capabilities"]["add"] == [
        "SYS_ADMIN",
        "SYS_PTRACE",
        "PERFMON",
        "BPF",
        "IPC_LOCK",
    ]
    assert "privileged" not in sc
    assert {m["mountPath"] for m in agent["volumeMounts"]} == {
        "/var/lib/tracecar",
        "/var/run/lttng",
    }
    assert out["spec"]["shareProcessNamespace"] is True
    assert out["spec"]["volumes"] == [
        {"name": "tracecar-data", "emptyDir": {}},
        {"name": "tracecar-lttng", "emptyDir": {}},
    ]
    app = out["spec"]["containers"][0]
    assert app["volumeMounts"] == [{"name": "tracecar-lttng", "mountPath": "/var/run/lttng"}]
    assert app["env"] == [{"name": "TRACECAR_CONTAINER", "value": "app"}]
    status = json.loads(out["metadata"]["annotations"]["tracecar.dev/status"])
    assert (
        status["port"] == 7780
        and status["mode"] == "native"
        and status["container"] == "tracecar-agent"
    )


def test_native_sidecar_goes_first_among_init_containers() -> None:
    p = pod(initContainers=[{"name": "init", "image": "i"}])
    out, _ = inject(p)
    assert [c["name"] for c in out["spec"]["initContainers"]] == ["tracecar-agent", "init"]
    # A run-to-completion init container is not an app container: untouched.
    assert out["spec"]["initContainers"][1] == {"name": "init", "image": "i"}


def test_other_native_sidecars_count_as_app_containers() -> None:
    p = pod(initContainers=[{"name": "proxy", "image": "i", "restartPolicy": "Always"}])
    out, _ = inject(p)
    proxy = out["spec"]["initContainers"][1]
    assert env_of(proxy)["TRACECAR_CONTAINER"] == "proxy"


def test_classic_mode_and_privileged() -> None:
    p = annotated(pod(), native_sidecar="false", privileged="true")
    out, _ = inject(p)
    assert "initContainers" not in out["spec"]
    agent = out["spec"]["containers"][-1]
    assert agent["name"] == "tracecar-agent"
    assert "restartPolicy" not in agent and "lifecycle" not in agent
    assert agent["securityContext"]["privileged"] is True
    assert out["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] == "app"
    # An explicit default container is the user's choice.
    p = annotated(pod(), native_sidecar="false")
    p["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] = "other"
    out, _ = inject(p)
    assert out["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] == "other"


@pytest.mark.parametrize("restart", ["Never", "OnFailure"])
def test_classic_mode_warns_that_a_job_pod_never_completes(restart: str) -> None:
    _, warnings = inject(annotated(pod(restartPolicy=restart), native_sidecar="false"))
    assert len(warnings) == 1 and "never completes" in warnings[0]
    # A native sidecar ends with the app containers; an always-restarting pod never ends.
    assert inject(pod(restartPolicy=restart))[1] == []
    assert inject(annotated(pod(restartPolicy="Always"), native_sidecar="false"))[1] == []


def test_image_pull_policy_comes_from_the_settings() -> None:
    assert agent_of(inject(pod())[0])["imagePullPolicy"] == "IfNotPresent"
    always = Settings(agent_image_pull_policy="Always")
    assert agent_of(inject(pod(), always)[0])["imagePullPolicy"] == "Always"


def test_names_never_collide() -> None:
    p = pod(
        volumes=[
            {"name": "tracecar-data", "emptyDir": {}},
            {"name": "tracecar-lttng-2", "emptyDir": {}},
            {"name": "tracecar-lttng", "emptyDir": {}},
        ]
    )
    out, _ = inject(p)
    names = [v["name"] for v in out["spec"]["volumes"]]
    assert names == [
        "tracecar-data",
        "tracecar-lttng-2",
        "tracecar-lttng",
        "tracecar-data-2",
        "tracecar-lttng-3",
    ]
    agent = agent_of(out)
    assert {m["name"] for m in agent["volumeMounts"]} == {"tracecar-data-2", "tracecar-lttng-3"}
    status = json.loads(out["metadata"]["annotations"]["tracecar.dev/status"])
    assert status["volumes"] == ["tracecar-data-2", "tracecar-lttng-3"]


def test_port_declared_by_an_app_moves_the_agent() -> None:
    p = pod(
        containers=[
            {"name": "app", "image": "a", "ports": [{"containerPort": 7780}]},
            {"name": "web", "image": "w", "ports": [{"containerPort": 80, "hostPort": 7781}]},
        ]
    )
    out, warnings = inject(p)
    assert env_of(agent_of(out))["TRACECAR_AGENT_PORT"] == "7782"
    assert json.loads(out["metadata"]["annotations"]["tracecar.dev/status"])["port"] == 7782
    assert warnings == [
        "tracecar: port 7780 is declared by container app; the agent listens on 7782 "
        "(see tracecar.dev/status)"
    ]


def test_runtime_symbols_never_override_the_pod() -> None:
    p = annotated(pod(), runtime_symbols="true")
    p["spec"]["containers"] = [
        {
            "name": "a",
            "image": "a",
            "env": [
                {"name": "PYTHONPERFSUPPORT", "value": "0"},
                {"name": "NODE_OPTIONS", "value": "--max-old-space-size=100"},
                {"name": "JAVA_TOOL_OPTIONS", "value": "-Xmx1g -XX:+PreserveFramePointer"},
                {"name": "TRACECAR_CONTAINER", "value": "custom"},
            ],
        },
        {
            "name": "b",
            "image": "b",
            "env": [
                {
                    "name": "DOTNET_PerfMapEnabled",
                    "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}},
                },
                {"name": "NODE_OPTIONS", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            ],
        },
    ]
    out, _ = inject(p)
    a, b = out["spec"]["containers"][:2]
    assert env_of(a) == {
        "PYTHONPERFSUPPORT": "0",
        "NODE_OPTIONS": "--max-old-space-size=100 --perf-basic-prof "
        "--interpreted-frames-native-stack",
        "JAVA_TOOL_OPTIONS": "-Xmx1g -XX:+PreserveFramePointer",
        "TRACECAR_CONTAINER": "custom",
        "DOTNET_PerfMapEnabled": "1",
        "COMPlus_PerfMapEnabled": "1",
        "DOTNET_EnableEventLog": "1",
        "COMPlus_EnableEventLog": "1",
    }
    env_b = env_of(b)
    assert env_b["DOTNET_PerfMapEnabled"] == {"configMapKeyRef": {"name": "c", "key": "k"}}
    # the pod chose in one spelling: the other is not added behind its back
    assert "COMPlus_PerfMapEnabled" not in env_b
    assert env_b["COMPlus_EnableEventLog"] == "1"
    assert env_b["NODE_OPTIONS"] == {"secretKeyRef": {"name": "s", "key": "k"}}
    assert env_b["PYTHONPERFSUPPORT"] == "1"
    assert env_b["JAVA_TOOL_OPTIONS"] == "-XX:+PreserveFramePointer"
    assert env_b["TRACECAR_CONTAINER"] == "b"
    assert "PYTHONPERFSUPPORT" not in env_of(agent_of(out)), "env goes on app containers only"


def test_dotnet_knobs_in_both_spellings_unless_the_pod_chose() -> None:
    p = annotated(pod(), runtime_symbols="true")
    p["spec"]["containers"] = [
        {"name": "a", "image": "a"},
        {
            "name": "b",
            "image": "b",
            "env": [
                {"name": "COMPlus_PerfMapEnabled", "value": "0"},
                {"name": "DOTNET_EnableEventLog", "value": "0"},
            ],
        },
    ]
    out, _ = inject(p)
    a, b = out["spec"]["containers"][:2]
    env_a, env_b = env_of(a), env_of(b)
    for knob in ("PerfMapEnabled", "EnableEventLog"):
        assert env_a[f"DOTNET_{knob}"] == env_a[f"COMPlus_{knob}"] == "1"
    assert env_b["COMPlus_PerfMapEnabled"] == "0" and "DOTNET_PerfMapEnabled" not in env_b
    assert env_b["DOTNET_EnableEventLog"] == "0" and "COMPlus_EnableEventLog" not in env_b
    # without the annotation (the default), none of them
    out, _ = inject(annotated(pod(), runtime_symbols="false"))
    assert not {k for k in env_of(out["spec"]["containers"][0]) if "PerfMap" in k}


def test_share_tmp_and_host_paths() -> None:
    p = annotated(pod(), share_tmp="true", host_paths="true")
    p["spec"]["containers"].append(
        {"name": "ro", "image": "r", "volumeMounts": [{"name": "t", "mountPath": "/tmp/"}]}
    )
    p["spec"]["volumes"] = [{"name": "t", "emptyDir": {}}]
    out, warnings = inject(p)
    agent = agent_of(out)
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    for path in ("/lib/modules", "/usr/src", "/sys/kernel/debug"):
        assert mounts[path]["readOnly"] is True
    assert "/tmp" in mounts
    hostpaths = {v["hostPath"]["path"] for v in out["spec"]["volumes"] if "hostPath" in v}
    assert hostpaths == {"/lib/modules", "/usr/src", "/sys/kernel/debug"}
    app, ro = out["spec"]["containers"][:2]
    assert {"name": "tracecar-tmp", "mountPath": "/tmp"} in app["volumeMounts"]
    assert ro["volumeMounts"] == [
        {"name": "t", "mountPath": "/tmp/"},
        {"name": "tracecar-lttng", "mountPath": "/var/run/lttng"},
    ]
    assert warnings == [
        "tracecar: container ro already mounts /tmp; left as is (not shared with the agent)"
    ]


def test_host_pid_pods_keep_their_pid_namespace() -> None:
    out, warnings = inject(pod(hostPID=True))
    assert "shareProcessNamespace" not in out["spec"]
    assert "hostPID" in warnings[0]


def test_many_env_vars() -> None:
    p = pod()
    p["spec"]["containers"][0]["env"] = [{"name": f"VAR_{i}", "value": str(i)} for i in range(1500)]
    out, _ = inject(p)
    assert len(out["spec"]["containers"][0]["env"]) == 1501


# --- the answer ------------------------------------------------------------------------


def test_answer_is_idempotent_and_escapes_the_status_key() -> None:
    p = labelled(pod())
    body = json.dumps(review(p, uid="u-1")).encode()
    first = answer(parse_review(body), settings=S)
    r = first.review["response"]
    assert r["uid"] == "u-1" and r["allowed"] is True and r["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(r["patch"]))
    assert ops[0]["path"] == "/metadata/annotations"  # absent map: created
    assert ops[0]["value"].keys() == {"tracecar.dev/status"}
    p2 = copy.deepcopy(p)
    p2["metadata"]["annotations"] = {"a": "b"}
    r2 = answer(parse_review(json.dumps(review(p2)).encode()), settings=S).review["response"]
    assert (
        json.loads(base64.b64decode(r2["patch"]))[0]["path"]
        == "/metadata/annotations/tracecar.dev~1status"
    )
    patched = jsonpatch.apply_patch(p, ops)
    again = answer(parse_review(json.dumps(review(patched)).encode()), settings=S)
    assert again.outcome == "already-injected"
    assert "patch" not in again.review["response"] and "warnings" not in again.review["response"]


# --- the agent's token ------------------------------------------------------------------


def test_each_injection_gets_its_own_token_through_the_seam() -> None:
    made: list[str] = []

    def seam() -> str:
        made.append(f"token-number-{len(made):04d}")
        return made[-1]

    first = plan_injection(pod(), settings=S, new_token=seam)
    second = plan_injection(pod(), settings=S, new_token=seam)
    assert env_of(agent_of(first.pod))["TRACECAR_AGENT_TOKEN"] == "token-number-0000"
    assert env_of(agent_of(second.pod))["TRACECAR_AGENT_TOKEN"] == "token-number-0001"
    random_a = env_of(agent_of(inject(pod())[0]))["TRACECAR_AGENT_TOKEN"]
    random_b = env_of(agent_of(inject(pod())[0]))["TRACECAR_AGENT_TOKEN"]
    assert random_a != random_b
    # Only the agent holds it: not the app containers, not the status annotation.
    out = first.pod
    assert "TRACECAR_AGENT_TOKEN" not in env_of(out["spec"]["containers"][0])
    assert "token-number" not in out["metadata"]["annotations"]["tracecar.dev/status"]
    assert json.loads(out["metadata"]["annotations"]["tracecar.dev/status"])["auth"] == "token"


@pytest.mark.parametrize("native", ["true", "false"])
def test_reinvoked_or_already_injected_pods_keep_their_token(native: str) -> None:
    """reinvocationPolicy IfNeeded, or a pod re-created from a dumped spec: no new token."""
    p = labelled(annotated(pod(), native_sidecar=native))
    calls: list[int] = []

    def seam() -> str:
        calls.append(1)
        return "the-one-and-only-token"

    first = answer(parse_review(json.dumps(review(p)).encode()), settings=S, new_token=seam)
    ops = json.loads(base64.b64decode(first.review["response"]["patch"]))
    patched = jsonpatch.apply_patch(p, ops)
    again = answer(parse_review(json.dumps(review(patched)).encode()), settings=S, new_token=seam)
    assert again.outcome == "already-injected" and "patch" not in again.review["response"]
    # Without the status annotation (stripped by some tool) the agent container still counts.
    del patched["metadata"]["annotations"]["tracecar.dev/status"]
    third = answer(parse_review(json.dumps(review(patched)).encode()), settings=S, new_token=seam)
    assert third.outcome == "already-injected"
    assert calls == [1]
    assert env_of(agent_of(patched))["TRACECAR_AGENT_TOKEN"] == "the-one-and-only-token"


def test_auth_none_opts_out_explicitly_with_a_warning() -> None:
    def seam() -> str:
        raise AssertionError("no token is made for an opted-out pod")

    result = plan_injection(annotated(pod(), auth="none"), settings=S, new_token=seam)
    env = env_of(agent_of(result.pod))
    assert env["TRACECAR_AGENT_AUTH"] == "none" and "TRACECAR_AGENT_TOKEN" not in env
    assert any("tracecar.dev/auth none" in w for w in result.warnings)
    assert result.status["auth"] == "none"
    validate_pod(result.pod)
    # The same opt-out for every pod, from the webhook's settings; the annotation wins.
    none_by_default = Settings(default_auth="none")
    out, _ = inject(pod(), none_by_default)
    assert env_of(agent_of(out))["TRACECAR_AGENT_AUTH"] == "none"
    out, _ = inject(annotated(pod(), auth="token"), none_by_default)
    assert "TRACECAR_AGENT_TOKEN" in env_of(agent_of(out))
