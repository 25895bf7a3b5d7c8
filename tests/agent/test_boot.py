"""The boot (agent.boot): the port answers before the app is loaded, and nothing is lost.

The loader is our own seam: a fake app that records its lifespan and answers requests,
loaded when the test says so (a threading.Event), so the order is the test's, not the
clock's.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Coroutine, MutableMapping
from pathlib import Path
from typing import Any

import httpx
from starlette.types import ASGIApp, Receive, Scope, Send

from agent.boot import EXIT_CONFIG, EXIT_STARTUP, Boot, ConfigError, start_sessiond
from agent.settings import Settings


def sync(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test body on a fresh loop (the suite's tests are synchronous)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), 60))

    return run


class FakeApp:
    def __init__(self, *, fail_start: bool = False) -> None:
        self.fail_start = fail_start
        self.lifespan: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                self.lifespan.append(message["type"])
                if message["type"] == "lifespan.startup":
                    if self.fail_start:
                        await send({"type": "lifespan.startup.failed", "message": "no perf"})
                        return
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": f"app:{scope['path']}".encode()})


class Harness:
    """A Boot with a gated loader, its lifespan driven as uvicorn drives it."""

    def __init__(self, tmp_path: Path, load: Callable[[], ASGIApp]) -> None:
        self.gate = threading.Event()
        self.exits = 0
        self.prestarted: dict[str, object] | None = None

        def loader(
            settings: Settings, prestarted: dict[str, object], request_exit: Callable[[], None]
        ) -> ASGIApp:
            self.prestarted = prestarted
            assert self.gate.wait(30), "the test never opened the gate"
            return load()

        async def no_daemon(settings: Settings) -> None:
            return None

        self.boot = Boot(
            Settings(data_dir=tmp_path, auth="none"),
            request_exit=self._exit,
            load=loader,
            prestart=no_daemon,
        )
        self.to_boot: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.from_boot: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.boot), base_url="http://agent"
        )

    def _exit(self) -> None:
        self.exits += 1

    async def start(self) -> None:
        self.lifespan = asyncio.ensure_future(
            self.boot({"type": "lifespan"}, self.to_boot.get, self.from_boot.put)
        )
        await self.to_boot.put({"type": "lifespan.startup"})
        assert (await self.from_boot.get())["type"] == "lifespan.startup.complete"

    async def stop(self) -> None:
        await self.to_boot.put({"type": "lifespan.shutdown"})
        assert (await self.from_boot.get())["type"] == "lifespan.shutdown.complete"
        await self.lifespan
        await self.client.aclose()


@sync
async def test_healthz_answers_while_the_app_loads_and_requests_wait_for_it(
    tmp_path: Path,
) -> None:
    app = FakeApp()
    h = Harness(tmp_path, lambda: app)
    await h.start()
    health = await h.client.get("/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "starting"})

    waiting = asyncio.ensure_future(h.client.get("/capabilities"))
    await asyncio.sleep(0)
    assert not waiting.done()  # held, not refused
    h.gate.set()
    answer = await waiting
    assert (answer.status_code, answer.text) == (200, "app:/capabilities")
    assert app.lifespan == ["lifespan.startup"]
    # Now /healthz is the app's own.
    assert (await h.client.get("/healthz")).text == "app:/healthz"

    await h.stop()
    assert app.lifespan == ["lifespan.startup", "lifespan.shutdown"]
    assert h.exits == 0 and h.boot.exit_status == 0


@sync
async def test_a_configuration_error_is_said_and_ends_the_agent(tmp_path: Path) -> None:
    def refuse() -> ASGIApp:
        raise ConfigError("the token file /run/x cannot be read")

    h = Harness(tmp_path, refuse)
    await h.start()
    waiting = asyncio.ensure_future(h.client.get("/profiles"))
    await asyncio.sleep(0)
    h.gate.set()
    answer = await waiting
    assert answer.status_code == 503
    assert "the token file /run/x cannot be read" in answer.json()["detail"]
    health = await h.client.get("/healthz")
    assert health.status_code == 503 and health.json()["status"] == "failed"
    assert h.exits == 1 and h.boot.exit_status == EXIT_CONFIG
    await h.stop()


@sync
async def test_an_app_that_fails_to_start_ends_the_agent_with_the_reason(
    tmp_path: Path,
) -> None:
    app = FakeApp(fail_start=True)
    h = Harness(tmp_path, lambda: app)
    await h.start()
    h.gate.set()
    answer = await h.client.get("/profiles")
    assert answer.status_code == 503 and "no perf" in answer.json()["detail"]
    assert h.boot.exit_status == EXIT_STARTUP and h.exits == 1
    await h.stop()
    assert app.lifespan == ["lifespan.startup"]  # nothing to shut down: it never started


@sync
async def test_a_shutdown_during_the_load_waits_for_it_then_stops_the_app(
    tmp_path: Path,
) -> None:
    app = FakeApp()
    h = Harness(tmp_path, lambda: app)
    await h.start()
    await h.to_boot.put({"type": "lifespan.shutdown"})
    await asyncio.sleep(0)
    h.gate.set()
    assert (await h.from_boot.get())["type"] == "lifespan.shutdown.complete"
    assert app.lifespan == ["lifespan.startup", "lifespan.shutdown"]
    await h.lifespan
    await h.client.aclose()


@sync
async def test_the_core_image_starts_no_session_daemon(tmp_path: Path) -> None:
    assert await start_sessiond(Settings(data_dir=tmp_path, image_variant="core")) is None
