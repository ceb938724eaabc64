"""Crawl speed: ``crystalline crawl`` against a plain Scrapy spider on the same local site, same run.

A 2000-page site (about 3 KB of HTML and 10 links per page) is served by an aiohttp server in its
own process on 127.0.0.1. Each crawler runs as a subprocess with politeness off (no delay, no
AutoThrottle, robots.txt obeyed), 16 requests in flight, and must fetch every page. Reported: pages
per second over the subprocess's wall time (interpreter start included for both) and its peak RSS.

crystalline does more per page than the Scrapy spider: each page is written durably to the spool
(two fsynced files and a directory fsync) and its URL state to SQLite; Scrapy keeps its queue and
seen set in memory and stores nothing. Needs Scrapy (``pip install scrapy``, the ``bench`` extra).

    .venv/bin/python bench/crawl_speed.py [--pages 2000] [--concurrency 16] [--rounds 1]
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


def serve(port: int, pages: int) -> None:
    """The site: ``/`` links to the first page; every page links to the next and 9 others."""
    from aiohttp import web

    rng = random.Random(1)
    paragraph = " ".join(rng.choice(["lorem", "ipsum", "crawl", "page", "text", "data"]) for _ in range(400))
    bodies = {}
    for i in range(pages):
        targets = [(i + 1) % pages, *(rng.randrange(pages) for _ in range(9))]
        links = "".join(f'<li><a href="/docs/{slug(t)}">page {t}</a></li>' for t in targets)
        bodies[slug(i)] = (
            f"<!doctype html><html><head><title>Page {i}</title></head><body><h1>Page {i}</h1>"
            f"<p>{paragraph}</p><ul>{links}</ul></body></html>"
        ).encode()

    async def page(request: web.Request) -> web.Response:
        body = bodies.get(request.match_info["name"])
        if body is None:
            raise web.HTTPNotFound()
        return web.Response(body=body, content_type="text/html", charset="utf-8")

    async def root(request: web.Request) -> web.Response:
        return web.Response(text=f'<a href="/docs/{slug(0)}">start</a>', content_type="text/html")

    app = web.Application()
    app.add_routes([web.get("/", root), web.get("/docs/{name}", page)])
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


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


def run_measured(argv: list[str], cwd: Path, timeout_s: float) -> tuple[float, int, int]:
    """Run ``argv``; return (wall seconds, peak RSS in KiB, exit status)."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 and proc.stderr is not None:
        sys.stderr.write(proc.stderr.read().decode(errors="replace")[-2000:])
    return wall, int(usage.ru_maxrss), proc.returncode


def bench_crystalline(base: str, pages: int, concurrency: int, work: Path) -> tuple[int, float, int]:
    data_dir = work / "crystalline"
    shutil.rmtree(data_dir, ignore_errors=True)
    argv = [
        sys.executable, "-m", "crystalline.crawler.command", "--start-url", base + "/",
        "--data-dir", str(data_dir), "--delay", "0", "--concurrency", str(concurrency),
        "--per-host-concurrency", str(concurrency), "--allow-private-addresses",
    ]  # fmt: skip
    wall, rss, code = run_measured(argv, work, 600)
    if code != 0:
        raise RuntimeError(f"crystalline crawl exited {code}")
    stored = sum(1 for p in (data_dir / "spool").iterdir() if p.suffix == ".json")
    return stored, wall, rss


def bench_scrapy(base: str, pages: int, concurrency: int, work: Path) -> tuple[int, float, int]:
    spider = work / "site_spider.py"
    spider.write_text(SCRAPY_SPIDER, encoding="utf-8")
    out = work / "scrapy-items.jsonl"
    out.unlink(missing_ok=True)
    scrapy = shutil.which("scrapy", path=str(Path(sys.executable).parent)) or "scrapy"
    argv = [
        scrapy, "runspider", str(spider), "-a", f"start={base}/", "-O", f"{out}:jsonlines",
        "-s", f"CONCURRENT_REQUESTS={concurrency}", "-s", f"CONCURRENT_REQUESTS_PER_DOMAIN={concurrency}",
        "-s", "DOWNLOAD_DELAY=0", "-s", "AUTOTHROTTLE_ENABLED=False", "-s", "ROBOTSTXT_OBEY=True",
        "-s", "LOG_LEVEL=WARNING", "-s", "TELNETCONSOLE_ENABLED=False",
    ]  # fmt: skip
    wall, rss, code = run_measured(argv, work, 600)
    if code != 0:
        raise RuntimeError(f"scrapy exited {code}")
    stored = sum(1 for _ in out.open(encoding="utf-8"))  # like crystalline's, "/" included
    return stored, wall, rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1, help="alternating runs of each crawler")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.pages)
        return 0
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--pages", str(args.pages)])
    try:
        wait_for_port(port)
        base = f"http://127.0.0.1:{port}"
        print(f"site: {args.pages} pages on {base}; concurrency {args.concurrency}; politeness off; "
              f"{os.cpu_count()} cores")  # fmt: skip
        print(f"{'crawler':<12} {'pages':>6} {'seconds':>8} {'pages/s':>8} {'peak RSS MB':>12}")
        with tempfile.TemporaryDirectory(prefix="crawl-bench-") as tmp:
            work = Path(tmp)
            for _ in range(args.rounds):
                for name, bench in (("crystalline", bench_crystalline), ("scrapy", bench_scrapy)):
                    stored, wall, rss_kib = bench(base, args.pages, args.concurrency, work)
                    rate, rss_mb = stored / wall, rss_kib / 1024
                    print(f"{name:<12} {stored:>6} {wall:>8.2f} {rate:>8.1f} {rss_mb:>12.1f}", flush=True)
    finally:
        server.terminate()
        server.wait(10)
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"(this driver: {self_rss / 1024:.0f} MB peak RSS; the site server runs in its own process)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
