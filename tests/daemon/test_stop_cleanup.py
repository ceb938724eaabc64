"""The stop's cleanup takes every wait from the stop's budget (daemon/stop_budget.py), and a second
signal cuts the one in progress: the batch ring's filler thread, ingest's extraction processes
and the generation process, each real, each held up (a filler that does not return, stopped
extraction processes, a process that ignores the end of its input).

Before, these were fixed waits outside the budget that no signal shortened: the ring's threads
10 s each, the pool 2 s for its processes to end, the generation process 3 s. Each test waits
for the cut with a deadline below that fixed wait (the cut itself takes milliseconds)."""

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

from crystalline.daemon.config import DaemonConfig, Settings
from crystalline.daemon.generation_service import STOP_GRACE_S, GenerationService
from crystalline.daemon.ingest_service import IngestService
from crystalline.daemon.stop_budget import HURRIED_S, StopBudget
from crystalline.ingest.pool import CLOSE_GRACE_S
from crystalline.ingest.settings import IngestSettings
from crystalline.shm.segments import list_segments
from crystalline.workers.batch_ring import FILLER_JOIN_S, BatchRing, ring_spec
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


def test_a_second_signal_cuts_the_wait_for_the_rings_filler_and_the_segment_still_goes() -> None:
    held = threading.Event()
    release = threading.Event()

    def fill(step: int, out: np.ndarray) -> dict[str, Any]:
        if step >= 1:  # the filler is held here (a shard read that does not return)
            held.set()
            release.wait(120)
        out[...] = step
        return {"step": step}

    instance = "b" + uuid.uuid4().hex[:10]
    ring = BatchRing(f"crystalline-{instance}-ring", ring_spec(3, 2, 4, 256), fill)
    try:
        ring.release(ring.take(0, 30).slot)
        assert held.wait(30)
        budget = StopBudget(stop_s=100.0, end_s=200.0)
        closer = threading.Thread(target=ring.close, args=(budget.clock(100.0),))
        closer.start()
        time.sleep(0.2)
        assert closer.is_alive()  # waiting for the filler, within its 100 s
        budget.hurry()
        until(lambda: not closer.is_alive(), "close cut by the second signal", FILLER_JOIN_S - 2)
        assert not release.is_set()  # it did not wait for the filler
        assert not any(instance in name for name in list_segments())  # the name went anyway
    finally:
        release.set()
        ring.close()  # the filler ends now: its view goes, and the mapping with it


@pytest.mark.timeout(240)
def test_a_second_signal_kills_ingests_stopped_extraction_processes_at_once(tmp_path: Path) -> None:
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
        await asyncio.sleep(0.2)
        assert not closing.done()  # the pool's close waits for them (CLOSE_GRACE_S)
        service.cut()  # what the supervisor does at a second signal or at the budget's end
        await asyncio.wait_for(closing, CLOSE_GRACE_S - 0.5)
        return processes

    processes = asyncio.run(scenario())
    assert [p.exitcode for p in processes] == [-signal.SIGKILL] * len(processes)


def test_a_second_signal_cuts_the_generation_process_wait_and_kills_it(tmp_path: Path) -> None:
    settings = Settings(DaemonConfig(state_dir=str(tmp_path / "state")), TrainConfig())

    async def scenario() -> int | None:
        service = GenerationService(settings)
        # a real process that does not end at the end of its input, as a stuck sampler would not
        proc = await asyncio.create_subprocess_exec("sleep", "60", stdin=asyncio.subprocess.PIPE)
        service.proc = proc
        service.state = "running"
        budget = StopBudget(stop_s=100.0, end_s=200.0)
        stopping = asyncio.create_task(service.stop(budget))
        await asyncio.sleep(0.2)
        assert not stopping.done()  # within its STOP_GRACE_S
        budget.hurry()
        await asyncio.wait_for(stopping, STOP_GRACE_S - 1.0)
        return proc.returncode

    assert asyncio.run(scenario()) == -signal.SIGKILL
