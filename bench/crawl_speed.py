"""Crawl speed: ``crystalline crawl`` against a plain Scrapy spider on the same local site, same run.

Two 2000-page sites (about 3 KB of HTML, its own text and 10 links per page) are served by an
aiohttp server in its own process on 127.0.0.1: one of word slugs (``/docs/bdc``) and one of
numbered pages (``/p/1234``, the URL shape of news sites and forums, which an older trap guard
capped at 1,000 per host). Each crawler runs as a subprocess with politeness off (no delay, no
AutoThrottle, robots.txt obeyed), 16 requests in flight, and must fetch every page. Then a revisit
pass over the same data: every page again with a conditional request (``If-None-Match``), which
the server answers 304 (crystalline: ``--min-revisit 0``; Scrapy: its HTTP cache with the RFC 2616
policy, which revalidates the same way). Reported: pages per second over the subprocess's wall
time (interpreter start included for both), 304s per second for the revisit pass (the 304s the
server answered, counted by the server), peak RSS.

crystalline does more per page than the Scrapy spider: each page is written durably to the spool
(two fsynced files and a directory fsync) and its URL state to SQLite; Scrapy keeps its queue and
seen set in memory and stores nothing (its revisit pass reads and writes its cache). Needs Scrapy
(``pip install scrapy``, the ``bench`` extra).

    .venv/bin/python bench/crawl_speed.py [--pages 2000] [--concurrency 16] [--rounds 1]
        [--site words|numbered|both] [--no-revisit]

With ``--database postgresql://...`` (issue 17) it measures the shared frontier instead
(``bench/crawl_cluster.py``): the numbered site served on ``--hosts`` loopback addresses (a host
is leased to one crawler at a time, so several hosts are what several crawlers share), crawled
by 1, 2 and 3 ``crystalline crawl --database`` processes started together against one crawler
on SQLite, and the latency of ``claim`` on each backend.

    .venv/bin/python bench/crawl_speed.py --database postgresql://postgres@127.0.0.1:5432/postgres
        [--hosts 6] [--pages 300] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

SCRAPY_SPIDER = """
import scrapy

class SiteSpider(scrapy.Spider):
    name = "site"

    def __init__(self, start: str = "", **kwargs):
        super().__init__(**kwargs)
        self.start_urls = [start]

    def parse(self, response):
        yield {"url": response.url, "bytes": len(response.body)}
        for href in response.css("a::attr(href)").getall():
            yield response.follow(href, callback=self.parse)
"""


def slug(i: int) -> str:
    """Page names of letters (``/docs/bdc``): no digit runs, like a site of titled pages."""
    letters = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        letters = chr(ord("a") + r) + letters
    return letters


def page_path(site: str, i: int) -> str:
    return f"/docs/{slug(i)}" if site == "words" else f"/p/{i}"


def serve(port: int, pages: int, hosts: list[str]) -> None:
    """Both sites: ``/<site>/`` links to the site's first page; every page links to the next and 9
    others. Pages carry an ETag; a matching If-None-Match gets a 304 (``max-age=0``: a cache must
    ask again each time)."""
    from aiohttp import web

    words = ["lorem", "ipsum", "crawl", "page", "text", "data", "river", "stone", "the", "of", "and"]
    bodies: dict[str, bytes] = {}
    for site in ("words", "numbered"):
        rng = random.Random(1)
        for i in range(pages):
            paragraph = " ".join(rng.choice(words) for _ in range(400))
            targets = [(i + 1) % pages, *(rng.randrange(pages) for _ in range(9))]
            links = "".join(f'<li><a href="{page_path(site, t)}">page {t}</a></li>' for t in targets)
            bodies[page_path(site, i)] = (
                f"<!doctype html><html><head><title>Page {i}</title></head><body><h1>Page {i}</h1>"
                f"<p>{paragraph}</p><ul>{links}</ul></body></html>"
            ).encode()
    headers = {"Cache-Control": "max-age=0, must-revalidate"}
    not_modified = [0]  # 304s answered, read (and reset) through /_304s

    async def page(request: web.Request) -> web.Response:
        body = bodies.get(request.path)
        if body is None:
            raise web.HTTPNotFound()
        etag = f'"{len(body)}-{hash(body) & 0xFFFFFFFF:x}"'
        if request.headers.get("If-None-Match") == etag:
            not_modified[0] += 1
            return web.Response(status=304, headers={"ETag": etag, **headers})
        return web.Response(
            body=body, content_type="text/html", charset="utf-8", headers={"ETag": etag, **headers}
        )

    async def count_304s(request: web.Request) -> web.Response:
        n, not_modified[0] = not_modified[0], 0
        return web.Response(text=str(n))

    async def root(request: web.Request) -> web.Response:
        site = request.match_info["site"]
        return web.Response(text=f'<a href="{page_path(site, 0)}">start</a>', content_type="text/html")

    app = web.Application()
    app.add_routes([web.get("/_304s", count_304s), web.get("/{site}/", root), web.get("/docs/{name}", page),
                    web.get("/p/{n}", page)])  # fmt: skip
    web.run_app(app, host=hosts, port=port, print=None, access_log=None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, deadline_s: float = 20.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the site did not start on port {port}")


def run_measured(argv: list[str], cwd: Path, timeout_s: float) -> tuple[float, int, int, str]:
    """Run ``argv``; return (wall seconds, peak RSS in KiB, exit status, stdout)."""
    out_path, err_path = cwd / "stdout.txt", cwd / "stderr.txt"
    start = time.monotonic()
    with out_path.open("wb") as out, err_path.open("wb") as err:  # files: a full pipe cannot stall it
        proc = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=err)
        deadline = start + timeout_s
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.01)
    wall = time.monotonic() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.stderr.write(err_path.read_text(errors="replace")[-2000:])
    return wall, int(usage.ru_maxrss), code, out_path.read_text(errors="replace")


def bench_crystalline(start: str, concurrency: int, work: Path, revisit: bool) -> tuple[int, float, int]:
    """A first crawl into a fresh data dir (pages stored), or a revisit pass over it (304s)."""
    data_dir = work / "crystalline"
    if not revisit:
        shutil.rmtree(data_dir, ignore_errors=True)
    argv = [
        sys.executable, "-m", "crystalline.crawler.command", "--start-url", start,
        "--data-dir", str(data_dir), "--delay", "0", "--concurrency", str(concurrency),
        "--per-host-concurrency", str(concurrency), "--allow-private-addresses", "--no-sitemaps",
        *(["--min-revisit", "0"] if revisit else []),
    ]  # fmt: skip
    wall, rss, code, _ = run_measured(argv, work, 600)
    if code != 0:
        raise RuntimeError(f"crystalline crawl exited {code}")
    if revisit:
        return server_304s(start), wall, rss
    stored = sum(1 for p in (data_dir / "spool").iterdir() if p.suffix == ".json")
    return stored, wall, rss


def bench_scrapy(start: str, concurrency: int, work: Path, cache: str) -> tuple[int, float, int]:
    """Scrapy without a cache (``cache`` "off"), filling its HTTP cache ("fill"), or revalidating
    every page from it ("revisit": conditional requests, 304s)."""
    spider = work / "site_spider.py"
    spider.write_text(SCRAPY_SPIDER, encoding="utf-8")
    out = work / "scrapy-items.jsonl"
    out.unlink(missing_ok=True)
    cache_dir = work / "scrapy-cache"
    if cache == "fill":
        shutil.rmtree(cache_dir, ignore_errors=True)
    cache_settings = [
        "-s", "HTTPCACHE_ENABLED=True", "-s", "HTTPCACHE_POLICY=scrapy.extensions.httpcache.RFC2616Policy",
        "-s", f"HTTPCACHE_DIR={cache_dir}",
    ] if cache != "off" else []  # fmt: skip
    scrapy = shutil.which("scrapy", path=str(Path(sys.executable).parent)) or "scrapy"
    argv = [
        scrapy, "runspider", str(spider), "-a", f"start={start}", "-O", f"{out}:jsonlines",
        "-s", f"CONCURRENT_REQUESTS={concurrency}", "-s", f"CONCURRENT_REQUESTS_PER_DOMAIN={concurrency}",
        "-s", "DOWNLOAD_DELAY=0", "-s", "AUTOTHROTTLE_ENABLED=False", "-s", "ROBOTSTXT_OBEY=True",
        "-s", "LOG_LEVEL=WARNING", "-s", "TELNETCONSOLE_ENABLED=False", *cache_settings,
    ]  # fmt: skip
    wall, rss, code, _ = run_measured(argv, work, 600)
    if code != 0:
        raise RuntimeError(f"scrapy exited {code}")
    if cache == "revisit":
        return server_304s(start), wall, rss
    stored = sum(1 for _ in out.open(encoding="utf-8"))  # like crystalline's, "/" included
    return stored, wall, rss


def server_304s(start: str) -> int:
    """The 304s the site answered since the last call (the revisit pass's figure, as the server
    saw it, the same way for both crawlers)."""
    origin = "/".join(start.split("/")[:3])
    with urllib.request.urlopen(origin + "/_304s", timeout=10) as reply:
        return int(reply.read())


def row(name: str, count: int, wall: float, rss_kib: int) -> None:
    print(f"{name:<30} {count:>6} {wall:>8.2f} {count / wall:>8.1f} {rss_kib / 1024:>12.1f}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1, help="alternating runs of each crawler")
    parser.add_argument("--site", choices=("words", "numbered", "both"), default="both")
    parser.add_argument("--no-revisit", action="store_true", help="skip the revisit pass")
    parser.add_argument("--database", help="postgresql://...: bench the shared frontier (see above)")
    parser.add_argument("--hosts", type=int, default=6, help="with --database: loopback hosts served")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--serve-hosts", default="127.0.0.1", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.pages, args.serve_hosts.split(","))
        return 0
    if args.database:
        from crawl_cluster import bench_cluster

        return bench_cluster(args, Path(__file__))
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--pages", str(args.pages)])
    sites = ("words", "numbered") if args.site == "both" else (args.site,)
    try:
        wait_for_port(port)
        base = f"http://127.0.0.1:{port}"
        print(f"sites: {args.pages} pages each on {base}; concurrency {args.concurrency}; politeness off; "
              f"{os.cpu_count()} cores")  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="crawl-bench-") as tmp:
            work = Path(tmp)
            for site in sites:
                start = f"{base}/{site}/"
                print(f"\n{site} site ({page_path(site, 0)} ...)")
                print(f"{'crawler':<30} {'pages':>6} {'seconds':>8} {'pages/s':>8} {'peak RSS MB':>12}")
                for _ in range(args.rounds):
                    row("crystalline", *bench_crystalline(start, args.concurrency, work, revisit=False))
                    row("scrapy", *bench_scrapy(start, args.concurrency, work, cache="off"))
                if args.no_revisit:
                    continue
                print(f"{'revisit pass':<30} {'304s':>6} {'seconds':>8} {'304s/s':>8} {'peak RSS MB':>12}")
                for _ in range(args.rounds):
                    server_304s(start)  # from zero
                    row(
                        "crystalline --min-revisit 0",
                        *bench_crystalline(start, args.concurrency, work, revisit=True),
                    )
                    filled = bench_scrapy(start, args.concurrency, work, cache="fill")
                    server_304s(start)
                    row(
                        "scrapy (RFC 2616 cache, revalidating)",
                        *bench_scrapy(start, args.concurrency, work, cache="revisit"),
                    )
                    print(f"  (scrapy filling its cache first: {filled[0]} pages in {filled[1]:.2f} s)")
    finally:
        server.terminate()
        server.wait(10)
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"(this driver: {self_rss / 1024:.0f} MB peak RSS; the site server runs in its own process)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
