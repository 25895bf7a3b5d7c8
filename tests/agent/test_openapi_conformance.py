"""The agent answers what its /openapi.json says: schemathesis against a real agent.

The agent runs in the simulated pod with its real tools (perf, bpftrace, lttng), so
every generated request meets the code a user's request would. Every operation of
the document is exercised; none is excluded. The long-running ones are bounded by
the agent's own settings instead: profiles and probes may last at most 1 s, LTTng
sessions 5 s, so a generated ``duration_s: 300`` or ``wait=true`` is answered (a
422 naming the limit, or a finished profile) within the run. The checks are
schemathesis's conformance checks (status codes, content types, response schemas
and headers, 405 for undeclared methods, negative and positive data handling).

Bounded: a fixed number of examples per operation and a derandomized run, so the
stage stays well under two minutes and a failure replays the same way.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import hypothesis.errors
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from agent.app import create_app
from agent.settings import Settings
from tests import podsim

pytestmark = pytest.mark.integration

TOKEN = "conformance-token"
MAX_EXAMPLES = 15
STATEFUL_EXAMPLES = 20
LIMITS = {
    "TRACECAR_AGENT_MAX_DURATION_S": "1",
    "TRACECAR_AGENT_DEFAULT_DURATION_S": "1",
    "TRACECAR_AGENT_PROBE_MAX_DURATION_S": "1",
    "TRACECAR_AGENT_PROBE_DEFAULT_DURATION_S": "1",
    "TRACECAR_AGENT_LTTNG_MAX_DURATION_S": "5",
    "TRACECAR_AGENT_LTTNG_DEFAULT_MAX_DURATION_S": "5",
}

_figures: Counter[str] = Counter()


@pytest.fixture(scope="module")
def conformance_agent(pod: podsim.SimPod) -> podsim.AgentHandle:
    agent = podsim.start_agent(pod, env=LIMITS, token=TOKEN)
    # A process of the pod's own, so that generated pids sometimes name a real target.
    pod.run("app", ["sleep", "infinity"])
    return agent


def _document() -> dict[str, object]:
    """The document the agent serves, built from the same code without starting it.

    Loaded at import (schemathesis's pytest integration parametrizes at collection;
    its lazy ``from_fixture`` does not run under pytest 9.2 here), and checked below
    to be byte for byte what the running agent serves.
    """
    return create_app(Settings(data_dir=Path("/nonexistent"))).openapi()


CONFIG = schemathesis.Config.from_dict(
    {
        "headers": {"Authorization": f"Bearer {TOKEN}"},
        "request-timeout": 30,
        "checks": {
            # Schema-valid is not always acceptable: the agent's limits are operator
            # settings (max duration, max events) and some checks need the target (a
            # regular expression that compiles, a function that exists in the binary).
            # Those answers are 422 with a message, as the document says; every other
            # status a valid request may meet is schemathesis's default list.
            "positive_data_acceptance": {
                "expected-statuses": ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]
            },
            # DELETE of a running profile or probe stops it and keeps what it recorded
            # (202, documented): it is still there to fetch, by design. Since the
            # answers have real schemas, the stateful run follows a new profile's id
            # into DELETE then GET, which this check reads as a deletion that failed.
            "use_after_free": {"enabled": False},
        },
    }
)
schema = schemathesis.openapi.from_dict(_document(), config=CONFIG)


def test_the_agent_serves_this_document(conformance_agent: podsim.AgentHandle) -> None:
    with conformance_agent.client() as c:
        assert c.get("/openapi.json").json() == _document()


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,  # real tools: a profile with wait=true takes a second or two
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_agent_conforms_to_its_openapi_document(
    case: schemathesis.Case, conformance_agent: podsim.AgentHandle
) -> None:
    _figures["cases"] += 1
    case.call_and_validate(base_url=conformance_agent.url)


def test_workflows_conform(conformance_agent: podsim.AgentHandle) -> None:
    """Stateful: sequences that follow one answer into the next request (a profile's id
    into its artifacts, a session's into its actions), as a client does."""

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, object]:
            return {"base_url": conformance_agent.url}

        def validate_response(
            self, response: object, case: schemathesis.Case, **kw: object
        ) -> None:
            _figures["cases"] += 1
            super().validate_response(response, case, **kw)

    # The machine's rules depend on live answers (a profile's id, a session's state),
    # so a failure that hangs on timing cannot be replayed and Hypothesis reports it as
    # a flaky definition rather than the failure. One more run then says whether the
    # failure is real (it is raised as itself when it reproduces).
    for attempt in (1, 2):
        try:
            run_state_machine_as_test(
                Workflow,
                settings=settings(
                    max_examples=STATEFUL_EXAMPLES,
                    stateful_step_count=6,
                    derandomize=True,
                    deadline=None,
                    suppress_health_check=list(HealthCheck),
                ),
            )
            return
        except hypothesis.errors.Flaky:  # FlakyStrategyDefinition is one
            if attempt == 2:
                raise


def test_conformance_figures(conformance_agent: podsim.AgentHandle) -> None:
    """The run's figures (shown with -rP), and the agent survived it clean."""
    print(f"schemathesis: {_figures['cases']} cases (failures: see the operations' own tests)")
    assert _figures["cases"] > 0
    with conformance_agent.client() as c:
        assert c.get("/healthz").status_code == 200
        # Nothing left running by the generated requests once their bounds have passed.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            probes = c.get("/probes").json()["probes"]
            profiles = c.get("/profiles").json()
            busy = [p for p in probes if p["state"] in ("starting", "running")]
            busy += [p for p in profiles if p["state"] in ("pending", "running")]
            if not busy:
                break
            time.sleep(0.5)
        assert not busy, busy
