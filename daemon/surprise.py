"""Surprise (issue 13): the loss of each newly ingested document's first windows under the served
weights, measured before training can take a window of it, and recorded once in the registry.

Where: in control, between steps. The documents a batch is cut from are a prefix of the store's
commit order, and the batch control took last was cut from the first ``n`` of them; a document
past ``n`` is in no batch trained yet, so scoring it before the next step is before training on
it, by construction. Control scores such documents in commit order within a time budget per
step (``BUDGET_S``), so training never waits long on it; a document that became part of a batch
before its turn came is passed over for good (``missed``), never scored late, and one whose
surprise the registry holds already (scored before a restart) is never scored again. The
values are written to the registry in small transactions (``surprise`` column; a registry busy
for longer than its short timeout keeps them for the next try); status reads the mean per
source from there (``ingest.surprise``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..ingest.registry import Registry
from ..ingest.registry_pg import open_registry
from ..tokens.token_store import StoredDocument, StoreReader
from ..workers.trainer import Trainer, evaluate
from .source_eval import served_params

log = logging.getLogger("crystalline.control.surprise")

BUDGET_S = 0.05  # scoring time per step at most (about a tenth of a step of the daemon's model)
FLUSH_S = 2.0  # surprise values are written at most this often
REGISTRY_TIMEOUT_S = 0.5  # a registry busy for longer: the values wait for the next flush
MAX_PENDING = 4096  # values not yet written (a registry down for long): the oldest are dropped


def registry_opener(database: str | None, path: Path, statement_timeout_s: float) -> Callable[[], Registry]:
    """Opens control's own connection to the registry the ingestor writes (``open_registry``:
    PostgreSQL's at ``database``, its statements cancelled after ``statement_timeout_s``, or the
    SQLite file at ``path``) with a short busy timeout (see the module)."""
    return functools.partial(
        open_registry, database, path, timeout_s=REGISTRY_TIMEOUT_S, statement_timeout_s=statement_timeout_s
    )


def first_windows(tokens: np.ndarray, seq_len: int, count: int) -> np.ndarray:
    """Up to ``count`` non-overlapping windows from the start of a document (one shorter window
    when the document is shorter than a window; none under two tokens)."""
    span = seq_len + 1
    if len(tokens) < 2:
        return np.zeros((0, span), dtype=tokens.dtype)
    if len(tokens) < span:
        return np.asarray(tokens)[None, :]
    n = min(count, (len(tokens) - 1) // seq_len)
    starts = np.arange(n) * seq_len
    return np.asarray(tokens)[starts[:, None] + np.arange(span)]


class SurpriseMeter:
    """Scores the store's new documents for control (see the module docstring)."""

    def __init__(
        self, store_dir: Path, open_registry: Callable[[], Registry], seq_len: int, windows: int
    ) -> None:
        # one map: it reads each new document once, in commit order (so, shard by shard); the
        # descriptor comes out of control's reserve (crystalline.descriptors)
        self.reader = StoreReader(store_dir, max_open_shards=1)
        self.open_registry = open_registry
        self.registry: Registry | None = None
        self.seq_len = seq_len
        self.windows = windows
        self.next: int | None = None  # commit-order index of the next document to look at
        self.pending: list[tuple[str, float]] = []
        self.flushed_at = time.monotonic()
        self.measured = 0
        self.written = 0  # values written to the registry (the supervisor reads the counts again)
        self.missed = 0
        self.error: str | None = None  # the registry's last failure, until a write works
        self.store_dir = store_dir
        self.store_mtime = -1  # the store directory's mtime at the last refresh

    def stats(self) -> dict[str, object]:
        out: dict[str, object] = {
            "measured": self.measured,
            "written": self.written,
            "missed": self.missed,
            "unwritten": len(self.pending),
        }
        if self.error:
            out["error"] = self.error
        return out

    def step(self, trainer: Trainer, trained_through: int | None, budget_s: float = BUDGET_S) -> None:
        """Score documents from ``trained_through`` on (the documents of the last batch taken;
        None before the first: nothing is known to be untrained yet) until the budget is spent."""
        if self.windows == 0 or trained_through is None:
            return
        if self.next is None:
            self.next = trained_through  # at start: below it, trained on already (or scored before)
        elif self.next < trained_through:
            self.missed += trained_through - self.next  # in a batch before their turn: never scored
            self.next = trained_through
        deadline = time.monotonic() + budget_s
        # a shard's index renamed in changes the directory's mtime: one stat a step, so new
        # documents are seen at the step after they are committed, well before the ring's next
        # block of steps can take them (it re-reads the store every second)
        with contextlib.suppress(OSError):
            mtime = os.stat(self.store_dir).st_mtime_ns
            if mtime != self.store_mtime:
                self.store_mtime = mtime
                self.reader.refresh()
        docs = self.reader.documents
        if self.next < len(docs):
            params = served_params(trainer)
            while self.next < len(docs) and time.monotonic() < deadline:
                chunk = docs[self.next : self.next + 16]
                known = self._known(chunk)
                for d in chunk:
                    self.next += 1
                    if d.doc_id not in known:
                        self._score(trainer, params, d)
                    if time.monotonic() >= deadline:
                        break
        if self.pending and (len(self.pending) >= 256 or time.monotonic() - self.flushed_at >= FLUSH_S):
            self.flush()

    def _score(self, trainer: Trainer, params: np.ndarray, doc: StoredDocument) -> None:
        windows = first_windows(self.reader.tokens(doc), self.seq_len, self.windows)
        if len(windows):
            self.pending.append((doc.doc_id, evaluate(trainer.model, params, windows)))
            self.measured += 1
            if len(self.pending) > MAX_PENDING:
                del self.pending[0]

    def _known(self, chunk: list[StoredDocument]) -> set[str]:
        """Of ``chunk``, the documents whose surprise is recorded (all of them when the registry
        cannot be read: none is scored twice). Any failure of the registry is caught here and
        in :meth:`open` and :meth:`flush`, not only the expected ones (a PostgreSQL error that
        is not DatabaseUnavailable, a bug): surprise is reported as failing, training goes on."""
        try:
            return self._registry().surprise_known([d.doc_id for d in chunk])
        except Exception as exc:  # any failure: see _known
            self._failed(exc)
            return {d.doc_id for d in chunk}

    def open(self) -> None:
        """Open the registry connection now (a failure is kept for status and retried later)."""
        try:
            self._registry()
        except Exception as exc:  # any failure: see _known
            self._failed(exc)

    def _registry(self) -> Registry:
        if self.registry is None:
            self.registry = self.open_registry()
        return self.registry

    def _failed(self, exc: BaseException) -> None:
        error = f"surprise not recorded: {type(exc).__name__}: {exc}"
        if error != self.error:
            expected = isinstance(exc, (OSError, sqlite3.Error, RuntimeError))
            log.warning("%s (kept, tried again)", error, exc_info=not expected)
        self.error = error

    def flush(self) -> None:
        """Write the values measured; kept for the next flush when the registry is busy or down."""
        self.flushed_at = time.monotonic()
        try:
            self._registry().record_surprise(self.pending)
        except Exception as exc:  # any failure: see _known
            self._failed(exc)
            return
        self.written += len(self.pending)
        self.pending.clear()
        self.error = None

    def close(self) -> None:
        if self.pending:
            self.flush()
        if self.registry is not None:
            try:
                self.registry.close()
            except Exception as exc:  # any failure: see _known
                log.warning("surprise: closing the registry failed: %s: %s", type(exc).__name__, exc)
            self.registry = None
