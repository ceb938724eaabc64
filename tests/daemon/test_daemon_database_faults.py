"""A real `crystalline run --database` whose database is away (issue 17's leftovers): started
before its database, the daemon waits (status and health: "database unreachable (why)"), stops at
once on SIGTERM, and trains once the database answers; with the network to the database cut, the
status socket still answers within its normal deadline (the frontier's calls wait in the crawl's
own thread, not on the supervisor's loop)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from _daemon_process import daemon_status, group_survivors, start_small_daemon, wait_daemon
from _dashboard_daemon import running_daemon
from _local_site import prose
from _wait import until
from test_daemon_revisits import Site, wait_for

from crystalline.daemon.status_client import request
from crystalline.statement_deadline import client_deadline_s
from tests._postgres import PgCluster, free_port
from tests._tcp_proxy import CuttableProxy

pytestmark = pytest.mark.slow
# The crawl's statement deadline in the cut test: the client gives up 2 s after it (11 s), longer
# than the status request's 10 s, so that a status that waits on the database times out (with
# 3 s, a status read of the frontier on the supervisor's loop passed; with 9 s it times out).
CUT_TIMEOUT_S = 9.0
# how long the network to the database stays cut: past the longest a frontier call waits (a
# statement's deadline on the client, 11 s), with 5 s for the call in hand at the cut to start.
# Once the network is back, the idle crawl says so at its first retry: status's reads found the
# database away and started a pass that retries it (not at the next idle pass, up to 30 s later).
CUT_S = client_deadline_s(CUT_TIMEOUT_S) + 5.0


def poll(proc: subprocess.Popen[bytes], run: Path, what: str, test: Callable[[dict[str, Any]], bool],
         timeout_s: float = 120.0) -> dict[str, Any]:  # fmt: skip
    """The first status of the daemon that passes ``test`` (the daemon must stay up)."""
    return wait_daemon(
        run, proc, test, f"no {what}", timeout_s, 0.3, lambda d: f"{d.get('health')} {d.get('ingest')}"
    )


def unreachable(data: dict[str, Any]) -> bool:
    return any(r.startswith("database unreachable (") for r in data["health"]["reasons"])


@contextmanager
def daemon_before_its_database(
    root: Path, url: str, *extra: str, crawl: bool = False, option: str = "--database"
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A small daemon (2 workers, no crawl unless ``crawl``) on the database at ``url`` (given
    with ``option``: the crawl's and the registry's, or one of them), where nothing listens yet:
    yields once its status says the database is unreachable; SIGTERM at the end."""
    (root / "state" / "inbox").mkdir(parents=True)
    for i in range(3):
        (root / "state" / "inbox" / f"doc-{i}.txt").write_text(prose(i), encoding="utf-8")
    proc, notify = start_small_daemon(root, [option, url, *extra], crawl=crawl)
    try:
        data = poll(proc, root / "run", "'database unreachable' in health", unreachable)
        assert data["health"]["verdict"] == "degraded" and data["state"] == "starting"
        assert "Connection refused" in data["database"]["error"], data["database"]
        assert "\n" not in data["database"]["error"]
        assert data["training"]["step"] == 0 and not data["ingest"].get("documents")
        yield proc, root / "run"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        notify.close()
        assert group_survivors(proc.pid) == [], "the daemon left processes behind"


@pytest.mark.timeout(300)
def test_a_daemon_started_before_its_database_waits_for_it_then_trains(
    tmp_path: Path, pg_cluster: PgCluster, pg_url: str
) -> None:
    port = free_port()
    url = pg_url.replace(f":{pg_cluster.port}/", f":{port}/")
    # the stack is closed after the daemon stopped: it stops with its database answering
    with ExitStack() as after_the_daemon, daemon_before_its_database(tmp_path, url) as (proc, run):
        proxy = CuttableProxy(pg_cluster.port, port=port)  # the database answers from now on
        after_the_daemon.callback(proxy.close)
        data = poll(proc, run, "documents ingested and a step trained",
                    lambda d: d["ingest"].get("documents", 0) >= 1 and d["training"]["step"] > 0,
                    timeout_s=240.0)  # fmt: skip
        assert not unreachable(data) and "database" not in data
        assert data["ingest"]["database"]["available"] is True


@pytest.mark.timeout(300)
@pytest.mark.parametrize("option", ["--database", "--crawl-database"])
def test_add_url_while_waiting_for_the_database_is_refused_and_the_crawl_starts_without_backoff(
    tmp_path: Path, pg_cluster: PgCluster, pg_url: str, option: str
) -> None:
    """add-url before the daemon started is one line and starts nothing: once the database
    answers, the crawl runs at once (no restart, no backoff earned while the database was away).
    ``--crawl-database``: the crawl's database alone (the registry in SQLite) is waited for the
    same way as the registry's."""
    port = free_port()
    url = pg_url.replace(f":{pg_cluster.port}/", f":{port}/")
    sock = tmp_path / "run" / "crystalline.sock"
    site = Site()
    add = {"cmd": "add-url", "url": site.url + "/p/0"}
    args = ("--crawl-allow-private-addresses", "--crawl-min-delay", "0", "--crawl-no-sitemaps")
    # the stack is closed after the daemon stopped: it stops with its database answering
    with ExitStack() as after_the_daemon:
        after_the_daemon.callback(site.close)
        with daemon_before_its_database(tmp_path, url, *args, crawl=True, option=option) as (proc, run):
            reply = request(sock, add)
            assert reply["ok"] is False and reply["error"].startswith("the daemon is starting: "), reply
            assert "\n" not in reply["error"]
            assert daemon_status(run, proc)["crawler"]["state"] == "idle"  # no crawl thread, no backoff
            proxy = CuttableProxy(pg_cluster.port, port=port)  # the database answers from now on
            after_the_daemon.callback(proxy.close)
            data = poll(proc, run, "the daemon running", lambda d: d["state"] == "running")
            assert not unreachable(data) and "database" not in data
            assert request(sock, add) == {"ok": True, "data": {"url": add["url"], "queued": True}}
            data = poll(proc, run, "the page fetched", lambda d: d["crawler"].get("fetched", 0) >= 1)
            crawler = data["crawler"]
            assert crawler["state"] == "running" and crawler["restarts"] == 0, crawler
            assert "restart_in_s" not in crawler and "error" not in crawler, crawler
            assert crawler["database"]["available"] is True, crawler
            registry = "sqlite" if option == "--crawl-database" else "postgresql"
            assert data["ingest"]["database"]["kind"] == registry, data["ingest"]


@pytest.mark.timeout(120)
def test_sigterm_while_waiting_for_the_database_stops_at_once(tmp_path: Path) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    with daemon_before_its_database(tmp_path, url) as (proc, _run):
        proc.send_signal(signal.SIGTERM)
        # each try fails at once (connection refused), and the backoff wait ends on the signal
        assert proc.wait(timeout=20) == 0


@pytest.mark.timeout(480)
def test_status_answers_while_the_network_to_the_database_is_cut(
    tmp_path: Path, pg_cluster: PgCluster, pg_url: str
) -> None:
    proxy = CuttableProxy(pg_cluster.port)
    url = pg_url.replace(f":{pg_cluster.port}/", f":{proxy.port}/")
    site = Site()
    try:
        args = ("--database", url, "--crawl-start-url", site.url + "/p/0", "--crawl-allow-private-addresses",
                "--crawl-min-delay", "0", "--crawl-no-sitemaps", "--workers", "2",
                "--crawl-database-timeout-s", str(CUT_TIMEOUT_S))  # fmt: skip
        with running_daemon(tmp_path, {"seed.txt": prose(999)}, *args, crawl=True) as daemon:
            run = daemon["run"]
            wait_for(run, "the site crawled and ingested", lambda d: d["ingest"].get("documents", 0) >= 6)
            proxy.cut()
            # status asked every half second for longer than a statement's deadline (CUT_S): each
            # request has the status client's normal deadline (10 s), and each one answers
            cut_at = time.monotonic()
            seen_down = False

            def answered_through_the_cut_and_seen_down() -> bool:  # a request that fails ends the test
                nonlocal seen_down
                data = request(run / "crystalline.sock", {"cmd": "status"})["data"]
                seen_down = seen_down or data["crawler"]["database"]["available"] is False
                return seen_down and time.monotonic() - cut_at >= CUT_S

            until(answered_through_the_cut_and_seen_down, "status never showed the database away", 120, 0.5)
            proxy.restore()
            data = wait_for(run, "the crawl's database back",
                            lambda d: d["crawler"]["database"]["available"] is True
                            and d["crawler"]["database"]["crawl"] == "running")  # fmt: skip
            assert data["crawler"]["stored_total"] >= 5
    finally:
        site.close()
        proxy.close()
