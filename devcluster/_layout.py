"""Where the cluster lives and which addresses it uses (one place for both).

The cluster's own addresses: a veth pair the harness creates (``tcar-node`` carries
the node IP 10.213.0.1), a pod bridge ``tcar-cni0`` on 10.214.0.0/24 and a service
range 10.215.0.0/24, all off podman's 10.88.0.0/16. Everything else binds 127.0.0.1.
Nothing listens on, or sends to, the machine's external interface.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

KUBE_VERSION = "v1.35.4"  # the last minor that supports containerd 1.x (Debian's 1.6)
ETCD_VERSION = "v3.6.16"
PAUSE_IMAGE = "localhost/tracecar-pause:3.10.1"  # kubeadm's PauseVersion for 1.35

NODE_NAME = "tracecar-node"
NODE_IF = "tcar-node"
PEER_IF = "tcar-peer"
BRIDGE_IF = "tcar-cni0"
NODE_IP = "10.213.0.1"
NODE_CIDR = "10.213.0.0/24"
POD_CIDR = "10.214.0.0/24"
SERVICE_CIDR = "10.215.0.0/24"
KUBERNETES_SERVICE_IP = "10.215.0.1"
CNI_NETWORK = "tracecar"
EGRESS_CHAIN = "TCAR-POD-EGRESS"
"""The FORWARD chain that keeps pods' packets off every interface but the pod bridge."""
# Paths the kubelet writes whatever its configuration says (Kubernetes constants:
# DefaultContainerLogsDir, deviceplugin's DevicePluginPath); ``down`` removes what of
# them is ours.
CONTAINER_LOGS_DIR = Path("/var/log/containers")
DEVICE_PLUGINS_DIR = Path("/var/lib/kubelet/device-plugins")

APISERVER_PORT = 6443
ETCD_CLIENT_PORT = 12379
ETCD_PEER_PORT = 12380
KUBELET_PORT = 10250
# (address, port, who) of every listener, checked free before anything starts.
LISTENERS: tuple[tuple[str, int, str], ...] = (
    ("127.0.0.1", ETCD_CLIENT_PORT, "etcd"),
    ("127.0.0.1", ETCD_PEER_PORT, "etcd (peer)"),
    (NODE_IP, APISERVER_PORT, "kube-apiserver"),
    (NODE_IP, KUBELET_PORT, "kubelet"),
    ("127.0.0.1", 10257, "kube-controller-manager"),
    ("127.0.0.1", 10259, "kube-scheduler"),
    ("127.0.0.1", 10248, "kubelet (healthz)"),
    ("127.0.0.1", 10249, "kube-proxy (metrics)"),
    ("127.0.0.1", 10256, "kube-proxy (healthz)"),
)

# Start order; `down` stops them in reverse.
COMPONENTS = (
    "containerd",
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
)


@dataclass(frozen=True, kw_only=True)
class Layout:
    """Paths of one cluster: its state under ``run``, its binaries under ``cache``."""

    run: Path
    cache: Path

    @classmethod
    def for_repo(cls, repo: Path) -> Layout:
        cache = Path(os.environ.get("TRACECAR_CLUSTER_CACHE", "/var/cache/tracecar/cluster"))
        return cls(run=repo / ".run" / "cluster", cache=cache)

    @property
    def bin(self) -> Path:
        return self.cache / "bin" / f"k8s-{KUBE_VERSION}-etcd-{ETCD_VERSION}"

    @property
    def kubeconfig(self) -> Path:
        return self.run / "kubeconfig"

    @property
    def logs(self) -> Path:
        return self.run / "logs"

    @property
    def pki(self) -> Path:
        return self.run / "pki"

    @property
    def pids(self) -> Path:
        return self.run / "pids"

    @property
    def state(self) -> Path:
        """Data the components write (etcd, containerd, kubelet): removed by ``down``."""
        return self.run / "state"

    @property
    def pod_logs(self) -> Path:
        """The kubelet's podLogsDir (not /var/log/pods): gone with the state on ``down``."""
        return self.state / "pod-logs"

    @property
    def resolv_conf(self) -> Path:
        return self.run / "resolv.conf"

    @property
    def sock(self) -> Path:
        # Unix socket paths are limited to 108 bytes: keep containerd's short, not
        # under a checkout whose path may be long.
        return Path("/run/tracecar-cluster/containerd.sock")

    def log(self, component: str) -> Path:
        return self.logs / f"{component}.log"
