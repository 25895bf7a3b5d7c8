"""Sinks against the real stores: Grafana Pyroscope and MinIO (S3) as local processes.

The agent runs in the simulated pod with its real tools and sends to a real
Pyroscope and a real MinIO on loopback (tests/stores.py; built from source on a
machine's first run). What is checked is what a user would look at: the profile
queried back through Pyroscope's query API with the workload's hot function
holding its share, the intervals of continuous profiling each present, an
LTTng trace downloaded from the bucket opening with babeltrace2, a store
stopped and restarted with no interval missing, a full spool's drops counted,
and wrong credentials or an unknown bucket said in /capabilities.
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import podsim
from tests.agent.workloads import HOTCOLD_C, compile_c
from tests.conftest import need
from tests.lttng.lttng_helpers import build_c_app, run_c_app, trigger
from tests.stores import OFFCPU_TYPE, Gate, MinIO, Pyroscope, share, store_binary

# Generous bounds, not timing: on a loaded machine bpftrace's per-second output (what
# the continuous pushes are made of) can fall tens of seconds behind.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

BUCKET = "tracecar-artifacts"
INTERVAL_S = 2


def _wait(pred: Any, timeout: float, what: str, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


@pytest.fixture(scope="module")
def minio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinIO]:
    server = MinIO(store_binary("minio"), tmp_path_factory.mktemp("minio"))
    server.start()
    server.client().create_bucket(Bucket=BUCKET)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pyroscope(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pyroscope]:
    server = Pyroscope(store_binary("pyroscope"), tmp_path_factory.mktemp("pyroscope"))
    server.start(timeout=180)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def hotcold(pod: podsim.SimPod, tmp_path_factory: pytest.TempPathFactory) -> podsim.Container:
    """A C program spending ~10x more CPU in hot_function than in cold_function."""
    need("gcc", "perf", "bpftrace")
    binary = compile_c(HOTCOLD_C, tmp_path_factory.mktemp("hotcold") / "hotcold")
    return pod.run("hotcold", ["/srv/hotcold"], files={"hotcold": binary})


# Burns ~40 ms, then sleeps ~10 ms, for ever: CPU for the trigger to see and, unlike a
# pure busy loop (which an idle machine may never switch out), off-CPU time to capture.
BURN_AND_SLEEP_C = r"""
#include <stdint.h>
#include <time.h>
#include <unistd.h>
volatile uint64_t sink;
__attribute__((noinline)) void nap(void) { usleep(10000); }
int main(void) {
    for (;;) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        do {
            for (int i = 0; i < 100000; i++) sink += i;
            clock_gettime(CLOCK_MONOTONIC, &b);
        } while ((b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec) < 40000000L);
        nap();
    }
}
"""


@pytest.fixture(scope="module")
def burn_and_sleep(
    pod: podsim.SimPod, tmp_path_factory: pytest.TempPathFactory
) -> podsim.Container:
    binary = compile_c(BURN_AND_SLEEP_C, tmp_path_factory.mktemp("burnsleep") / "burnsleep")
    return pod.run("burnsleep", ["/srv/burnsleep"], files={"burnsleep": binary})


@contextlib.contextmanager
def agent_with(pod: podsim.SimPod, env: dict[str, str]) -> Iterator[podsim.AgentHandle]:
    """An agent of the pod with these settings, stopped (SIGTERM) at the end. Only one
    runs LTTng's session daemon at a time (the pod's /var/run/lttng is shared)."""
    agent = podsim.start_agent(pod, env={"TRACECAR_AGENT_POD_NAMESPACE": "sinks-test", **env})
    try:
        yield agent
    finally:
        agent.container.stop(timeout=60)


def service() -> str:
    return f"sinks-test/{uuid.uuid4().hex[:8]}"


def sink_status(client: httpx.Client, name: str) -> dict[str, Any]:
    caps = client.get("/capabilities").json()
    status: dict[str, Any] = caps["sinks"][name]
    return status


def pyroscope_env(p: Pyroscope | str, name: str, **more: str) -> dict[str, str]:
    url = p if isinstance(p, str) else p.url
    return {"TRACECAR_AGENT_PYROSCOPE_URL": url, "TRACECAR_AGENT_SERVICE_NAME": name, **more}


def continuous_env(p: Pyroscope | str, name: str) -> dict[str, str]:
    """The agent recording the whole pod and pushing every INTERVAL_S to ``p``."""
    return pyroscope_env(
        p,
        name,
        TRACECAR_AGENT_CONTINUOUS="true",
        TRACECAR_AGENT_CONTINUOUS_INTERVAL_S=str(INTERVAL_S),
    )


def test_on_demand_profile_lands_in_pyroscope_and_s3(
    pod: podsim.SimPod, hotcold: podsim.Container, pyroscope: Pyroscope, minio: MinIO
) -> None:
    name = service()
    env = pyroscope_env(pyroscope, name, **minio.agent_env(BUCKET))
    with agent_with(pod, env) as agent, agent.client() as c:
        caps = c.get("/capabilities").json()["sinks"]
        assert set(caps) == {"pyroscope", "s3"}
        for s in caps.values():
            assert s["configured"] is True and s["state"] == "ok", s
        t0 = time.time()
        r = c.post(
            "/profiles",
            params={"wait": "true", "format": "folded"},
            json={"pid": hotcold.pid, "duration_s": 3, "profiler": "perf", "push": True},
        )
        assert r.status_code == 200, r.text
        profile_id = r.headers["location"].rsplit("/", 1)[1]
        selector = f'{{service_name="{name}", source="on-demand", profile_id="{profile_id}"}}'
        totals = _wait(
            lambda: pyroscope.merged(selector, t0 - 60, time.time() + 60),
            60,
            "the profile in Pyroscope",
        )
        assert share(totals, "hot_function") > 0.6, totals
        assert share(totals, "cold_function") < 0.3, totals
        # The labels users query by.
        for label, value in (("namespace", "sinks-test"), ("type", "cpu"), ("pod", None)):
            values = pyroscope.label_values(label, t0 - 60, time.time() + 60)
            assert (value in values) if value else values, (label, values)
        # A copy of the profile in the bucket.
        key = _wait(
            lambda: [
                o["Key"]
                for o in minio.client().list_objects_v2(Bucket=BUCKET).get("Contents", [])
                if o["Key"].endswith(f"/profiles/{profile_id}/profile.pb.gz")
            ],
            60,
            "the profile's copy in S3",
        )[0]
        assert key.startswith("tracecar/sinks-test/"), key
        pyro = _wait(
            lambda: sink_status(c, "pyroscope")["sent"] >= 1 and sink_status(c, "pyroscope"),
            30,
            "sent",
        )
        assert pyro["last_success"] and pyro["last_error"] is None, pyro
        # Without a store, push is refused up front, saying which setting is missing.
        metrics = c.get("/metrics").text
        assert 'tracecar_agent_sink_sent_total{sink="pyroscope"}' in metrics


def test_push_without_a_store_is_409(pod: podsim.SimPod, hotcold: podsim.Container) -> None:
    with agent_with(pod, {}) as agent, agent.client() as c:
        caps = c.get("/capabilities").json()["sinks"]
        assert caps["pyroscope"]["state"] == "disabled" and caps["s3"]["state"] == "disabled"
        r = c.post("/profiles", json={"pid": hotcold.pid, "duration_s": 1, "push": True})
        assert r.status_code == 409 and "TRACECAR_AGENT_PYROSCOPE_URL" in r.json()["detail"]
        r = c.post("/recorder", json={"push": True})
        assert r.status_code == 409 and "TRACECAR_AGENT_PYROSCOPE_URL" in r.json()["detail"]
        assert c.get("/recorder").json()["state"] == "stopped"  # nothing started
        r = c.post("/profiles/0123456789ab/perf.data/upload")
        assert r.status_code == 409 and "TRACECAR_AGENT_S3_BUCKET" in r.json()["detail"]


def test_continuous_profiles_arrive_every_interval(
    pod: podsim.SimPod, hotcold: podsim.Container, pyroscope: Pyroscope
) -> None:
    name = service()
    env = continuous_env(pyroscope, name)
    with agent_with(pod, env) as agent, agent.client() as c:
        status = c.get("/recorder").json()
        assert status["state"] in ("starting", "recording") and status["push"]["enabled"], status
        push = _wait(
            lambda: (p := c.get("/recorder").json()["push"])["intervals_pushed"] >= 4 and p,
            300,
            "four intervals pushed",
        )
        _wait(lambda: sink_status(c, "pyroscope")["queued_items"] == 0, 30, "the spool drained")
    intervals = push["recent_intervals"]
    assert all(a[1] == b[0] for a, b in itertools.pairwise(intervals)), intervals
    assert all(hi - lo <= INTERVAL_S for lo, hi, _ in intervals), intervals
    # Each interval with samples is in the store, with its own timestamp; the hot
    # function holds its share.
    selector = f'{{service_name="{name}", source="continuous", process="hotcold"}}'
    with_samples = [(lo, hi) for lo, hi, n in intervals if n]
    assert len(with_samples) >= 2, intervals
    for lo, hi in with_samples[-3:]:
        totals = pyroscope.merged(selector, lo - 0.1, hi - 0.1)
        assert sum(totals.values()) > 0, f"no profile for the interval [{lo}, {hi})"
    merged = pyroscope.merged(selector, intervals[0][0], intervals[-1][1])
    assert share(merged, "hot_function") > 0.6, merged


def test_sigterm_pushes_the_last_seconds(
    pod: podsim.SimPod, hotcold: podsim.Container, pyroscope: Pyroscope
) -> None:
    """A pod deleted mid-interval: its last seconds are pushed and flushed at SIGTERM."""
    name = service()
    # An interval of an hour: whatever reaches the store can only be SIGTERM's push, however
    # long bpftrace takes to attach on a loaded machine.
    env = pyroscope_env(
        pyroscope,
        name,
        TRACECAR_AGENT_CONTINUOUS="true",
        TRACECAR_AGENT_CONTINUOUS_INTERVAL_S="3600",
    )
    t0 = time.time()
    with agent_with(pod, env) as agent, agent.client() as c:
        # Samples in the ring, not a sleep: on a loaded machine the app gets a fraction of
        # a core and the sampler's output trails by seconds.
        _wait(
            lambda: (c.get("/recorder").json().get("samples") or 0) >= 20,
            300,
            "20 samples recorded",
        )
        assert c.get("/recorder").json()["push"]["intervals_pushed"] == 0
        rc = agent.container.stop(signal.SIGTERM, timeout=60)
    assert rc is not None
    totals = pyroscope.merged(f'{{service_name="{name}"}}', t0 - 5, time.time() + 5)
    assert share(totals, "hot_function") > 0.5, totals


def test_trigger_capture_carries_its_labels(
    pod: podsim.SimPod, burn_and_sleep: podsim.Container, pyroscope: Pyroscope
) -> None:
    name = service()
    with agent_with(pod, pyroscope_env(pyroscope, name)) as agent, agent.client() as c:
        t0 = time.time()
        r = c.post(
            "/triggers",
            json={
                "pid": burn_and_sleep.pid,
                "cpu_percent": 5,  # ~80% of a core, even on a machine shared with builds
                "for_s": 1,
                "max_captures": 1,
                "profile": {"duration_s": 2, "type": "off-cpu"},
                "push": True,
            },
        )
        assert r.status_code == 201, r.text
        tid = r.json()["id"]
        trig = _wait(
            lambda: (t := c.get(f"/triggers/{tid}").json())["state"] in ("done", "failed") and t,
            90,
            "the capture",
        )
        assert trig["state"] == "done" and len(trig["captures"]) == 1, trig
        selector = f'{{service_name="{name}", source="trigger", trigger_id="{tid}"}}'
        totals = _wait(
            lambda: pyroscope.merged(selector, t0 - 60, time.time() + 60, OFFCPU_TYPE),
            60,
            "the trigger's capture in Pyroscope",
        )
        assert sum(totals.values()) > 0
        reasons = pyroscope.label_values("trigger_reason", t0 - 60, time.time() + 60)
        assert "cpu >= 5% for 1s" in reasons, reasons


def test_lttng_trace_and_perf_data_uploaded_to_s3(
    pod: podsim.SimPod, hotcold: podsim.Container, minio: MinIO, tmp_path: Path
) -> None:
    need("babeltrace2", "lttng")
    tcapp = build_c_app(tmp_path)
    with agent_with(pod, minio.agent_env(BUCKET)) as agent, agent.client() as c:
        app = run_c_app(pod, "tcapp-s3", tcapp, 50)  # after the agent: its sessiond is up
        try:
            r = c.post(
                "/lttng/sessions",
                json={
                    "events": [{"domain": "userspace", "names": ["tracecar_test:*"]}],
                    "pids": [app.pid],
                },
            )
            assert r.status_code == 201, r.text
            sid = r.json()["id"]
            assert c.post(f"/lttng/sessions/{sid}/start").status_code == 200
            trigger(app, 1)
            assert c.post(f"/lttng/sessions/{sid}/stop").status_code == 200
            r = c.post(f"/lttng/sessions/{sid}/trace/upload", params={"presign": "true"})
            assert r.status_code == 200, r.text
            up = r.json()
        finally:
            app.stop()
        assert up["state"] == "stored" and up["bucket"] == BUCKET, up
        assert up["key"].startswith("tracecar/sinks-test/") and up["key"].endswith(".tar.gz")
        body = minio.client().get_object(Bucket=BUCKET, Key=up["key"])["Body"].read()
        assert len(body) == up["size"]
        assert httpx.get(up["url"], timeout=30).content == body  # the presigned URL works
        archive = tmp_path / "trace.tar.gz"
        archive.write_bytes(body)
        out = tmp_path / "trace"
        with tarfile.open(archive) as tar:
            tar.extractall(out, filter="data")
        text = subprocess.run(
            ["babeltrace2", str(out)], capture_output=True, text=True, timeout=60, check=True
        ).stdout
        assert text.count("tracecar_test:tick") == 50, text[:2000]

        r = c.post(
            "/profiles",
            params={"wait": "true"},
            json={"pid": hotcold.pid, "duration_s": 1, "profiler": "perf"},
        )
        assert r.status_code == 200, r.text
        pid_ = r.headers["location"].rsplit("/", 1)[1]
        up = c.post(f"/profiles/{pid_}/perf.data/upload").json()
        assert (up["state"] == "stored" and "url" not in up) or up["url"] is None, up
        head = minio.client().head_object(Bucket=BUCKET, Key=up["key"])
        assert head["ContentLength"] == len(c.get(f"/profiles/{pid_}/perf.data").content)


@pytest.mark.parametrize(
    ("what", "bucket", "secret", "words"),
    [
        ("wrong secret", BUCKET, "not-the-secret", "secret key does not match"),
        ("unknown bucket", "no-such-bucket", None, "bucket does not exist"),
    ],
)
def test_wrong_credentials_and_unknown_bucket_are_reported(
    pod: podsim.SimPod,
    hotcold: podsim.Container,
    minio: MinIO,
    what: str,
    bucket: str,
    secret: str | None,
    words: str,
) -> None:
    env = minio.agent_env(bucket, **({"secret": secret} if secret else {}))
    with agent_with(pod, env) as agent, agent.client() as c:
        r = c.post(
            "/profiles",
            params={"wait": "true"},
            json={"pid": hotcold.pid, "duration_s": 1, "profiler": "perf"},
        )
        assert r.status_code == 200, r.text
        job = r.headers["location"].rsplit("/", 1)[1]
        r = c.post(f"/profiles/{job}/perf.data/upload")
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "spooled", (what, r.json())
        s3 = _wait(lambda: (s := sink_status(c, "s3"))["state"] == "failing" and s, 30, what)
        assert words in s3["last_error"], s3
        assert s3["queued_bytes"] > 0 and s3["last_success"] is None
        # The rest of the agent works all the same.
        assert c.get("/processes").status_code == 200
        assert agent.container.alive()


def test_full_spool_drops_oldest_and_counts(pod: podsim.SimPod, hotcold: podsim.Container) -> None:
    dead = f"http://127.0.0.1:{podsim.free_port()}"  # nothing listens there
    env = pyroscope_env(
        dead,
        service(),
        TRACECAR_AGENT_CONTINUOUS="true",
        TRACECAR_AGENT_CONTINUOUS_INTERVAL_S="1",
        TRACECAR_AGENT_SPOOL_MAX_BYTES="1024",
    )
    with agent_with(pod, env) as agent, agent.client() as c:
        s = _wait(lambda: (s := sink_status(c, "pyroscope"))["dropped"] >= 1 and s, 600, "drops")
        assert s["state"] in ("retrying", "failing") and "cannot reach" in s["last_error"], s
        assert 0 < s["queued_bytes"] <= 1024, s
        metrics = c.get("/metrics").text
        line = next(
            ln
            for ln in metrics.splitlines()
            if ln.startswith("tracecar_agent_sink_dropped_total")
            and 'reason="spool_full"' in ln
            and 'sink="pyroscope"' in ln
        )
        assert float(line.split()[-1]) >= 1
        assert c.get("/recorder").json()["state"] == "recording"  # profiling goes on


def test_store_outage_leaves_no_gap(
    pod: podsim.SimPod, hotcold: podsim.Container, pyroscope: Pyroscope
) -> None:
    """Pyroscope unreachable, stopped and started again: the spool covered every interval.

    The agent reaches the store through a :class:`Gate` that is cut before the store
    stops and restored after it is back, so no push can land in Pyroscope's own
    shutdown, which acknowledges and then loses the last ones (see ``Gate``): an
    outage as a cluster makes it, the Service's address going first.
    """
    name = service()
    with (
        Gate(pyroscope.http_port) as gate,
        agent_with(pod, continuous_env(gate.url, name)) as agent,
        agent.client() as c,
    ):

        def pushed() -> int:
            return int(c.get("/recorder").json()["push"]["intervals_pushed"])

        _wait(lambda: pushed() >= 2, 60, "two intervals pushed")
        _wait(lambda: sink_status(c, "pyroscope")["queued_items"] == 0, 30, "sent")
        before = c.get("/recorder").json()["push"]["last_interval"]
        gate.cut()
        pyroscope.stop()
        try:
            n = pushed()
            _wait(lambda: pushed() >= n + 4, 60, "four intervals during the outage")
            down = sink_status(c, "pyroscope")
            assert down["state"] in ("retrying", "failing") and down["queued_items"] >= 3, down
        finally:
            pyroscope.start(timeout=180)
            gate.restore()
        _wait(lambda: sink_status(c, "pyroscope")["queued_items"] == 0, 120, "the spool drained")
        intervals = c.get("/recorder").json()["push"]["recent_intervals"]
        up = sink_status(c, "pyroscope")
        assert up["state"] == "ok" and up["dropped"] == 0, up
    covered = [iv for iv in intervals if iv[0] >= before["start"]]
    assert len(covered) >= 6, intervals
    assert all(a[1] == b[0] for a, b in itertools.pairwise(covered)), covered
    selector = f'{{service_name="{name}", source="continuous"}}'
    missing = [
        (lo, hi)
        for lo, hi, n in covered
        if n and not sum(pyroscope.merged(selector, lo - 0.1, hi - 0.1).values())
    ]
    if missing:
        # Which side lost it? Say whether the store has the profile a little later or
        # nearby, and where the missing interval sits in the outage. (Twice, under heavy
        # load and before the Gate, the interval pushed as Pyroscope shut down.)
        time.sleep(10)
        later = [(lo, bool(pyroscope.merged(selector, lo - 0.1, hi - 0.1))) for lo, hi in missing]
        nearby = [(lo, bool(pyroscope.merged(selector, lo - 5, hi + 5))) for lo, hi in missing]
        raise AssertionError(
            f"intervals with no profile: {missing} (10 s later: {later}; within 5 s: "
            f"{nearby}); the last interval before the outage: {before}; covered: {covered}"
        )
