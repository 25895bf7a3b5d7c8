"""Configuration files and command lines of each component, rendered from a Layout.

Pure: nothing here touches the host. The flags follow controller-runtime's envtest
(the reference for a minimal control plane) plus what a kubelet and kube-proxy need on
this VM: cgroup v1 with the cgroupfs driver, no CAP_SYS_RESOURCE (so no negative
oom_score_adj), no systemd, and no registry (the kubelet must never garbage-collect an
imported image it cannot pull again)."""

from __future__ import annotations

import json

import yaml

from devcluster import _layout as L
from devcluster._layout import Layout


def kubeconfig(lay: Layout, stem: str) -> str:
    pki = lay.pki
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "tracecar-dev",
                "cluster": {
                    "server": f"https://{L.NODE_IP}:{L.APISERVER_PORT}",
                    "certificate-authority": str(pki / "ca.crt"),
                },
            }
        ],
        "users": [
            {
                "name": stem,
                "user": {
                    "client-certificate": str(pki / f"{stem}.crt"),
                    "client-key": str(pki / f"{stem}.key"),
                },
            }
        ],
        "contexts": [
            {"name": "tracecar-dev", "context": {"cluster": "tracecar-dev", "user": stem}}
        ],
        "current-context": "tracecar-dev",
    }
    return yaml.safe_dump(doc, sort_keys=False)


def containerd_config(lay: Layout) -> str:
    st = lay.state / "containerd"
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{st / "root"}"
state = "{st / "state"}"
# Only CRI and what it needs: no other plugin listens anywhere.
disabled_plugins = ["io.containerd.internal.v1.tracing"]

[grpc]
  address = "{lay.sock}"

[ttrpc]
  address = "{lay.sock}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[{cri}]
  sandbox_image = "{L.PAUSE_IMAGE}"
  # This VM lacks CAP_SYS_RESOURCE: runc cannot give the sandbox a negative
  # oom_score_adj ("can't get final child's PID from pipe: EOF" otherwise).
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{lay.run / "cni"}"
    max_conf_num = 1
  [{cri}.registry]
    config_path = ""
"""


def cni_config(lay: Layout) -> str:
    return json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": L.CNI_NETWORK,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": L.BRIDGE_IF,
                    "isGateway": True,
                    # No masquerade: pods talk to the node and each other only, never
                    # through the machine's external interface.
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": L.POD_CIDR}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(lay.state / "cni-ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
                {"type": "loopback"},
            ],
        },
        indent=2,
    )


def kubelet_config(lay: Layout) -> str:
    pki = lay.pki
    doc = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": L.NODE_IP,
        "port": L.KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "tlsCertFile": str(pki / "kubelet.crt"),
        "tlsPrivateKeyFile": str(pki / "kubelet.key"),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{lay.sock}",
        # cgroup v1, no systemd: kubelet refuses v1 from 1.35 unless told not to.
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "failSwapOn": False,
        "oomScoreAdj": 0,  # no CAP_SYS_RESOURCE for -999
        "clusterDomain": "cluster.local",
        # Not the host's resolv.conf: its nameserver is reached through the external
        # interface. No DNS server runs in this cluster (clients use the service IPs
        # in their environment), so a pod's lookup fails at once, on its own loopback.
        "resolvConf": str(lay.resolv_conf),
        "podLogsDir": str(lay.pod_logs),
        # No registry: an image garbage-collected is an image lost.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "200Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
        },
        "serializeImagePulls": False,
        "maxPods": 60,
        "registerNode": True,
        "shutdownGracePeriod": "0s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        "nodeStatusUpdateFrequency": "5s",
    }
    return yaml.safe_dump(doc, sort_keys=False)


def kube_proxy_config(lay: Layout) -> str:
    doc = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(lay.run / "kube-proxy.kubeconfig")},
        "hostnameOverride": L.NODE_NAME,
        "clusterCIDR": L.POD_CIDR,
        "bindAddress": "127.0.0.1",
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        # NodePorts only on the cluster's own address, never the external interface.
        "nodePortAddresses": [f"{L.NODE_IP}/32"],
        # Pod -> Service -> pod on one bridge needs the reply un-NATed: SNAT it all.
        "iptables": {"masqueradeAll": True, "syncPeriod": "5s", "minSyncPeriod": "0s"},
        # No sysctl writes for conntrack (the VM may refuse them).
        "conntrack": {"maxPerCore": 0, "min": 0},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def commands(lay: Layout) -> dict[str, list[str]]:
    """Each component's argv, by name (the binaries come from the build cache)."""
    b, pki, run = lay.bin, lay.pki, lay.run
    etcd_url = f"http://127.0.0.1:{L.ETCD_CLIENT_PORT}"
    return {
        "containerd": ["/usr/bin/containerd", "--config", str(run / "containerd.toml")],
        "etcd": [
            str(b / "etcd"),
            "--name=tracecar",
            f"--data-dir={lay.state / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{L.ETCD_PEER_PORT}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{L.ETCD_PEER_PORT}",
            f"--initial-cluster=tracecar=http://127.0.0.1:{L.ETCD_PEER_PORT}",
            "--listen-metrics-urls=",
            # A throwaway test cluster: fsync buys nothing and costs seconds per write.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
        "kube-apiserver": [
            str(b / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            f"--bind-address={L.NODE_IP}",
            f"--advertise-address={L.NODE_IP}",
            f"--secure-port={L.APISERVER_PORT}",
            f"--cert-dir={lay.state / 'apiserver-certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--service-cluster-ip-range={L.SERVICE_CIDR}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            "--kubelet-preferred-address-types=InternalIP",
            # The apiserver dials a webhook Service's endpoint pod IP directly.
            "--enable-aggregator-routing=true",
            "--profiling=false",
            "--v=1",
        ],
        "kube-controller-manager": [
            str(b / "kube-controller-manager"),
            f"--kubeconfig={run / 'controller-manager.kubeconfig'}",
            f"--authentication-kubeconfig={run / 'controller-manager.kubeconfig'}",
            f"--authorization-kubeconfig={run / 'controller-manager.kubeconfig'}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            "--use-service-account-credentials=true",
            f"--service-cluster-ip-range={L.SERVICE_CIDR}",
            "--bind-address=127.0.0.1",
            "--secure-port=10257",
            "--leader-elect=false",
            "--v=1",
        ],
        "kube-scheduler": [
            str(b / "kube-scheduler"),
            f"--kubeconfig={run / 'scheduler.kubeconfig'}",
            f"--authentication-kubeconfig={run / 'scheduler.kubeconfig'}",
            f"--authorization-kubeconfig={run / 'scheduler.kubeconfig'}",
            "--bind-address=127.0.0.1",
            "--secure-port=10259",
            "--leader-elect=false",
            "--v=1",
        ],
        "kubelet": [
            str(b / "kubelet"),
            f"--config={run / 'kubelet.yaml'}",
            f"--kubeconfig={run / 'kubelet.kubeconfig'}",
            f"--root-dir={lay.state / 'kubelet'}",
            f"--node-ip={L.NODE_IP}",
            f"--hostname-override={L.NODE_NAME}",
            "--v=1",
        ],
        "kube-proxy": [str(b / "kube-proxy"), f"--config={run / 'kube-proxy.yaml'}", "--v=1"],
    }


def write_all(lay: Layout) -> None:
    run = lay.run
    for stem in ("admin", "controller-manager", "scheduler", "kubelet", "kube-proxy"):
        name = "kubeconfig" if stem == "admin" else f"{stem}.kubeconfig"
        (run / name).write_text(kubeconfig(lay, stem))
    (run / "containerd.toml").write_text(containerd_config(lay))
    (run / "cni").mkdir(exist_ok=True)
    (run / "cni" / "10-tracecar.conflist").write_text(cni_config(lay))
    (run / "kubelet.yaml").write_text(kubelet_config(lay))
    lay.resolv_conf.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    (run / "kube-proxy.yaml").write_text(kube_proxy_config(lay))
