"""WARC/1.1 output: every response the crawler gets, with its request, through warcio.

Files are ``crystalline-<UTC time>-<n>.warc.gz`` in the WARC directory, one gzip member per
record (what the web-archiving tools index and seek by), a ``warcinfo`` record first. A file being
written ends in ``.open``; past ``file_bytes`` it is closed (renamed without ``.open``) and the
next one begins; past ``max_bytes`` in all the oldest closed files are deleted.

``write`` returns once the records are on disk (written and fsynced), so the crawl marks a URL done
only after its records are durable; writes waiting together share one fsync. A process killed in
the middle of a write leaves a last gzip member cut short: the next start cuts the ``.open`` file
back to its last whole member and closes it, so every file reads to its end.

The payload is the body as the crawler read it, decoded: a ``Content-Encoding`` of the transfer
is removed from the stored headers and kept as ``X-Crawler-Content-Encoding`` (Common Crawl's
convention), ``Content-Length`` is the stored length. A body not read (not 2xx, a type skipped) or
read only in part (robots.txt, a sitemap at its cap) is marked ``WARC-Truncated``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import time
import zlib
from pathlib import Path
from urllib.parse import urlsplit

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import BufferWARCWriter

from crystalline.durable import fsync_dir

from .fetcher import FetchResult

log = logging.getLogger("crystalline.crawler.warc")

OPEN_SUFFIX = ".open"
_DROPPED_HEADERS = {"content-encoding", "transfer-encoding", "content-length"}
_SCAN_CHUNK = 1024 * 1024


def records(result: FetchResult, cut: bool = False) -> bytes:
    """The request and response records of one fetch, each its own gzip member."""
    writer = BufferWARCWriter(gzip=True, warc_version="1.1")
    unread = not 200 <= result.status < 300 or bool(result.error)
    headers = [(k, v) for k, v in result.headers if k.lower() not in _DROPPED_HEADERS]
    for k, v in result.headers:
        if k.lower() in ("content-encoding", "content-length"):
            headers.append((f"X-Crawler-{k}", v))
    body = b"" if unread else result.body
    headers.append(("Content-Length", str(len(body))))
    status_line = f"{result.status} {result.reason}".strip()
    http = StatusAndHeaders(status_line, headers, protocol=f"HTTP/{result.version}")
    warc_headers = {"WARC-Truncated": "length" if cut else "unspecified"} if cut or unread else {}
    response = writer.create_warc_record(
        result.url, "response", payload=io.BytesIO(body), http_headers=http, warc_headers_dict=warc_headers
    )
    parts = urlsplit(result.url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    request_http = StatusAndHeaders(
        f"GET {target}", list(result.request_headers), protocol="HTTP/1.1", is_http_request=True
    )
    request = writer.create_warc_record(
        result.url, "request", payload=io.BytesIO(b""), http_headers=request_http
    )
    request.rec_headers.add_header("WARC-Concurrent-To", response.rec_headers.get_header("WARC-Record-ID"))
    writer.write_record(request)
    writer.write_record(response)
    return writer.get_contents()


def whole_members_end(path: Path) -> int:
    """The offset just past the file's last complete gzip member (0 if none is complete)."""
    end = 0
    offset = 0
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
    with path.open("rb") as f:
        while chunk := f.read(_SCAN_CHUNK):
            while chunk:
                try:
                    inflater.decompress(chunk)
                except zlib.error:
                    return end  # damaged: keep what came before
                if not inflater.eof:
                    offset += len(chunk)
                    break
                used = len(chunk) - len(inflater.unused_data)
                offset += used
                end = offset
                chunk = inflater.unused_data
                inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
    return end


class WarcWriter:
    """Rotating WARC files in ``directory`` (created); ``close`` when done."""

    def __init__(self, directory: Path, file_bytes: int, max_bytes: int = 0) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.file_bytes = file_bytes
        self.max_bytes = max_bytes
        self.records = 0
        self.files = 0
        self.deleted = 0
        self.error: str | None = None  # the last write's failure, None once one works
        self._fd = -1
        self._path: Path | None = None
        self._size = 0
        self._seq = 0
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._recover()

    def _recover(self) -> None:
        """Cut each ``.open`` file a killed process left back to its last whole record; close it."""
        for path in sorted(self.directory.glob(f"*{OPEN_SUFFIX}")):
            end = whole_members_end(path)
            with path.open("r+b") as f:
                if f.seek(0, os.SEEK_END) != end:
                    log.warning("WARC %s: cut back to its last whole record (%d bytes)", path.name, end)
                    f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
            if end:
                os.replace(path, path.with_name(path.name[: -len(OPEN_SUFFIX)]))
            else:
                path.unlink()
        fsync_dir(self.directory)

    def stats(self) -> dict[str, object]:
        out: dict[str, object] = {
            "dir": str(self.directory),
            "records": self.records,
            "files": self.files,
            "deleted": self.deleted,
        }
        if self.error:
            out["error"] = self.error
        return out

    async def write(self, result: FetchResult, cut: bool = False) -> None:
        """Append the fetch's records; return once they are durable."""
        data = (
            records(result, cut)
            if len(result.body) < 256 * 1024
            else await asyncio.to_thread(records, result, cut)
        )
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((data, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await asyncio.shield(done)

    async def _flush(self) -> None:
        """Write what is pending and fsync once, until nothing is pending (group commit)."""
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await asyncio.to_thread(self._append, [data for data, _ in batch])
            except Exception as exc:  # a full disk: each waiting fetch fails (and is retried)
                self.error = f"cannot write WARC records to {self.directory}: {exc}"
                self._abandon_file()
                for _, done in batch:
                    if not done.done():
                        done.set_exception(OSError(self.error))
                continue
            self.error = None
            for _, done in batch:
                if not done.done():
                    done.set_result(None)

    def _append(self, blobs: list[bytes]) -> None:
        if self._fd < 0:
            self._open()
        for data in blobs:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            self._size += len(data)
        os.fsync(self._fd)
        self.records += 2 * len(blobs)
        if self._size >= self.file_bytes:
            self._close_file()

    def _abandon_file(self) -> None:
        """After a failed write the file may end in part of a record: close it, and do now the
        repair a restart would do (cut back to the last whole record, closed)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._path = None
            try:
                self._recover()
            except OSError as exc:
                log.warning("WARC repair after a failed write: %s", exc)

    def _open(self) -> None:
        self._seq += 1
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
        name = f"crystalline-{stamp}-{os.getpid()}-{self._seq:05d}.warc.gz"
        path = self.directory / (name + OPEN_SUFFIX)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        self._path = path
        writer = BufferWARCWriter(gzip=True, warc_version="1.1")
        info = writer.create_warcinfo_record(
            name, {"software": "crystalline", "format": "WARC File Format 1.1", "conformsTo": "WARC/1.1"}
        )
        writer.write_record(info)
        data = writer.get_contents()
        os.write(self._fd, data)
        self._size = len(data)
        os.fsync(self._fd)
        fsync_dir(self.directory)
        self.files += 1

    def _close_file(self) -> None:
        if self._fd < 0 or self._path is None:
            return
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        os.replace(self._path, self._path.with_name(self._path.name[: -len(OPEN_SUFFIX)]))
        fsync_dir(self.directory)
        self._path = None
        self._retain()

    def _retain(self) -> None:
        """Delete the oldest closed files while all of them pass ``max_bytes``: crystalline's own
        only (the directory may hold WARCs from elsewhere, a Common Crawl download, which are
        neither counted nor deleted)."""
        if not self.max_bytes:
            return
        closed = sorted(self.directory.glob("crystalline-*.warc.gz"), key=lambda p: p.stat().st_mtime_ns)
        total = sum(p.stat().st_size for p in closed)
        for path in closed:
            if total <= self.max_bytes:
                break
            total -= path.stat().st_size
            path.unlink()
            self.deleted += 1
            log.info("WARC %s deleted (retention: %d bytes)", path.name, self.max_bytes)

    async def drain(self) -> None:
        """Wait for the writes under way (a fetch cancelled while its records were being written
        leaves the flush running in its thread): ``close`` must not close the file under it."""
        while self._flusher is not None and not self._flusher.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(self._flusher)

    def close(self) -> None:
        """Close the open file (after ``drain``, when writes may be under way)."""
        self._close_file()
