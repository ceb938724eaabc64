"""``crystalline crawl``: options, one-line errors, the spool and log it writes, SIGKILL and resume."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from _loopback import html, serve
from aiohttp import web

from crystalline.crawler import command
from crystalline.documents import Document, Spool
from crystalline.exit_status import UsageError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crystalline")
    command.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def _site(n: int, delay: float = 0.0) -> list[web.RouteDef]:
    async def page(request: web.Request) -> web.Response:
        i = int(request.match_info["i"])
        await asyncio.sleep(delay)
        return html(
            f"<p>page {i}</p>" + "".join(f'<a href="/p/{j}">x</a>' for j in (2 * i + 1, 2 * i + 2) if j < n)
        )

    return [web.get("/p/{i}", page)]


def test_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args(["crawl", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--start-url", "--max-pages", "--max-depth", "--data-dir", "--allowed-domains",
                   "--min-delay", "--concurrency", "--user-agent", "--total-timeout", "--log-jsonl",
                   "--config", "--allow-private-addresses", "--no-sitemaps"):  # fmt: skip
        assert option in out


def test_crawl_command_fills_the_spool_and_the_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def main() -> int:
        async with serve(_site(15)) as base:
            args = _parser().parse_args(["crawl", "--start-url", base + "/p/0",
                                         "--data-dir", str(tmp_path / "d"), "--min-delay", "0",
                                         "--log-jsonl", str(tmp_path / "log.jsonl"),
                                         "--allow-private-addresses"])  # fmt: skip
            return await asyncio.to_thread(args.func, args)

    assert asyncio.run(main()) == 0
    docs = [doc for _, doc in Spool(tmp_path / "d" / "spool").pending()]
    assert len(docs) == 15 and {d.content_type for d in docs} == {"text/html"}
    assert (tmp_path / "d" / "frontier.sqlite").exists()
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(records) == 17  # robots.txt, /sitemap.xml (404) and 15 pages
    assert set(records[0]) == {"url", "status", "content_type", "bytes", "elapsed", "error"}
    assert "15 pages stored" in capsys.readouterr().out


def test_user_errors_are_one_line(tmp_path: Path) -> None:
    args = _parser().parse_args(["crawl", "--start-url", "ftp://example.com/", "--data-dir", str(tmp_path)])
    with pytest.raises(ValueError, match=r"cannot crawl ftp://example\.com/: scheme 'ftp' not allowed"):
        args.func(args)
    args = _parser().parse_args(["crawl", "--start-url", "http://example.com/", "--concurrency", "0",
                                 "--data-dir", str(tmp_path)])  # fmt: skip
    with pytest.raises(
        UsageError, match=r"^\[crawl\] concurrency must be at least 1 \(set by flag --concurrency\)$"
    ):
        args.func(args)


def test_module_main_prints_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert command.main(["--start-url", "http://127.0.0.1:1/", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "crystalline: error: cannot crawl http://127.0.0.1:1/: private or loopback address 127.0.0.1"
    ]


@pytest.mark.timeout(120)
def test_sigkill_mid_crawl_then_resume(tmp_path: Path) -> None:
    pages = 60
    data_dir = tmp_path / "d"

    async def run_crawl(base: str, kill_after_docs: int | None) -> int:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "crystalline.crawler.command", "--start-url", base + "/p/0",
            "--data-dir", str(data_dir), "--min-delay", "0", "--concurrency", "4",
            "--per-host-concurrency", "4", "--allow-private-addresses", env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        if kill_after_docs is not None:
            spool = data_dir / "spool"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if (
                    spool.exists()
                    and sum(1 for p in spool.iterdir() if p.suffix == ".json") >= kill_after_docs
                ):
                    break
                await asyncio.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
        return await asyncio.wait_for(proc.wait(), 60)

    async def main() -> None:
        async with serve(_site(pages, delay=0.03)) as base:
            assert await run_crawl(base, kill_after_docs=20) == -signal.SIGKILL
            killed_at = len(list(Spool(data_dir / "spool").pending()))
            assert killed_at < pages  # it really died mid-crawl
            assert await run_crawl(base, kill_after_docs=None) == 0
        sources = [doc.source for _, doc in Spool(data_dir / "spool").pending()]
        assert set(sources) == {f"{base}/p/{i}" for i in range(pages)}  # nothing lost
        assert len(sources) - pages <= 4  # refetched at most what was in flight (concurrency 4)

    asyncio.run(main())


def test_spool_submit_waits_while_the_spool_is_full(tmp_path: Path) -> None:
    async def main() -> None:
        spool = Spool(tmp_path / "spool", max_pending=2, refresh_s=0.0)
        sink = spool
        for i in range(2):
            await sink.submit(Document(source=f"http://h/{i}", body=b"x", content_type="text/plain"))
        blocked = asyncio.create_task(sink.submit(Document("http://h/2", b"y", "text/plain")))
        await asyncio.sleep(0.2)
        assert not blocked.done() and spool.count() == 2
        meta_path, _ = next(iter(spool.pending()))
        spool.remove(meta_path)  # ingest takes one
        await asyncio.wait_for(blocked, 5)
        assert sorted(d.source for _, d in spool.pending()) == ["http://h/1", "http://h/2"]

    asyncio.run(main())
