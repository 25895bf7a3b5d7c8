"""`certs._kube` with the real kubernetes client, against a small HTTP stand-in for the API.

No API server can run here, so this stand-in answers the five REST calls cluster mode
makes (paths, verbs, status codes and JSON-patch semantics as the API server's). It
checks what goes over the wire: base64 data, the JSON-patch content type, and that
HTTP errors come out as `certs.errors`.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jsonpatch
import pytest
from kubernetes import client

from certs import _cluster, _kube
from certs.errors import ClusterUnreachable, Conflict, Forbidden, NotFound

NS, SECRET, HOOKS = "tracecar-system", "tracecar-webhook-tls", "tracecar"
SECRET_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/secrets(?:/([^/?]+))?")
HOOK_PATH = re.compile(
    r"^/apis/admissionregistration\.k8s\.io/v1/mutatingwebhookconfigurations/([^/?]+)"
)


class FakeApiServer(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.objects: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, str]] = []  # method, path, content-type
        self.forbid = False
        self.version = 0


def _status(code: int, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "code": code,
    }


class Handler(BaseHTTPRequestHandler):
    server: FakeApiServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        return json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))

    def _key(self) -> str | None:
        if m := SECRET_PATH.match(self.path):
            return f"secret/{m[1]}/{m[2]}" if m[2] else f"secrets/{m[1]}"
        if m := HOOK_PATH.match(self.path):
            return f"hook/{m[1]}"
        return None

    def _handle(self) -> None:
        srv = self.server
        srv.requests.append((self.command, self.path, self.headers.get("Content-Type", "")))
        if srv.forbid:
            return self._send(403, _status(403, 'secrets "x" is forbidden: User cannot get'))
        key = self._key()
        if key is None:
            return self._send(404, _status(404, "no such path"))
        if self.command == "POST" and key.startswith("secrets/"):
            obj = self._body()
            name = f"secret/{obj['metadata']['namespace']}/{obj['metadata']['name']}"
            if name in srv.objects:
                return self._send(409, _status(409, "already exists"))
            srv.version += 1
            obj["metadata"]["resourceVersion"] = str(srv.version)
            srv.objects[name] = obj
            return self._send(201, obj)
        if key not in srv.objects:
            return self._send(404, _status(404, f"{key} not found"))
        if self.command == "GET":
            return self._send(200, srv.objects[key])
        if self.command == "PATCH":
            if self.headers.get("Content-Type") != "application/json-patch+json":
                return self._send(415, _status(415, "unsupported patch type"))
            try:
                patched = jsonpatch.apply_patch(srv.objects[key], self._body())
            except jsonpatch.JsonPatchTestFailed as exc:
                # What the API server answers when a JSON-patch `test` fails.
                return self._send(
                    422, _status(422, f"the server rejected our request: test failed: {exc}")
                )
            srv.version += 1
            patched["metadata"]["resourceVersion"] = str(srv.version)
            srv.objects[key] = patched
            return self._send(200, patched)
        return self._send(405, _status(405, "method not allowed"))

    do_GET = do_POST = do_PATCH = _handle


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    srv = FakeApiServer()
    srv.objects[f"hook/{HOOKS}"] = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": HOOKS, "resourceVersion": "1"},
        "webhooks": [
            {"name": "inject.tracecar.dev", "clientConfig": {"service": {"name": "x"}}},
            {"name": "second.tracecar.dev", "clientConfig": {"caBundle": "Zm9v"}},
        ],
    }
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    t.join(timeout=5)


def _api(url: str) -> _kube.KubeClusterApi:
    cfg = client.Configuration()
    cfg.host = url
    cfg.retries = 0
    return _kube.KubeClusterApi(client.ApiClient(cfg))


def _run(api: _kube.KubeClusterApi) -> _cluster.ClusterResult:
    return _cluster.ensure_cluster_certs(
        api, namespace=NS, service="tracecar-webhook", secret=SECRET, webhook_config=HOOKS
    )


def test_full_run_over_http_then_idempotent(apiserver: FakeApiServer) -> None:
    api = _api(f"http://127.0.0.1:{apiserver.server_port}")
    first = _run(api)
    assert first.secret == "created"
    assert first.webhooks_patched == ("inject.tracecar.dev", "second.tracecar.dev")

    secret = apiserver.objects[f"secret/{NS}/{SECRET}"]
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "tracecar-certs"}
    ca = base64.b64decode(secret["data"]["ca.crt"])
    assert ca.startswith(b"-----BEGIN CERTIFICATE-----")
    hooks = apiserver.objects[f"hook/{HOOKS}"]["webhooks"]
    assert [base64.b64decode(h["clientConfig"]["caBundle"]) for h in hooks] == [ca, ca]
    assert hooks[0]["clientConfig"]["service"] == {"name": "x"}  # the rest is untouched
    patches = [ct for method, _, ct in apiserver.requests if method == "PATCH"]
    assert patches == ["application/json-patch+json"]

    count = len(apiserver.requests)
    again = _run(api)
    assert again.secret == "unchanged" and again.webhooks_patched == ()
    assert [m for m, _, _ in apiserver.requests[count:]] == ["GET", "GET"]


def test_renewal_updates_the_secret_with_a_guarded_patch(apiserver: FakeApiServer) -> None:
    api = _api(f"http://127.0.0.1:{apiserver.server_port}")
    _run(api)
    before = apiserver.objects[f"secret/{NS}/{SECRET}"]["data"]
    result = _cluster.ensure_cluster_certs(
        api, namespace=NS, service="tracecar-webhook", secret=SECRET, webhook_config=HOOKS,
        rotate=True,
    )  # fmt: skip
    after = apiserver.objects[f"secret/{NS}/{SECRET}"]["data"]
    assert result.secret == "updated"
    assert after["ca.crt"] == before["ca.crt"] and after["tls.crt"] != before["tls.crt"]


def test_stale_resource_version_is_a_conflict(apiserver: FakeApiServer) -> None:
    api = _api(f"http://127.0.0.1:{apiserver.server_port}")
    _run(api)
    with pytest.raises(Conflict, match="422"):
        api.replace_secret(namespace=NS, name=SECRET, data={"tls.crt": b"x"}, resource_version="0")


def test_http_errors_become_our_exceptions(apiserver: FakeApiServer) -> None:
    api = _api(f"http://127.0.0.1:{apiserver.server_port}")
    assert api.read_secret(namespace=NS, name="absent") is None
    with pytest.raises(NotFound, match="absent"):
        api.read_webhooks(name="absent")
    apiserver.forbid = True
    with pytest.raises(Forbidden, match="Role"):
        api.read_secret(namespace=NS, name=SECRET)


def test_no_server_is_unreachable() -> None:
    api = _api("http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(ClusterUnreachable):
        api.read_webhooks(name=HOOKS)
