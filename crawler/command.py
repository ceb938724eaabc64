"""``crystalline crawl``: crawl from start URLs into a data directory, then print a summary.

    crystalline crawl --start-url URL [--start-url ...] [--config FILE] [--log-jsonl FILE]
        [one flag per key of the [crawl] table: --data-dir DIR --max-pages N --concurrency N ...]

``DIR/frontier.sqlite`` holds the frontier (rerunning with the same directory resumes) and
``DIR/spool/`` the fetched documents that ingest consumes. The crawl ends when nothing is left to
do now: the queue is empty, no stored page is due for a revisit, or only deferred hosts (robots.txt
unavailable, daily budget spent) hold URLs, which it lists with the reason and when to retry
(exit 0; rerunning resumes); when a limit is reached (exit 0); or on SIGINT/SIGTERM (exit 130/143
after requeueing what was in flight). A page stored more than ``--min-revisit`` seconds ago (a day
by default) is due again: a later run revisits it with a conditional request and hands the spool
a new version only when it changed. ``--warc-dir`` writes every response, with its request, as
WARC/1.1 records (gzip per record, files of ``--warc-file-bytes``).
``--log-jsonl`` appends one JSON line per request: url, status, content_type,
bytes, elapsed, error. The frontier is bounded: links a page may queue, URLs queued per host and
in all (the deepest and newest give way; the summary counts what was dropped), and robots.txt
requests per minute (new hosts wait their turn).
Also runnable alone: ``python -m crystalline.crawler.command --start-url ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING

from ..documents import Spool
from ..exit_status import CommandParser, UsageError
from ..exit_status import main as run_main
from ..settings_tree import Tree, add_config_flag, table
from .settings import CrawlSettings

if TYPE_CHECKING:  # the crawler (aiohttp, warcio) is imported when a crawl runs, not for its flags
    from .crawl import Crawler, CrawlSummary, FetchRecord

log = logging.getLogger("crystalline.crawler")

_SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


def settings_tree() -> Tree:
    """`crystalline crawl`'s settings: the [crawl] table, the daemon's too."""
    return Tree({"crawl": table("crawl", CrawlSettings)})


def add_options(p: argparse.ArgumentParser) -> None:
    """The crawl options (shared by ``crystalline crawl`` and ``python -m ...command``): one flag
    per [crawl] key, ``--config`` and ``--log-jsonl``."""
    add_config_flag(p, "[crawl] table")
    p.add_argument("--log-jsonl", type=Path, metavar="FILE", help="append one JSON line per request")
    settings_tree().add_flags(p)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``crawl`` subcommand to the ``crystalline`` CLI."""
    p = subparsers.add_parser(
        "crawl",
        help="crawl the web from start URLs into a data directory",
        description="Crawl politely from start URLs until nothing is left to do now (deferred hosts are "
        "listed) or a limit is reached; rerunning with the same --data-dir resumes and revisits "
        "the pages that are due.",
    )
    add_options(p)
    p.set_defaults(func=run_crawl_command)


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> CrawlSettings:
    """The crawl settings of the file, the environment and the flags (UsageError, one line
    naming the source, for a bad one). A one-shot crawl also revisits every page fetched at least
    min-revisit seconds ago, whatever its interval says."""
    resolved = settings_tree().resolve(args, os.environ if env is None else env, args.config)
    settings: CrawlSettings = resolved.tables["crawl"]
    if not settings.start_url:
        raise UsageError("crawl needs a start URL: --start-url URL (or [crawl] start-url)")
    return replace(settings, revisit_after=settings.min_revisit)


def run_crawl_command(args: argparse.Namespace) -> int:
    """Run the crawl the options describe; print its summary; return the exit status."""
    settings = settings_from_args(args)  # a bad setting is told before the crawler is imported
    from .crawl import Crawler

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    spool = Spool(settings.data_dir / "spool")
    spool.sweep_orphans()  # what a crawl killed inside Spool.put left
    log_file: IO[str] | None = None
    if args.log_jsonl is not None:
        log_file = open(args.log_jsonl, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 (closed below)
    crawler = Crawler(settings, spool, on_fetch=_jsonl_writer(log_file) if log_file else None)
    try:
        for url in settings.start_url:
            crawler.add_url(url)
        summary, signum = asyncio.run(_crawl(crawler))
    finally:
        crawler.close()
        if log_file is not None:
            log_file.close()
    print(summary.line())
    for line in summary.deferred_lines():
        print(line)
    return _SIGNAL_EXIT.get(signal.Signals(signum), 1) if signum else 0


def _jsonl_writer(stream: IO[str]) -> Callable[[FetchRecord], None]:
    def write(record: FetchRecord) -> None:
        stream.write(json.dumps(asdict(record)) + "\n")

    return write


async def _crawl(crawler: Crawler) -> tuple[CrawlSummary, int]:
    """Run the crawl with SIGINT/SIGTERM as stop requests and, on a terminal, a progress line."""
    stop = asyncio.Event()
    received: list[int] = []
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:  # record only; the loop winds down
        received.append(signum)
        stop.set()

    # only the main thread may own signals (a caller running this in a thread stops it otherwise)
    signals = list(_SIGNAL_EXIT) if threading.current_thread() is threading.main_thread() else []
    for signum in signals:
        loop.add_signal_handler(signum, on_signal, signum)
    progress = asyncio.create_task(_progress(crawler)) if sys.stderr.isatty() else None
    try:
        summary = await crawler.run(stop)
    finally:
        if progress is not None:
            progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await progress
            sys.stderr.write("\n")
        for signum in signals:
            loop.remove_signal_handler(signum)
    return summary, (received[0] if received else 0)


async def _progress(crawler: Crawler) -> None:
    """Rewrite one stderr line each second with the crawl's counters."""
    while True:
        s = crawler.stats()
        sys.stderr.write(
            f"\rcrawl: {s['stored']} stored, {s['revisits']['revisits']} revisited, {s['queued']} queued, "
            f"{s['in_flight']} in flight, {s['errors']} errors, {s['host_count']} hosts, "
            f"{s['deferred_hosts']} deferred, {sum(s['dropped'].values())} dropped, "
            f"{s['bytes'] // 1024} KiB\x1b[K"
        )
        sys.stderr.flush()
        await asyncio.sleep(1.0)


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="crystalline crawl", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    add_options(parser)
    parser.set_defaults(func=run_crawl_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m crystalline.crawler.command``: the crawl subcommand on its own, through the
    error path and exit statuses of every subcommand (``crystalline.exit_status``)."""
    return run_main(build_parser(), list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
