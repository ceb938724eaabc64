"""Three crawler processes on one PostgreSQL frontier (issue 17), against local sites on three
loopback addresses that log each request with the server's clock: no page is fetched twice
(but those in flight at a kill), a host's requests keep its delay across machines, a SIGKILLed
crawler's hosts are finished by the others once its leases run out, and a restart of
PostgreSQL or a network cut to it mid-crawl is waited out with nothing fetched twice or lost."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from _wait import until
from aiohttp import web

from crystalline.statement_deadline import STATEMENT_TIMEOUT_S, client_deadline_s
from tests._local_site import prose, start_site
from tests._postgres import PgCluster
from tests._tcp_proxy import CuttableProxy

HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
PAGES = 12  # per host: / links to /p/0 ... /p/11
MIN_DELAY = 0.4
# the crawlers' statement deadline under a network cut (--database-timeout-s; 15 s by default)
CUT_STATEMENT_TIMEOUT_S = 3.0


class Sites:
    """The three sites, served from a thread of their own; ``log`` holds (host, path, time)."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, float]] = []
        self.bases: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._runners: list[web.AppRunner] = []
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)

    async def _start(self) -> None:
        for host in HOSTS:
            runner, base = await start_site(self._routes(host), host=host)
            self._runners.append(runner)
            self.bases.append(base)

    def _routes(self, host: str) -> list[web.RouteDef]:
        async def page(request: web.Request) -> web.Response:
            self.log.append((host, request.path, time.time()))
            await asyncio.sleep(0.05)
            if request.path == "/":
                links = "".join(f'<a href="/p/{i}">page {i}</a> ' for i in range(PAGES))
                body = f"<html><body><p>{prose(hash(host) % 1000)}</p>{links}</body></html>"
            else:
                seed = int(request.path.rsplit("/", 1)[1]) + 100 * HOSTS.index(host)
                body = f"<html><body><h1>{request.path}</h1><p>{prose(seed)}</p></body></html>"
            return web.Response(text=body, content_type="text/html")

        async def robots(request: web.Request) -> web.Response:
            return web.Response(text="User-agent: *\nAllow: /\n")

        return [web.get("/robots.txt", robots), web.get("/", page), web.get("/p/{n}", page)]

    def pages(self) -> Counter[tuple[str, str]]:
        return Counter((h, p) for h, p, _ in list(self.log))

    def close(self) -> None:
        async def stop() -> None:
            for runner in self._runners:
                await runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


@pytest.fixture
def sites() -> Iterator[Sites]:
    s = Sites()
    yield s
    s.close()


def _crawler(
    tmp: Path,
    i: int,
    url: str,
    starts: list[str],
    lease: float,
    statement_timeout_s: float = STATEMENT_TIMEOUT_S,
) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "crystalline.crawler.command", "--database", url, "--data-dir",
            str(tmp / f"machine{i}"), "--allow-private-addresses", "--min-delay", str(MIN_DELAY),
            "--no-autothrottle", "--host-lease", str(lease), "--concurrency", "4",
            "--no-sitemaps", "--database-timeout-s", str(statement_timeout_s)]  # fmt: skip
    for start in starts:
        argv += ["--start-url", start]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    log = open(tmp / f"machine{i}.log", "wb")  # noqa: SIM115  (closed with the process)
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)


def _wait(procs: list[subprocess.Popen[bytes]], timeout: float, tmp: Path) -> None:
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            logs = "\n".join((tmp / f"machine{i}.log").read_text(errors="replace")[-2000:] for i in range(3))
            pytest.fail(f"crawlers did not finish in {timeout} s:\n{logs}")


def _all_pages() -> set[tuple[str, str]]:
    return {(h, "/") for h in HOSTS} | {(h, f"/p/{i}") for h in HOSTS for i in range(PAGES)}


def _gaps_kept(sites: Sites) -> None:
    """Each host's requests (server clock) at least MIN_DELAY apart, less the network's jitter."""
    for host in HOSTS:
        times = sorted(t for h, p, t in sites.log if h == host)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert min(gaps) >= MIN_DELAY - 0.05, (host, gaps)


def _until_fetched(sites: Sites, pages: int) -> None:
    """Until the sites answered ``pages`` requests (mid-crawl), two minutes at most."""

    def answered() -> int:
        return sum(sites.pages().values())

    until(
        lambda: answered() >= pages, lambda: f"the sites answered {answered()} of {pages} requests", 120, 0.05
    )


def _paused_for(tmp: Path) -> int:
    """How many of the three crawlers logged that they paused for the database."""
    return sum("crawl paused" in (tmp / f"machine{i}.log").read_text(errors="replace") for i in range(3))


def _each_page_once_after_a_pause(tmp: Path, procs: list[subprocess.Popen[bytes]], sites: Sites) -> None:
    """Every page fetched once, and the crawlers said they paused for the database and resumed."""
    _check_stdout_sanity(tmp, procs)
    fetched = sites.pages()
    assert set(fetched) == _all_pages()
    assert [k for k, n in fetched.items() if n > 1] == []
    logs = "".join((tmp / f"machine{i}.log").read_text(errors="replace") for i in range(3))
    assert "crawl paused" in logs and "crawl resumed" in logs


def _check_stdout_sanity(tmp: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    for i, proc in enumerate(procs):
        assert proc.returncode in (0, -signal.SIGKILL), (tmp / f"machine{i}.log").read_text(errors="replace")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_three_crawlers_share_one_frontier_fetch_each_page_once_and_keep_host_gaps(
    tmp_path: Path, pg_url: str, sites: Sites
) -> None:
    procs = [_crawler(tmp_path, i, pg_url, sites.bases, lease=5.0) for i in range(3)]
    _wait(procs, 240, tmp_path)
    _check_stdout_sanity(tmp_path, procs)
    fetched = sites.pages()
    assert set(fetched) == _all_pages()
    assert [k for k, n in fetched.items() if n > 1] == []
    _gaps_kept(sites)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_killed_crawlers_hosts_are_finished_by_the_others(
    tmp_path: Path, pg_url: str, sites: Sites
) -> None:
    procs = [_crawler(tmp_path, i, pg_url, sites.bases, lease=3.0) for i in range(3)]
    _until_fetched(sites, 6)
    procs[0].kill()  # SIGKILL: its leases run out, its in-flight URLs go back to the queue
    _wait(procs, 240, tmp_path)
    _check_stdout_sanity(tmp_path, procs)
    fetched = sites.pages()
    assert set(fetched) == _all_pages()
    twice = [k for k, n in fetched.items() if n > 1]
    assert len(twice) <= 4 * len(HOSTS)  # at most what it had in flight (its concurrency, per host)
    assert all(n == 2 for k, n in fetched.items() if n > 1)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_postgresql_restart_mid_crawl_is_waited_out(
    tmp_path: Path, pg_cluster: PgCluster, pg_url: str, sites: Sites
) -> None:
    procs = [_crawler(tmp_path, i, pg_url, sites.bases, lease=20.0) for i in range(3)]
    _until_fetched(sites, 8)
    pg_cluster.stop()  # down for a few seconds (the crawlers' requests in flight go on)
    time.sleep(3)
    pg_cluster.start()
    _wait(procs, 240, tmp_path)
    _each_page_once_after_a_pause(tmp_path, procs, sites)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_network_cut_to_the_database_is_waited_out(
    tmp_path: Path, pg_cluster: PgCluster, pg_url: str, sites: Sites
) -> None:
    """The crawlers reach PostgreSQL through a proxy whose link is cut for longer than a
    statement's deadline: their blocked statements are cut off, they pause and report it, and
    resume when the link is back, with nothing fetched twice or lost."""
    proxy = CuttableProxy(pg_cluster.port)
    try:
        via_proxy = pg_url.replace(f":{pg_cluster.port}/", f":{proxy.port}/")
        # a short statement deadline, so that the cut is waited out sooner
        procs = [
            _crawler(tmp_path, i, via_proxy, sites.bases, 120.0, CUT_STATEMENT_TIMEOUT_S) for i in range(3)
        ]
        _until_fetched(sites, 8)
        proxy.cut()
        cut_at = time.monotonic()
        # cut until every crawler said it paused, and past a statement's deadline (the client's,
        # 5 s, checked every 0.5 s): the statements blocked at the cut were cut off
        until(
            lambda: (
                _paused_for(tmp_path) == 3
                and time.monotonic() - cut_at > client_deadline_s(CUT_STATEMENT_TIMEOUT_S) + 1
            ),
            lambda: f"{_paused_for(tmp_path)} of 3 crawlers said they paused",
            120,
            0.2,
        )
        proxy.restore()
        _wait(procs, 240, tmp_path)
    finally:
        proxy.close()
    _each_page_once_after_a_pause(tmp_path, procs, sites)
