"""WARC files as a data source: the HTML responses of a ``.warc`` / ``.warc.gz`` (the crawler's own
``--warc-dir`` output, a Common Crawl file) become documents.

The drop folder hands a claimed WARC here instead of reading it whole: its records are streamed
with warcio (gzip per record or not), and each ``response`` record with a 200 HTML payload is put
in the spool as a ``Document`` of origin ``warc`` whose source is its ``WARC-Target-URI``, so ingest
extracts, deduplicates and counts it like a crawled page. Every other record (requests, metadata,
other types, redirects, payloads over the size limit) is counted and skipped. The WARC file
itself is then recorded once, with what it gave, and moved to ``done/`` (or ``failed/`` when it
is no WARC at all).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

from warcio.archiveiterator import ArchiveIterator
from warcio.exceptions import ArchiveLoadFailed
from warcio.recordloader import ArcWarcRecord

from crystalline.documents import Document, Spool

log = logging.getLogger("crystalline.ingest.warc")

SUFFIXES = (".warc", ".warc.gz")
_HTML = ("text/html", "application/xhtml+xml")


def is_warc(name: str) -> bool:
    return name.lower().endswith(SUFFIXES)


@dataclass
class WarcYield:
    """What one WARC file gave: HTML responses spooled, records skipped, and why it stopped early."""

    records: int = 0
    spooled: int = 0
    skipped: int = 0
    error: str = ""  # "" when read to its end

    def summary(self) -> str:
        text = f"WARC: {self.spooled} HTML responses of {self.records} records to the spool"
        return f"{text}; {self.error}" if self.error else text


def html_responses(fd: int, max_bytes: int, result: WarcYield) -> Iterator[Document]:
    """The 200 HTML responses of the WARC open at ``fd`` (read from its start, not closed)."""
    with open(os.dup(fd), "rb") as stream:
        stream.seek(0)
        try:
            for record in ArchiveIterator(stream):
                if record.format != "warc":  # warcio reads ARC too, and takes any text for it
                    result.error = f"record {result.records + 1} is no WARC record"
                    break
                result.records += 1
                document = _document(record, max_bytes)
                if document is None:
                    result.skipped += 1
                    continue
                yield document
        except (ArchiveLoadFailed, OSError, ValueError, EOFError) as exc:
            result.error = f"stopped at record {result.records + 1}: {' '.join(str(exc).split())[:200]}"


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


def spool_warc(fd: int, spool: Spool, max_bytes: int) -> WarcYield:
    """Put the WARC's HTML responses in the spool (each durable before the next); return the count."""
    result = WarcYield()
    for document in html_responses(fd, max_bytes, result):
        spool.put(document)
        result.spooled += 1
    if result.records == 0 and not result.error:
        result.error = "no WARC records"
    if result.spooled:
        log.info("%s", result.summary())
    return result
