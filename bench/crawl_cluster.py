"""The shared frontier's speed (issue 17): ``bench/crawl_speed.py --database postgresql://...``.

The numbered site of ``crawl_speed`` served on several loopback addresses (one origin each, the
same port), politeness off (no delay, ``--concurrency`` requests per host), robots.txt obeyed.
Rows: one ``crystalline crawl`` on SQLite, then 1, 2 and 3 processes on one PostgreSQL database
started together; pages/s is every page stored (counted in the spools) over the wall time of
the last process to finish, interpreter starts included. Then the latency of ``claim`` (the
host's lease and its URLs in one transaction on PostgreSQL; one SQLite transaction) over 50
hosts of queued URLs, median and 95th percentile. Each PostgreSQL run gets a database of its
own, created on the server of ``--database`` and dropped after (the role needs CREATEDB).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from crawl_speed import free_port, wait_for_port


@contextmanager
def scratch_database(admin_url: str) -> Iterator[str]:
    """A new database on the server of ``admin_url``, dropped afterwards; its URL."""
    import psycopg

    name = f"crawl_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def crawl(
    starts: list[str], processes: int, database: str, concurrency: int, work: Path
) -> tuple[int, float]:
    """``processes`` crawlers started together; (pages stored by all, wall seconds to the last)."""
    procs = []
    start = time.monotonic()
    for i in range(processes):
        data_dir = work / f"machine{i}"
        argv = [sys.executable, "-m", "crystalline.crawler.command", "--data-dir", str(data_dir),
                "--min-delay", "0", "--concurrency", str(concurrency), "--per-host-concurrency",
                str(concurrency), "--allow-private-addresses", "--no-sitemaps",
                *(["--database", database] if database else [])]  # fmt: skip
        for url in starts:
            argv += ["--start-url", url]
        log = (work / f"machine{i}.log").open("wb")
        procs.append((subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT), log))
    for proc, log in procs:
        code = proc.wait(timeout=900)
        log.close()
        if code != 0:
            raise RuntimeError(f"a crawler exited {code}: see {log.name}")
    wall = time.monotonic() - start
    stored = sum(
        1 for i in range(processes) for p in (work / f"machine{i}" / "spool").iterdir() if p.suffix == ".json"
    )
    return stored, wall


def claim_latency(database: str, work: Path, claims: int = 400) -> tuple[float, float]:
    """(median, p95) milliseconds of ``claim(origin, 1)`` over 50 hosts of 40 queued URLs."""
    from crystalline.crawler.frontier import NewUrl
    from crystalline.crawler.frontier_pg import open_frontier

    frontier = open_frontier(database or None, work / "latency.sqlite")
    try:
        origins = [f"http://h{i}.example" for i in range(50)]
        frontier.add(NewUrl(f"{o}/p/{k}", o, 1) for o in origins for k in range(40))
        times = []
        now = time.time()
        for i in range(claims):
            t = time.perf_counter()
            frontier.claim(origins[i % len(origins)], 1, now)
            times.append((time.perf_counter() - t) * 1000)
    finally:
        frontier.close()
    return statistics.median(times), statistics.quantiles(times, n=20)[-1]


def bench_cluster(args: argparse.Namespace, script: Path) -> int:
    hosts = [f"127.0.1.{i + 1}" for i in range(args.hosts)]
    port = free_port()
    server = subprocess.Popen([sys.executable, str(script), "--serve", str(port), "--pages", str(args.pages),
                               "--serve-hosts", ",".join(["127.0.0.1", *hosts])])  # fmt: skip
    try:
        wait_for_port(port)
        starts = [f"http://{h}:{port}/numbered/" for h in hosts]
        print(f"{len(hosts)} hosts x {args.pages} pages (numbered site); concurrency {args.concurrency}; "
              "politeness off")  # fmt: skip
        print(f"{'frontier':<28} {'pages':>6} {'seconds':>8} {'pages/s':>8}")
        with tempfile.TemporaryDirectory(prefix="crawl-cluster-") as tmp:
            runs: list[tuple[str, int]] = [
                ("sqlite", 1),
                ("postgresql", 1),
                ("postgresql", 2),
                ("postgresql", 3),
            ]
            for n, (backend, processes) in enumerate(runs):
                work = Path(tmp) / f"run{n}"
                work.mkdir()
                if backend == "sqlite":
                    stored, wall = crawl(starts, 1, "", args.concurrency, work)
                else:
                    with scratch_database(args.database) as url:
                        stored, wall = crawl(starts, processes, url, args.concurrency, work)
                name = f"{backend}, {processes} process{'es' if processes > 1 else ''}"
                print(f"{name:<28} {stored:>6} {wall:>8.2f} {stored / wall:>8.1f}", flush=True)
            print(f"\n{'claim latency':<28} {'median ms':>10} {'p95 ms':>8}")
            sqlite = claim_latency("", Path(tmp))
            print(f"{'sqlite':<28} {sqlite[0]:>10.3f} {sqlite[1]:>8.3f}")
            with scratch_database(args.database) as url:
                pg = claim_latency(url, Path(tmp))
            print(f"{'postgresql':<28} {pg[0]:>10.3f} {pg[1]:>8.3f}")
    finally:
        server.terminate()
        server.wait(10)
    return 0
