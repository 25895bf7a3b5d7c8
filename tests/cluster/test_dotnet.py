""".NET on the real cluster: a labelled Deployment running a real CoreCLR (the .NET Core
3.1 runtime and a C# app compiled with mcs, as the integration stage builds them, put
into a local image) gets the runtime's knobs in both spellings from the webhook, and
`kubectl tracecar profile` draws its managed chain Main -> Outer -> Middle -> Hot."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests import dotnet_workloads as dn
from tests.cluster import kube as K
from tests.cluster.plugin_cli import ok, tracecar

# 1800, as test_footprint: the first test's budget includes building the .NET image and
# loading it into containerd, which outlasted 900 s once with the disk saturated (a dd
# loop with fsync beside the whole suite).
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]

IMAGE = f"localhost/tracecar-dotnet-demo:{K.TAG}"
CHAIN = "TraceCar.Demo.Chain::"

CONTAINERFILE = """\
FROM localhost/debian:bookworm-slim
COPY dotnet /opt/dotnet
COPY app /app
ENTRYPOINT ["/opt/dotnet/dotnet", "/app/chain.dll"]
"""


def _build_image(ctx: Path) -> None:
    """The runtime and the compiled app on the project's Debian base (scripts/images made
    it for the cluster fixture), built like scripts/images builds, then loaded."""
    dn.ensure_runtime()
    app = dn.build(dn.CHAIN_CS, name="chain")
    shutil.copytree(dn.ROOT, ctx / "dotnet", symlinks=True)
    shutil.copytree(app, ctx / "app")
    (ctx / "Containerfile").write_text(CONTAINERFILE)
    env = dict(os.environ, CONTAINERS_CONF=str(K.REPO / "deploy/podman/containers.conf"))
    res = subprocess.run(
        ["podman", "build", "--quiet", "--layers", "--isolation", "chroot", "--network", "host",
         "-f", str(ctx / "Containerfile"), "-t", IMAGE, str(ctx)],
        capture_output=True, text=True, timeout=900, env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    res = subprocess.run(
        [str(K.REPO / "scripts" / "cluster"), "load", IMAGE],
        capture_output=True, text=True, timeout=900, cwd=K.REPO,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]


def _deployment() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "dotnet", "namespace": K.NS},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "dotnet"}},
            "template": {
                "metadata": {
                    "labels": {"app": "dotnet", "profiling": "enabled"},
                    # the knobs need a restart to take effect: the pod asks for them up front
                    "annotations": {"tracecar.dev/runtime-symbols": "true"},
                },
                "spec": {
                    "terminationGracePeriodSeconds": 2,
                    "containers": [
                        {
                            "name": "app",
                            "image": IMAGE,
                            "imagePullPolicy": "Never",
                            "resources": {
                                "requests": {"cpu": "20m", "memory": "64Mi"},
                                "limits": {"cpu": "500m", "memory": "256Mi"},
                            },
                        }
                    ],
                },
            },
        },
    }


@pytest.fixture(scope="module")
def dotnet_pod(installed: K.Kube, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    _build_image(tmp_path_factory.mktemp("dotnet-image"))
    installed.apply(_deployment())
    pod = K.ready_pods(installed, "dotnet")[0]
    name = pod["metadata"]["name"]

    # "ready" is printed once Main runs: Hot is JIT'd (and in the perf map) right after
    def started() -> bool:
        return "ready" in installed.run("logs", name, "-n", K.NS, "-c", "app", check=False).stdout

    K.wait_until(
        started,
        120,
        "the .NET app's first line",
        lambda: installed.logs_hint(f"pod/{name}", K.NS),
    )
    return pod


def test_the_webhook_sets_the_knobs_in_both_spellings(dotnet_pod: dict[str, Any]) -> None:
    env = {e["name"]: e.get("value") for e in K.containers(dotnet_pod)["app"].get("env", [])}
    for knob in ("PerfMapEnabled", "EnableEventLog"):
        assert env.get(f"COMPlus_{knob}") == "1", env  # what 3.1 reads
        assert env.get(f"DOTNET_{knob}") == "1", env  # what .NET 5 and later read


def test_profile_shows_the_managed_chain(
    installed: K.Kube, dotnet_pod: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "dotnet.folded"
    name = dotnet_pod["metadata"]["name"]
    ok(tracecar(installed, "profile", name, "-c", "app", "-d", "5s", "-o", str(out)))
    stacks: Counter[str] = Counter()
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        stacks[stack] += int(n)
    total = sum(stacks.values())
    under_hot = {s: n for s, n in stacks.items() if f"{CHAIN}Hot" in s}
    hot = sum(under_hot.values())
    assert total >= 20 and hot / total >= 0.8, stacks.most_common(8)
    chained = sum(
        n
        for s, n in under_hot.items()
        if [f.rsplit("::", 1)[-1] for f in s.split(";") if CHAIN in f][-4:]
        == ["Main", "Outer", "Middle", "Hot"]
    )
    assert chained / hot >= 0.9, sorted(under_hot.items(), key=lambda kv: -kv[1])[:5]
    installed.run("delete", "deploy/dotnet", "-n", K.NS, "--wait=false", check=False)
