"""The dev cluster's rendered configuration (pure: nothing started): every listener on
loopback or the cluster's own node address, nothing of the host's network or log
directories in the kubelet's hands, and ``down``'s sweep covering our own chain."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from devcluster import _host, _render
from devcluster import _layout as L
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
