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

A submission's registry key comes from its content and name (:func:`content_entry`), never
from a path, size and mtime, which a different file can share (tar and rsync keep mtimes). A
batch holds at most ``batch_bytes`` of input (or one larger file), and each body is dropped as
soon as the pool has it, so the ingest thread holds one batch's input and token ids at a time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from crystalline.documents import Document, Spool, source_group
from crystalline.tokens.held_out import held_out
from crystalline.tokens.token_store import PendingDocument, TokenStore, read_index, shard_seqs

from .drop_folder import Claimed, DropFolder
from .drop_sources import DropSources
from .pool import ExtractionPool, PoolClosed, WorkResult
from .registry import Record
from .registry_pg import open_registry
from .settings import IngestSettings
from .warc_records import is_warc, spool_warc

log = logging.getLogger("crystalline.ingest")

# the counts are read again at least this often for the surprise (other machines' controls record
# it in a shared registry; this daemon's control says so: surprise_recorded)
SURPRISE_REFRESH_S = 30.0


class TokenizerLike(Protocol):
    """What ingest needs of a tokenizer (``crystalline.tokens.tokenizer.Tokenizer`` fits)."""

    @property
    def vocab_size(self) -> int: ...

    def to_json(self) -> str: ...


@dataclass
class Submission:
    """A document plus its registry key and what to do once it is recorded."""

    entry: str
    doc: Document
    release: Callable[[Record], None]
    file_key: str = ""  # a dropped file's identity on disk (see Claimed.file_key)


def doc_id_of(entry: str) -> str:
    """The store's document id of a submission: stable, short, derived from its entry."""
    return hashlib.sha256(entry.encode("utf-8", "surrogatepass")).hexdigest()[:20]


def content_entry(prefix: str, name: str, body: bytes) -> str:
    """Registry key of a file: a hash of its bytes and of its name (as file-system bytes, so any
    name works). The same name with new content is a new submission; the same file seen again
    (after a crash, or dropped twice) is recognised; a copy under another name is a duplicate."""
    content = hashlib.sha256(body).hexdigest()
    named = hashlib.sha256(os.fsencode(name)).hexdigest()[:16]
    return f"{prefix}:{content}:{named}"


def refused_entry(item: Claimed) -> str:
    """Registry key of a dropped entry refused unread (a link, a FIFO, too large): its identity
    on disk, so a refusal repeated after a crash is not counted twice."""
    return refusal_key("drop-refused", item.file_key, item.name)


def refusal_key(prefix: str, file_key: str, name: str) -> str:
    """Registry key of a file refused unread: its identity on disk (see ``file_key_of``) and
    name. Not its content, which was not read: an empty body would give every refused file
    of one name the same key, and a new one would pass for the old."""
    return f"{prefix}:{file_key}:{hashlib.sha256(os.fsencode(name)).hexdigest()[:16]}"


def _batch_minhash_duplicate(
    lsh: dict[tuple[int, int], list[tuple[str, bytes]]], keys: list[int], signature: bytes
) -> tuple[str, float] | None:
    """Like :meth:`Registry.minhash_duplicate`, among the documents kept earlier in this batch."""
    from .minhash import THRESHOLD, similarity

    best: tuple[str, float] | None = None
    for key in enumerate(keys):
        for doc_id, other in lsh.get(key, ()):
            estimate = similarity(signature, other)
            if estimate is not None and estimate >= THRESHOLD and (best is None or estimate > best[1]):
                best = (doc_id, estimate)
    return best


class Ingestor:
    """Consumes a :class:`Spool` and a :class:`DropFolder` into ``data_dir`` (registry + tokens)."""

    def __init__(
        self,
        settings: IngestSettings,
        data_dir: Path,
        tokenizer: TokenizerLike,
        spool: Spool | None = None,
        drop_folder: DropFolder | DropSources | None = None,
    ) -> None:
        self.settings = settings
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.spool = spool
        self.drop_folder = drop_folder
        dtype = np.uint16 if tokenizer.vocab_size <= 65536 else np.uint32
        self.store = TokenStore(self.data_dir / "tokens", dtype)
        self.registry = open_registry(
            settings.database,
            self.data_dir / "registry.sqlite3",
            statement_timeout_s=settings.database_timeout_s,
        )
        # The registry connection is shared by the ingest thread and status requests in the
        # event loop: ``_lock`` guards each use and is never held across extraction (a long OCR
        # must not block status); ``_batch`` keeps batches one at a time.
        self._lock = threading.Lock()
        self._batch = threading.Lock()
        # Closing while a batch runs in its thread (the daemon's stop after ingest's wait ran
        # out): ``_stopping`` ends the batch between documents, and the batch's thread closes
        # the pool and the registry itself when it ends (``_handover`` guards who closes).
        self._stopping = threading.Event()
        self._handover = threading.Lock()
        self._running = False  # a run_once is under way
        self._closed = False  # close was asked for: done, or left to the running batch
        self.error: str | None = None  # a drop folder recreated after a deletion; None once a batch works
        self._needs_recovery = False  # a batch failed: its shard may be stored, its records not
        # The registry's counts for status, refreshed here by the ingest thread after the rows
        # change: status runs on the event loop and must not wait for COUNT queries (620 ms at
        # 500k rows) or for ``_lock`` while a batch holds it.
        self._counts: dict[str, Any] = {}
        self._counts_stale = True
        self._counts_at = float("-inf")  # time.monotonic() of the last refresh
        self._counts_cost_s = 0.0  # how long it took
        self.pool = ExtractionPool(settings.pool_config(tokenizer.to_json()))
        try:
            self.recover()
            self.refresh_counts(force=True)
        except BaseException:  # the registry failed (its database went away): nothing is left open
            self.close()
            raise

    def close(self) -> None:
        """Close the pool, the drop folder and the registry. Called from another thread while a
        :meth:`run_once` is under way, it leaves that to the batch, which takes no further
        document: the extraction processes at one are killed (``ExtractionPool.cut``), the
        documents that already have their results are stored, the others are left pending for
        the next run, and the batch's thread closes everything (the pool is not thread-safe);
        this returns at once."""
        with self._handover:
            self._stopping.set()
            already, self._closed = self._closed, True
            if already:
                return
            if self._running:
                log.warning("closing while a batch runs: its extraction processes are killed, "
                            "the documents they were at left pending; the batch then closes")  # fmt: skip
                self.pool.cut()
                return
        self._close_now()

    def cut_extraction(self) -> None:
        """Kill the extraction processes now (thread-safe: ``ExtractionPool.cut``): the daemon's
        stop ran out of time for a close in progress, or a second signal came. After :meth:`close`
        or :meth:`stop_taking` it loses nothing: idle processes hold no document, and a batch
        leaves those without a result pending. Called alone during a batch, that batch fails
        (``PoolClosed``) and its files are put back."""
        self.pool.cut()

    def stop_taking(self) -> None:
        """The stop begins (thread-safe): a running batch takes no further document (the pool
        finishes those it has, and they are stored; the others stay pending: spool entries on
        disk, dropped files put back) and no batch starts after. :meth:`close` still closes. It is
        final: nothing clears ``_stopping`` (ingest is never resumed in the same process; a pause
        or resume of ingest would need to clear it, and to reopen what close closed)."""
        self._stopping.set()

    def _close_now(self) -> None:
        self.pool.close()
        if self.drop_folder is not None:
            self.drop_folder.close()
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
                            minhash=list(d.minhash),
                            minhash_signature=base64.b64decode(d.minhash_signature),
                            group=source_group(d.source, d.group),
                        )
                    )
        if records:
            log.warning("recovered %d documents stored before a crash", len(records))
            with self._lock:
                self.registry.record(records)
            self._counts_stale = True
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
            results: dict[int, WorkResult] = {}
            try:
                for index, result in self.pool.map(self._bodies(fresh)):
                    results[index] = result
            except PoolClosed:
                if not self._stopping.is_set():
                    raise
            # a stop (close) ends the batch: the documents with results are stored; the others
            # (not taken, or cut off at a killed extraction process) are left as they are (spool
            # entries on disk, dropped files put back)
            kept = sorted(results)
            fresh = [fresh[i] for i in kept]
            results = {j: results[i] for j, i in enumerate(kept)}
            # the duplicate checks, the durable tokens and the records as one step (on PostgreSQL:
            # one machine at a time, so two that fetched the same text keep one copy)
            with self.registry.exclusive():
                records = self._decide_and_store(fresh, results)
            self._counts_stale = True
        for s, rec in zip(fresh, records, strict=True):
            s.release(rec)
        for rec in records:
            if rec.state in ("failed", "filtered"):
                log.info("%s %s: %s", rec.state, rec.source, rec.reason)
        return records

    def _decide_and_store(self, fresh: list[Submission], results: dict[int, WorkResult]) -> list[Record]:
        """Classify each result against the registry and the batch, append the new documents'
        tokens to the store (durable) and record every submission; returns the records."""
        records: list[Record] = []
        pending: list[PendingDocument] = []
        hashes: dict[str, str] = {}
        prints: list[tuple[int, str]] = []
        lsh: dict[tuple[int, int], list[tuple[str, bytes]]] = {}
        with self._lock:
            for i, s in enumerate(fresh):
                r = results[i]
                rec = self._classify(s, r, hashes, prints, lsh)
                records.append(rec)
                if rec.state == "done":
                    pending.append(
                        PendingDocument(
                            rec.doc_id,
                            s.entry,
                            s.doc.source,
                            rec.split,
                            r.token_ids(),
                            r.content_hash,
                            r.simhash,
                            list(r.minhash),
                            r.minhash_signature,
                            rec.group,
                        )
                    )
        stored = self.store.append(pending)  # durable from here on
        shard = stored[0].shard if stored else None
        for rec in records:
            if rec.state == "done":
                rec.shard = shard
        with self._lock:
            self.registry.record(records)
        return records

    def _bodies(self, fresh: list[Submission]) -> Iterator[Document]:
        """The documents for the pool, until a stop (:meth:`close`); each submission keeps its
        document without the body, so a body is freed once the pool has sent it (not held to
        the end of the batch)."""
        for s in fresh:
            if self._stopping.is_set():
                return
            doc = s.doc
            s.doc = dataclasses.replace(doc, body=b"")
            yield doc

    def _classify(
        self,
        s: Submission,
        r: WorkResult,
        hashes: dict[str, str],
        prints: list[tuple[int, str]],
        lsh: dict[tuple[int, int], list[tuple[str, bytes]]],
    ) -> Record:
        """The record of one result: failed, filtered, a duplicate (exact, MinHash, SimHash)
        of a stored document or of one earlier in this batch, or done."""
        from .dedup import NEAR_DISTANCE, hamming
        from .filters import rule_of

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
            file_key=s.file_key,
            language_score=r.language_score,
            edits=dict(r.edits),
            group=source_group(s.doc.source, s.doc.group),
        )
        if r.error:
            rec.state, rec.reason = "failed", r.error
            return rec
        if r.filtered:
            rec.state, rec.reason, rec.rule = "filtered", r.filtered, rule_of(r.filtered)
            return rec
        same = hashes.get(r.content_hash) or self.registry.exact_duplicate(r.content_hash)
        if same is not None:
            rec.state, rec.reason, rec.rule = "duplicate", f"same text as {same}", "exact"
            return rec
        signature = base64.b64decode(r.minhash_signature)
        similar = _batch_minhash_duplicate(lsh, r.minhash, signature)
        similar = similar or self.registry.minhash_duplicate(list(r.minhash), signature)
        if similar is not None:
            rec.state, rec.rule = "duplicate", "minhash"
            rec.reason = f"near-duplicate of {similar[0]} (MinHash, estimated Jaccard {similar[1]:.2f})"
            return rec
        near = next((d for f, d in prints if hamming(f, r.simhash) <= NEAR_DISTANCE), None)
        near = near or self.registry.near_duplicate(r.simhash)
        if near is not None:
            rec.state, rec.reason, rec.rule = "duplicate", f"near-duplicate of {near} (SimHash)", "simhash"
            return rec
        hashes[r.content_hash] = doc_id
        prints.append((r.simhash, doc_id))
        for key in enumerate(r.minhash):
            lsh.setdefault(key, []).append((doc_id, signature))
        rec.content_hash, rec.simhash, rec.tokens = r.content_hash, r.simhash, len(r.token_ids())
        rec.minhash, rec.minhash_signature = list(r.minhash), signature
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
        """Claim dropped files one by one until ``batch_documents`` or ``batch_bytes`` (a file that
        would pass it waits, claimed, for the next batch); files refused unread, or recognised
        as already recorded, are finished here and not part of the batch."""
        folder = self.drop_folder
        if folder is None:
            return []
        out: list[Submission] = []
        size = 0
        while len(out) < self.settings.batch_documents and size < self.settings.batch_bytes:
            if self._stopping.is_set():  # the stop began: claim no further file
                break
            item = folder.take_one()
            if item is None:
                break
            if item.refusal is not None:
                self._refuse(item, item.refusal)
                continue
            if out and size + item.st.st_size > self.settings.batch_bytes:
                folder.put_back([item])
                break
            try:
                sub = self._drop_submission(item)
            except OSError:
                raise  # moving files or the registry failed: the batch's trouble (a full disk)
            except Exception as exc:  # about this one file: it fails, never the batch
                log.exception("dropped file %s could not be handled", item.label)
                self._refuse(item, f"could not be handled ({type(exc).__name__}: {exc})")
                continue
            if sub is not None:
                out.append(sub)
                size += len(sub.doc.body)
        return out

    def _drop_submission(self, item: Claimed) -> Submission | None:
        """The submission of a claimed regular file, or None if it was finished already (known)."""
        folder = self.drop_folder
        assert folder is not None
        with self._lock:
            known = self.registry.find_file(item.file_key)
        if known is not None:  # this very file was recorded before a crash: move it on
            _entry, state, reason = known
            folder.finish(item, reason if state == "failed" else None)
            return None
        if is_warc(item.name) and self.spool is not None:  # its HTML responses go through the spool
            self._spool_warc(item)
            return None
        limit = self.settings.limits.max_bytes
        try:
            body = b"" if item.st.st_size > limit else item.read(limit)
        except OSError as e:  # an I/O error on this file alone
            log.warning("cannot read dropped file %s: %s", item.label, e.strerror)
            self._refuse(item, f"cannot read ({e.strerror})")
            return None
        if item.st.st_size > limit or len(body) > limit:
            size = max(item.st.st_size, len(body))
            self._refuse(item, f"too large ({size} bytes > {limit})")
            return None
        entry = content_entry("drop", item.name, body)
        source = str(folder.root / item.group / item.label)
        doc = Document(source, body, "", origin="drop", fetched_at=time.time(), group=item.group)

        def release(rec: Record, c: Claimed = item) -> None:
            folder.finish(c, rec.reason if rec.state == "failed" else None)

        return Submission(entry, doc, release, file_key=item.file_key)

    def _spool_warc(self, item: Claimed) -> None:
        """A dropped WARC file: its HTML responses into the spool (see ``warc_records``), then the
        file itself recorded with what it gave (``kind`` warc, no tokens of its own) and moved on."""
        folder, spool = self.drop_folder, self.spool
        assert folder is not None and spool is not None

        def known(stem: str) -> bool:  # a record spooled before a stop: in the spool, or ingested
            if (spool.directory / f"{stem}.json").exists():
                return True
            with self._lock:
                return self.registry.state_of(f"spool:{stem}") is not None

        # a WARC claimed for the first time has nothing spooled yet: no look-up per record
        resumed = known if item.resumed else None
        got = spool_warc(item.fd, item.name, spool, self.settings.limits.max_bytes, self._stopping, resumed)
        if got.stopped:  # claimed still, not recorded: read again at the next start
            log.info("WARC %s: stopped after record %d; resumed at the next start", item.label, got.records)
            folder.put_back([item])
            return
        failed = got.error if not (got.spooled or got.known) else ""
        entry = f"drop-warc:{item.file_key}:{hashlib.sha256(os.fsencode(item.name)).hexdigest()[:16]}"
        source = str(folder.root / item.group / item.label)
        state = "failed" if failed else "done"
        rec = Record(
            entry, doc_id_of(entry), source, "drop", state, got.summary(), kind="warc", file_key=item.file_key
        )
        with self._lock:
            self.registry.record([rec])
        self._counts_stale = True
        folder.finish(item, failed or None)

    def record_refusal(self, entry: str, source: str, origin: str, reason: str, file_key: str = "") -> bool:
        """Record a submission refused unread as failed; False when ``entry`` was recorded before."""
        rec = Record(entry, doc_id_of(entry), source, origin, "failed", reason, file_key=file_key)
        with self._lock:
            if self.registry.state_of(entry) is not None:
                return False
            self.registry.record([rec])
        self._counts_stale = True
        return True

    def _refuse(self, item: Claimed, reason: str) -> None:
        """Record a dropped entry as failed without reading it, then move it to ``failed/``."""
        folder = self.drop_folder
        assert folder is not None
        source = str(folder.root / item.group / item.label)
        self.record_refusal(refused_entry(item), source, "drop", reason, file_key=item.file_key)
        folder.finish(item, reason)
        log.info("failed %s: %s", source, reason)

    def _check_drop_folder(self) -> None:
        """Recreate a drop folder deleted while running (and watch it again, with the same
        watch), so that files dropped afterwards are still ingested; the deletion is reported."""
        folder = self.drop_folder
        if folder is None or folder.intact():
            return
        self.error = f"drop folder {folder.root} was deleted or replaced while running; recreated it"
        log.error("%s", self.error)
        folder.reopen()

    def run_once(self) -> int:
        """Process one batch from the spool, else from the drop folder; returns the number of
        submissions the batch took (a close during it leaves some of them pending: see below).

        A batch that fails (a full disk, a read-only store) raises; its claimed files go back to
        the front of the queue (spool entries stay on disk anyway), and the next call first
        records what a half-done batch stored, so that nothing is lost and nothing is stored
        twice. After :meth:`close` or :meth:`stop_taking` it does nothing; a close during the
        batch stops it at once (the documents without a result stay pending) and closes
        everything when it ends."""
        with self._handover:
            if self._closed or self._stopping.is_set():
                return 0
            self._running = True
        try:
            return self._run_batch()
        finally:
            with self._handover:
                self._running = False
                handed_over = self._closed
            if handed_over:
                self._close_now()

    def _run_batch(self) -> int:
        """:meth:`run_once`'s work. The drop folder's watch starts here, under the batch's
        hand-over, never beside it: a close during its first scan (many files) is left to this
        thread, not run under the scan (which used the closed descriptors: EBADF)."""
        if self.drop_folder is not None:
            self.drop_folder.start()  # a no-op once it watches, but for sub-folders come or gone
            if self._stopping.is_set():  # the stop began during the scan
                return 0
        self._check_drop_folder()
        if self._needs_recovery:
            self.recover()
            self._needs_recovery = False
        try:
            batch = self._spool_batch() or self._drop_batch()
            if batch:
                self.process(batch)
                if self._stopping.is_set() and self.drop_folder is not None:
                    self.drop_folder.put_back_all()  # the files the stopped batch did not reach
        except BaseException:
            self._needs_recovery = True
            if self.drop_folder is not None:
                self.drop_folder.put_back_all()
            raise
        if time.monotonic() - self._counts_at >= SURPRISE_REFRESH_S:
            self._counts_stale = True  # control records surprise in rows ingest did not change
        self.refresh_counts(force=not batch)  # idle now: status gets the final numbers at once
        return len(batch)

    async def run(
        self, stop: asyncio.Event, idle_s: float = 1.0, on_progress: Callable[[], None] | None = None
    ) -> None:
        """Ingest until ``stop`` is set; the blocking work runs in a thread, never in the loop.
        A failing batch (or a drop folder that cannot be watched) raises: the daemon's
        ``ComponentRunner`` reports it and calls this again after a backoff, and the drop
        folder's watch, started once, is reused. ``on_progress`` is called after each batch
        that handled something. It starts by sweeping the spool of what a producer killed
        inside ``Spool.put`` left."""
        if self.spool is not None:
            swept = await asyncio.to_thread(self.spool.sweep_orphans)
            if swept:
                log.info("swept %d orphan file(s) from the spool %s", swept, self.spool.directory)
        while not stop.is_set():
            if await asyncio.to_thread(self.run_once):
                self.error = None
                if on_progress is not None:
                    on_progress()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=idle_s)

    def surprise_recorded(self) -> None:
        """Control wrote surprise values into rows ingest did not change: the counts are read
        again at the next idle turn (thread-safe: one flag)."""
        self._counts_stale = True

    def refresh_counts(self, force: bool = False) -> None:
        """Recompute the registry counts :meth:`stats` serves, on the ingest thread, when rows
        changed: at once when ``force`` (at start, when ingest goes idle), else at most every
        2 s and never more than a tenth of the time (at 500k rows a refresh costs ~0.6 s)."""
        if not self._counts_stale and self._counts:
            return
        started = time.monotonic()
        if not force and started - self._counts_at < max(2.0, 10 * self._counts_cost_s):
            return
        self._counts_stale = False  # rows recorded while counting mark it stale again
        with self._lock:
            counts = self.registry.counts()
            by_rule = self.registry.counts_by_rule()
            surprise = self.registry.surprise_by_source()
        self._counts = {  # one reference swapped: a status reader sees the old or the new dict
            "documents": counts["done"],
            "duplicates": counts["duplicate"],
            "failed": counts["failed"],
            "filtered": counts["filtered"],
            "tokens": counts["tokens"],
            "validation_documents": counts["validation_documents"],
            "filtered_by_rule": by_rule["filtered"],
            "duplicates_by_rule": by_rule["duplicate"],
            "failed_by_reason": by_rule["failed"],
            "lines_removed": by_rule["lines_removed"],
            "pii_replaced": by_rule["pii"],
            # what is new to the model, per source (measured by control; see daemon/surprise.py)
            "surprise": [
                {"source": source, "documents": n, "surprise": round(mean, 4)}
                for source, (n, mean) in sorted(surprise.items(), key=lambda kv: -kv[1][0])[:32]
            ],
        }
        self._counts_at = time.monotonic()
        self._counts_cost_s = self._counts_at - started

    def stats(self) -> dict[str, Any]:
        """Counts for the status socket: documents (stored), duplicates, failed, filtered,
        tokens, validation_documents, and the filtered and duplicate documents, lines removed
        and PII replaced, per rule, the failed per kind of reason (as of the last
        :meth:`refresh_counts`: no registry query here); pending (waiting in spool and drop
        folder); dropped files that cannot be claimed (``blocked``, the first ten by name with
        the reason in ``blocked_files``)."""
        pending = (self.spool.count() if self.spool else 0) + (
            self.drop_folder.pending() if self.drop_folder else 0
        )
        blocked = self.drop_folder.blocked() if self.drop_folder else []
        return {
            **self._counts,
            "pending": pending,
            "blocked": len(blocked),
            **({"blocked_files": [{"name": n, "reason": r} for n, r in blocked[:10]]} if blocked else {}),
            "pool_restarts": self.pool.restarts,
            "database": self.registry.backend(),  # with --database: whether it answers, its last error
            **({"error": self.error} if self.error else {}),
        }
