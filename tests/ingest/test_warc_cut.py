"""A WARC cut inside a record (a copy or a download that stopped): the records before the cut
are ingested, the cut one is not taken for a whole page, and the file's reason says so."""

from __future__ import annotations

import gzip
import io
import os
import re
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


def _broken(member: bytes, how: str) -> bytes:
    """The WARC record in the gzip ``member`` without its Content-Length, or with one 10 too large."""
    record = gzip.decompress(member)
    if how == "no Content-Length":
        record = re.sub(rb"Content-Length: \d+\r\n", b"", record, count=1)
    else:
        record = re.sub(
            rb"Content-Length: (\d+)", lambda m: b"Content-Length: %d" % (int(m[1]) + 10), record, count=1
        )
    return gzip.compress(record)


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("no Content-Length", "record 2 has no Content-Length"),
        ("Content-Length +10", "record 2 is shorter than its Content-Length"),
    ],
)
def test_a_broken_record_inside_the_file_is_skipped_and_the_rest_read(
    tmp_path: Path, how: str, reason: str
) -> None:
    path = tmp_path / "broken.warc.gz"
    path.write_bytes(_warc(1) + _broken(_warc(1, first=1), how) + _warc(2, first=2))
    documents, result = _read(path)
    assert [d.source for d in documents] == [
        "https://example.org/0",
        "https://example.org/2",
        "https://example.org/3",
    ]
    assert (result.records, result.skipped, result.broken, result.error) == (4, 1, 1, "")
    assert (
        result.summary()
        == f"WARC: 0 HTML responses of 4 records to the spool; 1 broken record skipped: {reason}"
    )
    # the same record last in the file: a cut, as before
    path.write_bytes(_warc(1) + _broken(_warc(1, first=1), how))
    documents, result = _read(path)
    assert [d.source for d in documents] == ["https://example.org/0"]
    assert (result.records, result.broken) == (2, 0)
    assert result.error == (
        "record 2 is cut short or broken: it has no Content-Length"
        if how == "no Content-Length"
        else "record 2 is cut short: the file ends inside it"
    )


def test_two_broken_records_are_counted_and_the_first_named(tmp_path: Path) -> None:
    path = tmp_path / "broken.warc.gz"
    middle = _broken(_warc(1, first=1), "Content-Length +10") + _broken(
        _warc(1, first=2), "no Content-Length"
    )
    path.write_bytes(_warc(1) + middle + _warc(1, first=3))
    documents, result = _read(path)
    assert [d.source for d in documents] == ["https://example.org/0", "https://example.org/3"]
    assert (result.records, result.skipped, result.broken, result.error) == (4, 2, 2, "")
    assert result.summary().endswith(
        "; 2 broken records skipped, the first: record 2 is shorter than its Content-Length"
    )


@pytest.mark.parametrize(
    ("tail", "broken", "error"),
    [
        (b"\x00" * 64, 1, "stopped at record 3: Invalid WARC record, first line:"),
        (gzip.compress(b"\r\n"), 0, "record 2 is cut short or broken: it has no Content-Length"),
    ],
    ids=["bytes after it", "a blank member after it"],
)
def test_what_follows_a_broken_record_decides_whether_it_is_a_cut(
    tmp_path: Path, tail: bytes, broken: int, error: str
) -> None:
    path = tmp_path / "broken.warc.gz"
    path.write_bytes(_warc(1) + _broken(_warc(1, first=1), "no Content-Length") + tail)
    documents, result = _read(path)
    assert [d.source for d in documents] == ["https://example.org/0"]
    assert (result.records, result.broken) == (2, broken) and result.error.startswith(error)


def test_a_reason_holds_no_control_characters(tmp_path: Path) -> None:
    path = tmp_path / "padded.warc"
    path.write_bytes(gzip.decompress(_warc(2)) + b"\x00" * 512)  # NUL padding: warcio names the line
    documents, result = _read(path)
    assert len(documents) == 2
    assert result.error.startswith("stopped at record 3: Invalid WARC record, first line: \\x00\\x00")
    assert result.error.isprintable() and len(result.error) <= 240


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
