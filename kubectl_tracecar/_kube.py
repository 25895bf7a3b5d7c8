"""The plugin's only door to the Kubernetes API (import-linter keeps it so).

Everything comes back as plain JSON dicts, exactly as ``kubectl get -o json`` shows
it: the rest of the plugin reads pods the way a user reads them, and no generated
model class leaks out. The client library's exceptions are translated here into the
plugin's own, with the verb and resource a 403 was about, so a user knows which RBAC
rule is missing.

The client library is imported, and the kubeconfig read, on the first call that needs
the cluster, not at import or construction: ``kubectl tracecar --help`` and ``diff``
(local files only) never load either (the kubernetes package alone takes ~0.2 s).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from kubectl_tracecar._pods import literal_env
from kubectl_tracecar.errors import Forbidden, NotFound, PluginError, Unsupported

JsonObject = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Connection:
    kubeconfig: str | None
    context: str | None
    namespace: str
    as_user: str | None = None


if TYPE_CHECKING:
    from kubernetes.client.exceptions import ApiException


@dataclass(frozen=True, slots=True)
class KubeFlags:
    """kubectl's global flags as given (``-n``, ``--context``, ``--kubeconfig``, ``--as``)."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    as_user: str | None = None


@dataclass(frozen=True, slots=True)
class _Client:
    conn: Connection
    api: Any
    core: Any
    apps: Any


def _reason(e: ApiException) -> str:
    try:
        body = json.loads(e.body or "{}")
    except ValueError:
        return str(e.reason)
    return str(body.get("message") or e.reason)


class Kube:
    """A connection to one cluster and namespace, as kubectl's flags chose them."""

    def __init__(
        self,
        *,
        kubeconfig: str | None,
        context: str | None,
        namespace: str | None,
        as_user: str | None = None,
    ):
        self.flags = KubeFlags(
            kubeconfig=kubeconfig, context=context, namespace=namespace, as_user=as_user
        )

    @cached_property
    def _client(self) -> _Client:
        import kubernetes
        from kubernetes.config.config_exception import ConfigException

        f = self.flags
        try:
            load = kubernetes.config.list_kube_config_contexts
            contexts, active = load(config_file=f.kubeconfig)  # type: ignore[no-untyped-call]
            chosen = active
            if f.context is not None:
                chosen = next((c for c in contexts if c["name"] == f.context), None)
                if chosen is None:
                    names = ", ".join(c["name"] for c in contexts)
                    raise PluginError(f"context {f.context!r} is not in the kubeconfig ({names})")
            api = kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=f.kubeconfig, context=f.context
            )
        except (ConfigException, FileNotFoundError) as e:
            raise PluginError(
                f"cannot load the kubeconfig: {e}",
                hint="set --kubeconfig, KUBECONFIG or ~/.kube/config as for kubectl",
            ) from e
        ns = f.namespace or (chosen or {}).get("context", {}).get("namespace") or "default"
        if f.as_user:
            api.set_default_header("Impersonate-User", f.as_user)
        conn = Connection(
            kubeconfig=f.kubeconfig, context=f.context, namespace=ns, as_user=f.as_user
        )
        return _Client(
            conn=conn,
            api=api,
            core=kubernetes.client.CoreV1Api(api),
            apps=kubernetes.client.AppsV1Api(api),
        )

    @cached_property
    def conn(self) -> Connection:
        """Where the commands go (the namespace resolved from the kubeconfig's context)."""
        return self._client.conn

    @property
    def namespace(self) -> str:
        return self.conn.namespace

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> JsonObject:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError as Urllib3Error

        try:
            resp = fn(*args, _preload_content=False, _request_timeout=30, **kwargs)
        except ApiException as e:
            reason = _reason(e)
            if e.status == 404:
                raise NotFound(f"{what}: not found ({reason})") from e
            if e.status == 403:
                raise Forbidden(f"{what}: forbidden: {reason}") from e
            if e.status == 422 or e.status == 400:
                raise PluginError(f"{what}: the API server refused it: {reason}") from e
            raise PluginError(f"{what}: the API server answered {e.status}: {reason}") from e
        except Urllib3Error as e:
            raise PluginError(
                f"{what}: cannot reach the API server: {e}",
                hint="check the cluster with `kubectl cluster-info`",
            ) from e
        out: JsonObject = json.loads(resp.data)
        return out

    def pod(self, name: str) -> JsonObject:
        return self._call(
            f"pod {self.namespace}/{name}",
            self._client.core.read_namespaced_pod,
            name,
            self.namespace,
        )

    def pods(self, selector: str) -> list[JsonObject]:
        res = self._call(
            f"pods matching {selector!r} in {self.namespace}",
            self._client.core.list_namespaced_pod,
            self.namespace,
            label_selector=selector,
        )
        items: list[JsonObject] = res.get("items", [])
        return items

    def deployment_selector(self, name: str) -> str:
        dep = self._call(
            f"deployment {self.namespace}/{name}",
            self._client.apps.read_namespaced_deployment,
            name,
            self.namespace,
        )
        return selector_string(dep.get("spec", {}).get("selector", {}))

    def deployment_env(self, namespace: str, name: str, container: str) -> dict[str, str]:
        """Literal env of one container of a Deployment (the webhook's settings)."""
        dep = self._call(
            f"deployment {namespace}/{name}",
            self._client.apps.read_namespaced_deployment,
            name,
            namespace,
        )
        for c in dep.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            if c.get("name") == container:
                return literal_env(c)
        return {}

    def add_ephemeral_container(self, pod: str, container: JsonObject) -> JsonObject:
        """Append an ephemeral container (PATCH pods/NAME/ephemeralcontainers)."""
        body = {"spec": {"ephemeralContainers": [container]}}
        what = f"adding ephemeral container {container['name']} to pod {self.namespace}/{pod}"
        try:
            return self._call(
                what,
                self._client.core.patch_namespaced_pod_ephemeralcontainers,
                pod,
                self.namespace,
                body,
            )
        except Forbidden as e:
            if "PodSecurity" in e.message or "violates" in e.message:
                raise Forbidden(
                    e.message,
                    hint=(
                        "the namespace's Pod Security level forbids the agent's capabilities: "
                        "profile in a namespace labelled "
                        "pod-security.kubernetes.io/enforce=privileged"
                    ),
                ) from e
            raise Forbidden(
                e.message,
                hint=(
                    "you need RBAC verb 'patch' on resource 'pods/ephemeralcontainers' in "
                    f"namespace {self.namespace} (check: kubectl auth can-i patch "
                    f"pods/ephemeralcontainers -n {self.namespace})"
                ),
            ) from e

    def server_version(self) -> tuple[int, int]:
        info = self._call("the API server's version", self._version_api().get_code)
        major = int("".join(ch for ch in str(info.get("major", "0")) if ch.isdigit()) or 0)
        minor = int("".join(ch for ch in str(info.get("minor", "0")) if ch.isdigit()) or 0)
        return major, minor

    def _version_api(self) -> Any:
        import kubernetes

        return kubernetes.client.VersionApi(self._client.api)

    def require_ephemeral_containers(self) -> None:
        major, minor = self.server_version()
        if (major, minor) < (1, 25):
            raise Unsupported(
                f"the cluster runs Kubernetes {major}.{minor}: ephemeral containers are "
                "generally available from 1.25",
                hint="label the pod profiling=enabled to have the webhook inject the agent",
            )


def selector_string(selector: JsonObject) -> str:
    """A LabelSelector object as the ``-l`` string kubectl would take."""
    parts = [f"{k}={v}" for k, v in sorted(selector.get("matchLabels", {}).items())]
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In":
            parts.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)
