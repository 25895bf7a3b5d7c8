"""``scripts/cluster``: the command line of the dev cluster (see docs/e2e.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from devcluster import _layout as L
from devcluster._cluster import ClusterError, down, healthy, load_images, status, up
from devcluster._layout import Layout

USAGE = """\
scripts/cluster up        start a single-node cluster (or reuse a healthy one); waits for Ready
scripts/cluster down      stop it and remove everything it left on the host
scripts/cluster status    each component's state (-o json for scripts); exit 0 when healthy
scripts/cluster env       print `export KUBECONFIG=...` (eval "$(scripts/cluster env)")
scripts/cluster load IMG  import local podman images into the cluster (like `kind load`)
scripts/cluster build     only build (or find cached) Kubernetes and etcd binaries
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="scripts/cluster",
        description=USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("command", choices=["up", "down", "status", "env", "load", "build"])
    p.add_argument("images", nargs="*")
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")
    args = p.parse_args(argv)
    repo = Path(__file__).resolve().parent.parent
    lay = Layout.for_repo(repo)
    try:
        if args.command == "up":
            up(lay, repo)
        elif args.command == "down":
            left = down(lay)
            if left:
                print("down left these behind:\n  " + "\n  ".join(left), file=sys.stderr)
                return 1
            print("cluster: down; nothing left behind", file=sys.stderr)
        elif args.command == "status":
            st = status(lay)
            if args.output == "json":
                print(
                    json.dumps(
                        {
                            "components": st,
                            "healthy": healthy(st),
                            "kubeconfig": str(lay.kubeconfig),
                        }
                    )
                )
            else:
                for k, v in st.items():
                    print(f"{k:24} {v}")
            return 0 if healthy(st) else 3
        elif args.command == "env":
            print(f"export KUBECONFIG={lay.kubeconfig}")
            print(f"export PATH={lay.run / 'bin'}:$PATH")
        elif args.command == "load":
            if not args.images:
                p.error("load needs at least one image, e.g. localhost/tracecar-agent:dev")
            load_images(lay, args.images)
        elif args.command == "build":
            from devcluster._cluster import _build

            _build(lay, repo)
            print(lay.bin)
    except ClusterError as exc:
        print(f"cluster: ERROR: {exc}", file=sys.stderr)
        return 1
    _ = L
    return 0


if __name__ == "__main__":
    sys.exit(main())
