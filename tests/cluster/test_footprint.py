"""The injected agent at its default requests and limits does the heaviest default of
each capability without being OOM-killed or throttled into failure (issue 23).

One labelled pod with the capability workloads (tests/cluster/footprint.py): a C
burner, a Python logger and a 200-thread Python process. The agent keeps the
webhook's default resources; each capability runs through port-forward, one after
the other, and must succeed; the agent container must not restart. The peak memory
and CPU of each are printed (the bench, bench/cluster_footprint_bench.py, tabulates
them). A per-pod annotation overrides the defaults.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import httpx
import pytest

from tests.cluster import footprint as F
from tests.cluster import kube as K

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]


def _running(kube: K.Kube, name: str) -> dict[str, Any]:
    def ready() -> bool:
        pod = kube.pod(name)
        statuses = pod["status"].get("containerStatuses", [])
        return bool(statuses) and all(s.get("started") for s in statuses)

    K.wait_until(ready, 180, f"pod {name} running", lambda: kube.logs_hint(f"pod/{name}", K.NS))
    return kube.pod(name)


def _agent(pod: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in K.containers(pod).values() if c["name"] == K.AGENT)


def test_defaults_survive_every_capability_at_its_heaviest(installed: K.Kube) -> None:
    name = f"footprint-{secrets.token_hex(3)}"
    installed.apply(F.workload_pod(name))
    try:
        pod = _running(installed, name)
        resources = _agent(pod)["resources"]
        # the webhook's defaults (docs/webhook.md): nothing in this pod overrides them
        assert resources == {
            "requests": {"cpu": "50m", "memory": "128Mi"},
            "limits": {"cpu": "1", "memory": "1Gi"},
        }, resources
        cg = F.Cgroup.of(pod)
        results = {}
        with (
            K.agent_forward(installed, name) as url,
            httpx.Client(base_url=url, headers=K.auth(pod), timeout=120) as client,
        ):
            for what, run in F.CAPABILITIES.items():
                cg.reset_peak()
                cpu0, thr0 = cg.cpu_s(), cg.throttled()
                said = run(client)
                results[what] = {
                    "peak_MiB": round(cg.peak() / 2**20, 1),
                    "cpu_s": round(cg.cpu_s() - cpu0, 2),
                    "throttled_periods": cg.throttled() - thr0,
                    "result": said,
                }
        print(json.dumps(results, indent=2))
        restarts, reason = F.agent_restarts(installed.pod(name))
        assert (restarts, reason) == (0, None), (restarts, reason, results)
        limit = 2**30
        for what, r in results.items():
            assert r["peak_MiB"] * 2**20 < limit, (what, r)
    finally:
        installed.run("delete", "pod", name, "-n", K.NS, "--wait=false", check=False)


def test_annotations_override_the_defaults(installed: K.Kube) -> None:
    name = f"footprint-ann-{secrets.token_hex(3)}"
    pod = F.app_pod(name, labelled=True)
    pod["metadata"]["annotations"] = {"tracecar.dev/memory": "512Mi", "tracecar.dev/cpu": "2"}
    installed.apply(pod)
    try:
        resources = _agent(_running(installed, name))["resources"]
        assert resources["limits"] == {"cpu": "2", "memory": "512Mi"}, resources
    finally:
        installed.run("delete", "pod", name, "-n", K.NS, "--wait=false", check=False)
