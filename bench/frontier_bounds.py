"""Frontier bounds: rows and SQLite bytes with the caps off and at their defaults, same run.

Replays issue 19's case on the frontier alone (no network): a site whose every page links to
10,000 new URLs, crawled breadth-first for ``--pages`` pages (claim one URL, store it with its
links), and prints rows queued, drops per reason, the database's size and links offered per
second; then reopens the uncapped frontier with the caps and trims it. A second
table times the same small workload (1,000 new links a page, under every cap) with the caps
off and on: the cost of enforcing them when they are not hit.

    .venv/bin/python bench/frontier_bounds.py [--pages 200] [--links 10000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from crystalline.crawler.frontier import QUEUED, STORED, Frontier, NewUrl
from crystalline.crawler.settings import CrawlSettings

ORIGIN = "http://site.example:8080"
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet")


@dataclass(frozen=True)
class Result:
    label: str
    pages: int
    offered: int
    queued: int
    rows: int
    dropped: dict[str, int]
    db_bytes: int
    seconds: float


def _slug(n: int) -> str:
    """A word slug (``/golf-alpha-echo-3141``): one URL shape per page, as the issue's site had."""
    return "-".join(WORDS[(n // 10**k) % 10] for k in range(3)) + f"-{n}"


def crawl_pages(path: Path, pages: int, links: int, caps: dict[str, int]) -> Result:
    frontier = Frontier(path, max_queued_per_host=caps["max_queued_per_host"], max_queued=caps["max_queued"])
    frontier.add([NewUrl(ORIGIN + "/", ORIGIN, 0)])
    next_id = 0
    offered = 0
    start = time.perf_counter()
    for _ in range(pages):
        (entry,) = frontier.claim(ORIGIN, 1, time.time())
        found = [NewUrl(f"{ORIGIN}/p/{_slug(next_id + i)}", ORIGIN, entry.depth + 1) for i in range(links)]
        next_id += links
        offered += links
        frontier.finish(entry, STORED, 200, links=found, max_links=caps["max_links_per_page"])
    seconds = time.perf_counter() - start
    rows = frontier._db.execute("SELECT COUNT(*) FROM urls").fetchone()[0]
    frontier._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    result = Result(
        label="",
        pages=pages,
        offered=offered,
        queued=frontier.counts[QUEUED],
        rows=rows,
        dropped={k: v for k, v in frontier.dropped.items() if v},
        db_bytes=sum(p.stat().st_size for p in path.parent.glob(path.name + "*")),
        seconds=seconds,
    )
    frontier.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=200, help="pages crawled (default: 200)")
    parser.add_argument("--links", type=int, default=10_000, help="new links per page (default: 10000)")
    args = parser.parse_args()
    d = CrawlSettings()
    defaults = {
        "max_links_per_page": d.max_links_per_page,
        "max_queued_per_host": d.max_queued_per_host,
        "max_queued": d.max_queued,
    }
    off = dict.fromkeys(defaults, 0)
    with tempfile.TemporaryDirectory(prefix="frontier-bench-") as tmp:
        print(f"{args.pages} pages of {args.links} new links each; caps {defaults}")
        print(
            f"{'caps':<9} {'offered':>9} {'queued':>9} {'rows':>9} {'MB':>7} {'B/row':>6} {'links/s':>9}",
            "dropped",
        )
        for label, caps in (("off", off), ("default", defaults)):
            r = crawl_pages(Path(tmp) / label / "frontier.sqlite", args.pages, args.links, caps)
            print(
                f"{label:<9} {r.offered:>9} {r.queued:>9} {r.rows:>9} {r.db_bytes / 1e6:>7.1f} "
                f"{r.db_bytes // max(r.rows, 1):>6} {r.offered / r.seconds:>9.0f}  {r.dropped}"
            )
        start = time.perf_counter()  # the uncapped frontier reopened with the caps, then trimmed
        trimmed = Frontier(
            Path(tmp) / "off" / "frontier.sqlite",
            **{k: defaults[k] for k in ("max_queued_per_host", "max_queued")},
        )
        chunks = 0
        while trimmed.trim():
            chunks += 1
        print(f"'off' reopened with the default caps and trimmed in {chunks} chunks: "
              f"{trimmed.counts[QUEUED]} queued after {time.perf_counter() - start:.1f} s, "
              f"dropped {trimmed.dropped}")  # fmt: skip
        trimmed.close()
        print("\nunder the caps (100 pages of 1000 new links): the cost of checking them")
        print(f"{'caps':<9} {'rows':>9} {'links/s':>9}")
        for label, caps in (("off", off), ("default", defaults), ("off", off), ("default", defaults)):
            r = crawl_pages(Path(tmp) / f"small-{label}-{time.monotonic_ns()}" / "f.sqlite", 100, 1000, caps)
            print(f"{label:<9} {r.rows:>9} {r.offered / r.seconds:>9.0f}")


if __name__ == "__main__":
    main()
