"""The learned vocabulary's service in the supervisor ([train] tokenizer = "learned", the base
preset): until the vocabulary exists, learn it once the byte-level store holds enough training
text; then keep the store the model trains on derived from the byte-level one
(tokens/learned_vocab.py). Both run in a thread, every ``POLL_S`` seconds, never in the loop;
a stop ends either at its next piece of text (tokens/learned_vocab.PIECE_CHARS), not at its end."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from pathlib import Path
from typing import Any

from ..exit_status import one_line
from ..tokens.learned_vocab import DerivedStore, Stopped, derived_dir, learn_once, vocab_path
from ..workers.train_config import TrainConfig
from .store_data import byte_store_dir

log = logging.getLogger("crystalline.vocab")

POLL_S = 2.0
MAX_BACKOFF_S = 60.0  # after failures in a row the wait doubles from POLL_S up to this


class VocabService:
    def __init__(self, state_dir: Path, config: TrainConfig) -> None:
        self.byte_store = byte_store_dir(state_dir)
        self.path = vocab_path(state_dir)
        self.derived_dir = derived_dir(state_dir)
        self.vocab_size = config.learned_vocab
        self.min_bytes = config.learned_vocab_bytes
        self.derived: DerivedStore | None = None
        self.error: str | None = None
        self.stop_event = asyncio.Event()
        self.halt = threading.Event()  # the stop as the pass in its thread sees it
        self.task: asyncio.Task[None] | None = None
        self.failures = 0  # in a row: the wait before the next try doubles with each

    def _step(self) -> None:
        if self.derived is None:
            tokenizer = learn_once(self.byte_store, self.path, self.vocab_size, self.min_bytes, self.halt)
            if tokenizer is None:
                return
            self.derived = DerivedStore(self.byte_store, self.derived_dir, tokenizer)
        self.derived.step(stop=self.halt)

    async def _run(self) -> None:
        while not self.stop_event.is_set():
            try:
                await asyncio.to_thread(self._step)
                self.error = None
                self.failures = 0
            except Stopped:
                log.info(
                    "learned vocabulary: the pass in hand stopped with the daemon; the next start takes it up"
                )
                return
            # any failure (a tokenizers exception, MemoryError, a bug): ending here would leave
            # control waiting for the vocabulary forever, so it is reported and tried again
            except Exception as exc:
                self.failures += 1
                error = one_line(exc)  # the class name alone for an exception without a message
                if not isinstance(exc, OSError | ValueError) and error != type(exc).__name__:
                    error = f"{type(exc).__name__}: {error}"
                if error != self.error:
                    log.error(
                        "learned vocabulary: %s; trying again (every %.0f s at most)",
                        error,
                        MAX_BACKOFF_S,
                        exc_info=not isinstance(exc, OSError | ValueError),  # TokenizerError: ValueError
                    )
                self.error = error
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), self.wait_s())

    def wait_s(self) -> float:
        """Before the next pass: POLL_S, doubled for each failure in a row up to MAX_BACKOFF_S."""
        return min(MAX_BACKOFF_S, POLL_S * 2.0 ** min(self.failures, 16))

    def start(self) -> asyncio.Task[None]:
        if self.task is None:
            self.task = asyncio.create_task(self._run(), name="vocabulary")
        return self.task

    async def stop(self, timeout_s: float) -> None:
        """No new pass after this; the pass in hand (the learning, or deriving shards) ends at its
        next piece of text, writing nothing of it (a shard is written atomically); waited for
        ``timeout_s`` at most."""
        self.halt.set()
        self.stop_event.set()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.task), timeout_s)

    def stats(self) -> dict[str, Any]:
        """Status ``vocabulary``: learned or not, its size, the documents derived."""
        out: dict[str, Any] = {"path": str(self.path), "learned": self.derived is not None}
        if self.derived is None:
            out["learns_from_bytes"] = self.min_bytes
        else:
            out["vocab_size"] = self.derived.tokenizer.vocab_size
            out["derived_documents"] = self.derived.count
        if self.error:
            out["error"] = self.error
        return out
