"""A WARC cut inside a record (a copy or a download that stopped): the records before the cut
are ingested, the cut one is not taken for a whole page, and the file's reason says so."""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path

import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from crystalline.documents import Document
from crystalline.ingest.warc_records import WarcYield, html_responses

PAGE = b"<html><head><title>t</title></head><body><p>" + b"words of a page " * 100 + b"</p></body></html>"


def _warc(n: int) -> bytes:
    out = io.BytesIO()
    writer = WARCWriter(out, gzip=True)
    for i in range(n):
        headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
        record = writer.create_warc_record(
            f"https://example.org/{i}", "response", payload=io.BytesIO(PAGE), http_headers=headers
        )
        writer.write_record(record)
    return out.getvalue()


def _read(path: Path) -> tuple[list[Document], WarcYield]:
    result = WarcYield()
    fd = os.open(path, os.O_RDONLY)
    try:
        return [document for _, document in html_responses(fd, 1 << 20, result)], result
    finally:
        os.close(fd)


@pytest.mark.parametrize("compressed", [True, False])
def test_a_record_cut_short_is_not_taken_for_a_whole_page(tmp_path: Path, compressed: bool) -> None:
    whole = _warc(2) if compressed else gzip.decompress(_warc(2))
    path = tmp_path / "cut.warc"
    path.write_bytes(whole[: len(whole) - 300])  # inside the second record
    documents, result = _read(path)
    assert [d.source for d in documents] == ["https://example.org/0"]
    assert documents[0].body == PAGE
    # gzip: the cut falls in the second record's header; plain: in its payload
    assert result.error == (
        "record 2 is cut short or broken: it has no Content-Length"
        if compressed
        else "record 2 is cut short: the file ends inside it"
    )
    assert result.summary() == f"WARC: 0 HTML responses of 2 records to the spool; {result.error}"


def test_a_whole_warc_has_no_error(tmp_path: Path) -> None:
    path = tmp_path / "whole.warc.gz"
    path.write_bytes(_warc(2))
    documents, result = _read(path)
    assert [d.body for d in documents] == [PAGE, PAGE] and result.error == "" and result.records == 2


@pytest.mark.parametrize(
    ("into", "error"),
    [
        (30, "record 2 is cut short or broken: its header could not be parsed"),  # warcio: AttributeError
        (120, "record 2 is cut short: the file ends inside it"),  # warcio ends without a record
    ],
)
def test_a_cut_in_a_records_header_is_named(tmp_path: Path, into: int, error: str) -> None:
    whole = gzip.decompress(_warc(2))
    path = tmp_path / "cut.warc"
    path.write_bytes(whole[: whole.index(b"WARC/1.0", 10) + into])
    documents, result = _read(path)
    assert [d.body for d in documents] == [PAGE]
    assert result.error == error
