"""The component runner's retry with backoff, on an injected clock and random source (no
waiting), and its states and error line as status shows them."""

from __future__ import annotations

import asyncio
import logging

import pytest
from _wait import until_async

from crystalline.daemon.component_runner import Backoff, ComponentFailed, ComponentRunner, describe


class FakeTime:
    """A clock that only the runner's waits move, recording each wait."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    async def wait(self, stop: asyncio.Event, seconds: float) -> bool:
        self.waits.append(round(seconds, 6))
        self.now += seconds
        return stop.is_set()


def test_backoff_doubles_to_its_cap_with_bounded_jitter() -> None:
    b = Backoff(first_s=1.0, max_s=30.0, jitter=0.1)
    assert [b.delay(n, 0.5) for n in range(1, 8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert b.delay(1, 0.0) == pytest.approx(0.9) and b.delay(6, 0.999999) == pytest.approx(33.0, rel=1e-5)
    assert Backoff(first_s=5.0, max_s=5.0, jitter=0.0).delay(9, 0.7) == 5.0
    for first, cap, jitter in ((0.0, 1.0, 0.1), (2.0, 1.0, 0.1), (1.0, 2.0, 1.0)):
        with pytest.raises(ValueError, match="bad backoff"):
            Backoff(first_s=first, max_s=cap, jitter=jitter)


def test_failures_back_off_exponentially_and_a_healthy_period_resets_the_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    t = FakeTime()
    # each run lasts as long as told, then fails; the sixth returns (asked to stop)
    durations = [0.0, 0.0, 0.0, 0.0, 400.0, 0.0]
    runs = 0

    async def run_once() -> None:
        nonlocal runs
        t.now += durations[runs]
        runs += 1
        if runs == len(durations):
            return
        raise OSError(f"disk full (run {runs})")

    jitter = iter([0.0, 1.0 - 1e-9, 0.5, 0.5, 0.5, 0.5])
    runner = ComponentRunner(
        "ingest",
        run_once,
        Backoff(first_s=1.0, max_s=5.0, jitter=0.2, healthy_after_s=300.0),
        clock=t.clock,
        uniform=lambda: next(jitter),
        wait=t.wait,
    )
    with caplog.at_level(logging.WARNING, logger="crystalline.supervisor"):
        asyncio.run(runner.run())
    # 1 s (-20 %), 2 s (+20 %), 4 s, 5 s (the cap); the fifth run lasted 400 s: 1 s again
    assert t.waits == [0.8, pytest.approx(2.4), 4.0, 5.0, 1.0]
    assert runner.delays == t.waits
    assert runs == 6 and runner.restarts == 5 and runner.state == "stopped"
    assert runner.failures == 1  # the count restarted after the healthy period
    assert runner.error == "OSError: disk full (run 5)"  # no progress reported since
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "ingest failed (OSError: disk full (run 1); 1 in a row); restarting in 0.8 s"
    assert all("\n" not in line for line in lines)


def test_errors_are_logged_as_errors_from_the_fifth_failure_in_a_row(
    caplog: pytest.LogCaptureFixture,
) -> None:
    t = FakeTime()
    stop = asyncio.Event()
    runs = 0

    async def run_once() -> None:
        nonlocal runs
        runs += 1
        if runs == 7:
            stop.set()
        raise ComponentFailed(f"control process exited with status -9 (run {runs})")

    runner = ComponentRunner("control", run_once, Backoff(1.0, 60.0), stop, t.clock, lambda: 0.5, t.wait)
    with caplog.at_level(logging.WARNING, logger="crystalline.supervisor"):
        asyncio.run(runner.run())
    levels = [r.levelno for r in caplog.records]
    assert levels == [logging.WARNING] * 4 + [logging.ERROR] * 3
    assert runner.error == "control process exited with status -9 (run 7)"  # the message as it is
    assert runs == 7 and runner.state == "stopped" and len(t.waits) == 7


def test_progress_clears_the_error_and_stop_ends_a_backoff_at_once() -> None:
    async def scenario() -> None:
        runner_box: list[ComponentRunner] = []
        failed_once = asyncio.Event()

        async def run_once() -> None:
            if not failed_once.is_set():
                failed_once.set()
                raise RuntimeError("first try")
            runner_box[0].progress()
            await runner_box[0].stop_event.wait()

        runner = ComponentRunner("crawl", run_once, Backoff(first_s=3600.0, max_s=3600.0))
        runner_box.append(runner)
        task = asyncio.create_task(runner.run())
        await asyncio.wait_for(failed_once.wait(), 5)
        await asyncio.sleep(0)
        assert runner.state == "backoff" and runner.error == "RuntimeError: first try"
        stats = runner.stats()
        assert stats["state"] == "backoff" and 3000 < float(stats["restart_in_s"]) <= 3960  # type: ignore[arg-type]
        runner.stop()  # an hour of backoff ends now
        await asyncio.wait_for(task, 5)
        assert runner.state == "stopped" and runner.restarts == 0

        fresh = ComponentRunner("crawl", run_once, Backoff(first_s=0.01, max_s=0.01))
        runner_box[0] = fresh
        failed_once.clear()
        task = asyncio.create_task(fresh.run())

        # fails, backs off, runs again and reports progress
        await until_async(
            lambda: fresh.restarts > 0 and fresh.error is None, lambda: str(fresh.stats()), 5, 0.01
        )
        assert fresh.state == "running" and fresh.stats() == {"state": "running", "restarts": 1}
        fresh.stop()
        await asyncio.wait_for(task, 5)
        assert fresh.state == "stopped"

    asyncio.run(scenario())


def test_a_components_failure_is_one_escaped_line() -> None:
    # Z1: describe() joined white space but left an ESC or a NUL of the error's text raw in the
    # reason that status shows and the log prints
    assert describe(RuntimeError("bad\x00 page\x1b[2J\nERROR forged")) == (
        "RuntimeError: bad\\x00 page\\x1b[2J ERROR forged"
    )
