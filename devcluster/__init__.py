"""A single-node Kubernetes on this machine, made of the official components.

``scripts/cluster up|down|status|env|load|build`` drives it. The pieces:

- :mod:`devcluster._layout`: where everything lives (``.run/cluster``, the binary cache)
  and the fixed addresses and ports of the cluster.
- :mod:`devcluster._pki`: the cluster's CA and every component's certificate.
- :mod:`devcluster._render`: the configuration files of each component (pure).
- :mod:`devcluster._host`: what the cluster changes on the host (the veth pair, iptables
  chains, cgroups, mounts, sysctls) and how ``down`` undoes it.
- :mod:`devcluster._cluster`: starting, checking and stopping the components.
"""

from devcluster._cluster import ClusterError, down, load_images, status, up
from devcluster._layout import Layout

__all__ = ["ClusterError", "Layout", "down", "load_images", "status", "up"]
