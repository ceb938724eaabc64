"""WARC output read back with warcio: every response exactly once with its request, digests,
rotation and retention, and a file cut by SIGKILL mid-write repaired to its last whole record."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from _loopback import MemorySink, crawl, fast_settings, html, serve, url_state
from aiohttp import web
from warcio.archiveiterator import ArchiveIterator

from crystalline.crawler.fetcher import FetchResult
from crystalline.crawler.warc import OPEN_SUFFIX, WarcWriter, records
from crystalline.documents import Document


def read_warcs(directory: Path) -> list[tuple[str, str, bytes, dict[str, str]]]:
    """(type, target URI, payload, WARC headers) of every record of every file, oldest file first."""
    out = []
    for path in sorted(directory.glob("*.warc.gz")):
        with path.open("rb") as f:
            for record in ArchiveIterator(f, check_digests="raise"):
                headers = dict(record.rec_headers.headers)
                out.append(
                    (
                        record.rec_type,
                        headers.get("WARC-Target-URI", ""),
                        record.content_stream().read(),
                        headers,
                    )
                )
    return out


def _site(n: int) -> list[web.RouteDef]:
    async def page(request: web.Request) -> web.Response:
        i = int(request.match_info["i"])
        links = "".join(f'<a href="/p/{j}">{j}</a>' for j in (2 * i + 1, 2 * i + 2) if j < n)
        return html(f"<p>page {i} " + "text " * (i % 7) + f"</p>{links}")

    async def gone(request: web.Request) -> web.Response:
        return web.Response(status=404, text="no such page")

    return [web.get("/p/{i}", page), web.get("/missing", gone)]


def test_every_response_is_written_once_with_its_request(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, warc_dir=tmp_path / "warc")

    async def main() -> str:
        async with serve(_site(30)) as base:
            _, sink, _ = await crawl(settings, [base + "/p/0", base + "/missing"])
            assert len(sink.docs) == 30
            return base

    base = asyncio.run(main())
    assert not list((tmp_path / "warc").glob(f"*{OPEN_SUFFIX}"))  # closed at the end
    recs = read_warcs(tmp_path / "warc")
    assert recs[0][0] == "warcinfo"
    responses = Counter(uri for kind, uri, _, _ in recs if kind == "response")
    expected = {f"{base}/p/{i}" for i in range(30)} | {base + "/robots.txt", base + "/missing"}
    assert set(responses) == expected and set(responses.values()) == {1}
    requests = {uri for kind, uri, _, _ in recs if kind == "request"}
    assert requests == expected
    by_id = {h["WARC-Record-ID"]: uri for kind, uri, _, h in recs if kind == "response"}
    for kind, uri, _, headers in recs:
        if kind == "request":
            assert by_id[headers["WARC-Concurrent-To"]] == uri
        if kind == "response":
            assert headers["WARC-Payload-Digest"].startswith("sha1:")
    payloads = {uri: body for kind, uri, body, _ in recs if kind == "response"}
    assert b"page 7 " in payloads[f"{base}/p/7"]
    missing = next(h for kind, uri, _, h in recs if kind == "response" and uri == base + "/missing")
    assert missing["WARC-Truncated"] == "unspecified"  # a 404's body is not read


def test_files_rotate_and_the_oldest_go_past_the_retention_limit(tmp_path: Path) -> None:
    settings = fast_settings(
        tmp_path, warc_dir=tmp_path / "warc", warc_file_bytes=3000, warc_max_bytes=12_000
    )

    foreign = tmp_path / "warc" / "CC-MAIN-20261101-00001.warc.gz"  # not ours: never deleted
    foreign.parent.mkdir()
    foreign.write_bytes(b"\0" * 20_000)
    os.utime(foreign, (1, 1))  # the oldest file there

    async def main() -> None:
        async with serve(_site(40)) as base:
            _, _, crawler = await crawl(settings, [base + "/p/0"])
        stats = crawler.stats()["warc"]
        files = list((tmp_path / "warc").glob("crystalline-*.warc.gz"))
        assert stats["files"] > len(files) >= 2 and stats["deleted"] == stats["files"] - len(files)
        assert sum(p.stat().st_size for p in files) <= 12_000
        assert foreign.stat().st_size == 20_000
        for path in files:  # each file whole on its own
            with path.open("rb") as f:
                assert next(iter(ArchiveIterator(f))).rec_type == "warcinfo"

    asyncio.run(main())


def test_a_record_cut_short_is_removed_at_the_next_start(tmp_path: Path) -> None:
    directory = tmp_path / "warc"
    directory.mkdir()
    result = FetchResult(
        "http://h/x", 200, "text/html", body=b"<p>hello</p>", headers=(("Content-Type", "text/html"),)
    )
    whole = records(result)
    path = directory / f"crystalline-1-1-00001.warc.gz{OPEN_SUFFIX}"
    path.write_bytes(whole + whole[: len(whole) // 2])  # killed half-way through the second write
    WarcWriter(directory, 10**9).close()
    [closed] = directory.glob("*.warc.gz")
    assert closed.stat().st_size == len(whole)
    assert [kind for kind, *_ in read_warcs(directory)] == ["request", "response"]


_WRITER = """
import asyncio, sys
from pathlib import Path
from crystalline.crawler.fetcher import FetchResult
from crystalline.crawler.warc import WarcWriter

async def main():
    writer = WarcWriter(Path(sys.argv[1]), 10**9)
    body = bytes(range(256)) * 4000  # 1 MB a record: a kill lands inside a write now and then
    i = 0
    while True:
        await writer.write(FetchResult(f"http://h/{i}", 200, "application/octet-stream", body=body))
        print(i, flush=True)
        i += 1

asyncio.run(main())
"""


@pytest.mark.timeout(120)
def test_sigkill_mid_write_leaves_a_readable_file(tmp_path: Path) -> None:
    directory = tmp_path / "warc"
    acknowledged = 0
    for round_ in range(4):
        child = subprocess.Popen([sys.executable, "-c", _WRITER, str(directory)], stdout=subprocess.PIPE)
        assert child.stdout is not None
        deadline = time.monotonic() + 60
        lines = 0
        while lines < 3 + round_ and time.monotonic() < deadline and child.stdout.readline():
            lines += 1
        time.sleep(0.003 * round_)  # at different points of the next 1 MB write
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        acknowledged += lines
    WarcWriter(directory, 10**9).close()  # the next start repairs the last file of each process
    recs = read_warcs(directory)  # with check_digests="raise": every block and payload whole
    bodies = [body for kind, _, body, _ in recs if kind == "response"]
    assert len(bodies) >= acknowledged  # every write that returned is there
    assert all(body == bytes(range(256)) * 4000 for body in bodies)
    assert not list(directory.glob(f"*{OPEN_SUFFIX}"))


def test_a_full_disk_requeues_the_url_until_its_records_are_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = fast_settings(tmp_path, warc_dir=tmp_path / "warc", concurrency=1, per_host_concurrency=1)
    real_append = WarcWriter._append
    failures = {"left": 2}

    def append(self: WarcWriter, blobs: list[bytes]) -> None:  # the disk is full twice, then not
        if failures["left"]:
            failures["left"] -= 1
            raise OSError(28, "No space left on device")
        real_append(self, blobs)

    monkeypatch.setattr(WarcWriter, "_append", append)

    async def main() -> str:
        async with serve(_site(5)) as base:
            summary, sink, _ = await crawl(settings, [base + "/p/0"])
            assert summary.retried == 1 and summary.failed == 0  # robots.txt's failure only logged
            assert len(sink.docs) == 5  # no page counted done without its records
            return base

    base = asyncio.run(main())
    responses = Counter(uri for kind, uri, _, _ in read_warcs(tmp_path / "warc") if kind == "response")
    assert responses == Counter(f"{base}/p/{i}" for i in range(5))  # each once; robots.txt's were lost


class _FullSpool(MemorySink):
    """A sink whose disk is full for its first ``failures`` submissions."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def submit(self, doc: Document) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError(28, "No space left on device")
        await super().submit(doc)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["warc", "spool"])
def test_a_disk_full_for_longer_than_the_retries_fails_no_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """8 failed writes in a row, far past max_retries (2): before, the URLs were FAILED after 3
    attempts; now each goes back to the queue without an attempt counted, fetching pauses but
    for one probe at a time, and all are stored once space returns."""
    settings = fast_settings(tmp_path, warc_dir=tmp_path / "warc", max_backoff=0.2)
    sink = MemorySink()
    if where == "warc":
        real_append = WarcWriter._append
        failures = {"left": 8}

        def append(self: WarcWriter, blobs: list[bytes]) -> None:
            if failures["left"]:
                failures["left"] -= 1
                raise OSError(28, "No space left on device")
            real_append(self, blobs)

        monkeypatch.setattr(WarcWriter, "_append", append)
    else:
        sink = _FullSpool(8)

    async def main() -> str:
        async with serve(_site(5)) as base:
            summary, _, _ = await crawl(settings, [base + "/p/0"], sink=sink, timeout=50)
        assert summary.failed == 0 and summary.reason == "frontier empty"
        return base

    base = asyncio.run(main())
    assert sorted(sink.sources()) == sorted(f"{base}/p/{i}" for i in range(5))
    assert all(url_state(settings, f"{base}/p/{i}")[0] == "stored" for i in range(5))  # type: ignore[index]


def test_writes_under_way_when_their_fetch_is_cancelled_end_before_the_file_is_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # before: close() closed and renamed the file while the flush thread was still writing; the
    # thread then opened another file that nobody closed (left as .open)
    directory = tmp_path / "warc"
    real_append = WarcWriter._append

    def slow_append(self: WarcWriter, blobs: list[bytes]) -> None:
        time.sleep(0.3)  # a slow disk
        real_append(self, blobs)

    monkeypatch.setattr(WarcWriter, "_append", slow_append)
    result = FetchResult("http://h/x", 200, "text/html", body=b"<p>hello</p>", headers=())

    async def main() -> None:
        writer = WarcWriter(directory, 10**9)
        write = asyncio.create_task(writer.write(result))
        await asyncio.sleep(0.05)  # the flush thread is writing
        write.cancel()
        await asyncio.gather(write, return_exceptions=True)
        await writer.drain()
        writer.close()

    asyncio.run(main())
    assert not list(directory.glob(f"*{OPEN_SUFFIX}"))
    assert [(kind, uri) for kind, uri, _, _ in read_warcs(directory)] == [
        ("warcinfo", ""),
        ("request", "http://h/x"),
        ("response", "http://h/x"),
    ]
