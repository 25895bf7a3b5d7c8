"""Fixtures of the real-pod stage: images, the webhook container, the patched demo pod.

Session-scoped and chained, so the stage builds, starts and tears down everything once:
images -> webhook container -> AdmissionReview of demo/pod.yaml -> patched pod ->
`podman kube play` -> port-forward to the agent, with the agent's token read from the
pod spec (the README's kubectl jsonpath one-liner). Teardown runs in reverse even when a
test fails (see tests/e2e/realpod.py).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e import realpod


@pytest.fixture(scope="session")
def images() -> None:
    realpod.need_tools()
    realpod.build_images()


@pytest.fixture(scope="session")
def webhook(images: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[realpod.Webhook]:
    with realpod.webhook_container(tmp_path_factory.mktemp("certs")) as hook:
        yield hook


@pytest.fixture(scope="session")
def demo_pod() -> dict[str, Any]:
    return realpod.demo_pod(f"tracecar-demo-{secrets.token_hex(3)}")


@pytest.fixture(scope="session")
def review(webhook: realpod.Webhook, demo_pod: dict[str, Any]) -> dict[str, Any]:
    """The webhook's answer to the AdmissionReview of the demo pod, over verified TLS."""
    request = realpod.admission_review(demo_pod)
    with webhook.client() as client:
        r = client.post("/mutate", json=request)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    assert answer["response"]["uid"] == request["request"]["uid"]
    return answer


@pytest.fixture(scope="session")
def patched_pod(demo_pod: dict[str, Any], review: dict[str, Any]) -> dict[str, Any]:
    return realpod.apply_review(demo_pod, review)


@pytest.fixture(scope="session")
def real_pod(
    patched_pod: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[realpod.RealPod]:
    with realpod.kube_play(realpod.for_podman(patched_pod), tmp_path_factory.mktemp("pod")) as pod:
        expected = {c["name"] for c in patched_pod["spec"]["containers"]}
        realpod.wait_until(
            lambda: all(pod.states().get(n) == "running" for n in expected),
            60,
            f"pod {pod.name}: containers {sorted(expected)} running (now {pod.states()})",
        )
        yield pod


@pytest.fixture(scope="session")
def agent_url(real_pod: realpod.RealPod, patched_pod: dict[str, Any]) -> Iterator[str]:
    with realpod.port_forward(real_pod, realpod.agent_port(patched_pod)) as url:

        def healthy() -> bool:
            try:
                return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            realpod.wait_until(healthy, 60, "agent /healthz through port-forward")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{real_pod.logs(realpod.AGENT_CONTAINER)}") from None
        yield url


@pytest.fixture(scope="session")
def agent_token(patched_pod: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> str:
    token = realpod.token_from_spec(patched_pod, tmp_path_factory.mktemp("spec"))
    assert token, "no TRACECAR_AGENT_TOKEN in the patched pod's spec"
    return token


@pytest.fixture
def agent(agent_url: str, agent_token: str) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {agent_token}"}
    with httpx.Client(base_url=agent_url, timeout=60, headers=headers) as client:
        yield client
