"""The stop's cleanup takes every wait from the stop's budget (daemon/stop_budget.py), and a second
signal cuts the one in progress: the batch ring's filler thread, ingest's extraction processes
and the generation process, each real, each held up (a filler that does not return, stopped
extraction processes, a process that ignores the end of its input).

Before, these were fixed waits outside the budget that no signal shortened: the ring's threads
10 s each, the pool 2 s for its processes to end, the generation process 3 s. Each test makes
those caps (or the budget's clock) an hour, far past its own timeout, so that only the cut can
end the wait it observes: no test tells "cut" from "waited out" by how long it took."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _wait import until

from crystalline.daemon import generation_service
from crystalline.daemon.config import DaemonConfig, Settings
from crystalline.daemon.generation_service import GenerationService
from crystalline.daemon.ingest_service import IngestService
from crystalline.daemon.stop_budget import HURRIED_S, StopBudget
from crystalline.ingest import pool
from crystalline.ingest.settings import IngestSettings
from crystalline.shm.segments import list_segments
from crystalline.workers import batch_ring
from crystalline.workers.batch_ring import BatchRing, RingTimeout, ring_spec
from crystalline.workers.train_config import TrainConfig

pytestmark = pytest.mark.timeout(120)


def test_the_budget_clock_ends_at_its_cap_at_the_end_and_at_once_at_a_second_signal() -> None:
    budget = StopBudget(stop_s=10.0, end_s=20.0)
    assert 2.0 < budget.clock(3.0)() <= 3.0
    assert 19.0 < budget.clock(100.0)() <= 20.0  # not past END_S
    began = budget.clock(100.0)
    budget.hurry()
    assert began() == 0.0  # a wait in progress is cut at once
    assert 0.0 < budget.clock(100.0)() <= HURRIED_S  # a later one gets what is left of HURRIED_S


def _held_ring() -> tuple[BatchRing, str, threading.Event, threading.Event]:
    """A real ring whose filler, once step 0 is taken and released, is held filling step 1 (a
    shard read that does not return) until ``release`` is set; ``held`` once it is."""
    held = threading.Event()
    release = threading.Event()

    def fill(step: int, out: np.ndarray) -> dict[str, Any]:
        if step >= 1:
            held.set()
            release.wait(600)
        out[...] = step
        return {"step": step}

    instance = "b" + uuid.uuid4().hex[:10]
    ring = BatchRing(f"crystalline-{instance}-ring", ring_spec(3, 2, 4, 256), fill)
    return ring, instance, held, release


def test_a_second_signal_cuts_the_wait_for_the_rings_filler_and_the_segment_still_goes() -> None:
    ring, instance, held, release = _held_ring()
    try:
        ring.release(ring.take(0, 30).slot)
        assert held.wait(30)
        budget = StopBudget(stop_s=3600.0, end_s=7200.0)
        closer = threading.Thread(target=ring.close, args=(budget.clock(3600.0),))
        closer.start()
        until(lambda: ring._lock.locked(), "close waits for the filler under the ring's lock", 30)
        budget.hurry()
        until(lambda: not closer.is_alive(), "close cut by the second signal", 30)
        assert not release.is_set()  # it did not wait for the filler
        assert not any(instance in name for name in list_segments())  # the name went anyway
    finally:
        release.set()
        ring.close()  # the filler ends now: its view goes, and the mapping with it


def test_a_close_ends_a_refilling_takes_wait_for_a_held_filler_and_a_second_signal_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A take for another step refills under the ring's lock and joins the held filler
    (RESTART_JOIN_S); a close must neither wait for that join nor for the lock: the take gives
    up as soon as the close begins, and the segment's name goes. The caps are made far longer
    than the test's timeout, so only the cut can end these waits."""
    monkeypatch.setattr(batch_ring, "RESTART_JOIN_S", 3600.0)
    ring, instance, held, release = _held_ring()
    taken: list[BaseException] = []

    def take() -> None:
        try:
            ring.take(7, 3600.0)  # another step: a refill, which joins the held filler
        except BaseException as exc:
            taken.append(exc)

    try:
        ring.release(ring.take(0, 30).slot)
        assert held.wait(30)
        taker = threading.Thread(target=take)
        taker.start()
        until(lambda: ring._lock.locked(), "the take refills under the ring's lock", 30)
        budget = StopBudget(stop_s=3600.0, end_s=7200.0)
        closer = threading.Thread(target=ring.close, args=(budget.clock(3600.0),))
        closer.start()
        until(lambda: not taker.is_alive(), "the refilling take gave up at the close", 30)
        assert [type(e) for e in taken] == [RingTimeout]
        assert closer.is_alive()  # now waiting for the filler itself, within its 3600 s
        budget.hurry()
        until(lambda: not closer.is_alive(), "close cut by the second signal", 30)
        assert not release.is_set()  # neither waited for the filler
        assert not any(instance in name for name in list_segments())
    finally:
        release.set()
        ring.close()


@pytest.mark.timeout(240)
def test_a_second_signal_kills_ingests_stopped_extraction_processes_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool, "CLOSE_GRACE_S", 3600.0)  # only the cut can end the close's wait
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    words = " ".join(f"word{j}" for j in range(80))
    (inbox / "note.txt").write_text(f"A note that says this. {words}.\n", encoding="utf-8")
    old = time.time() - 60
    os.utime(inbox / "note.txt", (old, old))
    settings = IngestSettings(drop_settle_s=0.0, processes=2, val_fraction=0.0)

    async def scenario() -> list[Any]:
        service = IngestService(settings, tmp_path / "state", inbox, "bytes")
        await asyncio.to_thread(service.open)
        assert service.ingestor is not None
        service.start()
        await asyncio.to_thread(until, lambda: (inbox / "done" / "note.txt").exists(), "ingested", 120)
        await service.stop(60.0)
        processes = [w.process for w in service.ingestor.pool._workers]
        assert processes and all(p.is_alive() for p in processes)
        for p in processes:  # they cannot end on their own when the close asks them
            assert p.pid is not None
            os.kill(p.pid, signal.SIGSTOP)
        closing = asyncio.ensure_future(asyncio.to_thread(service.close))
        ingest_pool = service.ingestor.pool
        await asyncio.to_thread(until, lambda: ingest_pool._closed, "the pool's close began", 30)
        assert not closing.done()  # the pool's close waits for them (CLOSE_GRACE_S)
        service.cut()  # what the supervisor does at a second signal or at the budget's end
        await asyncio.wait_for(closing, 60)
        return processes

    processes = asyncio.run(scenario())
    assert [p.exitcode for p in processes] == [-signal.SIGKILL] * len(processes)


def test_a_second_signal_cuts_the_generation_process_wait_and_kills_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(generation_service, "STOP_GRACE_S", 3600.0)  # only the cut ends its wait
    settings = Settings(DaemonConfig(state_dir=str(tmp_path / "state")), TrainConfig())

    async def scenario() -> int | None:
        service = GenerationService(settings)
        # a real process that does not end at the end of its input, as a stuck sampler would not
        proc = await asyncio.create_subprocess_exec("sleep", "60", stdin=asyncio.subprocess.PIPE)
        service.proc = proc
        service.state = "running"
        budget = StopBudget(stop_s=3600.0, end_s=7200.0)
        stopping = asyncio.create_task(service.stop(budget))
        await asyncio.sleep(0)  # its first step: EOF sent, then the budget's wait for the exit
        assert service.proc is None and proc.stdin is not None and proc.stdin.is_closing()
        assert not stopping.done()  # within its STOP_GRACE_S
        budget.hurry()
        await asyncio.wait_for(stopping, 60)
        return proc.returncode

    assert asyncio.run(scenario()) == -signal.SIGKILL
