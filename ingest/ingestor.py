"""The ingestor: spool and drop folder in, tokens in the store and rows in the registry out.

For each batch of submissions: extraction, filtering, fingerprinting and tokenization run in
the process pool; duplicates are decided here against the registry and the batch itself; the
accepted documents' tokens go into one new shard (durable when :meth:`TokenStore.append`
returns); then one registry transaction records every submission of the batch (done,
duplicate, failed or filtered, with a reason); only then is each submission released (spool
entry removed, dropped file moved). A crash anywhere in between is repaired at start by
:meth:`Ingestor.recover`: shard documents missing from the registry are recorded from the
shard index, and submissions already recorded are released without being processed again.
So every submission is counted exactly once and no stored token is stored twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from crystalline.workers.dataset import held_out

from .document import Document, Spool
from .drop_folder import DropFolder
from .pool import ExtractionPool, PoolConfig, WorkResult
from .registry import Record, Registry
from .settings import IngestSettings
from .token_store import PendingDocument, TokenStore, read_index, shard_seqs

log = logging.getLogger("crystalline.ingest")


class TokenizerLike(Protocol):
    """What ingest needs of a tokenizer (``crystalline.workers.tokenizer.Tokenizer`` fits)."""

    @property
    def vocab_size(self) -> int: ...

    def to_json(self) -> str: ...


@dataclass
class Submission:
    """A document plus its registry key and what to do once it is recorded."""

    entry: str
    doc: Document
    release: Callable[[Record], None]


def doc_id_of(entry: str) -> str:
    """The store's document id of a submission: stable, short, derived from its entry."""
    return hashlib.sha256(entry.encode("utf-8", "surrogatepass")).hexdigest()[:20]


def file_entry(path: Path, prefix: str) -> str:
    """Registry key of a file: its path, size and mtime, so a changed file is a new submission."""
    st = path.stat()
    return f"{prefix}:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


class Ingestor:
    """Consumes a :class:`Spool` and a :class:`DropFolder` into ``data_dir`` (registry + tokens)."""

    def __init__(
        self,
        settings: IngestSettings,
        data_dir: Path,
        tokenizer: TokenizerLike,
        spool: Spool | None = None,
        drop_folder: DropFolder | None = None,
    ) -> None:
        self.settings = settings
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.spool = spool
        self.drop_folder = drop_folder
        dtype = np.uint16 if tokenizer.vocab_size <= 65536 else np.uint32
        self.store = TokenStore(self.data_dir / "tokens", dtype)
        self.registry = Registry(self.data_dir / "registry.sqlite3")
        # The registry connection is shared by the ingest thread and status requests in the
        # event loop: ``_lock`` guards each use and is never held across extraction (a long OCR
        # must not block status); ``_batch`` keeps batches one at a time.
        self._lock = threading.Lock()
        self._batch = threading.Lock()
        self.error: str | None = None  # why the last batch failed (full disk, ...); None once one works
        self._needs_recovery = False  # a batch failed: its shard may be stored, its records not
        self.pool = ExtractionPool(
            PoolConfig(
                processes=settings.processes,
                time_limit_s=settings.time_limit_s,
                memory_limit_mb=settings.memory_limit_mb,
                limits=settings.limits,
                min_chars=settings.min_chars,
                min_words=settings.min_words,
                tokenizer_json=tokenizer.to_json(),
            )
        )
        self.recover()

    def close(self) -> None:
        self.pool.close()
        if self.drop_folder is not None:
            self.drop_folder.stop()
        self.registry.close()

    def __enter__(self) -> Ingestor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def recover(self) -> int:
        """Record shard documents the registry lacks (a crash after the shard, before the
        registry commit); returns how many were recovered."""
        known = self.registry.entries()
        records = []
        for seq in shard_seqs(self.store.directory):
            _dtype, docs = read_index(self.store.directory, seq)
            for d in docs:
                if d.entry not in known:
                    records.append(
                        Record(
                            d.entry,
                            d.doc_id,
                            d.source,
                            origin="",
                            state="done",
                            reason="recovered from the shard index",
                            content_hash=d.content_hash,
                            simhash=d.simhash,
                            tokens=d.length,
                            split=d.split,
                            shard=seq,
                        )
                    )
        if records:
            log.warning("recovered %d documents stored before a crash", len(records))
            with self._lock:
                self.registry.record(records)
        return len(records)

    # -- one batch -------------------------------------------------------------------------

    def process(self, submissions: list[Submission]) -> list[Record]:
        """Ingest one batch durably and release each submission; returns the new records."""
        with self._batch:
            fresh: list[Submission] = []
            for s in submissions:
                with self._lock:
                    state = self.registry.state_of(s.entry)
                    reason = self.registry.reason_of(s.entry) if state is not None else ""
                if state is None:
                    fresh.append(s)
                else:  # recorded before a crash or seen twice: release, do not count again
                    s.release(Record(s.entry, doc_id_of(s.entry), s.doc.source, s.doc.origin, state, reason))
            results: dict[int, WorkResult] = dict(self.pool.map([s.doc for s in fresh]))
            records: list[Record] = []
            pending: list[PendingDocument] = []
            hashes: dict[str, str] = {}
            prints: list[tuple[int, str]] = []
            with self._lock:
                for i, s in enumerate(fresh):
                    r = results[i]
                    rec = self._classify(s, r, hashes, prints)
                    records.append(rec)
                    if rec.state == "done":
                        pending.append(
                            PendingDocument(
                                rec.doc_id, s.entry, s.doc.source, rec.split, r.ids, r.content_hash, r.simhash
                            )
                        )
            stored = self.store.append(pending)  # durable from here on
            shard = stored[0].shard if stored else None
            for rec in records:
                if rec.state == "done":
                    rec.shard = shard
            with self._lock:
                self.registry.record(records)
        for s, rec in zip(fresh, records, strict=True):
            s.release(rec)
        for rec in records:
            if rec.state in ("failed", "filtered"):
                log.info("%s %s: %s", rec.state, rec.source, rec.reason)
        return records

    def _classify(
        self, s: Submission, r: WorkResult, hashes: dict[str, str], prints: list[tuple[int, str]]
    ) -> Record:
        from .dedup import NEAR_DISTANCE, hamming

        doc_id = doc_id_of(s.entry)
        rec = Record(
            s.entry,
            doc_id,
            s.doc.source,
            s.doc.origin,
            "done",
            kind=r.kind,
            chars=r.chars,
            title=r.title,
            language=r.language,
        )
        if r.error:
            rec.state, rec.reason = "failed", r.error
            return rec
        if r.filtered:
            rec.state, rec.reason = "filtered", r.filtered
            return rec
        same = hashes.get(r.content_hash) or self.registry.exact_duplicate(r.content_hash)
        if same is None:
            near = next((d for f, d in prints if hamming(f, r.simhash) <= NEAR_DISTANCE), None)
            near = near or self.registry.near_duplicate(r.simhash)
            if near is not None:
                rec.state, rec.reason = "duplicate", f"near-duplicate of {near}"
                return rec
        else:
            rec.state, rec.reason = "duplicate", f"same text as {same}"
            return rec
        hashes[r.content_hash] = doc_id
        prints.append((r.simhash, doc_id))
        rec.content_hash, rec.simhash, rec.tokens = r.content_hash, r.simhash, len(r.ids)
        if r.truncated:
            rec.reason = f"truncated: {r.truncated_reason}"  # stored, but not all of it
        rec.split = "val" if held_out(s.doc.source, self.settings.val_fraction) else "train"
        return rec

    # -- sources ---------------------------------------------------------------------------

    def _spool_batch(self) -> list[Submission]:
        if self.spool is None:
            return []
        spool = self.spool
        out: list[Submission] = []
        size = 0
        for meta_path, doc in spool.pending():

            def release(_rec: Record, p: Path = meta_path) -> None:
                spool.remove(p)

            out.append(Submission(f"spool:{meta_path.stem}", doc, release))
            size += len(doc.body)
            if len(out) >= self.settings.batch_documents or size >= self.settings.batch_bytes:
                break
        return out

    def _drop_batch(self) -> list[Submission]:
        if self.drop_folder is None:
            return []
        folder = self.drop_folder
        out: list[Submission] = []
        size = 0
        for path in folder.take(self.settings.batch_documents):
            try:
                entry = file_entry(path, "drop")
                too_big = path.stat().st_size > self.settings.limits.max_bytes
                body = b"" if too_big else path.read_bytes()
            except OSError as e:
                log.warning("cannot read dropped file %s: %s", path, e.strerror)
                continue  # vanished or unreadable: still in the folder, not ours to move
            doc = Document(str(path), body, "", origin="drop", fetched_at=time.time())
            if too_big:  # keep the limit's reason, not "empty file", for a file never read
                size_reason = f"too large ({path.stat().st_size} bytes > {self.settings.limits.max_bytes})"
                rec = Record(entry, doc_id_of(entry), doc.source, "drop", "failed", size_reason)
                with self._lock:
                    self.registry.record([rec])
                folder.finish(path, size_reason)
                continue

            def release(rec: Record, p: Path = path) -> None:
                folder.finish(p, rec.reason if rec.state == "failed" else None)

            out.append(Submission(entry, doc, release))
            size += len(body)
            if size >= self.settings.batch_bytes:
                break
        return out

    def _check_drop_folder(self) -> None:
        """Recreate a drop folder deleted while running (and watch it again), so that files
        dropped afterwards are still ingested; the deletion is reported as an error."""
        folder = self.drop_folder
        if folder is None or (folder.root.is_dir() and folder.done.is_dir() and folder.failed.is_dir()):
            return
        self.error = f"drop folder {folder.root} was deleted while running; recreated it"
        log.error("%s", self.error)
        folder.stop()
        for d in (folder.root, folder.done, folder.failed):
            d.mkdir(parents=True, exist_ok=True)
        folder.start()

    def run_once(self) -> int:
        """Process one batch from the spool, else from the drop folder; returns submissions handled.

        A batch that fails (a full disk, a read-only store) raises; its dropped files go back to
        the queue (spool entries stay on disk anyway), and the next call first records what a
        half-done batch stored, so that nothing is lost and nothing is stored twice."""
        self._check_drop_folder()
        if self._needs_recovery:
            self.recover()
            self._needs_recovery = False
        batch = self._spool_batch() or self._drop_batch()
        if batch:
            try:
                self.process(batch)
            except BaseException:
                self._needs_recovery = True
                if self.drop_folder is not None:
                    for sub in batch:
                        if sub.doc.origin == "drop" and Path(sub.doc.source).is_file():
                            self.drop_folder.offer(Path(sub.doc.source))
                raise
        return len(batch)

    async def run(self, stop: asyncio.Event, idle_s: float = 1.0, max_backoff_s: float = 60.0) -> None:
        """Ingest until ``stop`` is set; the blocking work runs in a thread, never in the loop.
        A failing batch is reported (``error``, the log) and retried with backoff."""
        if self.drop_folder is not None:
            await asyncio.to_thread(self.drop_folder.start)
        delay = idle_s
        while not stop.is_set():
            try:
                handled = await asyncio.to_thread(self.run_once)
            except (OSError, sqlite3.Error) as exc:
                self.error = f"ingest batch failed: {type(exc).__name__}: {exc}"
                log.error("%s; retrying in %.0f s", self.error, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                delay = min(delay * 2, max_backoff_s)
                continue
            if handled:
                if self.error is not None:
                    log.info("ingest works again")
                self.error = None
                delay = idle_s
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=idle_s)

    def stats(self) -> dict[str, Any]:
        """Counts for the status socket: documents (stored), duplicates, failed, filtered,
        pending (waiting in spool and drop folder), tokens, validation_documents."""
        with self._lock:
            counts = self.registry.counts()
        pending = (self.spool.count() if self.spool else 0) + (
            self.drop_folder.pending() if self.drop_folder else 0
        )
        return {
            "documents": counts["done"],
            "duplicates": counts["duplicate"],
            "failed": counts["failed"],
            "filtered": counts["filtered"],
            "pending": pending,
            "tokens": counts["tokens"],
            "validation_documents": counts["validation_documents"],
            "pool_restarts": self.pool.restarts,
            **({"error": self.error} if self.error else {}),
        }
