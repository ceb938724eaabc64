"""The one interface between what fetches documents (crawler, drop folder, CLI) and ingest.

A producer hands a ``Document`` to a ``DocumentSink``; ``submit`` returns only once the
document is durable, so the producer may then forget it (the crawler marks the URL fetched,
the drop folder moves the file away). ``Spool`` is the sink the crawler uses: one body file
and one metadata file per document in a directory, each written to a temp name, fsynced and
renamed, metadata last, so a reader never sees half a document and a crash loses nothing
that ``submit`` acknowledged. Ingest consumes the spool (``pending``/``remove``).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from crystalline.durable import fsync_dir, write_atomic

SPOOL_VERSION = 1
TOP_LEVEL_GROUP = "inbox"  # the source of files dropped at the top of the drop folder


def source_group(source: str, group: str = "") -> str:
    """The source a document is evaluated under (issue 13): ``group`` when the producer named
    one (a dropped file's first sub-folder of the drop folder), else the host of a crawled
    URL, else ``inbox`` (a file at the drop folder's top, or named on the command line)."""
    if group:
        return group
    if source.startswith(("http://", "https://")):
        try:
            host = urlsplit(source).hostname
        except ValueError:
            host = None
        if host:
            return host
    return TOP_LEVEL_GROUP


def sql_text(value: str) -> str:
    """``value`` as text SQLite accepts (the registry's and the logs' names of files): lone
    surrogates (undecodable file-name bytes kept by ``os.fsdecode``) become ``\\xff`` escapes of
    the original bytes, or ``\\udcff`` if they were never bytes."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


@dataclass(frozen=True)
class Document:
    """A fetched or dropped document before extraction."""

    source: str  # its identity: the final URL, or the absolute path of a dropped file
    body: bytes
    content_type: str  # media type without parameters, lower case ("" when unknown)
    charset: str | None = None  # from the HTTP Content-Type header, if any
    origin: str = "crawl"  # crawl | drop | cli
    fetched_at: float = 0.0  # unix time
    group: str = ""  # the drop sub-folder it came from ("": see source_group)

    def key(self) -> str:
        """Stable file-name-safe key of the source (never the raw URL or path)."""
        return hashlib.sha256(self.source.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class DocumentSink(Protocol):
    """Accepts documents durably; ``submit`` may wait (backpressure) but never drops one."""

    async def submit(self, doc: Document) -> None: ...


class Spool:
    """A directory of submitted documents awaiting ingest (``<key>-<ns>.body`` + ``.json``)."""

    def __init__(self, directory: Path, max_pending: int = 10_000, refresh_s: float = 1.0) -> None:
        self.directory = directory
        self.max_pending = max_pending
        self.refresh_s = refresh_s
        directory.mkdir(parents=True, exist_ok=True)
        self._pending = 0
        self._counted_at = float("-inf")

    def count(self) -> int:
        """Committed documents in the spool (a directory listing)."""
        return sum(1 for p in self.directory.iterdir() if p.suffix == ".json")

    async def _recount(self) -> None:
        import asyncio  # here: `crystalline extract` reads Document and needs no event loop

        self._pending = await asyncio.to_thread(self.count)
        self._counted_at = time.monotonic()

    async def submit(self, doc: Document) -> None:
        """Durably store ``doc``; waits while the spool holds ``max_pending`` documents.

        Listing the directory for every document cost 70% of a crawl's CPU at 2000 pending
        (bench/crawl_speed.py), so the count is re-read (in a thread) at most every
        ``refresh_s`` and our own submissions are added in between: the bound still holds,
        since the consumer only ever lowers the count.
        """
        import asyncio

        if time.monotonic() - self._counted_at > self.refresh_s:
            await self._recount()
        while self._pending >= self.max_pending:
            await asyncio.sleep(0.5)
            await self._recount()
        self._pending += 1
        await asyncio.to_thread(self.put, doc)

    def put(self, doc: Document, stem: str | None = None) -> Path:
        """Synchronous submit: body, then metadata (the commit point), then the directory.
        ``stem``: the entry's name when the producer gives each document one of its own, the same
        on a retry (``<anything>-<19 digits>``, the digits ordering it like a ``time_ns``), so
        that putting it again replaces it and, once ingested, it is known (a WARC's records)."""
        stem = stem or f"{doc.key()}-{time.time_ns()}"
        write_atomic(self.directory / f"{stem}.body", doc.body)
        meta = asdict(doc)
        del meta["body"]
        meta["v"] = SPOOL_VERSION
        meta["bytes"] = len(doc.body)
        meta_path = self.directory / f"{stem}.json"
        write_atomic(meta_path, json.dumps(meta).encode("utf-8"))
        fsync_dir(self.directory)
        return meta_path

    def pending(self) -> Iterator[tuple[Path, Document]]:
        """Committed documents, oldest first; orphan bodies (a crash before the metadata)
        are left for ``sweep_orphans``."""
        metas = sorted(self.directory.glob("*.json"), key=lambda p: p.name.rsplit("-", 1)[-1])
        for meta_path in metas:
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                body = meta_path.with_suffix(".body").read_bytes()
            except (OSError, ValueError):
                continue  # removed meanwhile or unreadable: the consumer's remove/fail decides
            if meta.get("v") != SPOOL_VERSION:
                continue
            yield (
                meta_path,
                Document(
                    source=meta["source"],
                    body=body,
                    content_type=meta["content_type"],
                    charset=meta.get("charset"),
                    origin=meta.get("origin", "crawl"),
                    fetched_at=meta.get("fetched_at", 0.0),
                    group=meta.get("group", ""),
                ),
            )

    def remove(self, meta_path: Path) -> None:
        """Forget a document once ingest has made it durable elsewhere (metadata first)."""
        meta_path.unlink(missing_ok=True)
        meta_path.with_suffix(".body").unlink(missing_ok=True)

    def sweep_orphans(self, older_than_s: float = 60.0) -> int:
        """Delete what a process killed inside ``put`` left behind: body files whose metadata
        never arrived and temp files of either; returns how many. Only files older than
        ``older_than_s``: a producer writing right now (the crawler beside ingest) is seconds,
        not a minute, between its body and its metadata."""
        now = time.time()
        removed = 0
        for path in [*self.directory.glob("*.body"), *self.directory.glob(".*.tmp")]:
            try:
                if path.suffix == ".body" and path.with_suffix(".json").exists():
                    continue
                if now - path.stat().st_mtime > older_than_s:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:  # committed or removed meanwhile
                continue
        return removed
