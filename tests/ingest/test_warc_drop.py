"""A WARC file in the drop folder is a data source: its HTML responses are ingested as pages
(the crawler's own WARC output, and a hand-made uncompressed one with other record types)."""

from __future__ import annotations

import asyncio
import inspect
import io
import os
import random
import re
import shutil
import textwrap
from pathlib import Path

import pytest
from _local_site import start_site
from _wait import until
from aiohttp import web
from warcio import archiveiterator
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from crystalline.crawler.crawl import Crawler
from crystalline.crawler.settings import CrawlSettings
from crystalline.documents import Document, Spool
from crystalline.ingest.drop_folder import DropFolder
from crystalline.ingest.ingestor import Ingestor
from crystalline.ingest.registry import Registry
from crystalline.ingest.settings import IngestSettings
from crystalline.ingest.warc_records import WarcYield, html_responses, record_stem
from crystalline.tokens.tokenizer import load_tokenizer

SETTINGS = IngestSettings(processes=1, min_chars=50, min_words=5, val_fraction=0.0, drop_settle_s=0.0)
WORDS = ["harbour", "lantern", "meadow", "copper", "orchard", "thunder", "glacier", "velvet", "the", "of"]


def article(seed: int) -> str:
    rng = random.Random(seed)
    return "<p>" + " ".join(rng.choice(WORDS) for _ in range(150)) + ".</p>"


def ingest_inbox(tmp_path: Path) -> tuple[dict, list[tuple[str, str, str, str]], DropFolder]:
    """Run an ingestor over the inbox until it is empty; its stats and registry rows."""
    drop = DropFolder(tmp_path / "inbox", settle_s=0.0)
    with Ingestor(
        SETTINGS, tmp_path / "data", load_tokenizer("bytes"), Spool(tmp_path / "spool"), drop
    ) as ing:
        drop.start()
        until(lambda: not (ing.run_once() or ing.stats()["pending"]), lambda: str(ing.stats()), 120, 0.01)
        stats = ing.stats()
    registry = Registry(tmp_path / "data" / "registry.sqlite3")
    try:
        rows = registry.db.execute("SELECT source, origin, state, kind FROM documents ORDER BY id").fetchall()
    finally:
        registry.close()
    return stats, rows, drop


@pytest.mark.timeout(180)
def test_the_crawlers_warc_dropped_in_the_inbox_is_ingested(tmp_path: Path) -> None:
    async def crawl_into_warc() -> str:
        async def page(request: web.Request) -> web.Response:
            i = int(request.match_info["i"])
            links = "".join(f'<a href="/p/{j}">{j}</a>' for j in range(1, 5)) if i == 0 else ""
            return web.Response(
                text=f"<html><body>{article(i)}{links}</body></html>", content_type="text/html"
            )

        runner, base = await start_site([web.get("/p/{i}", page)])
        settings = CrawlSettings(data_dir=tmp_path / "crawl", min_delay=0.0, autothrottle=False,
                                 allow_private_addresses=True, sitemaps=False,
                                 warc_dir=tmp_path / "warc")  # fmt: skip
        crawler = Crawler(settings, Spool(tmp_path / "crawl-spool"))
        try:
            crawler.add_url(base + "/p/0")
            await asyncio.wait_for(crawler.run(asyncio.Event()), 60)
        finally:
            crawler.close()
            await runner.cleanup()
        return base

    base = asyncio.run(crawl_into_warc())
    [warc] = (tmp_path / "warc").glob("*.warc.gz")
    (tmp_path / "inbox").mkdir()
    warc.rename(tmp_path / "inbox" / warc.name)
    stats, rows, drop = ingest_inbox(tmp_path)
    pages = sorted((source, origin, state) for source, origin, state, kind in rows if kind != "warc")
    assert pages == [(f"{base}/p/{i}", "warc", "done") for i in range(5)]  # robots.txt (404) is no page
    [container] = [row for row in rows if row[3] == "warc"]
    assert container[1:3] == ("drop", "done") and container[0].endswith(warc.name)
    assert (drop.done / warc.name).exists() and stats["pending"] == 0


@pytest.mark.timeout(180)
def test_an_uncompressed_warc_gives_only_its_html_responses(tmp_path: Path) -> None:
    (tmp_path / "inbox").mkdir()
    path = tmp_path / "inbox" / "CC-MAIN-sample.warc"
    with path.open("wb") as f:
        writer = WARCWriter(f, gzip=False)
        writer.write_record(writer.create_warcinfo_record(path.name, {"software": "test"}))
        kinds = [("200 OK", "text/html; charset=utf-8"), ("200 OK", "image/png"),
                 ("404 Not Found", "text/html"), ("200 OK", "text/html")]  # fmt: skip
        for i, (status, ctype) in enumerate(kinds):
            http = StatusAndHeaders(status, [("Content-Type", ctype)], protocol="HTTP/1.1")
            body = f"<html><body>{article(100 + i)}</body></html>".encode()
            url = f"https://example.org/{i}"
            writer.write_record(
                writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http)
            )
            writer.write_record(
                writer.create_warc_record(url, "metadata", payload=io.BytesIO(b"fetchTimeMs: 5"))
            )
    _, rows, _ = ingest_inbox(tmp_path)
    assert sorted(r[0] for r in rows if r[3] != "warc") == ["https://example.org/0", "https://example.org/3"]
    [container] = [row for row in rows if row[3] == "warc"]
    assert container[2] == "done"
    registry = Registry(tmp_path / "data" / "registry.sqlite3")
    try:
        (reason,) = registry.db.execute("SELECT reason FROM documents WHERE kind = 'warc'").fetchone()
    finally:
        registry.close()
    assert reason == "WARC: 2 HTML responses of 9 records to the spool"


@pytest.mark.timeout(60)
def test_a_file_named_warc_that_is_none_fails_with_a_reason(tmp_path: Path) -> None:
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "fake.warc.gz").write_bytes(b"this is not a WARC file at all\n" * 10)
    _, rows, drop = ingest_inbox(tmp_path)
    assert [(r[2], r[3]) for r in rows] == [("failed", "warc")]
    reason = (drop.failed / "fake.warc.gz.reason.txt").read_text(encoding="utf-8")
    assert reason.splitlines()[0] == "record 1 is no WARC record"


class _StopAfter(Spool):
    """A real spool that tells the ingestor to stop once it holds ``after`` entries: the daemon's
    stop coming while a WARC is being spooled, at a known record."""

    def __init__(self, directory: Path, after: int) -> None:
        super().__init__(directory)
        self.after = after
        self.ingestor: Ingestor | None = None

    def put(self, doc: Document, stem: str | None = None) -> Path:
        path = super().put(doc, stem)
        if self.ingestor is not None and self.count() >= self.after:
            self.ingestor.stop_taking()
        return path


@pytest.mark.timeout(300)
def test_a_stop_ends_a_warcs_spooling_between_records_and_the_restart_ingests_each_once(
    tmp_path: Path,
) -> None:
    """A WARC of many responses: the stop comes after 20 are spooled; spooling ends there (the
    WARC stays claimed, not recorded), and the next start reads it again and ingests each
    response exactly once, none spooled twice."""
    n = 120
    (tmp_path / "inbox").mkdir()
    path = tmp_path / "inbox" / "many.warc"
    with path.open("wb") as f:
        writer = WARCWriter(f, gzip=False)
        for i in range(n):
            http = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
            body = f"<html><body>{article(1000 + i)}</body></html>".encode()
            url = f"https://example.org/{i}"
            record = writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http)
            writer.write_record(record)
    spool = _StopAfter(tmp_path / "spool", after=20)
    drop = DropFolder(tmp_path / "inbox", settle_s=0.0)
    with Ingestor(SETTINGS, tmp_path / "data", load_tokenizer("bytes"), spool, drop) as ing:
        spool.ingestor = ing
        drop.start()
        until(lambda: ing.run_once() or spool.count(), "the WARC spooled", 120, 0.01)
        assert spool.count() == 20  # not one record after the stop
    assert (tmp_path / "inbox" / ".ingesting" / "many.warc").exists()  # claimed still, not done
    spool.ingestor = None
    _, rows, drop = ingest_inbox(tmp_path)  # the next start
    pages = sorted(source for source, _origin, _state, kind in rows if kind != "warc")
    assert pages == sorted(f"https://example.org/{i}" for i in range(n))  # each exactly once
    assert {state for _s, _o, state, kind in rows if kind != "warc"} == {"done"}
    assert [r[2] for r in rows if r[3] == "warc"] == ["done"] and (drop.done / "many.warc").exists()
    assert _warc_reasons(tmp_path) == [
        f"WARC: {n - 20} HTML responses of {n} records to the spool (20 there already)"
    ]
    assert spool.count() == 0


def _warc_reasons(tmp_path: Path) -> list[str]:
    """What each WARC file's registry row says it gave, in order."""
    registry = Registry(tmp_path / "data" / "registry.sqlite3")
    try:
        rows = registry.db.execute("SELECT reason FROM documents WHERE kind = 'warc' ORDER BY id").fetchall()
    finally:
        registry.close()
    return [str(row[0]) for row in rows]


def _day_warc(path: Path, n: int, seed: int) -> None:
    """``n`` HTML responses of ``https://example.org/<i>``, each body 2,000 bytes (so that a WARC
    of other bodies, the same URLs and the same record headers' lengths has the same size)."""
    with path.open("wb") as f:
        writer = WARCWriter(f, gzip=False)
        for i in range(n):
            http = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
            body = f"<html><body>{article(seed + i)}</body></html>".ljust(2000).encode()
            assert len(body) == 2000
            url = f"https://example.org/{i}"
            record = writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http)
            writer.write_record(record)


@pytest.mark.timeout(300)
def test_a_new_warc_on_a_reused_inode_of_the_same_size_and_mtime_is_ingested_whole(tmp_path: Path) -> None:
    """Before, a record's spool entry was named for the file (device, inode, size, mtime) and its
    place: day2.warc, a re-crawl of day1.warc's URLs with the same size and mtime on day1's freed
    inode, had every record's name taken by day1's ingested one, so when it was resumed after a
    stop its records were skipped as known (and counted as spooled). Now a record is named for
    its WARC-Record-ID: day2's records are all ingested, the 20 spooled before the stop once."""
    n, mtime = 60, 1_793_491_200
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    _day_warc(inbox / "day1.warc", n, 1000)
    os.utime(inbox / "day1.warc", (mtime, mtime))
    day1 = os.stat(inbox / "day1.warc")
    _, rows, drop = ingest_inbox(tmp_path)
    assert [state for _s, _o, state, kind in rows if kind != "warc"] == ["done"] * n
    os.unlink(drop.done / "day1.warc")  # its inode is free: the next file made here may get it
    _day_warc(inbox / "day2.warc", n, 5000)
    os.utime(inbox / "day2.warc", (mtime, mtime))
    day2 = os.stat(inbox / "day2.warc")
    assert (day2.st_size, day2.st_mtime_ns) == (day1.st_size, day1.st_mtime_ns)
    # day2's records named as if its file were day1 (device, inode, size, mtime): none is taken
    with (inbox / "day2.warc").open("rb") as second:
        responses = list(html_responses(second.fileno(), 1 << 20, WarcYield()))
    # (and under day2's own name: the record's identity alone keeps them apart)
    named = [(i + 1, identity, doc) for i, (identity, doc) in enumerate(responses)]
    stems = [record_stem(day1, "day2.warc", place, identity, doc) for place, identity, doc in named]
    assert len(set(stems)) == n
    registry = Registry(tmp_path / "data" / "registry.sqlite3")
    try:
        assert not any(registry.state_of(f"spool:{stem}") for stem in stems)
    finally:
        registry.close()

    spool = _StopAfter(tmp_path / "spool", after=20)  # day2 is stopped after 20 records, then resumed
    drop = DropFolder(inbox, settle_s=0.0)
    with Ingestor(SETTINGS, tmp_path / "data", load_tokenizer("bytes"), spool, drop) as ing:
        spool.ingestor = ing
        drop.start()
        until(lambda: ing.run_once() or spool.count(), "day2 spooled", 120, 0.01)
        assert spool.count() == 20
    assert (inbox / ".ingesting" / "day2.warc").exists()
    _, rows, drop = ingest_inbox(tmp_path)
    pages = [(source, state) for source, _origin, state, kind in rows if kind != "warc"]
    assert sorted(pages) == sorted((f"https://example.org/{i}", "done") for i in range(n) for _ in (1, 2))
    assert _warc_reasons(tmp_path) == [
        f"WARC: {n} HTML responses of {n} records to the spool",
        f"WARC: {n - 20} HTML responses of {n} records to the spool (20 there already)",
    ]
    assert (drop.done / "day2.warc").exists() and spool.count() == 0


@pytest.mark.timeout(300)
def test_a_copy_of_a_warc_under_another_name_with_its_mtime_kept_is_counted_as_duplicates(
    tmp_path: Path,
) -> None:
    """A copy that keeps the modification time (cp -p, rsync -a, tar x) has the same records at
    the same places: named for the record alone, its records got the first file's spool names and
    were released as recorded before, with no row and no count (review R15 R2). Named for the
    file's name as well, they are extracted and counted as duplicates, as an HTML file copied
    under another name is: every record accounted for."""
    n = 12
    (tmp_path / "inbox").mkdir()
    _day_warc(tmp_path / "inbox" / "a.warc", n, 7000)
    _, _, drop = ingest_inbox(tmp_path)
    shutil.copy2(drop.done / "a.warc", drop.root / "b.warc")  # the same bytes and mtime
    stats, rows, drop = ingest_inbox(tmp_path)
    states = [state for _s, _o, state, kind in rows if kind != "warc"]
    assert states == ["done"] * n + ["duplicate"] * n, states
    assert stats["duplicates"] == n, stats
    assert _warc_reasons(tmp_path) == [f"WARC: {n} HTML responses of {n} records to the spool"] * 2
    assert (drop.done / "b.warc").exists()


@pytest.mark.timeout(180)
def _first_record_short(n: int, tail: str, short_by: int) -> bytes:
    """An uncompressed WARC of ``n`` HTML responses, each ending in a line "TAIL i{tail}", the
    first one's Content-Length ``short_by`` bytes short."""
    out = io.BytesIO()
    writer = WARCWriter(out, gzip=False)
    for i in range(n):
        payload = f"<html><body>{article(i)}</body></html>\r\nTAIL {i}{tail}".encode()
        headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
        record = writer.create_warc_record(
            f"https://example.org/{i}", "response", payload=io.BytesIO(payload), http_headers=headers
        )
        writer.write_record(record)
    data = out.getvalue()
    first = data.index(b"Content-Length: ") + len(b"Content-Length: ")
    length = int(data[first : data.index(b"\r\n", first)])
    return data[:first] + str(length - short_by).encode() + data[data.index(b"\r\n", first) :]


def test_a_record_its_content_length_cuts_short_is_counted_not_printed(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # R18 6: warcio wrote its own three lines ("WARNING: Record not followed by newline ...",
    # "Offset: ...", "Remainder: ...") straight to stderr, past the one-line log
    data = _first_record_short(2, "\x1b[2J", 10)  # its last line is left after it
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "short.warc").write_bytes(data)
    _, rows, _ = ingest_inbox(tmp_path)
    assert [r[0] for r in rows if r[3] != "warc"] == ["https://example.org/0", "https://example.org/1"]
    (reason,) = _warc_reasons(tmp_path)
    assert re.fullmatch(
        r"WARC: 2 HTML responses of 2 records to the spool; 1 record not followed by a blank line: "
        r'record 1 \(its Content-Length short\?\) is followed at offset \d+ by "TAIL 0\\x1b\[2J"',
        reason,
    ), reason
    err = capfd.readouterr().err
    assert "Record not followed by newline" not in err and "Remainder" not in err


_WARCIO_CALL = "self.INC_RECORD.format(err_offset, line)"


@pytest.mark.parametrize(
    ("call", "counted"),
    [
        ("self.INC_RECORD.format(err_offset, line, self.err_count)", 1),  # an argument more
        ("self.INC_RECORD % (err_offset, line)", 1),  # %-formatting
        ("self.INC_RECORD.strip().format(err_offset, line)", 0),  # a str method first
    ],
)
def test_a_changed_warcio_call_of_its_warning_loses_no_record(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    call: str,
    counted: int,
) -> None:
    """R20 2: warcio (pinned < 2) may change how it writes INC_RECORD. Before, an argument more
    or ``%`` raised TypeError out of html_responses, and a str method first an AttributeError
    taken for a broken header: the file's other records dropped under a wrong reason."""
    source = textwrap.dedent(inspect.getsource(archiveiterator.ArchiveIterator._consume_blanklines))
    assert source.count(_WARCIO_CALL) == 1, "warcio's call is no longer the one this test rewrites"
    namespace: dict[str, object] = {}
    exec(source.replace(_WARCIO_CALL, call), vars(archiveiterator), namespace)
    changed = namespace["_consume_blanklines"]
    monkeypatch.setattr(archiveiterator.ArchiveIterator, "_consume_blanklines", changed)
    (tmp_path / "short.warc").write_bytes(_first_record_short(3, "", 6))
    result = WarcYield()
    fd = os.open(tmp_path / "short.warc", os.O_RDONLY)
    try:
        urls = [document.source for _identity, document in html_responses(fd, 10**6, result)]
    finally:
        os.close(fd)
    assert urls == [f"https://example.org/{i}" for i in range(3)]
    assert result.records == 3 and result.error == "" and result.broken == 0
    assert result.unterminated == counted
    if counted:
        assert "record 1 (its Content-Length short?) is followed at offset" in result.unterminated_reason
        assert '"TAIL 0"' in result.unterminated_reason
    assert "Record not followed by newline" not in capfd.readouterr().err
