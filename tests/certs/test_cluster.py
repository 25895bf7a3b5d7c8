"""Cluster mode's logic through our own seam (`ClusterApi`), held in memory.

There is no API server on these machines; `InMemoryCluster` keeps a Secret and a
MutatingWebhookConfiguration as dicts, applies JSON patches with jsonpatch (as the API
server would) and raises the same `certs.errors` the real adapter raises.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from certs import _cluster
from certs.errors import Conflict, NotFound, Rejected

ROOT = Path(__file__).resolve().parents[2]
NS, SVC, SECRET, HOOKS = "tracecar-system", "tracecar-webhook", "tracecar-webhook-tls", "tracecar"
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class InMemoryCluster:
    """A `ClusterApi` over dicts; counts writes so tests can assert idempotence."""

    def __init__(self, webhook_names: Sequence[str] = ("inject.tracecar.dev",)) -> None:
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.hooks: dict[str, dict[str, Any]] = {
            HOOKS: {"webhooks": [{"name": n, "clientConfig": {}} for n in webhook_names]}
        }
        self.writes: list[str] = []
        self.version = 0
        # Called before a create/replace: lets a test simulate a concurrent writer.
        self.before_write: list[Any] = []

    # -- ClusterApi
    def read_secret(self, *, namespace: str, name: str) -> _cluster.StoredSecret | None:
        s = self.secrets.get((namespace, name))
        if s is None:
            return None
        return _cluster.StoredSecret(
            type=s["type"], data=dict(s["data"]), resource_version=s["resourceVersion"]
        )

    def _bump(self) -> str:
        self.version += 1
        return str(self.version)

    def create_secret(
        self, *, namespace: str, name: str, type: str, data: Mapping[str, bytes]
    ) -> None:
        if self.before_write:
            self.before_write.pop(0)()
        if (namespace, name) in self.secrets:
            raise Conflict(f"secrets {name!r} already exists")
        self.secrets[(namespace, name)] = {
            "type": type,
            "data": dict(data),
            "resourceVersion": self._bump(),
        }
        self.writes.append("create_secret")

    def replace_secret(
        self, *, namespace: str, name: str, data: Mapping[str, bytes], resource_version: str
    ) -> None:
        if self.before_write:
            self.before_write.pop(0)()
        s = self.secrets[(namespace, name)]
        if s["resourceVersion"] != resource_version:
            raise Conflict("the object has been modified")
        s["data"] = dict(data)
        s["resourceVersion"] = self._bump()
        self.writes.append("replace_secret")

    def read_webhooks(self, *, name: str) -> list[_cluster.WebhookEntry]:
        if name not in self.hooks:
            raise NotFound(f"mutatingwebhookconfigurations {name!r} not found")
        return [
            _cluster.WebhookEntry(
                name=h["name"], ca_bundle=base64.b64decode(h["clientConfig"].get("caBundle", ""))
            )
            for h in self.hooks[name]["webhooks"]
        ]

    def patch_webhooks(self, *, name: str, patch: Sequence[_cluster.JsonPatchOp]) -> None:
        try:
            self.hooks[name] = jsonpatch.apply_patch(self.hooks[name], list(patch))
        except jsonpatch.JsonPatchTestFailed as exc:
            raise Conflict(str(exc)) from exc
        self.writes.append("patch_webhooks")

    # -- helpers for assertions
    def secret_data(self) -> dict[str, bytes]:
        data: dict[str, bytes] = self.secrets[(NS, SECRET)]["data"]
        return data

    def bundles(self) -> list[bytes]:
        return [
            base64.b64decode(h["clientConfig"]["caBundle"]) for h in self.hooks[HOOKS]["webhooks"]
        ]


def run(api: InMemoryCluster, *, now: dt.datetime = NOW, **kw: Any) -> _cluster.ClusterResult:
    return _cluster.ensure_cluster_certs(
        api, namespace=NS, service=SVC, secret=SECRET, webhook_config=HOOKS, now=now, **kw
    )


def test_first_run_creates_the_secret_and_patches_every_webhook() -> None:
    api = InMemoryCluster(webhook_names=("a.tracecar.dev", "b.tracecar.dev"))
    result = run(api)
    assert result.secret == "created"
    assert result.webhooks_patched == ("a.tracecar.dev", "b.tracecar.dev")
    s = api.secrets[(NS, SECRET)]
    assert s["type"] == "kubernetes.io/tls"
    assert set(s["data"]) == {"tls.crt", "tls.key", "ca.crt", "ca.key"}
    assert api.bundles() == [s["data"]["ca.crt"]] * 2
    # The API server would dial tracecar-webhook.tracecar-system.svc and verify with caBundle.
    ca = x509.load_pem_x509_certificates(api.bundles()[0])
    verifier = (
        PolicyBuilder()
        .store(Store(ca))
        .time(NOW)
        .build_server_verifier(x509.DNSName(f"{SVC}.{NS}.svc"))
    )
    verifier.verify(x509.load_pem_x509_certificate(s["data"]["tls.crt"]), [])
    assert f"{SVC}.{NS}.svc.cluster.local" in result.dns_names


def test_second_run_writes_nothing() -> None:
    api = InMemoryCluster()
    run(api)
    writes = list(api.writes)
    result = run(api, now=NOW + dt.timedelta(days=100))
    assert result.secret == "unchanged" and result.webhooks_patched == ()
    assert api.writes == writes


def test_renewal_reissues_the_serving_cert_and_keeps_the_ca_bundle() -> None:
    api = InMemoryCluster()
    run(api)
    before = api.secret_data()
    result = run(api, now=NOW + dt.timedelta(days=250))  # 365-day cert: under a third left
    after = api.secret_data()
    assert result.secret == "updated" and result.webhooks_patched == ()
    assert after["ca.crt"] == before["ca.crt"] and after["tls.crt"] != before["tls.crt"]
    assert any("lifetime left" in r for r in result.reasons)


def test_wrong_sans_are_fixed() -> None:
    api = InMemoryCluster()
    _cluster.ensure_cluster_certs(
        api, namespace=NS, service="old-name", secret=SECRET, webhook_config=HOOKS, now=NOW
    )
    result = run(api)
    assert result.secret == "updated"
    assert any("does not cover" in r for r in result.reasons)


def test_rotate_keeps_the_ca() -> None:
    api = InMemoryCluster()
    run(api)
    before = api.secret_data()
    result = run(api, rotate=True)
    assert result.secret == "updated" and result.webhooks_patched == ()
    assert api.secret_data()["ca.crt"] == before["ca.crt"]
    assert api.secret_data()["tls.key"] != before["tls.key"]


def test_a_changed_ca_bundle_is_patched_back() -> None:
    api = InMemoryCluster(webhook_names=("a.tracecar.dev", "b.tracecar.dev"))
    run(api)
    api.hooks[HOOKS]["webhooks"][1]["clientConfig"]["caBundle"] = "Zm9v"  # someone broke it
    result = run(api)
    assert result.webhooks_patched == ("b.tracecar.dev",) and result.secret == "unchanged"
    assert api.bundles()[0] == api.bundles()[1] == api.secret_data()["ca.crt"]


def test_a_lost_create_race_adopts_the_winners_secret() -> None:
    api = InMemoryCluster()
    winner = InMemoryCluster()
    run(winner)

    def other_job_creates_it_first() -> None:
        api.secrets[(NS, SECRET)] = copy.deepcopy(winner.secrets[(NS, SECRET)])

    api.before_write.append(other_job_creates_it_first)
    result = run(api)
    assert result.secret == "unchanged"
    assert api.secret_data() == winner.secret_data()
    # Our first attempt patched our own CA in; the retry patched the winner's back.
    assert api.bundles() == [winner.secret_data()["ca.crt"]]


def test_endless_conflicts_give_up_with_a_clear_error() -> None:
    api = InMemoryCluster()
    run(api)

    class Meddler:
        def __call__(self) -> None:
            api.secrets[(NS, SECRET)]["resourceVersion"] += "x"
            api.before_write.append(self)

    api.before_write.append(Meddler())
    with pytest.raises(Conflict, match="gave up after 3 attempts"):
        run(api, now=NOW + dt.timedelta(days=250))  # renewal due on every attempt


def test_a_secret_of_the_wrong_type_is_refused() -> None:
    api = InMemoryCluster()
    api.secrets[(NS, SECRET)] = {"type": "Opaque", "data": {}, "resourceVersion": "1"}
    with pytest.raises(Rejected, match="type 'Opaque'"):
        run(api)


def test_a_missing_webhook_configuration_is_not_found_and_nothing_is_written() -> None:
    api = InMemoryCluster()
    api.hooks.clear()
    with pytest.raises(NotFound):
        run(api)
    assert api.writes == []


def test_a_hand_made_empty_tls_secret_is_filled() -> None:
    api = InMemoryCluster()
    api.secrets[(NS, SECRET)] = {"type": "kubernetes.io/tls", "data": {}, "resourceVersion": "7"}
    result = run(api)
    assert result.secret == "updated" and set(api.secret_data()) >= {"tls.crt", "ca.crt"}


def test_cli_without_a_cluster_fails_cleanly(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE")}
    env.update(KUBECONFIG=str(tmp_path / "missing"), HOME=str(tmp_path), PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "certs", "cluster", "--namespace", NS, "--service", SVC,
         "--secret", SECRET, "--webhook-config", HOOKS],
        capture_output=True, text=True, timeout=60, env=env, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 1
    assert "ClusterUnreachable" in done.stderr and "Traceback" not in done.stderr


def test_report_is_json_serialisable() -> None:
    api = InMemoryCluster()
    report = run(api).as_report()
    assert json.loads(json.dumps(report))["secret"] == "created"


@pytest.mark.parametrize(
    "bad", [["--namespace", "Bad_NS"], ["--service", "a.b"], ["--secret", "x/../y"]]
)
def test_cli_refuses_names_that_are_not_kubernetes_names(bad: list[str]) -> None:
    args = dict(zip(["--namespace", "--service", "--secret", "--webhook-config"],
                    [NS, SVC, SECRET, HOOKS], strict=True))  # fmt: skip
    args[bad[0]] = bad[1]
    argv = [x for kv in args.items() for x in kv]
    done = subprocess.run(
        [sys.executable, "-m", "certs", "cluster", *argv],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert bad[1] in done.stderr
