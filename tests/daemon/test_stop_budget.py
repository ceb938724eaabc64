"""The stop's budget (daemon/stop_budget.py): what each wait may take, and a second signal that
ends the wait in progress and shortens every later one."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from crystalline.daemon import dashboard, generation_service, stop_budget, supervisor
from crystalline.daemon.config import DaemonConfig, Settings
from crystalline.daemon.control_link import ControlLink
from crystalline.daemon.stop_budget import HURRIED_S, StopBudget, exit_joins, wait_for_threads
from crystalline.thread_join import within
from crystalline.workers.train_config import TrainConfig

pytestmark = pytest.mark.timeout(30)


def test_left_takes_from_the_stop_deadline_keeping_a_reserve_and_the_cleanup_from_the_end() -> None:
    budget = StopBudget(stop_s=10.0, end_s=20.0)
    assert 9.0 < budget.left(100.0) <= 10.0
    assert budget.left(3.0) == 3.0
    assert 4.0 < budget.left(100.0, reserve_s=5.0) <= 5.0
    assert budget.left(100.0, reserve_s=11.0) == 0.0  # spent: never negative
    assert 19.0 < budget.left(100.0, cleanup=True) <= 20.0


def test_a_second_signal_ends_the_wait_in_progress_and_shortens_the_later_ones() -> None:
    async def scenario() -> None:
        budget = StopBudget(stop_s=100.0, end_s=200.0)
        never = asyncio.get_running_loop().create_future()
        waiting = asyncio.create_task(budget.wait(never, 100.0))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        budget.hurry()
        assert await asyncio.wait_for(waiting, 5.0) is False  # ended by the signal, not the 100 s
        assert not never.done()  # the awaited future is never cancelled by the wait
        assert 0.0 < budget.left(100.0) <= HURRIED_S
        assert 0.0 < budget.left(100.0, cleanup=True) <= HURRIED_S
        # a wait begun after the signal gets its (short) timeout: here it ends with its future
        later = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.05, later.set_result, None)
        assert await budget.wait(later, budget.left(100.0)) is True

    asyncio.run(scenario())


def test_a_wait_ends_at_its_timeout_and_reraises_what_it_waited_for() -> None:
    async def scenario() -> None:
        budget = StopBudget()
        assert await budget.wait(asyncio.get_running_loop().create_future(), 0.05) is False

        async def fails() -> None:
            raise RuntimeError("it failed")

        with pytest.raises(RuntimeError, match="it failed"):
            await budget.wait(fails(), 5.0)

    asyncio.run(scenario())


def test_a_second_signal_ends_controls_wait_for_a_start_in_progress_and_that_start_is_ended(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Control's stop waits for a start in progress (the spawn lock, which a start holds while the
    interpreter comes up) within the budget; a second signal ends that wait at once, the start
    that was in progress is killed as soon as it returns, and no control process starts after."""
    settings = Settings(DaemonConfig(state_dir=str(tmp_path / "state")), TrainConfig())

    async def scenario() -> None:
        link = ControlLink(settings, f"ipc://{tmp_path / 'control.sock'}")
        spawning = asyncio.Event()
        spawned: list[asyncio.subprocess.Process] = []

        async def slow_spawn() -> asyncio.subprocess.Process:  # a real process, started late
            spawning.set()
            await asyncio.sleep(0.5)
            spawned.append(await asyncio.create_subprocess_exec("sleep", "60"))
            link.proc = spawned[-1]
            return link.proc

        link._spawn = slow_spawn  # type: ignore[method-assign]
        runner = asyncio.create_task(link.run_once())
        await asyncio.wait_for(spawning.wait(), 10.0)  # the start holds the spawn lock
        budget = StopBudget(stop_s=100.0, end_s=200.0)
        stop = asyncio.create_task(link.stop(budget))
        await asyncio.sleep(0.05)
        assert not stop.done()  # waiting for the start
        budget.hurry()
        await asyncio.wait_for(stop, 10.0)  # ended by the signal, not by the budget's 95 s
        assert not spawned  # the stop did not wait for the start
        await asyncio.wait_for(runner, 10.0)  # the start returns: its process is killed and reaped
        assert len(spawned) == 1 and spawned[0].returncode is not None  # not alive
        assert not link._spawn_lock.locked()  # the cut wait left no acquire holding the lock
        await asyncio.wait_for(link.run_once(), 10.0)  # the runner's next start: none
        assert len(spawned) == 1 and link.stopping

    with caplog.at_level(logging.WARNING, logger="crystalline"):
        asyncio.run(scenario())
    said = "a control start in progress was cut short by a second signal: stopping without it"
    assert said in caplog.messages, caplog.messages
    assert any("started after the stop gave up waiting for it: SIGKILL" in m for m in caplog.messages)


UNIT = Path(__file__).resolve().parents[2] / "systemd" / "crystalline.service"


def test_the_worst_case_stop_is_a_sum_of_the_constants_inside_the_units_stop_timeout() -> None:
    """README "Stopping", stop_budget's docstring: the stop's steps end by 54 s, the threads they
    leave are given up on at EXIT_S (57 s), inside the unit's TimeoutStopSec (60 s)."""
    cleanup_caps = (
        supervisor.RUNNER_S
        + supervisor.RING_CLOSE_S
        + supervisor.INGEST_CLOSE_S
        + supervisor.DASHBOARD_CLOSE_S
        + 2 * generation_service.STOP_GRACE_S  # to exit, then to be reaped once killed
        + supervisor.TRACKER_S
        + supervisor.HISTORY_SAVE_S
        + supervisor.SOCKET_CLOSE_S
    )
    # the caps add up to more than is left after the components' stops: END_S is what binds
    assert stop_budget.STOP_S + cleanup_caps > stop_budget.END_S
    # aiohttp's close is cut at CUT_S past END_S at worst, clear of its own worst case
    assert dashboard.CUT_S > dashboard.CLOSE_S
    steps_end = min(stop_budget.STOP_S + cleanup_caps, stop_budget.END_S) + dashboard.CUT_S
    assert steps_end == 54.0
    (timeout,) = re.findall(r"^TimeoutStopSec=(\d+)$", UNIT.read_text(encoding="utf-8"), re.MULTILINE)
    assert steps_end <= stop_budget.EXIT_S < int(timeout) == 60


def test_the_threads_a_stop_leaves_are_waited_for_until_its_clock_runs_out() -> None:
    """A real executor shut down with one thread still working: its name comes back once the
    clock has run out, none while it ends within it (and idle threads are never waited for)."""
    release = threading.Event()

    async def scenario() -> tuple[list[str], list[str]]:
        executor = ThreadPoolExecutor(thread_name_prefix="ft-test-loop")
        loop = asyncio.get_running_loop()
        loop.set_default_executor(executor)
        await asyncio.gather(*(asyncio.to_thread(lambda: None) for _ in range(4)))  # idle ones
        busy = loop.run_in_executor(None, release.wait, 600)  # submitted now, before the shutdown
        executor.shutdown(wait=False)
        given_up = await wait_for_threads(within(0.5))
        loop.call_later(0.2, release.set)
        ended = await wait_for_threads(within(600))  # only its end ends this wait
        await busy
        return given_up, ended

    given_up, ended = asyncio.run(scenario())
    # the test process may hold threads of its own: only this executor's are looked at
    assert len([name for name in given_up if name.startswith("ft-test-loop")]) == 1
    assert [name for name in ended if name.startswith("ft-test-loop")] == []


def test_a_thread_another_threads_loop_holds_is_waited_for_too() -> None:
    """The crawl runs asyncio.run in a daemon thread of its own; the interpreter's exit joins its
    loop's executor threads with no deadline (concurrent.futures' exit hook joins every
    executor's workers, daemon threads or not; review R14 R1: 4.17 s held for a 4 s to_thread).
    Before, only this loop's executor's threads (by name) were waited for: a held thread of the
    other loop was not among those returned, and the process went on to wait for it at exit. Now
    it is, like this loop's own."""
    release, held, submitted = threading.Event(), threading.Event(), threading.Event()
    holder: list[str] = []

    async def other_loop() -> None:  # what the crawl thread runs: a WARC append held (a hung disk)
        def hold() -> None:
            holder.append(threading.current_thread().name)
            held.set()
            release.wait(600)

        work = asyncio.get_running_loop().run_in_executor(None, hold)
        submitted.set()  # its thread started and registered with concurrent.futures by now
        await work

    crawl = threading.Thread(target=asyncio.run, args=(other_loop(),), name="ft-crawl", daemon=True)
    crawl.start()
    try:
        assert held.wait(30) and submitted.wait(30)
        given_up = asyncio.run(wait_for_threads(within(0.5)))
        assert holder[0] in given_up, (holder, given_up)  # the other loop's executor's thread
    finally:
        release.set()
        crawl.join(30)
    assert not crawl.is_alive()
    # asyncio.run joined its executor before the crawl thread ended: the held one is gone now
    assert holder[0] not in [t.name for t in exit_joins()]


def test_the_registry_of_executor_threads_is_read_under_the_lock_it_is_added_under() -> None:
    """concurrent.futures adds a worker to its registry (a WeakKeyDictionary) under
    ``_global_shutdown_lock``, and a crawl given up on may start one while the stop reads it:
    read without that lock, the copy could raise 'dictionary changed size during iteration' in
    the stop's last step (review R15 R1). exit_joins waits for the lock while another thread
    holds it, as concurrent.futures' own exit hook does, and reads the registry once it is free."""
    from concurrent.futures import thread as futures_thread  # the private API exit_joins reads

    read: list[list[threading.Thread]] = []
    reader = threading.Thread(target=lambda: read.append(exit_joins()), name="ft-reader", daemon=True)
    with futures_thread._global_shutdown_lock:
        reader.start()
        reader.join(0.5)
        assert reader.is_alive() and read == []  # waiting for the lock, not reading
    reader.join(30)
    assert not reader.is_alive() and len(read) == 1


@pytest.mark.parametrize("missing", ["_global_shutdown_lock", "_threads_queues"])
def test_without_the_executor_registry_only_non_daemon_threads_are_waited_for_logged_once(
    missing: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A Python whose concurrent.futures lacks the private names exit_joins reads (review R16
    R2): no exception in the stop's last step, the non-daemon threads still found, one line."""
    from concurrent.futures import thread as futures_thread  # the private API exit_joins reads

    monkeypatch.delattr(futures_thread, missing)
    monkeypatch.setattr(stop_budget, "_registry_missing_logged", False)
    release = threading.Event()
    plain = threading.Thread(target=release.wait, args=(30,), name="plain-worker")
    daemon = threading.Thread(target=release.wait, args=(30,), name="daemon-worker", daemon=True)
    plain.start()
    daemon.start()
    try:
        with caplog.at_level(logging.WARNING, logger="crystalline.supervisor"):
            first, second = exit_joins(), exit_joins()
    finally:
        release.set()
        plain.join(30)
        daemon.join(30)
    for found in (first, second):
        assert plain in found and daemon not in found
    lines = [r.getMessage() for r in caplog.records if "registry of workers not read" in r.getMessage()]
    assert len(lines) == 1 and missing in lines[0], lines
