"""What the cluster changes on the host, and how ``down`` undoes every bit of it.

Made by ``up``: the veth pair carrying the node IP, the TCAR-* iptables chain that keeps
pods' packets on the pod bridge, sysctls the kubelet and the bridge plugin rewrite
(saved first, restored by ``down``). Made by the components: the pod bridge, pod network
namespaces, KUBE-*/CNI-* iptables chains, kubepods cgroups, mounts under the state
directory, containerd shims, the kubelet's links in /var/log/containers and its
device-plugin socket. ``cleanup`` removes all of it whether or
not the components are still alive or were ever fully started, so it also repairs a
half-up cluster."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

from devcluster import _layout as L
from devcluster._layout import Layout

# Sysctls the kubelet (kernel.*, vm.*), the bridge plugin (ip_forward) and kube-proxy
# (route_localnet) may set; values are restored by `down`.
SYSCTLS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.route_localnet",
    "net.bridge.bridge-nf-call-iptables",
)
CHAIN_PREFIXES = ("KUBE-", "CNI-", "TCAR-")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def run(
    argv: list[str], *, timeout: float = 30, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=check)


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def save_sysctls(lay: Layout) -> None:
    saved = lay.run / "sysctl.json"
    if saved.exists():  # a half-up cluster: keep the values from before the first up
        return
    values = {n: _sysctl_path(n).read_text().strip() for n in SYSCTLS if _sysctl_path(n).exists()}
    saved.write_text(json.dumps(values, indent=1))


def restore_sysctls(lay: Layout) -> None:
    saved = lay.run / "sysctl.json"
    if not saved.exists():
        return
    for name, value in json.loads(saved.read_text()).items():
        with contextlib.suppress(OSError):
            _sysctl_path(name).write_text(value)
    saved.unlink()


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def make_node_link() -> None:
    """The node's own address, on a veth pair the harness creates (the kubelet rejects
    a loopback node IP, and nothing may use the machine's external interface)."""
    if not link_exists(L.NODE_IF):
        run(["ip", "link", "add", L.NODE_IF, "type", "veth", "peer", "name", L.PEER_IF])
    run(["ip", "addr", "replace", f"{L.NODE_IP}/24", "dev", L.NODE_IF])
    run(["ip", "link", "set", L.NODE_IF, "up"])
    run(["ip", "link", "set", L.PEER_IF, "up"])


def isolate_pods() -> None:
    """Pods may reach each other (the bridge) and the node's own addresses (that is
    INPUT, not FORWARD): nothing they send is forwarded out of any other interface.
    With no masquerade that traffic could not come back anyway; this makes sure it
    never leaves. Swept by ``_chains`` with the components' own chains."""
    chain = L.EGRESS_CHAIN
    for binary in ("iptables", "ip6tables"):
        if run([binary, "-w", "-n", "-L", chain], check=False).returncode != 0:
            run([binary, "-w", "-N", chain])
        run([binary, "-w", "-F", chain])
        run([binary, "-w", "-A", chain, "-o", L.BRIDGE_IF, "-j", "RETURN"])
        run([binary, "-w", "-A", chain, "-j", "DROP"])
        jump = ["FORWARD", "-i", L.BRIDGE_IF, "-j", chain]
        if run([binary, "-w", "-C", *jump], check=False).returncode != 0:
            run([binary, "-w", "-I", jump[0], "1", *jump[1:]])


def _kubelet_host_files(lay: Layout) -> list[Path]:
    """What the kubelet wrote outside its directories: its links to our pods' logs in
    /var/log/containers and its device-plugin socket."""
    found: list[Path] = []
    if L.CONTAINER_LOGS_DIR.is_dir():
        for link in L.CONTAINER_LOGS_DIR.iterdir():
            with contextlib.suppress(OSError):
                if link.is_symlink() and os.readlink(link).startswith(f"{lay.pod_logs}/"):
                    found.append(link)
    sock = L.DEVICE_PLUGINS_DIR / "kubelet.sock"
    if sock.is_socket():
        found.append(sock)
    return found


def _remove_kubelet_host_files(lay: Layout) -> None:
    for f in _kubelet_host_files(lay):
        f.unlink(missing_ok=True)
    # The directories the kubelet made for them, when nothing else is in them.
    for d in (L.CONTAINER_LOGS_DIR, L.DEVICE_PLUGINS_DIR, L.DEVICE_PLUGINS_DIR.parent):
        with contextlib.suppress(OSError):
            d.rmdir()


def _mounts() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        points.append(point)
    return points


def ours(point: str, lay: Layout) -> bool:
    return (
        point.startswith(str(lay.state) + "/")
        or point == str(lay.state)
        or point.startswith("/run/netns/cni-")
        or point.startswith(str(lay.sock.parent))
    )


def our_mounts(lay: Layout) -> list[str]:
    return [p for p in _mounts() if ours(p, lay)]


def _umount_all(lay: Layout) -> None:
    for _ in range(5):
        points = sorted(our_mounts(lay), key=len, reverse=True)
        if not points:
            return
        for p in points:
            if run(["umount", p], check=False).returncode != 0:
                run(["umount", "-l", p], check=False)


def _cgroup_dirs() -> list[Path]:
    """Every kubepods cgroup, deepest first, in each v1 hierarchy (and v2's)."""
    found: list[Path] = []
    if not CGROUP_ROOT.exists():
        return found
    for hierarchy in CGROUP_ROOT.iterdir():
        top = hierarchy / "kubepods"
        if top.is_dir():
            found += [Path(d) for d, _, _ in os.walk(top)]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def cgroup_pids() -> set[int]:
    pids: set[int] = set()
    for d in _cgroup_dirs():
        with contextlib.suppress(OSError):
            pids |= {int(x) for x in (d / "cgroup.procs").read_text().split()}
    return pids


def our_processes(lay: Layout) -> set[int]:
    """Component processes, containerd's shims and everything in the pods' cgroups."""
    pids = cgroup_pids()
    bindir = str(lay.bin)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            exe = os.readlink(proc / "exe")
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        mine = exe.startswith(bindir + "/") or str(lay.sock).encode() in cmd
        config = str(lay.run / "containerd.toml").encode()
        if mine or (exe == "/usr/bin/containerd" and config in cmd):
            pids.add(int(proc.name))
    pids.discard(os.getpid())
    return pids


def kill_all(pids: set[int], *, grace_s: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.1)
        pids = {p for p in pids if Path(f"/proc/{p}").exists()}
        if not pids:
            return


def _chains(binary: str) -> None:
    """Remove every KUBE-*/CNI-* chain and every rule that jumps to one."""
    for table in ("filter", "nat", "mangle", "raw"):
        res = run([f"{binary}-save", "-t", table], check=False)
        if res.returncode != 0:
            continue
        custom: list[str] = []
        for line in res.stdout.splitlines():
            if line.startswith(":") and line[1:].startswith(CHAIN_PREFIXES):
                custom.append(line[1:].split()[0])
        for line in res.stdout.splitlines():
            if not line.startswith("-A "):
                continue
            args = shlex.split(line)
            chain = args[1]
            target = args[args.index("-j") + 1] if "-j" in args else ""
            if not chain.startswith(CHAIN_PREFIXES) and target.startswith(CHAIN_PREFIXES):
                run([binary, "-w", "-t", table, "-D", *args[1:]], check=False)
        for c in custom:
            run([binary, "-w", "-t", table, "-F", c], check=False)
        for c in custom:
            run([binary, "-w", "-t", table, "-X", c], check=False)


def leftover_chains() -> list[str]:
    left = []
    for binary in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle", "raw"):
            res = run([f"{binary}-save", "-t", table], check=False)
            left += [
                f"{binary}/{table}/{ln[1:].split()[0]}"
                for ln in res.stdout.splitlines()
                if ln.startswith(":") and ln[1:].startswith(CHAIN_PREFIXES)
            ]
    return left


def cleanup(lay: Layout) -> None:
    """Everything the cluster left on the host, gone. Safe to run any number of times."""
    kill_all(our_processes(lay), grace_s=10)
    _umount_all(lay)
    # Not `ip netns delete`: on a /run/netns that is not yet a mount point, ip first
    # bind-mounts /run/netns over itself, which hides the nsfs mounts under it and
    # leaves them behind (seen here). The mounts went with _umount_all; drop the files.
    netns = Path("/run/netns")
    for ns in netns.glob("cni-*") if netns.is_dir() else []:
        with contextlib.suppress(OSError):
            ns.unlink()
    for d in _cgroup_dirs():
        with contextlib.suppress(OSError):
            d.rmdir()
    for link in (L.BRIDGE_IF, L.NODE_IF):
        if link_exists(link):
            run(["ip", "link", "del", link], check=False)
    for binary in ("iptables", "ip6tables"):
        _chains(binary)
    results = Path("/var/lib/cni/results")
    if results.is_dir():
        for f in results.glob(f"{L.CNI_NETWORK}-*"):
            f.unlink(missing_ok=True)
    restore_sysctls(lay)
    _remove_kubelet_host_files(lay)
    if lay.sock.parent.exists():
        subprocess.run(["rm", "-rf", str(lay.sock.parent)], check=False, timeout=60)
    if lay.state.exists():
        subprocess.run(["rm", "-rf", str(lay.state)], check=False, timeout=300)


def leftovers(lay: Layout) -> list[str]:
    """What of the cluster is still on the host (empty after a clean ``down``)."""
    left = [f"process {p}" for p in sorted(our_processes(lay))]
    left += [f"mount {m}" for m in our_mounts(lay)]
    left += [f"cgroup {d}" for d in _cgroup_dirs()]
    left += [f"interface {i}" for i in (L.BRIDGE_IF, L.NODE_IF, L.PEER_IF) if link_exists(i)]
    left += [f"iptables chain {c}" for c in leftover_chains()]
    if Path("/run/netns").exists():
        left += [f"netns {n.name}" for n in Path("/run/netns").glob("cni-*")]
    left += [f"kubelet file {f}" for f in _kubelet_host_files(lay)]
    if lay.state.exists():
        left.append(f"state {lay.state}")
    return left
