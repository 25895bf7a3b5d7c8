"""The dev cluster's rendered configuration (pure: nothing started): every listener on
loopback or the cluster's own node address, nothing of the host's network or log
directories in the kubelet's hands, ``down``'s sweep covering our own chain; and the
refusals ``up`` makes before it starts anything (not root, a port taken)."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
import yaml

from devcluster import _host, _render
from devcluster import _layout as L
from devcluster._cluster import ClusterError, _check_ports, up
from devcluster._layout import Layout

OURS = {"127.0.0.1", L.NODE_IP}


def _layout(tmp_path: Path) -> Layout:
    return Layout(run=tmp_path / "run", cache=tmp_path / "cache")


def test_every_listener_is_loopback_or_the_node_address(tmp_path: Path) -> None:
    lay = _layout(tmp_path)
    argvs = _render.commands(lay)
    flags = re.compile(r"--(bind-address|advertise-address|node-ip)=(.+)")
    urls = re.compile(r"--listen-(client|peer)-urls=(.*)")
    seen = 0
    for argv in argvs.values():
        for arg in argv:
            if m := flags.match(arg):
                assert m.group(2) in OURS, arg
                seen += 1
            elif (m := urls.match(arg)) and m.group(2):
                assert all(
                    re.match(r"https?://127\.0\.0\.1:\d+$", u) for u in m.group(2).split(",")
                )
                seen += 1
    assert seen >= 5
    kubelet = yaml.safe_load(_render.kubelet_config(lay))
    assert kubelet["address"] == L.NODE_IP and kubelet["healthzBindAddress"] == "127.0.0.1"
    proxy = yaml.safe_load(_render.kube_proxy_config(lay))
    assert proxy["bindAddress"] == "127.0.0.1"
    assert proxy["nodePortAddresses"] == [f"{L.NODE_IP}/32"]
    assert 'stream_server_address = "127.0.0.1"' in _render.containerd_config(lay)


def test_the_kubelet_keeps_pod_logs_and_dns_to_the_cluster(tmp_path: Path) -> None:
    lay = _layout(tmp_path)
    kubelet = yaml.safe_load(_render.kubelet_config(lay))
    # Pod logs under the state `down` removes (not /var/log/pods), and not the host's
    # resolv.conf, whose nameserver is reached through the external interface.
    assert Path(kubelet["podLogsDir"]).is_relative_to(lay.state)
    assert kubelet["resolvConf"] == str(lay.resolv_conf) != "/etc/resolv.conf"
    lay.run.mkdir(parents=True)
    (lay.run / "cni").mkdir()
    _render.write_all(lay)
    assert lay.resolv_conf.read_text().split()[:2] == ["nameserver", "127.0.0.1"]


def test_downs_sweep_covers_the_egress_chain() -> None:
    assert L.EGRESS_CHAIN.startswith(_host.CHAIN_PREFIXES)
    assert len(L.EGRESS_CHAIN) <= 28  # iptables' limit on chain names


def test_a_port_taken_by_another_program_is_named(tmp_path: Path) -> None:
    addr, port, who = next((a, p, w) for a, p, w in L.LISTENERS if a == "127.0.0.1")
    with socket.socket() as holder:
        try:
            holder.bind((addr, port))
        except OSError:
            pytest.skip(f"{addr}:{port} is in use here already (a cluster is up?)")
        holder.listen()
        with pytest.raises(ClusterError) as err:
            _check_ports()
    assert f"{addr}:{port} ({who})" in str(err.value) and "ss -ltnp" in str(err.value)


def test_up_without_root_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("devcluster._cluster.os.geteuid", lambda: 1000)
    with pytest.raises(ClusterError, match="needs root"):
        up(_layout(tmp_path), tmp_path)
    assert not (tmp_path / "run").exists()  # refused before anything was made
