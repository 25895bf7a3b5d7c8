"""The `tracecar-certs` command line: `local` writes PEM files, `cluster` manages the Secret.

Owns argument parsing and the exit codes (0 done, 1 a cluster/API error, 2 bad
arguments); the work is in `certs._files` and `certs._cluster`. One JSON line on
stdout tells what was done, so Jobs' logs are greppable.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from certs import _cluster, _files, _pki
from certs.errors import ClusterError

# Kubernetes object names: a DNS-1123 label (namespaces, Services) or subdomain (the rest).
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_SUBDOMAIN = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)


def _label(value: str) -> str:
    if not _LABEL.match(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a DNS-1123 label (lower-case letters, digits, '-', 1-63 chars)"
        )
    return value


def _subdomain(value: str) -> str:
    if not _SUBDOMAIN.match(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a Kubernetes object name (lower-case DNS subdomain)"
        )
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracecar-certs",
        description="Create and renew the tracecar webhook's CA and serving certificate.",
    )
    sub = parser.add_subparsers(dest="mode", required=True)

    local = sub.add_parser("local", help="write ca.crt, tls.crt and tls.key to a directory")
    local.add_argument("--out-dir", type=Path, required=True)
    local.add_argument("--dns", nargs="+", default=[], metavar="NAME", help="DNS SANs")
    local.add_argument("--ip", nargs="+", default=[], metavar="IP", help="IP SANs")
    local.add_argument("--rotate", action="store_true", help="force a new serving cert")

    cluster = sub.add_parser(
        "cluster", help="keep the TLS Secret and the webhook configuration's caBundle current"
    )
    cluster.add_argument("--namespace", required=True, type=_label)
    cluster.add_argument("--service", required=True, type=_label)
    cluster.add_argument("--secret", required=True, type=_subdomain)
    cluster.add_argument("--webhook-config", required=True, type=_subdomain)
    cluster.add_argument("--cluster-domain", default="cluster.local", type=_subdomain)
    cluster.add_argument("--rotate", action="store_true", help="force a new serving cert")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.mode == "local":
            paths = _files.ensure_local_certs(
                args.out_dir, dns_names=args.dns, ip_addresses=args.ip, rotate=args.rotate
            )
            report: dict[str, object] = {
                "ca_cert": str(paths.ca_cert),
                "cert": str(paths.cert),
                "key": str(paths.key),
            }
        else:
            report = _run_cluster(args)
    except _pki.InvalidRequest as exc:
        print(f"tracecar-certs: {exc}", file=sys.stderr)
        return 2
    except ClusterError as exc:
        print(f"tracecar-certs: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # local mode: the directory is not writable, the disk is full...
        print(f"tracecar-certs: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, sort_keys=True))
    return 0


def _run_cluster(args: argparse.Namespace) -> dict[str, object]:
    # Imported here: the kubernetes client is slow to import and local mode never needs it.
    from certs import _kube

    api = _kube.KubeClusterApi.from_environment()
    result = _cluster.ensure_cluster_certs(
        api,
        namespace=args.namespace,
        service=args.service,
        secret=args.secret,
        webhook_config=args.webhook_config,
        cluster_domain=args.cluster_domain,
        rotate=args.rotate,
    )
    return result.as_report()


if __name__ == "__main__":
    sys.exit(main())
