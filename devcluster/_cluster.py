"""Starting, checking and stopping the cluster's components.

``up`` is idempotent: a healthy cluster is reused, anything else (a half-up cluster,
a dead component, leftovers of a crash) is cleaned and started afresh. Each component
runs detached (its own session, so it outlives ``scripts/cluster up``) and logs to
``.run/cluster/logs/NAME.log``; a failure names the component and that log."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from devcluster import _host, _pki, _render
from devcluster import _layout as L
from devcluster._layout import Layout


class ClusterError(RuntimeError):
    """Something the user can act on: what failed and where its log is."""


def _say(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S', time.gmtime())} cluster: {msg}", file=sys.stderr, flush=True)


def _pidfile(lay: Layout, name: str) -> Path:
    return lay.pids / f"{name}.pid"


def _alive(lay: Layout, name: str) -> bool:
    try:
        pid = int(_pidfile(lay, name).read_text())
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except (OSError, ValueError):
        return False
    return state != "Z"


def _tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return ""
    return "\n".join("    " + ln for ln in lines)


def _fail(lay: Layout, name: str, what: str) -> ClusterError:
    log = lay.log(name)
    return ClusterError(f"{name} {what}; its log is {log}; last lines:\n{_tail(log)}")


def _ssl_context(lay: Layout, *, client: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(lay.pki / "ca.crt"))
    if client:
        ctx.load_cert_chain(str(lay.pki / "admin.crt"), str(lay.pki / "admin.key"))
    return ctx


def _http_ok(url: str, ctx: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3, context=ctx) as r:  # noqa: S310 - our URLs
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


def _insecure() -> ssl.SSLContext:
    # Controller-manager and scheduler serve healthz with self-signed certs of their own.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _checks(lay: Layout) -> dict[str, Callable[[], bool]]:
    return {
        "containerd": lambda: (
            lay.sock.exists()
            and _host.run(
                ["ctr", "-a", str(lay.sock), "version"], check=False, timeout=10
            ).returncode
            == 0
        ),
        "etcd": lambda: _http_ok(f"http://127.0.0.1:{L.ETCD_CLIENT_PORT}/health"),
        "kube-apiserver": lambda: _http_ok(
            f"https://{L.NODE_IP}:{L.APISERVER_PORT}/readyz", _ssl_context(lay, client=True)
        ),
        "kube-controller-manager": lambda: _http_ok("https://127.0.0.1:10257/healthz", _insecure()),
        "kube-scheduler": lambda: _http_ok("https://127.0.0.1:10259/healthz", _insecure()),
        "kubelet": lambda: _http_ok("http://127.0.0.1:10248/healthz"),
        "kube-proxy": lambda: _http_ok("http://127.0.0.1:10256/healthz"),
    }


def kubectl(
    lay: Layout, *args: str, timeout: float = 60, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(lay.bin / "kubectl"), f"--kubeconfig={lay.kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


def _node_ready(lay: Layout) -> bool:
    res = kubectl(
        lay,
        "get",
        "node",
        L.NODE_NAME,
        "-o",
        "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
        check=False,
        timeout=15,
    )
    return res.returncode == 0 and res.stdout.strip() == "True"


def status(lay: Layout) -> dict[str, str]:
    """Each component's state ("running", "unhealthy", "stopped") and the node's."""
    out: dict[str, str] = {}
    checks = _checks(lay)
    for name in L.COMPONENTS:
        if not _alive(lay, name):
            out[name] = "stopped"
        else:
            out[name] = "running" if checks[name]() else "unhealthy"
    if out.get("kube-apiserver") == "running":
        out["node"] = "Ready" if _node_ready(lay) else "NotReady"
    else:
        out["node"] = "unknown"
    return out


def healthy(st: dict[str, str]) -> bool:
    return all(v == "running" for k, v in st.items() if k != "node") and st.get("node") == "Ready"


def _build(lay: Layout, repo: Path) -> None:
    if (lay.bin / ".complete").exists():
        return
    _say(
        f"building Kubernetes {L.KUBE_VERSION} and etcd {L.ETCD_VERSION} from source"
        " (first run on this machine)"
    )
    env = dict(
        os.environ,
        KUBE_VERSION=L.KUBE_VERSION,
        ETCD_VERSION=L.ETCD_VERSION,
        TRACECAR_CLUSTER_CACHE=str(lay.cache),
    )
    res = subprocess.run(
        [str(repo / "scripts" / "cluster.d" / "build")],
        env=env,
        stdout=subprocess.DEVNULL,
        timeout=3600,
        check=False,
    )
    if res.returncode != 0:
        raise ClusterError("building the cluster's binaries failed (see the messages above)")


def _check_ports() -> None:
    taken = []
    for addr, port, who in L.LISTENERS:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((addr, port))
            except OSError:
                taken.append(f"{addr}:{port} ({who})")
    if taken:
        raise ClusterError(
            "ports the cluster needs are taken by another program: "
            + ", ".join(taken)
            + " (see `ss -ltnp` for who holds them)"
        )


def _start(lay: Layout, name: str, argv: list[str]) -> None:
    log = lay.log(name).open("ab")
    env = dict(os.environ, PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=env,
        cwd=str(lay.run),
    )
    log.close()
    _pidfile(lay, name).write_text(str(proc.pid))


def _wait(lay: Layout, name: str, check: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if not _alive(lay, name):
            raise _fail(lay, name, "exited while starting")
        time.sleep(0.3)
    raise _fail(lay, name, f"did not become healthy in {timeout_s:.0f}s")


def _pause_image(lay: Layout) -> None:
    """Kubernetes' own pause (build/pause/linux/pause.c of the pinned release), static,
    as an image: no registry can give us registry.k8s.io/pause."""
    have = _host.run(
        ["ctr", "-a", str(lay.sock), "-n", "k8s.io", "images", "ls", "-q"], check=False
    )
    if L.PAUSE_IMAGE in have.stdout.split():
        return
    modcache = subprocess.run(
        ["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True
    ).stdout.strip()
    src = Path(modcache) / f"k8s.io/kubernetes@{L.KUBE_VERSION}" / "build/pause/linux/pause.c"
    if not src.exists():
        raise ClusterError(f"the pause source {src} is missing: run `scripts/cluster build` again")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        _host.run(
            ["gcc", "-Os", "-static", "-DVERSION=v3.10.1", "-o", str(root / "pause"), str(src)],
            timeout=120,
        )
        tar = Path(tmp) / "pause.tar"
        _host.run(["tar", "-C", str(root), "-cf", str(tar), "pause"])
        _host.run(
            ["podman", "import", "--change", 'ENTRYPOINT ["/pause"]', str(tar), L.PAUSE_IMAGE],
            timeout=120,
        )
    load_images(lay, [L.PAUSE_IMAGE])


def load_images(lay: Layout, images: list[str]) -> None:
    """Import local podman images into the cluster's containerd (what `kind load` does)."""
    if not lay.sock.exists():
        raise ClusterError("the cluster is not up: run `scripts/cluster up` first")
    for image in images:
        if _host.run(["podman", "image", "exists", image], check=False).returncode != 0:
            raise ClusterError(f"no local podman image {image!r} (see `podman images`)")
        with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
            archive = Path(tmp) / "image.tar"
            _host.run(
                ["podman", "save", "--format", "docker-archive", "-o", str(archive), image],
                timeout=600,
            )
            res = _host.run(
                [
                    "ctr",
                    "-a",
                    str(lay.sock),
                    "-n",
                    "k8s.io",
                    "images",
                    "import",
                    "--no-unpack=false",
                    str(archive),
                ],
                timeout=600,
                check=False,
            )
            if res.returncode != 0:
                raise ClusterError(
                    f"importing {image} into containerd failed: {res.stderr.strip()}"
                )
        _say(f"loaded {image}")


def up(lay: Layout, repo: Path) -> str:
    """Bring the cluster up (or reuse a healthy one); returns "reused" or "started"."""
    if os.geteuid() != 0:
        raise ClusterError(
            "the cluster needs root (containerd, the kubelet, network setup): run it as root"
        )
    for tool in ("ctr", "containerd", "runc", "iptables", "ip", "podman", "gcc"):
        if shutil.which(tool) is None:
            raise ClusterError(f"{tool} is not installed: run scripts/setup first")
    _build(lay, repo)
    if _alive(lay, "kube-apiserver") and healthy(status(lay)):
        _say("a healthy cluster is already up: reusing it")
        return "reused"
    if any(_alive(lay, n) for n in L.COMPONENTS) or _host.leftovers(lay):
        _say("a previous cluster is half up or left things behind: cleaning it first")
        _stop(lay)
    start = time.monotonic()
    for d in (lay.run, lay.logs, lay.pids, lay.state, lay.sock.parent):
        d.mkdir(parents=True, exist_ok=True)
    _host.save_sysctls(lay)
    _host.make_node_link()
    _host.isolate_pods()
    _check_ports()
    _pki.ensure(lay.pki)
    _render.write_all(lay)
    bindir = lay.run / "bin"
    bindir.mkdir(exist_ok=True)
    link = bindir / "kubectl"
    link.unlink(missing_ok=True)
    link.symlink_to(lay.bin / "kubectl")
    cmds = _render.commands(lay)
    checks = _checks(lay)
    timeouts = {"containerd": 30, "etcd": 30, "kube-apiserver": 90}
    try:
        for name in L.COMPONENTS:
            if name == "kubelet":
                _pause_image(lay)
            _say(f"starting {name}")
            _start(lay, name, cmds[name])
            _wait(lay, name, checks[name], timeouts.get(name, 60))
        _say("waiting for the node to be Ready")
        deadline = time.monotonic() + 120
        while not _node_ready(lay):
            if time.monotonic() > deadline:
                raise _fail(lay, "kubelet", "registered no Ready node in 120s")
            time.sleep(1)
        _wait_default_sa(lay)
    except BaseException:
        _say("start failed: stopping what started (logs are kept)")
        _stop(lay)
        raise
    _say(f"cluster up in {time.monotonic() - start:.0f}s; kubeconfig {lay.kubeconfig}")
    return "started"


def _wait_default_sa(lay: Layout) -> None:
    # Pods are refused until the controller-manager made the namespace's "default"
    # service account: wait for it, so the first `kubectl apply` after `up` works.
    deadline = time.monotonic() + 60
    while (
        kubectl(lay, "get", "sa", "default", "-n", "default", check=False, timeout=15).returncode
        != 0
    ):
        if time.monotonic() > deadline:
            raise _fail(lay, "kube-controller-manager", "created no default service account in 60s")
        time.sleep(0.5)


def _drain(lay: Layout) -> None:
    """Delete every workload through the API so the kubelet tears pods down properly
    (CNI DEL, volume unmounts); the hard cleanup after it catches whatever remains."""
    if not (_alive(lay, "kube-apiserver") and _alive(lay, "kubelet")):
        return
    kubectl(
        lay,
        "delete",
        "deploy,rs,ds,sts,job,cronjob,pod",
        "--all",
        "-A",
        "--wait=false",
        "--grace-period=2",
        check=False,
        timeout=60,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        res = kubectl(lay, "get", "pods", "-A", "-o", "name", check=False, timeout=15)
        if res.returncode != 0 or not res.stdout.strip():
            break
        time.sleep(1)


def _stop(lay: Layout) -> None:
    _drain(lay)
    for name in reversed(L.COMPONENTS):
        if name == "kube-proxy" and (lay.bin / "kube-proxy").exists():
            pass
        pidfile = _pidfile(lay, name)
        if _alive(lay, name):
            _host.kill_all({int(pidfile.read_text())}, grace_s=10)
        pidfile.unlink(missing_ok=True)
    if (lay.bin / "kube-proxy").exists():
        # kube-proxy's own undo of its iptables rules; the generic sweep follows.
        subprocess.run(
            [str(lay.bin / "kube-proxy"), "--cleanup"], capture_output=True, timeout=60, check=False
        )
    _host.cleanup(lay)


def down(lay: Layout) -> list[str]:
    """Stop everything and remove what the cluster left; returns what could not be."""
    if os.geteuid() != 0:
        raise ClusterError("stopping the cluster needs root: run it as root")
    _stop(lay)
    return _host.leftovers(lay)
