"""The stores under the cluster stage: Pyroscope and MinIO as pods, the way users run
them, from images `scripts/images pyroscope minio` builds out of the binaries
`scripts/stores` compiles from their official sources. Manifests and queries only."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.cluster import kube as K

NS = "tracecar-stores"
PYROSCOPE_IMAGE = f"localhost/tracecar-pyroscope:{K.TAG}"
MINIO_IMAGE = f"localhost/tracecar-minio:{K.TAG}"
MINIO_USER = "tracecar-test"
MINIO_PASSWORD = "tracecar-test-password"  # a throwaway test server's
BUCKET = "tracecar-artifacts"
CPU_TYPE = "process_cpu:cpu:nanoseconds:cpu:nanoseconds"

_LOOPBACK_RINGS = (
    "-distributor.ring.instance-addr",
    "-ingester.lifecycler.addr",
    "-compactor.ring.instance-addr",
    "-overrides-exporter.ring.instance-addr",
    "-query-frontend.instance-addr",
    "-query-scheduler.ring.instance-addr",
    "-store-gateway.sharding-ring.instance-addr",
)


def _deployment(
    name: str, container: dict[str, Any], *, port: int, ready_path: str
) -> dict[str, Any]:
    container = {
        "name": name,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": port}],
        "readinessProbe": {
            "httpGet": {"path": ready_path, "port": port},
            "periodSeconds": 2,
            "failureThreshold": 60,
        },
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}},
        **container,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [container],
                    "volumes": [{"name": "data", "emptyDir": {}}],
                },
            },
        },
    }


def _service(name: str, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": port}]},
    }


def manifests() -> list[dict[str, Any]]:
    """Namespace, MinIO's root credentials, both Deployments and Services. Pyroscope's
    internal rings and memberlist stay on the pod's loopback (one process, -target=all);
    only its HTTP API listens on the pod network. No usage reports leave the cluster."""
    pyroscope = _deployment(
        "pyroscope",
        {
            "image": PYROSCOPE_IMAGE,
            "args": [
                "-target=all",
                "-server.http-listen-address=0.0.0.0",
                "-server.http-listen-port=4040",
                "-server.grpc-listen-address=127.0.0.1",
                "-server.grpc-listen-port=9095",
                "-memberlist.bind-addr=127.0.0.1",
                "-memberlist.advertise-addr=127.0.0.1",
                *(f"{flag}=127.0.0.1" for flag in _LOOPBACK_RINGS),
                "-storage.backend=filesystem",
                "-storage.filesystem.dir=/data/blocks",
                "-pyroscopedb.data-path=/data/db",
                "-usage-stats.enabled=false",
                "-self-profiling.disable-push=true",
                "-tracing.enabled=false",
            ],
        },
        port=4040,
        ready_path="/ready",
    )
    minio = _deployment(
        "minio",
        {
            "image": MINIO_IMAGE,
            "args": [
                "server",
                "/data",
                "--address",
                ":9000",
                "--console-address",
                "127.0.0.1:9001",
            ],
            "env": [
                {"name": "HOME", "value": "/data"},
                {"name": "MINIO_UPDATE", "value": "off"},
                {"name": "MINIO_BROWSER", "value": "off"},
                *(
                    {
                        "name": var,
                        "valueFrom": {"secretKeyRef": {"name": "minio-root", "key": key}},
                    }
                    for var, key in (
                        ("MINIO_ROOT_USER", "user"),
                        ("MINIO_ROOT_PASSWORD", "password"),
                    )
                ),
            ],
        },
        port=9000,
        ready_path="/minio/health/ready",
    )
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "minio-root", "namespace": NS},
            "stringData": {"user": MINIO_USER, "password": MINIO_PASSWORD},
        },
        pyroscope,
        _service("pyroscope", 4040),
        minio,
        _service("minio", 9000),
    ]


def cluster_ip(kube: K.Kube, service: str) -> str:
    ip: str = kube.json("get", "svc", service, "-n", NS)["spec"]["clusterIP"]
    return ip


def set_reachable(kube: K.Kube, service: str, *, reachable: bool) -> None:
    """A store outage as the agents see it: the Service's selector matches no pod (no
    endpoints, connections refused), the store itself keeps running and keeps its data."""
    selector = {"app": service if reachable else "nowhere"}
    kube.run(
        "patch", "svc", service, "-n", NS, "--type=merge",
        "-p", json.dumps({"spec": {"selector": selector}}),
    )  # fmt: skip


def query(url: str, method: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(f"{url}/querier.v1.QuerierService/{method}", json=body, timeout=60)
    r.raise_for_status()
    doc: dict[str, Any] = r.json()
    return doc


def flamegraph(url: str, selector: str, start_s: float, end_s: float) -> dict[str, Any]:
    """The merged flame graph of `selector` over [start, end] (Pyroscope's JSON)."""
    doc = query(
        url,
        "SelectMergeStacktraces",
        {
            "profileTypeID": CPU_TYPE,
            "labelSelector": selector,
            "start": int(start_s * 1000),
            "end": int(end_s * 1000),
        },
    )
    graph: dict[str, Any] = doc.get("flamegraph") or {"names": [], "levels": [], "total": 0}
    return graph


def total_of(graph: dict[str, Any], name_part: str) -> int:
    """The samples under frames whose name contains `name_part` (each level's values are
    [offset, total, self, name index] quadruples, offsets relative; Pyroscope's format).
    Frames nested under another match are counted once, at the outermost."""
    names: list[str] = graph.get("names") or []
    hits: list[tuple[int, int]] = []  # (start, end) spans of matches in absolute offsets
    total = 0
    for level in graph.get("levels") or []:
        values = [int(v) for v in level.get("values") or []]
        x = 0
        for i in range(0, len(values), 4):
            x += values[i]
            width, name = values[i + 1], names[values[i + 3]]
            if name_part in name and not any(a <= x < b for a, b in hits):
                hits.append((x, x + width))
                total += width
            x += width
    return total


def label_values(url: str, name: str, selector: str, start_s: float, end_s: float) -> list[str]:
    doc = query(
        url,
        "LabelValues",
        {
            "name": name,
            "matchers": [selector],
            "start": int(start_s * 1000),
            "end": int(end_s * 1000),
        },
    )
    return [str(v) for v in doc.get("names") or []]


def series_points(
    url: str, selector: str, start_s: float, end_s: float, step_s: float
) -> list[tuple[float, float]]:
    """(time s, value) points of `selector` summed into `step_s` buckets."""
    doc = query(
        url,
        "SelectSeries",
        {
            "profileTypeID": CPU_TYPE,
            "labelSelector": selector,
            "start": int(start_s * 1000),
            "end": int(end_s * 1000),
            "step": step_s,
        },
    )
    points: list[tuple[float, float]] = []
    for series in doc.get("series") or []:
        for p in series.get("points") or []:
            points.append((int(p["timestamp"]) / 1000, float(p.get("value") or 0)))
    return sorted(points)
