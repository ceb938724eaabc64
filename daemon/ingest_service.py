"""The daemon's ingest: the ``Ingestor`` over the spool and the drop folder, opened once the
state directory is usable, run by a ``ComponentRunner`` that restarts it with backoff after a
failed batch, and what status shows of it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from ..documents import Spool
from ..ingest.drop_sources import DropSources
from ..ingest.ingestor import Ingestor
from ..ingest.settings import IngestSettings
from ..tokens.tokenizer import load_tokenizer
from .component_runner import Backoff, ComponentRunner

log = logging.getLogger("crystalline.ingest")

BACKOFF = Backoff(first_s=1.0, max_s=60.0, healthy_after_s=300.0)


class IngestService:
    def __init__(self, settings: IngestSettings, state_dir: Path, inbox: Path, tokenizer: str) -> None:
        self.settings = settings
        self.state_dir = state_dir
        self.inbox = inbox
        self.tokenizer = tokenizer
        self.ingestor: Ingestor | None = None
        self.runner = ComponentRunner("ingest", self._run, BACKOFF)
        self.task: asyncio.Task[None] | None = None

    def open(self) -> None:
        """Open the registry, the token store and the pool (blocking: recovery may touch the
        disk; OSError or sqlite3.Error when the state directory cannot be used)."""
        if self.ingestor is None:
            self.ingestor = Ingestor(
                self.settings,
                self.state_dir / "ingest",
                load_tokenizer(self.tokenizer),
                spool=Spool(self.state_dir / "spool"),
                drop_folder=DropSources(self.inbox, self.settings.drop_settle_s),
            )

    def start(self) -> asyncio.Task[None]:
        if self.task is None:
            self.task = asyncio.create_task(self.runner.run(), name="ingest")
        return self.task

    async def _run(self) -> None:
        assert self.ingestor is not None
        await self.ingestor.run(self.runner.stop_event, on_progress=self.runner.progress)

    def stats(self) -> dict[str, Any]:
        """Ingest's counts and its runner's state; ``error``: why it last failed (the runner's)
        or what it last reported (a drop folder recreated)."""
        stats = self.ingestor.stats() if self.ingestor is not None else {}
        runner = self.runner.stats()
        error = runner.pop("error", None) or stats.get("error")
        stats.update(runner)
        if error:
            stats["error"] = error
        return stats

    def surprise_recorded(self) -> None:
        """Control wrote surprise values to the registry: status shows them at ingest's next turn."""
        if self.ingestor is not None:
            self.ingestor.surprise_recorded()

    def stop_taking(self) -> None:
        """The daemon's stop begins: no restart, no batch after this, and the batch in hand takes
        no further document (instant, thread-safe; called beside control's stop, before any
        other component's wait)."""
        if self.runner.stop_event.is_set():
            return  # told already
        self.runner.stop()
        if self.ingestor is not None:
            self.ingestor.stop_taking()
        log.info("stopping: ingest takes no further document")

    async def stop(self, timeout_s: float) -> None:
        """:meth:`stop_taking`, and let the batch in hand end (durably, with the documents the
        pool has: the others stay pending) within ``timeout_s``."""
        self.stop_taking()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self.task, timeout_s)

    def close(self) -> None:
        """Close the pool, the drop folder and the registry; with a batch still running in its
        thread (``stop``'s wait ran out) only tell it to stop: it closes them when it ends."""
        if self.ingestor is not None:
            self.ingestor.close()

    def cut(self) -> None:
        """A :meth:`close` in another thread ran out of the stop's time: its extraction processes
        are killed, so that it ends at once (thread-safe; loses no document)."""
        if self.ingestor is not None:
            self.ingestor.cut_extraction()
