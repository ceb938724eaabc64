"""WARC files as a data source: the HTML responses of a ``.warc`` / ``.warc.gz`` (the crawler's own
``--warc-dir`` output, a Common Crawl file) become documents.

The drop folder hands a claimed WARC here instead of reading it whole: its records are streamed
with warcio (gzip per record or not), and each ``response`` record with a 200 HTML payload is put
in the spool as a ``Document`` of origin ``warc`` whose source is its ``WARC-Target-URI``, so ingest
extracts, deduplicates and counts it like a crawled page. Every other record (requests, metadata,
other types, redirects, payloads over the size limit) is counted and skipped. The WARC file
itself is then recorded once, with what it gave, and moved to ``done/`` (or ``failed/`` when it
is no WARC at all).

The stop is looked at between records: a WARC of thousands of responses (two fsynced files each)
does not hold the daemon's stop up. It stays claimed, not recorded, and is read again at the next
start. Each record's spool entry is named for the record itself: its ``WARC-Record-ID`` (unique
per record, the same each time the file is read; a record without one: a hash of its header
blocks and payload) and the WARC file's name, then its place in the file for the spool's order.
So a record read again after a stop is recognised (``known``: still in the spool, or ingested
already) and never spooled twice, while another WARC that happens to get the same device, inode,
size and modification time (a deleted file's inode reused) shares none of its names, and a copy
under another name (``cp -p``, ``rsync -a``, ``tar x``: the same records and modification time)
shares none either: its records are extracted and counted as duplicates, as a copy of an HTML
file under another name is. The same WARC dropped again under its own name (and modification
time) is recognised, as the same HTML file dropped again is: its records are released as
recorded before. Only a resumed WARC (claimed before this start, or put back) is checked: a fresh
one cannot have been spooled.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from warcio.archiveiterator import ArchiveIterator
from warcio.exceptions import ArchiveLoadFailed
from warcio.recordloader import ArcWarcRecord

from crystalline.documents import Document, Spool
from crystalline.exit_status import one_line

log = logging.getLogger("crystalline.ingest.warc")

SUFFIXES = (".warc", ".warc.gz")
_HTML = ("text/html", "application/xhtml+xml")
_TAIL_BYTES = 65536  # what follows the last record, looked at for blank lines: more is a cut


def is_warc(name: str) -> bool:
    return name.lower().endswith(SUFFIXES)


@dataclass
class WarcYield:
    """What one WARC file gave: HTML responses spooled, those spooled before (``known``: a WARC
    read again after a stop), records skipped (``broken`` ones among them, the first's reason
    kept), and why it stopped early."""

    records: int = 0
    spooled: int = 0
    known: int = 0
    skipped: int = 0
    broken: int = 0  # records skipped as broken, with more records after them
    broken_reason: str = ""  # the first one's
    unterminated: int = 0  # records followed by a line where blank lines were due
    unterminated_reason: str = ""  # the first one's: where, and the line warcio passed over
    error: str = ""  # "" when read to its end
    stopped: bool = False  # the stop came between two records: the file is not done

    def skip_broken(self, reason: str) -> None:
        self.skipped += 1
        self.broken += 1
        self.broken_reason = self.broken_reason or reason

    def summary(self) -> str:
        text = f"WARC: {self.spooled} HTML responses of {self.records} records to the spool"
        text += f" ({self.known} there already)" if self.known else ""
        if self.broken == 1:
            text += f"; 1 broken record skipped: {self.broken_reason}"
        elif self.broken:
            text += f"; {self.broken} broken records skipped, the first: {self.broken_reason}"
        if self.unterminated == 1:
            text += f"; 1 record not followed by a blank line: {self.unterminated_reason}"
        elif self.unterminated:
            text += f"; {self.unterminated} records not followed by a blank line, the first: "
            text += self.unterminated_reason
        return f"{text}; {self.error}" if self.error else text


def html_responses(fd: int, max_bytes: int, result: WarcYield) -> Iterator[tuple[str, Document]]:
    """The 200 HTML responses of the WARC open at ``fd`` (read from its start, not closed), each
    with what identifies its record (:func:`record_identity`)."""
    with open(os.dup(fd), "rb") as stream:
        stream.seek(0)
        end = 0  # where the last record read ends in the file
        # the last record read, when warcio ended it at its gzip member's end (or the file's) before
        # its Content-Length or without one: (why it is skipped, why it is a cut). A record after
        # it: it was whole in its member, but broken, and is skipped; none: the file is cut in it
        suspect: tuple[str, str] | None = None
        try:
            records = _Records(stream, result)
            for record in records:
                if not (record.rec_headers.protocol or record.rec_headers.headers):
                    continue  # a gzip member of blank lines only: no record
                if suspect is not None:
                    result.skip_broken(suspect[0])
                    suspect = None
                if record.format != "warc":  # warcio reads ARC too, and takes any text for it
                    result.error = f"record {result.records + 1} is no WARC record"
                    break
                result.records += 1
                document = _document(record, max_bytes)
                # warcio ends a record at its gzip member's end or the file's without a word: its
                # payload is a part, or (cut in its header) it is a record without Content-Length
                n = result.records
                if record.length is None:
                    suspect = (
                        f"record {n} has no Content-Length",
                        f"record {n} is cut short or broken: it has no Content-Length",
                    )
                elif _cut_short(record):
                    suspect = (
                        f"record {n} is shorter than its Content-Length",
                        f"record {n} is cut short: the file ends inside it",
                    )
                end = records.get_record_offset() + records.get_record_length()
                if suspect is not None:
                    continue
                if document is None:
                    result.skipped += 1
                    continue
                yield record_identity(record, document.body), document
            if suspect is not None:  # the file's last record
                result.error, suspect = suspect[1], None
            # bytes after the last record but blank lines (or gzip members of them): a record's
            # start, cut before warcio could read it, which it passes over as the file's end
            elif not result.error and not _blank(stream, end):
                result.error = f"record {result.records + 1} is cut short: the file ends inside it"
        except AttributeError:  # warcio, on a response record's header without WARC-Target-URI
            result.error = (
                f"record {result.records + 1} is cut short or broken: its header could not be parsed"
            )
        except (ArchiveLoadFailed, OSError, ValueError, EOFError) as exc:
            # warcio puts the line it could not read (the file's bytes) in its message
            result.error = f"stopped at record {result.records + 1}: {one_line(exc)[:200]}"
        if suspect is not None:  # followed by a record warcio could not read: not the file's end
            result.skip_broken(suspect[0])


class _Records(ArchiveIterator):
    """warcio's :class:`ArchiveIterator` whose warning on a record followed by a line where blank
    lines were due (``INC_RECORD``: three lines written straight to stderr, past the daemon's
    one-line log; its Content-Length is likely short) is counted in ``result`` instead, the
    first one named with its offset and the line it passed over."""

    def __init__(self, stream: BinaryIO, result: WarcYield) -> None:
        super().__init__(stream)
        self.INC_RECORD = _UnterminatedRecord(result)  # warcio writes INC_RECORD.format(...)


class _UnterminatedRecord(str):
    """Takes warcio's ``INC_RECORD.format(offset, line)``: counts it, writes nothing. An empty
    ``str``, so that a warcio 1.x release calling it otherwise (more arguments, ``%``, a str
    method first) still reads the rest of the file; ``format`` and ``%`` count with whatever
    they get."""

    result: WarcYield

    def __new__(cls, result: WarcYield) -> _UnterminatedRecord:
        self = super().__new__(cls, "")
        self.result = result
        return self

    def format(self, *args: object, **kwargs: object) -> str:
        result = self.result
        result.unterminated += 1
        if not result.unterminated_reason:
            offset = args[0] if args else "?"
            line = args[1] if len(args) > 1 else ""
            text = line.decode("utf-8", "replace") if isinstance(line, bytes) else str(line)
            result.unterminated_reason = (
                f"record {result.records} (its Content-Length short?) is followed at offset {offset}"
                f' by "{one_line(text)[:200]}"'
            )
        return ""

    def __mod__(self, values: object) -> str:
        return self.format(*values) if isinstance(values, tuple) else self.format(values)


def _document(record: ArcWarcRecord, max_bytes: int) -> Document | None:
    if record.rec_type != "response" or record.http_headers is None:
        return None
    http = record.http_headers
    if http.get_statuscode() != "200":
        return None
    media, _, params = (http.get_header("Content-Type") or "").partition(";")
    if media.strip().lower() not in _HTML:
        return None
    body = record.content_stream().read(max_bytes + 1)
    if len(body) > max_bytes:
        return None
    charset = None
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key.lower() == "charset" and value:
            charset = value.strip("\"' ").lower()
    url = record.rec_headers.get_header("WARC-Target-URI") or ""
    return Document(url, body, media.strip().lower(), charset, origin="warc")


def _blank(stream: BinaryIO, end: int) -> bool:
    """Whether what follows ``end`` in ``stream`` (at most :data:`_TAIL_BYTES`) is blank lines
    (CRLF or LF) and gzip members that hold nothing else, each read whole."""
    stream.seek(end)
    tail = stream.read(_TAIL_BYTES + 1)
    if len(tail) > _TAIL_BYTES:
        return False
    while tail := tail.lstrip(b"\r\n"):
        member = zlib.decompressobj(wbits=31)  # a gzip member, or (no gzip) zlib.error
        try:
            text = member.decompress(tail, _TAIL_BYTES)
        except zlib.error:
            return False
        if not member.eof or text.strip(b"\r\n"):
            return False
        tail = member.unused_data
    return True


def _cut_short(record: ArcWarcRecord) -> bool:
    """Whether the record, its payload read, ends before its ``Content-Length`` (what is left of
    its block read through first: a chunked payload's end leaves its last line unread)."""
    stream = record.raw_stream
    while stream.read(65536):
        pass
    return bool(getattr(stream, "limit", 0) > 0)  # no limit: a gzip member, cut or not, read whole


def record_identity(record: ArcWarcRecord, body: bytes) -> str:
    """What names this record and no other: its ``WARC-Record-ID``, else (a writer that left it
    out) a hash of its WARC and HTTP header blocks and its payload."""
    record_id = (record.rec_headers.get_header("WARC-Record-ID") or "").strip()
    if record_id:
        return f"id {record_id}"
    digest = hashlib.sha256(record.rec_headers.to_bytes())
    if record.http_headers is not None:
        digest.update(record.http_headers.to_bytes())
    digest.update(body)
    return f"sha256 {digest.hexdigest()}"


def record_stem(st: os.stat_result, name: str, record: int, identity: str, document: Document) -> str:
    """The spool entry's name of the ``record``-th record (from 1) of the WARC file ``st`` named
    ``name`` (in the drop folder): the record's ``identity`` and the file's name (so the same each
    time the file is read, and another file's records never match it, a copy's under another
    name included), ordered by the file's age and the record's place."""
    named = f"{identity}\n{name}".encode("utf-8", "surrogateescape")
    digest = hashlib.sha256(named).hexdigest()[:24]
    return f"{document.key()}w{digest}-{st.st_mtime_ns + record:019d}"


def spool_warc(
    fd: int,
    name: str,
    spool: Spool,
    max_bytes: int,
    stop: threading.Event | None = None,
    known: Callable[[str], bool] | None = None,
) -> WarcYield:
    """Put the HTML responses of the WARC ``fd`` (the drop folder's ``name``) in the spool (each
    durable before the next), skipping those ``known`` already (given for a file read again after
    a stop: none is looked up otherwise); return the count. ``stop`` set: it returns before the
    next record, ``stopped``."""
    result = WarcYield()
    st = os.fstat(fd)
    for identity, document in html_responses(fd, max_bytes, result):
        if stop is not None and stop.is_set():
            result.stopped = True
            break
        stem = record_stem(st, name, result.records, identity, document)
        if known is not None and known(stem):
            result.known += 1
            continue
        spool.put(document, stem)
        result.spooled += 1
    if result.records == 0 and not result.error:
        result.error = "no WARC records"
    if result.spooled or result.known:
        log.info("%s", result.summary())
    return result
