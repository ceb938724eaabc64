"""Ingest's part of the daemon's stop (daemon/ingest_service.py): the batch in hand is told at
once to take no further document, and a stop right after the start (the drop folder's first scan
still running) leaves the close to that scan's thread; a real drop folder, registry, store and
extraction pool throughout."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
import time
from pathlib import Path

import pytest
from _wait import until_async

from crystalline.daemon.ingest_service import IngestService
from crystalline.ingest.drop_folder import CLAIMS
from crystalline.ingest.settings import IngestSettings

SETTINGS = IngestSettings(drop_settle_s=0.0, processes=1, val_fraction=0.0)


def _drop(inbox: Path, n: int) -> list[str]:
    """``n`` distinct text files, old enough to be taken at once; their names."""
    inbox.mkdir(parents=True)
    names = []
    for i in range(n):
        words = " ".join(f"word{i}x{j}" for j in range(60))
        name = f"note-{i:05}.txt"
        (inbox / name).write_text(f"Note number {i} says this. {words}.\n", encoding="utf-8")
        names.append(name)
    old = time.time() - 60
    for name in names:
        os.utime(inbox / name, (old, old))
    return names


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


@pytest.mark.timeout(300)
def test_the_stop_ends_the_batch_in_hand_at_once_and_a_restart_ingests_each_document_once(
    tmp_path: Path,
) -> None:
    """Before, ``IngestService.stop`` let the batch in hand take all its documents (up to its 15 s,
    the batch cut only at the close): here all 300 were ingested before the stop returned."""
    n = 300
    inbox = tmp_path / "inbox"
    names = _drop(inbox, n)
    settings = dataclasses.replace(SETTINGS, batch_documents=n)

    async def stop_mid_batch() -> None:
        service = IngestService(settings, tmp_path / "state", inbox, "bytes")
        await asyncio.to_thread(service.open)
        assert service.ingestor is not None
        pool = service.ingestor.pool
        service.start()
        try:  # a document in hand: the batch of 300 is under way
            await until_async(lambda: any(w.task is not None for w in list(pool._workers)), "a batch", 120)
            await service.stop(240.0)
            # ended, not given up on (a wait_for that runs out cancels the task: done, cancelled)
            assert service.task is not None and service.task.done() and not service.task.cancelled()
        finally:
            await asyncio.to_thread(service.close)

    asyncio.run(stop_mid_batch())
    done = _names(inbox / "done")
    assert 0 < len(done) < n  # the batch ended with what it had
    assert _names(inbox / "failed") == []
    # the others were put back (claimed, in .ingesting/, taken first at the next start): none lost
    left = [name for name in _names(inbox) if name.endswith(".txt")] + _names(inbox / CLAIMS)
    assert sorted(done + left) == names

    async def restart() -> tuple[dict[str, int], int]:
        service = IngestService(settings, tmp_path / "state", inbox, "bytes")
        await asyncio.to_thread(service.open)
        assert service.ingestor is not None
        ingestor = service.ingestor
        service.start()
        try:
            await until_async(lambda: len(_names(inbox / "done")) == n, "all files done", 240)
        finally:
            await service.stop(60.0)
            # the registry's rows, not stats(): its counts are a snapshot refreshed at most every
            # 2 s, so a stop just after the last file reached done/ could read the first run's
            counts = await asyncio.to_thread(ingestor.registry.counts)
            pending = ingestor.stats()["pending"]  # read from the spool and the folder: current
            await asyncio.to_thread(service.close)
        return counts, pending

    counts, pending = asyncio.run(restart())
    assert counts["failed"] == 0 and pending == 0
    assert counts["done"] + counts["duplicate"] + counts["filtered"] == n  # each exactly once
    assert _names(inbox / "done") == names


@pytest.mark.timeout(300)
def test_a_stop_during_the_drop_folders_first_scan_leaves_the_close_to_that_scan(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The drop folder's start (its first scan: here 20,000 files) ran in a thread of its own,
    beside the ingestor's hand-over: a stop that cancelled ingest's task during it and closed
    the ingestor closed the folder's descriptors under the scan (OSError EBADF in that thread,
    never seen). Now the start runs inside ``run_once``: the close is handed to its thread."""
    n = 20_000
    inbox = tmp_path / "inbox"
    names = _drop(inbox, n)

    async def stop_at_start() -> None:
        service = IngestService(SETTINGS, tmp_path / "state", inbox, "bytes")
        await asyncio.to_thread(service.open)
        service.start()
        await until_async(
            lambda: any(t.name == "drop-folder-watch" for t in threading.enumerate()), "the scan", 120, 0.001
        )
        await service.stop(0.0)  # its task is cancelled: its thread goes on scanning
        await asyncio.to_thread(service.close)

    with caplog.at_level(logging.WARNING, logger="crystalline"):
        asyncio.run(stop_at_start())  # returns once the executor's threads (the scan's) ended
    assert any(m.startswith("closing while a batch runs") for m in caplog.messages), caplog.messages
    assert not any(t.name == "drop-folder-watch" for t in threading.enumerate())  # the thread closed it
    assert _names(inbox / "done") == [] and _names(inbox / "failed") == []
    left = [name for name in _names(inbox) if name.endswith(".txt")] + _names(inbox / CLAIMS)
    assert sorted(left) == names  # none lost
