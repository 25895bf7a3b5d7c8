"""Shared fixtures: the simulated pod and an agent running in it (see tests/podsim.py)."""

from __future__ import annotations

import shutil
from collections.abc import Generator, Iterator

import httpx
import pytest

from tests import podsim


def need(*tools: str) -> None:
    """Fail (not skip) when a tool the suite depends on is missing: scripts/setup installs it."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing tools {missing}: run scripts/setup (the README's commands do)")


@pytest.fixture(scope="module")
def pod() -> Iterator[podsim.SimPod]:
    with podsim.sim_pod() as p:
        yield p


@pytest.fixture(scope="module")
def agent(pod: podsim.SimPod) -> podsim.AgentHandle:
    return podsim.start_agent(pod)


@pytest.fixture
def client(agent: podsim.AgentHandle) -> Iterator[httpx.Client]:
    """A client of the module's agent (modules that also check what is left behind after
    each test override this fixture)."""
    with agent.client() as c:
        yield c


AGENT_LOG_TAIL = 16384


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test that used a simulated pod's agent shows that agent's log (its tail)
    and whether it is still running: a failure on a busy CI machine is read afterwards,
    when the pod and its work directory are gone."""
    report = yield
    if report.failed:
        funcargs = getattr(item, "funcargs", {})
        handle, pod = funcargs.get("agent"), funcargs.get("pod")
        c: podsim.Container | None = None
        if isinstance(handle, podsim.AgentHandle):
            c = handle.container
        elif isinstance(pod, podsim.SimPod):
            # An agent the test started itself (podsim.start_agent with its own settings):
            # the pod's latest, whose log file is still there though the test stopped it.
            c = next((k for k in reversed(pod.containers) if k.name == "agent"), None)
        if c is not None:
            state = "running" if c.alive() else f"exited ({c.launcher.poll()})"
            report.sections.append(
                (f"agent log ({state}, last {AGENT_LOG_TAIL} bytes)", c.log()[-AGENT_LOG_TAIL:])
            )
    return report
