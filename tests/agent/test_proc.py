"""The child-process seam (agent._proc): reaping and cancellation, with plain `sh` children."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from agent import _proc


async def _deaf_to_sigint() -> _proc.Child:
    """A child that ignores SIGINT, so Child.stop has to wait out its grace period."""
    child = await _proc.Child.start(["sh", "-c", "trap '' INT; echo ready; exec sleep 30"])
    assert child.proc.stdout is not None
    # Only once the trap is set: a SIGINT before it would end the shell at once.
    assert await child.proc.stdout.readline() == b"ready\n"
    return child


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_stop_kills_after_grace() -> None:
    asyncio.run(_test_stop_kills_after_grace())


async def _test_stop_kills_after_grace() -> None:
    child = await _deaf_to_sigint()
    rc = await child.stop(grace=0.2)
    assert rc == -signal.SIGKILL
    assert _gone(child.pid)
    assert child not in _proc.live_children()


def test_cancelled_stop_reaps_and_lets_the_cancellation_through() -> None:
    asyncio.run(_test_cancelled_stop_reaps_and_lets_the_cancellation_through())


async def _test_cancelled_stop_reaps_and_lets_the_cancellation_through() -> None:
    child = await _deaf_to_sigint()
    stopper = asyncio.create_task(child.stop(grace=30))
    await asyncio.sleep(0.2)  # now inside the grace period
    stopper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopper
    assert child.returncode == -signal.SIGKILL
    assert _gone(child.pid)
    assert child not in _proc.live_children()


def test_cancelled_run_reaps() -> None:
    asyncio.run(_test_cancelled_run_reaps())


async def _registered(argv: list[str]) -> _proc.Child:
    """The child running ``argv``, once its spawn has returned and it is registered.

    Polled, not slept for: on a busy machine the spawn alone took longer than 0.2 s.
    """
    for _ in range(6000):  # a minute at least: a bound for a hung spawn, not a timing
        if found := [c for c in _proc.live_children() if c.argv == argv]:
            (child,) = found
            return child
        await asyncio.sleep(0.01)
    raise AssertionError(f"{argv} was not registered as a child within a minute")


async def _test_cancelled_run_reaps() -> None:
    task = asyncio.create_task(_proc.run(["sleep", "30"], timeout=60))
    try:
        child = await _registered(["sleep", "30"])
    except BaseException:
        # Cancelled here, not by asyncio.run's teardown: that one also cancels the
        # spawn's own pipe-connecting task, and CPython 3.11 then never wakes the
        # spawn's wait (python/cpython#125502), so a failure hung for 300 s.
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _gone(child.pid)
    assert child not in _proc.live_children()
