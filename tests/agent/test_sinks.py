"""Sinks without a store: the spool's bounds, the delivery loop's states and backoff,
the labels, the push request's encoding, and the API's contract (settings,
/capabilities, 409 without a store). Senders here are fakes of our own seam; the
real stores are in test_sinks_integration.py."""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from agent import profiling
from agent.app import create_app
from agent.settings import Settings
from agent.sinks import _continuous, _labels
from agent.sinks._pyroscope import push_request
from agent.sinks._sink import FAILING_AFTER, SendError, Sink, backoff_s
from agent.sinks._spool import Item, Spool, TooLarge


# --- the spool ------------------------------------------------------------------------
def test_spool_keeps_order_and_drops_oldest_when_full(tmp_path: Path) -> None:
    drops: list[tuple[str, str]] = []
    spool = Spool(
        tmp_path, max_bytes=250, max_age_s=3600, on_drop=lambda i, r: drops.append((i.id, r))
    )
    a = spool.put_bytes(b"a" * 100, {"n": 1})
    b = spool.put_bytes(b"b" * 100, {"n": 2})
    assert spool.oldest() == a and spool.queued_bytes == 200
    c = spool.put_bytes(b"c" * 100, {"n": 3})  # 300 > 250: the oldest goes
    assert drops == [(a.id, "spool_full")]
    assert spool.oldest() == b and len(spool) == 2 and spool.queued_bytes == 200
    assert not (tmp_path / f"{a.id}.data").exists()
    spool.remove(b)
    assert spool.oldest() == c and c.data.read_bytes() == b"c" * 100
    with pytest.raises(TooLarge, match="SPOOL_MAX_BYTES"):
        spool.put_bytes(b"x" * 251, {})


def test_spool_survives_a_restart_and_cleans_half_written_items(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, max_age_s=3600)
    kept = [spool.put_bytes(f"item {i}".encode(), {"i": i}) for i in range(3)]
    (tmp_path / "00000000000000000001-dead.data.part").write_bytes(b"half")
    (tmp_path / "00000000000000000002-beef.data").write_bytes(b"orphan: no metadata")
    again = Spool(tmp_path, max_bytes=1 << 20, max_age_s=3600)
    assert again.load() == 3
    assert [again.oldest()] == [kept[0]] or again.oldest().id == kept[0].id  # type: ignore[union-attr]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        n for i in kept for n in (f"{i.id}.data", f"{i.id}.json")
    )
    assert again.oldest().meta == {"i": 0}  # type: ignore[union-attr]


def test_spool_drops_items_past_their_age(tmp_path: Path) -> None:
    drops: list[str] = []
    spool = Spool(tmp_path, max_bytes=1 << 20, max_age_s=10, on_drop=lambda i, r: drops.append(r))
    item = spool.put_bytes(b"old", {})
    assert spool.expire(now=item.created_at + 5) == 0
    assert spool.expire(now=item.created_at + 11) == 1
    assert drops == ["too_old"] and len(spool) == 0


def test_spool_links_files_rather_than_copying(tmp_path: Path) -> None:
    src = tmp_path / "perf.data"
    src.write_bytes(b"p" * 1000)
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20, max_age_s=3600)
    item = spool.put_file(src, {"key": "k"})
    assert item.data.stat().st_ino == src.stat().st_ino
    src.unlink()  # the job evicted: the spooled copy stays
    assert item.data.read_bytes() == b"p" * 1000


# --- one sink's delivery ------------------------------------------------------------------
class FakeSender:
    name = "fake"

    def __init__(self, outcomes: list[SendError | None]) -> None:
        self.outcomes = outcomes
        self.sent: list[bytes] = []

    async def send(self, item: Item) -> None:
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is not None:
            raise outcome
        self.sent.append(item.data.read_bytes())

    def describe(self) -> dict[str, object]:
        return {"target": "fake"}

    async def close(self) -> None:
        pass


def _sink(tmp_path: Path, sender: FakeSender, counted: list[Any]) -> Sink:
    return Sink(
        sender,
        tmp_path,
        max_bytes=1 << 20,
        max_age_s=3600,
        on_drop=lambda s, r: counted.append(("drop", s, r)),
        on_sent=lambda s, n: counted.append(("sent", s, n)),
    )


def test_sink_retries_then_delivers_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agent.sinks._sink.backoff_s", lambda n: 0.01)
    sender = FakeSender([SendError("down", kind="transient"), None, None])
    counted: list[Any] = []

    async def run() -> Sink:
        sink = _sink(tmp_path, sender, counted)
        await sink.start()
        first = await sink.put_bytes(b"one", {})
        await sink.put_bytes(b"two", {})
        assert await sink.delivered(first, 5.0)
        await sink.flush_and_stop(5.0)
        return sink

    sink = asyncio.run(run())
    assert sender.sent == [b"one", b"two"]
    status = sink.status().model_dump()
    assert status["state"] == "ok" and status["sent"] == 2 and status["queued_bytes"] == 0
    assert status["last_error"] == "down" and status["last_success"] is not None
    assert [c[0] for c in counted] == ["sent", "sent"]


def test_sink_states_and_rejected_items(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agent.sinks._sink.backoff_s", lambda n: 0.01)
    errors: list[SendError | None] = [SendError("bad payload", kind="rejected")]
    errors += [SendError("refused", kind="transient")] * FAILING_AFTER
    sender = FakeSender(errors)
    counted: list[Any] = []
    states: list[str] = []

    async def run() -> Sink:
        sink = _sink(tmp_path, sender, counted)
        await sink.start()
        bad = await sink.put_bytes(b"bad", {})
        assert not await sink.delivered(bad, 5.0)  # dropped, not stored
        good = await sink.put_bytes(b"good", {})
        while sink.failures < FAILING_AFTER:
            states.append(sink.state)
            await asyncio.sleep(0.001)
        states.append(sink.state)
        assert await sink.delivered(good, 5.0)
        await sink.flush_and_stop(1.0)
        return sink

    sink = asyncio.run(run())
    assert ("drop", "fake", "rejected") in counted and sink.dropped == 1
    assert "retrying" in states and states[-1] == "failing"
    assert sink.state == "ok" and sender.sent == [b"good"]


def test_config_errors_fail_at_once_and_stop_the_flush_early(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agent.sinks._sink.backoff_s", lambda n: 0.01)
    sender = FakeSender([SendError("wrong key", kind="config")] * 1000)

    async def run() -> Sink:
        sink = _sink(tmp_path, sender, [])
        await sink.start()
        item = await sink.put_bytes(b"x", {})
        assert not await sink.delivered(item, 0.2)
        assert sink.state == "failing" and sink.last_error == "wrong key"
        await asyncio.wait_for(sink.flush_and_stop(30.0), 5.0)  # not the whole budget
        return sink

    sink = asyncio.run(run())
    assert len(sink.spool) == 1  # kept on disk for the next start


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    assert backoff_s(1, rng=lambda: 0.0) == 0.5 and backoff_s(1, rng=lambda: 1.0) == 1.0
    assert backoff_s(4, rng=lambda: 0.0) == 4.0
    assert backoff_s(30, rng=lambda: 1.0) == 60.0 and backoff_s(30, rng=lambda: 0.0) == 30.0


# --- continuous pushes at stop ---------------------------------------------------------------
class FakeRecorder:
    """The flight recorder as :class:`Continuous` sees it: one process group with one
    sample a second, complete up to ``complete``; after ``arrives_after`` calls of
    :meth:`complete_until` the sampler's trailing seconds arrive up to ``arriving``."""

    frequency_hz = 19

    def __init__(self, *, first: int, complete: int, arriving: int, arrives_after: int) -> None:
        self.first, self.complete = first, complete
        self.arriving, self.arrives_after = arriving, arrives_after

    def status(self) -> Any:
        return SimpleNamespace(
            state="recording", window=SimpleNamespace(start=self.first, end=self.complete)
        )

    def complete_until(self) -> int:
        self.arrives_after -= 1
        if self.arrives_after < 0:
            self.complete = self.arriving
        return self.complete

    def samples(self, *, start: int, end: int) -> list[profiling.GroupSamples]:
        end = min(end, self.complete)
        group = profiling.ProcessGroup(container="app", runtime="native")
        return [
            profiling.GroupSamples(
                group=group,
                pids=(7,),
                comms=("app",),
                start=start,
                duration_s=end - start,
                frequency_hz=self.frequency_hz,
                stacks={"app;main": end - start},
            )
        ]


class FakeSpoolSink:
    name = "pyroscope"

    def __init__(self) -> None:
        self.metas: list[dict[str, Any]] = []

    async def put_bytes(self, payload: bytes, meta: dict[str, Any]) -> None:
        self.metas.append(meta)


@pytest.mark.parametrize("arrives_after", [3, 10**9], ids=["arrives", "never"])
def test_the_push_at_stop_waits_for_the_samplers_last_seconds(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, arrives_after: int
) -> None:
    """A busy node's sampler trails real time: at stop, the last push waits (bounded) for
    it to reach the stop, and says which seconds it could not wait for."""
    now = 1_800_000_000
    wall = [now - 9.5]  # the pushes began 10 s before the stop
    clock = SimpleNamespace(time=lambda: wall[0], monotonic=time.monotonic)
    monkeypatch.setattr(_continuous, "time", clock)
    monkeypatch.setattr(_continuous, "FINAL_WAIT_S", 0.3)
    recorder = FakeRecorder(
        first=now - 10, complete=now - 4, arriving=now, arrives_after=arrives_after
    )
    sink = FakeSpoolSink()
    continuous = _continuous.Continuous(
        recorder,  # type: ignore[arg-type]
        sink,  # type: ignore[arg-type]
        base_labels={"service_name": "ns/app"},
        interval_s=3600,
    )
    wall[0] = now + 0.5
    with caplog.at_level(logging.INFO, logger=_continuous.__name__):
        asyncio.run(continuous.stop(final=True))
    (meta,) = sink.metas
    if arrives_after == 3:
        assert (meta["from"], meta["to"]) == (now - 10, now)  # every second up to the stop
        assert [r.getMessage() for r in caplog.records] == ["continuous push at stop"]
    else:
        assert (meta["from"], meta["to"]) == (now - 10, now - 4)  # what was there, no more
        (record,) = caplog.records
        assert record.levelno == logging.WARNING and "did not arrive in time" in record.getMessage()
        assert record.fields == {  # type: ignore[attr-defined]
            "start": now - 10,
            "end": now,
            "profiles": 1,
            "recorded_until": now - 4,
        }


# --- labels and the wire format ------------------------------------------------------------
@pytest.mark.parametrize(
    ("pod", "workload"),
    [
        ("web-7d9f8b6c4-abcde", "deployment/web"),
        ("db-0", "statefulset/db"),
        ("fluent-bit-x2k9q", "daemonset/fluent-bit"),
        ("standalone", "pod/standalone"),
    ],
)
def test_workload_from_the_pod_name(pod: str, workload: str) -> None:
    assert _labels.guess_workload(pod) == workload


def test_labels_of_a_profile() -> None:
    settings = Settings(pod_name="web-7d9f8b6c4-abcde", pod_namespace="shop", node_name="n1")
    base = _labels.pod_labels(settings)
    assert base == {
        "service_name": "shop/web",
        "namespace": "shop",
        "pod": "web-7d9f8b6c4-abcde",
        "workload": "deployment/web",
        "node": "n1",
    }
    labels = _labels.profile_labels(
        base, kind="cpu", source="trigger", container="app", runtime="python", extra={"x": ""}
    )
    assert labels["__name__"] == "process_cpu" and labels["type"] == "cpu"
    assert labels["source"] == "trigger" and "x" not in labels
    named = _labels.pod_labels(Settings(pod_name="p", service_name="checkout"))
    assert named["service_name"] == "checkout"
    key = _labels.object_key("tracecar/", base, "lttng", "abc", "my trace.tar.gz")
    assert key == "tracecar/shop/web-7d9f8b6c4-abcde/lttng/abc/my_trace.tar.gz"


def _push_classes() -> Any:
    """push.v1.PushRequest built from its field numbers (api/push/v1/push.proto)."""
    f = descriptor_pb2.FileDescriptorProto(name="push_test.proto", package="push.v1")
    T = descriptor_pb2.FieldDescriptorProto
    rep, opt = T.LABEL_REPEATED, T.LABEL_OPTIONAL

    def msg(name: str, *fields: tuple[str, int, int, int, str]) -> None:
        m = f.message_type.add(name=name)
        for fname, num, label, ftype, tname in fields:
            fd = m.field.add(name=fname, number=num, label=label, type=ftype)
            if tname:
                fd.type_name = tname

    msg("LabelPair", ("name", 1, opt, T.TYPE_STRING, ""), ("value", 2, opt, T.TYPE_STRING, ""))
    msg("RawSample", ("raw_profile", 1, opt, T.TYPE_BYTES, ""), ("ID", 2, opt, T.TYPE_STRING, ""))
    msg(
        "RawProfileSeries",
        ("labels", 1, rep, T.TYPE_MESSAGE, ".push.v1.LabelPair"),
        ("samples", 2, rep, T.TYPE_MESSAGE, ".push.v1.RawSample"),
    )
    msg("PushRequest", ("series", 1, rep, T.TYPE_MESSAGE, ".push.v1.RawProfileSeries"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("push.v1.PushRequest"))


def test_push_request_decodes_with_protobuf() -> None:
    profile = gzip.compress(b"\x0a\x02hi" * 100)
    raw = push_request(profile, {"service_name": "a/b", "__name__": "process_cpu"}, "id-1")
    req = _push_classes()()
    req.ParseFromString(raw)
    (series,) = req.series
    assert {(lp.name, lp.value) for lp in series.labels} == {
        ("service_name", "a/b"),
        ("__name__", "process_cpu"),
    }
    assert series.samples[0].raw_profile == profile and series.samples[0].ID == "id-1"


# --- the API's contract ----------------------------------------------------------------------
def _client(tmp_path: Path, **settings: Any) -> TestClient:
    s = Settings(
        auth="none",
        data_dir=tmp_path / "data",
        lttng_start_sessiond=False,
        lttng_run_dir=tmp_path / "lttng",
        **settings,
    )
    return TestClient(create_app(s))


def test_capabilities_show_each_sink(tmp_path: Path) -> None:
    with _client(
        tmp_path,
        pyroscope_url="http://127.0.0.1:9/",
        pyroscope_tenant="team-a",
        s3_bucket="b",
        s3_endpoint="http://127.0.0.1:9",
    ) as c:
        sinks = c.get("/capabilities").json()["sinks"]
        assert set(sinks) == {"pyroscope", "s3"}
        for s in sinks.values():
            assert s["configured"] is True and s["state"] == "ok"
            assert s["last_success"] is None and s["last_error"] is None
            assert s["queued_bytes"] == 0 and s["dropped"] == 0
        assert sinks["pyroscope"]["tenant"] == "team-a"
        assert sinks["s3"]["bucket"] == "b"
    with _client(tmp_path) as c:
        sinks = c.get("/capabilities").json()["sinks"]
        assert sinks["pyroscope"]["state"] == "disabled" and not sinks["pyroscope"]["configured"]
        assert "TRACECAR_AGENT_PYROSCOPE_URL" in sinks["pyroscope"]["reason"]
        assert c.post("/recorder", json={"push": True}).status_code == 409
        r = c.post("/triggers", json={"cpu_percent": 50, "push": True})
        assert r.status_code == 409 and "TRACECAR_AGENT_S3_BUCKET" in r.json()["detail"]
        r = c.post("/lttng/sessions/0123456789ab/trace/upload")
        assert r.status_code == 409 and "TRACECAR_AGENT_S3_BUCKET" in r.json()["detail"]


def test_settings_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "TRACECAR_AGENT_PYROSCOPE_URL": "http://pyroscope:4040",
        "TRACECAR_AGENT_PYROSCOPE_TENANT": "t",
        "TRACECAR_AGENT_PYROSCOPE_USER_FILE": "/s/user",
        "TRACECAR_AGENT_PYROSCOPE_PASSWORD_FILE": "/s/password",
        "TRACECAR_AGENT_PYROSCOPE_TOKEN_FILE": "/s/token",
        "TRACECAR_AGENT_S3_ENDPOINT": "http://minio:9000",
        "TRACECAR_AGENT_S3_BUCKET": "b",
        "TRACECAR_AGENT_S3_PREFIX": "p",
        "TRACECAR_AGENT_S3_REGION": "eu-west-1",
        "TRACECAR_AGENT_S3_PATH_STYLE": "true",
        "TRACECAR_AGENT_SPOOL_MAX_BYTES": "1048576",
        "TRACECAR_AGENT_SERVICE_NAME": "svc",
        "TRACECAR_AGENT_CONTINUOUS": "true",
        "TRACECAR_AGENT_CONTINUOUS_INTERVAL_S": "30",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = Settings()
    assert s.pyroscope_url == "http://pyroscope:4040" and s.pyroscope_tenant == "t"
    assert s.pyroscope_token_file == Path("/s/token") and s.s3_path_style is True
    assert s.spool_max_bytes == 1 << 20 and s.continuous and s.continuous_interval_s == 30
    assert Settings.model_fields["continuous_interval_s"].default == 15.0


# --- Pyroscope's answers and credentials (httpx's mock transport in place of the network) ---
def _pyroscope_send(
    tmp_path: Path, status: int, body: bytes = b"", **auth: Path | str | None
) -> tuple[list[Any], Exception | None]:
    import httpx

    from agent.sinks._pyroscope import PyroscopeSender

    seen: list[Any] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, content=body)

    sender = PyroscopeSender(
        "http://pyroscope.test:4040/",
        tenant=auth.pop("tenant", None),  # type: ignore[arg-type]
        user_file=auth.get("user_file"),  # type: ignore[arg-type]
        password_file=auth.get("password_file"),  # type: ignore[arg-type]
        token_file=auth.get("token_file"),  # type: ignore[arg-type]
        timeout_s=5,
        transport=httpx.MockTransport(answer),
    )
    data = tmp_path / "p.data"
    data.write_bytes(b"pprof")
    item = Item(id="1", created_at=0, size=5, meta={"labels": {"a": "b"}}, data=data)

    async def run() -> Exception | None:
        try:
            await sender.send(item)
        except Exception as e:
            return e
        finally:
            await sender.close()
        return None

    return seen, asyncio.run(run())


def test_pyroscope_credentials_from_files(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cr3t\n")
    seen, err = _pyroscope_send(tmp_path, 200, tenant="team-a", token_file=tmp_path / "token")
    assert err is None
    (req,) = seen
    assert str(req.url) == "http://pyroscope.test:4040/push.v1.PusherService/Push"
    assert req.headers["authorization"] == "Bearer s3cr3t"
    assert req.headers["x-scope-orgid"] == "team-a"
    assert req.headers["content-type"] == "application/proto"
    (tmp_path / "user").write_text("123456")
    (tmp_path / "pw").write_text("glc_token")
    seen, err = _pyroscope_send(
        tmp_path, 200, user_file=tmp_path / "user", password_file=tmp_path / "pw"
    )
    assert err is None and seen[0].headers["authorization"].startswith("Basic ")
    _, err = _pyroscope_send(tmp_path, 200, token_file=tmp_path / "missing")
    assert isinstance(err, SendError) and err.kind == "config" and "missing" in str(err)


@pytest.mark.parametrize(
    ("status", "kind", "words"),
    [
        (401, "config", "rejected the credentials"),
        (403, "config", "refused access"),
        (404, "config", "Pyroscope's base URL"),
        (400, "rejected", "out of bounds"),
        (429, "transient", "429"),
        (503, "transient", "503"),
    ],
)
def test_pyroscope_answers_become_error_kinds(
    tmp_path: Path, status: int, kind: str, words: str
) -> None:
    body = b'{"code": "invalid_argument", "message": "profile out of bounds"}'
    _, err = _pyroscope_send(tmp_path, status, body)
    assert isinstance(err, SendError) and err.kind == kind and words in str(err), err
