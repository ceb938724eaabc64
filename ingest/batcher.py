"""The batcher: training windows cut from the token store, fresh documents mixed with replay.

The training stream is the concatenation of the store's *train* documents in commit order
(held-out documents never appear). For step ``s`` a generator seeded by ``(seed, s)`` draws
``batch_size`` window starts: a ``fresh_fraction`` of the rows from the newest
``fresh_tokens`` tokens of the stream, the rest uniformly from all of it (replay). So a
document reaches training at the first batch after the store is re-read (at most
``refresh_s`` later), and training never waits on the crawl once one window's worth of
tokens exists.

Determinism: a batch is a pure function of (seed, step, the number of train documents
visible). Commit order is fixed, so the visible documents are always a prefix of it;
:meth:`Batcher.position` reports that prefix length, and ``batch(step, documents=n)``
reproduces a batch exactly. Status reports the position (``data.train_documents``); a
checkpoint records it, and a resume on a store holding fewer train documents warns
(``StoreTrainingData.resumed_from``). The batcher
reads committed shards only (see :mod:`token_store`), so it needs no lock with the writer.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from .token_store import StoreReader

log = logging.getLogger("crystalline.ingest.batcher")


class NotEnoughTokens(TimeoutError):
    """The store did not hold one training window's worth of tokens before the deadline."""


class Batcher:
    """``batch(step) -> (batch_size, seq_len + 1)`` token windows from the store in ``store_dir``."""

    def __init__(
        self,
        store_dir: Path,
        batch_size: int,
        seq_len: int,
        seed: int = 0,
        fresh_fraction: float = 0.25,
        fresh_tokens: int = 1 << 16,
        wait_s: float = 30.0,
        refresh_s: float = 1.0,
    ) -> None:
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch size and seq len must be positive, got {batch_size} and {seq_len}")
        if not 0.0 <= fresh_fraction <= 1.0:
            raise ValueError(f"fresh fraction must be in [0, 1], got {fresh_fraction}")
        self.reader = StoreReader(Path(store_dir))
        self.batch_size = batch_size
        self.span = seq_len + 1
        self.seed = seed
        self.fresh_rows = round(batch_size * fresh_fraction)
        self.fresh_tokens = fresh_tokens
        self.wait_s = wait_s
        self.refresh_s = refresh_s
        self._docs: list[tuple[int, int, int]] = []  # (shard, offset, length) of train documents
        self._starts = np.zeros(1, dtype=np.int64)  # stream offset of each document, then the total
        self._last_refresh = -float("inf")

    def refresh(self) -> int:
        """Re-read the store's committed shards; returns how many train documents were added."""
        self._last_refresh = time.monotonic()
        before = len(self.reader.documents)
        self.reader.refresh()
        added = [d for d in self.reader.documents[before:] if d.split == "train" and d.length > 0]
        if added:
            lengths = np.fromiter((d.length for d in added), dtype=np.int64, count=len(added))
            tail = self._starts[-1] + np.cumsum(lengths)
            # offsets first, then the documents: a reader in another thread (status asking for
            # ``tokens()`` while the engine's ring thread refreshes) must never see more
            # documents than offsets; each assignment is atomic
            self._starts = np.concatenate([self._starts, tail])
            self._docs.extend((d.shard, d.offset, d.length) for d in added)
        return len(added)

    def position(self) -> int:
        """Train documents visible now: with ``seed`` and a step, this fixes the batch."""
        return len(self._docs)

    def tokens(self, documents: int | None = None) -> int:
        """Train tokens in the first ``documents`` visible documents (all by default)."""
        n = len(self._docs) if documents is None else documents
        return int(self._starts[n])

    def _wait_for(self, need: int) -> None:
        deadline = time.monotonic() + self.wait_s
        while self.tokens() < need:
            if time.monotonic() >= deadline:
                raise NotEnoughTokens(
                    f"the token store has {self.tokens()} training tokens; a window needs {need} "
                    f"(waited {self.wait_s:g}s)"
                )
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
            self.refresh()

    def batch(self, step: int, documents: int | None = None) -> np.ndarray:
        """The batch of ``step``: ``batch_size`` windows of ``seq_len + 1`` ids (store dtype).

        A fresh array, which the ring's thread copies into its slot: 5 us for 48 x 1025 ids
        against steps of hundreds of ms, so no ``out=`` to write into the slot directly."""
        if documents is None:
            if time.monotonic() - self._last_refresh >= self.refresh_s:
                self.refresh()
            self._wait_for(self.span)
            documents = len(self._docs)
        elif documents > len(self._docs):
            raise ValueError(f"asked for {documents} documents, the batcher has seen {len(self._docs)}")
        total = self.tokens(documents)
        if total < self.span:
            raise NotEnoughTokens(
                f"{total} training tokens in {documents} documents; a window needs {self.span}"
            )
        rng = np.random.default_rng([self.seed, step])
        last = total - self.span  # the last valid window start
        fresh_lo = max(0, total - max(self.fresh_tokens, self.span))
        starts = np.concatenate(
            [
                rng.integers(fresh_lo, last + 1, size=self.fresh_rows),
                rng.integers(0, last + 1, size=self.batch_size - self.fresh_rows),
            ]
        )
        out = np.empty((self.batch_size, self.span), dtype=self.reader.dtype or np.uint16)
        for row, start in enumerate(starts):
            self._gather(int(start), out[row])
        return out

    __call__ = batch

    def _gather(self, start: int, row: np.ndarray) -> None:
        """Copy the stream's tokens [start, start + len(row)) into ``row``, across documents."""
        i = int(np.searchsorted(self._starts, start, side="right")) - 1
        filled = 0
        while filled < len(row):
            shard, offset, length = self._docs[i]
            skip = start + filled - int(self._starts[i])
            take = min(length - skip, len(row) - filled)
            row[filled : filled + take] = self.reader.shard(shard)[offset + skip : offset + skip + take]
            filled += take
            i += 1
