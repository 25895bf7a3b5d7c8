"""The attached agent's own rules: LTTng refused with the way out, /healthz says the
version, an idle agent ends itself (and running work or an open stream keeps it)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from fastapi.testclient import TestClient

from agent import idle, procfs
from agent.app import create_app
from agent.settings import Settings


def _client(tmp_path: Path, **settings: object) -> TestClient:
    settings.setdefault("generated_token_file", tmp_path / "token")
    return TestClient(create_app(Settings(data_dir=tmp_path, **settings)))  # type: ignore[arg-type]


def test_attached_agent_refuses_lttng_and_says_what_to_do(tmp_path: Path) -> None:
    client = _client(tmp_path, mode="attached", token="t" * 20)
    r = client.post(
        "/lttng/sessions",
        json={"events": [{"domain": "python"}]},
        headers={"Authorization": "Bearer " + "t" * 20},
    )
    assert r.status_code == 409
    assert "profiling=enabled" in r.json()["detail"]


def test_healthz_says_the_version(tmp_path: Path) -> None:
    body = _client(tmp_path).get("/healthz").json()
    assert body["status"] == "ok" and body["version"]


def test_container_names_from_settings_name_processes(tmp_path: Path) -> None:
    procfs.set_container_names({"a" * 64: "app"})
    try:
        assert procfs._KNOWN_NAMES == {"a" * 64: "app"}
    finally:
        procfs.set_container_names({})


def _run_watch(activity: idle.Activity, busy: list[bool], idle_s: float) -> float:
    stopped: list[float] = []

    async def stop() -> None:
        stopped.append(time.monotonic())

    async def main() -> float:
        t0 = time.monotonic()
        await asyncio.wait_for(
            idle.watch(
                activity=activity, idle_exit_s=idle_s, busy=lambda: busy[0], stop=stop, poll_s=0.05
            ),
            timeout=10,
        )
        return stopped[0] - t0

    return asyncio.run(main())


def test_an_idle_agent_stops_after_its_idle_time() -> None:
    elapsed = _run_watch(idle.Activity(), [False], 0.2)
    assert 0.15 <= elapsed < 10  # it stopped by itself, before wait_for gave up


def test_running_work_and_open_requests_keep_it_alive() -> None:
    activity = idle.Activity()
    busy = [True]
    activity.open = 1

    async def release() -> None:
        await asyncio.sleep(0.5)
        busy[0] = False
        activity.open = 0
        activity.last = time.monotonic()

    async def main() -> None:
        stopped: list[float] = []

        async def stop() -> None:
            stopped.append(time.monotonic())

        t0 = time.monotonic()
        await asyncio.gather(
            idle.watch(
                activity=activity, idle_exit_s=0.2, busy=lambda: busy[0], stop=stop, poll_s=0.05
            ),
            release(),
        )
        assert stopped[0] - t0 >= 0.65  # 0.5 busy, then 0.2 idle

    asyncio.run(main())
