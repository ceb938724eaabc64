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


def _warc(n: int, first: int = 0) -> bytes:
    """``n`` response records (from ``https://example.org/{first}`` on), a gzip member each."""
    out = io.BytesIO()
    writer = WARCWriter(out, gzip=True)
    for i in range(first, first + n):
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


@pytest.mark.parametrize(
    ("compressed", "tail"),
    [
        (True, b""),
        (False, b""),
        (False, b"\r\n"),  # one more blank line (an editor, `echo >>`, a `cat` of files)
        (False, b"\r\n\r\n\n\n"),
        (True, gzip.compress(b"")),  # an empty gzip member
        (True, gzip.compress(b"\r\n")),  # a member of a blank line: warcio makes a record of it
        (True, b"\n" + gzip.compress(b"") + b"\r\n"),
    ],
)
def test_a_whole_warc_has_no_error(tmp_path: Path, compressed: bool, tail: bytes) -> None:
    path = tmp_path / "whole.warc"
    path.write_bytes((_warc(2) if compressed else gzip.decompress(_warc(2))) + tail)
    documents, result = _read(path)
    assert [d.body for d in documents] == [PAGE, PAGE] and result.error == "" and result.records == 2


CUT = "record 3 is cut short: the file ends inside it"


@pytest.mark.parametrize(
    ("compressed", "tail", "records", "error"),
    [
        (False, b"\r\n\t\r\n", 2, CUT),
        (False, b"\r\n" + b"\n" * 65536, 2, CUT),  # past what is looked at: not taken for blank
        (False, b"\r\nW", 2, "stopped at record 3: Invalid WARC record, first line: W"),
        (True, gzip.compress(b"")[:-3], 2, CUT),  # an empty member, cut
        (True, gzip.compress(b"") + b"W", 2, CUT),
        (True, gzip.compress(b"\r\nW"), 2, CUT),  # warcio: a record of no header, as a blank member
    ],
)
def test_anything_but_blank_lines_after_the_last_record_is_a_cut(
    tmp_path: Path, compressed: bool, tail: bytes, records: int, error: str
) -> None:
    """What the fix for blank tails must not let through (these cases were named before it)."""
    path = tmp_path / "tail.warc"
    path.write_bytes((_warc(2) if compressed else gzip.decompress(_warc(2))) + tail)
    documents, result = _read(path)
    assert [d.body for d in documents] == [PAGE, PAGE]
    assert (result.records, result.error) == (records, error)
