"""``crystalline crawl``: crawl from start URLs into a data directory, then print a summary.

    crystalline crawl --start-url URL [--start-url ...] [--max-pages N] [--max-depth D]
        [--data-dir DIR] [--allowed-domain D ...] [--delay S] [--concurrency N]
        [--user-agent UA] [--timeout S] [--log-jsonl FILE] [--max-links-per-page N]
        [--max-queued-per-host N] [--max-queued N] [--robots-per-minute N]
        [--min-revisit S] [--max-revisit S] [--revisit-share F] [--max-fetches-per-host-per-day N]
        [--warc-dir DIR] [--warc-file-bytes N] [--no-sitemaps]

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
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import IO

from ..exit_status import CommandParser
from ..exit_status import main as run_main
from ..ingest.document import Spool
from .crawl import Crawler, CrawlSummary, FetchRecord
from .settings import CrawlSettings, parse_host_revisit

log = logging.getLogger("crystalline.crawler")

_DEFAULTS = CrawlSettings()
_SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


def add_options(p: argparse.ArgumentParser) -> None:
    """The crawl options (shared by ``crystalline crawl`` and ``python -m ...command``)."""
    d = _DEFAULTS
    p.add_argument(
        "--start-url",
        action="append",
        required=True,
        metavar="URL",
        help="where to start (repeatable); its host is in scope unless --allowed-domain is given",
    )
    p.add_argument(
        "--max-pages",
        type=int,
        default=0,
        metavar="N",
        help="stop after N pages are stored in DIR, all runs together (default: no limit)",
    )
    p.add_argument(
        "--max-depth",
        type=int,
        default=d.max_depth,
        metavar="D",
        help=f"link hops from a start URL (default: {d.max_depth})",
    )
    p.add_argument(
        "--max-pages-per-host",
        type=int,
        default=0,
        metavar="N",
        help="pages stored per host (default: no limit)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=d.data_dir,
        metavar="DIR",
        help=f"frontier and spool of fetched documents (default: ./{d.data_dir})",
    )
    p.add_argument(
        "--allowed-domain",
        action="append",
        default=[],
        metavar="D",
        help="crawl only this domain and its subdomains (repeatable)",
    )
    p.add_argument(
        "--delay",
        type=float,
        default=d.min_delay,
        metavar="S",
        help=f"minimum seconds between requests to one host; 0 also turns off the adaptive "
        f"delay (default: {d.min_delay})",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=d.concurrency,
        metavar="N",
        help=f"requests in flight, all hosts together (default: {d.concurrency})",
    )
    p.add_argument(
        "--per-host-concurrency",
        type=int,
        default=d.per_host_concurrency,
        metavar="N",
        help=f"requests in flight per host when --delay is 0 (default: {d.per_host_concurrency})",
    )
    p.add_argument(
        "--user-agent",
        default=d.user_agent,
        metavar="UA",
        help="User-Agent header; robots.txt is matched on its text before the first '/'",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=d.total_timeout,
        metavar="S",
        help=f"seconds per request, body included (default: {d.total_timeout})",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=d.max_body_bytes,
        metavar="N",
        help=f"larger bodies (after decompression) are dropped (default: {d.max_body_bytes})",
    )
    p.add_argument("--log-jsonl", type=Path, metavar="FILE", help="append one JSON line per request")
    for flag, name, what in (
        ("--max-links-per-page", "max_links_per_page", "new URLs one page may queue"),
        ("--max-queued-per-host", "max_queued_per_host", "URLs queued per host; the deepest/newest give way"),
        ("--max-queued", "max_queued", "URLs queued in all; the deepest/newest give way"),
        ("--robots-per-minute", "robots_per_minute", "robots.txt requests per minute (new hosts wait)"),
    ):
        default = getattr(d, name)
        p.add_argument(
            flag, type=int, default=default, metavar="N", help=f"{what}; 0: no cap (default: {default})"
        )
    for flag, name, what in (
        ("--min-revisit", "min_revisit", "seconds before a stored page is due again (its shortest interval)"),
        ("--max-revisit", "max_revisit", "longest revisit interval in seconds"),
        ("--revisit-share", "revisit_share", "share of requests for revisits while new URLs wait"),
    ):
        default = getattr(d, name)
        p.add_argument(flag, type=float, default=default, metavar="S", help=f"{what} (default: {default:g})")
    p.add_argument(
        "--host-revisit",
        action="append",
        default=[],
        metavar="HOST=MIN:MAX",
        help="revisit bounds in seconds for HOST and its subdomains in place of --min-revisit/"
        "--max-revisit (repeatable)",
    )
    for flag, name, what in (
        ("--max-fetches-per-host-per-day", "max_fetches_per_host_per_day",
         "requests per host per day, revisits included; the host is deferred past it"),
        ("--max-listed-per-host-per-day", "max_listed_per_host_per_day",
         "new URLs sitemaps and feeds may queue per host per day; more are dropped"),
    ):  # fmt: skip
        default = getattr(d, name)
        p.add_argument(
            flag, type=int, default=default, metavar="N", help=f"{what} (default: {default or 'no cap'})"
        )
    p.add_argument(
        "--warc-dir", type=Path, metavar="DIR", help="write every response as WARC/1.1 records here"
    )
    p.add_argument(
        "--warc-file-bytes",
        type=int,
        default=d.warc_file_bytes,
        metavar="N",
        help=f"start a new WARC file past this size (default: {d.warc_file_bytes})",
    )
    p.add_argument(
        "--no-sitemaps", action="store_true", help="do not read robots.txt Sitemap: lines and /sitemap.xml"
    )
    p.add_argument("--allow-private-addresses", action="store_true",
                   help="allow loopback and private addresses (local test servers)")  # fmt: skip


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


def settings_from_args(args: argparse.Namespace) -> CrawlSettings:
    """The crawl settings the options describe (raises ValueError for values out of range)."""
    if args.timeout <= 0:
        raise ValueError("--timeout must be positive")
    return replace(
        _DEFAULTS,
        data_dir=args.data_dir,
        user_agent=args.user_agent,
        allowed_domains=tuple(args.allowed_domain),
        max_pages=args.max_pages,
        max_pages_per_host=args.max_pages_per_host,
        max_depth=args.max_depth,
        min_delay=args.delay,
        autothrottle=args.delay > 0,
        concurrency=args.concurrency,
        per_host_concurrency=args.per_host_concurrency,
        total_timeout=args.timeout,
        connect_timeout=min(_DEFAULTS.connect_timeout, args.timeout),
        read_timeout=min(_DEFAULTS.read_timeout, args.timeout),
        max_body_bytes=args.max_body_bytes,
        allow_private_addresses=args.allow_private_addresses,
        max_links_per_page=args.max_links_per_page,
        max_queued_per_host=args.max_queued_per_host,
        max_queued=args.max_queued,
        robots_per_minute=args.robots_per_minute,
        min_revisit=args.min_revisit,
        revisit_after=args.min_revisit,
        max_revisit=max(args.max_revisit, args.min_revisit),
        host_revisit=tuple(parse_host_revisit(spec) for spec in args.host_revisit),
        revisit_share=args.revisit_share,
        max_fetches_per_host_per_day=args.max_fetches_per_host_per_day,
        max_listed_per_host_per_day=args.max_listed_per_host_per_day,
        warc_dir=args.warc_dir,
        warc_file_bytes=args.warc_file_bytes,
        sitemaps=not args.no_sitemaps,
    )


def run_crawl_command(args: argparse.Namespace) -> int:
    """Run the crawl the options describe; print its summary; return the exit status."""
    settings = settings_from_args(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    spool = Spool(settings.data_dir / "spool")
    spool.sweep_orphans()  # what a crawl killed inside Spool.put left
    log_file: IO[str] | None = None
    if args.log_jsonl is not None:
        log_file = open(args.log_jsonl, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 (closed below)
    crawler = Crawler(settings, spool, on_fetch=_jsonl_writer(log_file) if log_file else None)
    try:
        for url in args.start_url:
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
