"""The database's statement deadline is a setting (``[crawl]``/``[ingest] database-timeout-s``,
``crystalline.postgres``): the server cancels a statement that runs past it, the client gives up
on a reply ``client_deadline_s`` after it (the network cut with the TCP connection still open),
and the frontier, the registry (writer and reader) and the crawl's reader of ingest's verdicts
open their connections with it."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from crystalline.crawler.crawl import Crawler
from crystalline.crawler.feedback import IngestFeedback
from crystalline.crawler.frontier_pg import open_frontier
from crystalline.crawler.settings import CrawlSettings
from crystalline.ingest.ingestor import Ingestor
from crystalline.ingest.registry_pg import open_registry
from crystalline.ingest.settings import IngestSettings
from crystalline.postgres import Database, DatabaseUnavailable
from crystalline.statement_deadline import check_statement_timeout
from crystalline.tokens.tokenizer import load_tokenizer
from tests._postgres import PgCluster
from tests._tcp_proxy import CuttableProxy
from tests.crawler._loopback import MemorySink

psycopg = pytest.importorskip("psycopg")


def show_timeout(db: Any) -> str:
    return str(db.execute("SHOW statement_timeout").fetchone()[0])


@pytest.mark.timeout(60)
def test_the_server_cancels_a_statement_that_runs_past_the_set_deadline(pg_url: str) -> None:
    short = Database(pg_url, "deadline", max_size=1, statement_timeout_s=1.0)
    try:
        assert show_timeout(short) == "1s"
        with pytest.raises(DatabaseUnavailable) as err:
            short.execute("SELECT pg_sleep(2)")
        # the server's cancel (not the client's cut: the reply came), one line
        assert isinstance(err.value.__cause__, psycopg.errors.QueryCanceled), repr(err.value.__cause__)
        assert "canceling statement due to statement timeout" in str(err.value)
        assert short.execute("SELECT 1").fetchone() == (1,)  # the connection serves on
    finally:
        short.close()
    default = Database(pg_url, "deadline", max_size=1)  # 15 s: the same statement ends
    try:
        assert show_timeout(default) == "15s"
        assert default.execute("SELECT pg_sleep(2)").fetchone() == ("",)
    finally:
        default.close()


@pytest.mark.timeout(120)
def test_the_client_gives_up_on_a_cut_link_after_the_set_deadline_and_not_the_default(
    pg_cluster: PgCluster, pg_url: str
) -> None:
    """Two clients behind one proxy, 1 s and the default 15 s: once the link is cut, the 1 s one
    gives up (its socket shut: DatabaseUnavailable, no server cancel) while the 15 s one still
    waits, whose statement then ends once the link is back."""
    proxy = CuttableProxy(pg_cluster.port)
    via_proxy = pg_url.replace(f":{pg_cluster.port}/", f":{proxy.port}/")
    short = Database(via_proxy, "deadline", max_size=1, statement_timeout_s=1.0)
    default = Database(via_proxy, "deadline", max_size=1)
    outcome: dict[str, Any] = {}

    def ask_default() -> None:
        try:
            outcome["default"] = default.execute("SELECT 7").fetchone()
        except Exception as exc:  # the assertion below shows it
            outcome["default"] = exc

    try:
        assert short.execute("SELECT 1").fetchone() == (1,) and default.execute("SELECT 1").fetchone() == (1,)
        proxy.cut()
        waiting = threading.Thread(target=ask_default, daemon=True)
        waiting.start()
        with pytest.raises(DatabaseUnavailable) as err:
            short.execute("SELECT 1")
        assert not isinstance(err.value.__cause__, psycopg.errors.QueryCanceled), repr(err.value.__cause__)
        assert "\n" not in str(err.value)
        assert waiting.is_alive() and "default" not in outcome  # the default's deadline is not over
        proxy.restore()
        waiting.join(timeout=60)
        assert outcome["default"] == (7,)
    finally:
        proxy.restore()
        short.close()
        default.close()
        proxy.close()


@pytest.mark.timeout(60)
def test_the_frontier_the_registry_and_the_feedback_reader_take_the_setting(
    pg_url: str, tmp_path: Path
) -> None:
    frontier = open_frontier(pg_url, tmp_path / "frontier.sqlite", statement_timeout_s=2.5)
    try:
        assert show_timeout(frontier._db) == "2500ms"  # type: ignore[attr-defined]
    finally:
        frontier.close()
    registry = open_registry(pg_url, tmp_path / "registry.sqlite3", statement_timeout_s=2.5)
    try:
        assert show_timeout(registry.db) == "2500ms"
    finally:
        registry.close()
    # a reader keeps its shorter 2 s, and a shorter setting still
    for setting, shown in ((2.5, "2s"), (1.0, "1s")):
        reader = open_registry(
            pg_url, tmp_path / "registry.sqlite3", read_only=True, statement_timeout_s=setting
        )
        try:
            assert show_timeout(reader.db) == shown
        finally:
            reader.close()
    feedback = IngestFeedback(tmp_path / "registry.sqlite3", pg_url, statement_timeout_s=2.5)
    assert feedback.since(0) == ([], 0)  # its connection is opened on the first read
    try:
        assert show_timeout(feedback._pg) == "2500ms"
    finally:
        feedback.close()


@pytest.mark.timeout(120)
def test_the_crawls_and_ingests_settings_reach_their_databases(pg_url: str, tmp_path: Path) -> None:
    """``[crawl] database-timeout-s`` is the crawler's frontier's (the crawl CLI and the daemon's
    crawl build a Crawler from their settings), ``[ingest]``'s the ingestor's registry's."""
    settings = CrawlSettings(data_dir=tmp_path / "crawl", database=pg_url, database_timeout_s=2.5)
    crawler = Crawler(settings, MemorySink())
    try:
        assert show_timeout(crawler.frontier._db) == "2500ms"  # type: ignore[attr-defined]
    finally:
        crawler.close()
    ingest = IngestSettings(database=pg_url, database_timeout_s=3.5)
    with Ingestor(ingest, tmp_path / "ingest", load_tokenizer("bytes")) as ingestor:
        assert show_timeout(ingestor.registry.db) == "3500ms"


@pytest.mark.parametrize("value", [0.0, 0.5, 60.5, float("inf"), float("nan")])
def test_a_deadline_out_of_bounds_is_one_line(value: float) -> None:
    with pytest.raises(ValueError, match=r"^database-timeout-s must be at least 1 and at most 60 s, got "):
        check_statement_timeout(value)
