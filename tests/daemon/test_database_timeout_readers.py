"""``[crawl]``/``[ingest] database-timeout-s`` reach the daemon's readers of ingest's
registry on PostgreSQL that ``tests/pkg/test_postgres_deadline.py`` does not build: the crawl's
reader of ingest's verdicts (built by the supervisor's crawl service, on the crawl's deadline)
and control's surprise meter (built by the control process from the spec the supervisor hands
it, on ingest's deadline), and the dashboard's reader, on ingest's deadline but at most 2 s.
Each is read from its real connection (``SHOW statement_timeout``)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import pytest

from crystalline.daemon import config
from crystalline.daemon.control_link import ControlLink
from crystalline.daemon.control_process import Control
from crystalline.daemon.supervisor import Supervisor
from crystalline.ingest.registry_pg import open_registry

pytest.importorskip("psycopg")


class NoData:
    """Control's data, never read here: only its surprise meter's registry is opened."""

    readers = 1

    def close_ring(self) -> None:
        pass


def settings_for(pg_url: str, state_dir: Path, ingest_s: str = "3.5") -> config.Settings:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    argv = ["--state-dir", str(state_dir), "--database", pg_url]
    argv += ["--crawl-database-timeout-s", "2.5", "--ingest-database-timeout-s", ingest_s]
    return config.resolve(parser.parse_args(argv), {})


def show_timeout(db: Any) -> str:
    return str(db.execute("SHOW statement_timeout").fetchone()[0])


@pytest.mark.timeout(120)
def test_the_crawls_reader_of_ingests_verdicts_gets_the_crawls_deadline(pg_url: str, tmp_path: Path) -> None:
    supervisor = Supervisor(settings_for(pg_url, tmp_path / "state"))
    crawler = supervisor.crawl._crawler()  # as the crawl thread builds it
    try:
        feedback = crawler.feedback
        assert feedback is not None
        assert feedback.since(0) == ([], 0)  # opens its connection; no verdict recorded yet
        assert show_timeout(feedback._pg) == "2500ms"
    finally:
        crawler.close()  # closes the reader too


@pytest.mark.timeout(120)
def test_controls_surprise_meter_gets_ingests_deadline(pg_url: str, tmp_path: Path) -> None:
    settings = settings_for(pg_url, tmp_path / "state")
    link = ControlLink(settings, f"ipc://{tmp_path / 'control.sock'}")
    asyncio.run(link.channel.close())  # only its spec is wanted here
    control = Control(link.spec(), lambda _spec: NoData())  # type: ignore[arg-type, return-value]
    try:
        control.surprise.open()
        assert control.surprise.error is None
        assert control.surprise.registry is not None
        assert show_timeout(control.surprise.registry.db) == "3500ms"
    finally:
        control.surprise.close()
        control.channel.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("ingest_s", "shown"), [("3.5", "2s"), ("1", "1s")])
def test_the_dashboards_reader_gets_ingests_deadline_but_at_most_2_s(
    pg_url: str, tmp_path: Path, ingest_s: str, shown: str
) -> None:
    """Its reads must not hold the dashboard's stop (5 s for a read in flight): 2 s at most, as
    postgres.READER_STATEMENT_TIMEOUT_S; a shorter setting applies to it too."""
    open_registry(pg_url, tmp_path / "unused.sqlite3").close()  # ingest created the schema
    reader = Supervisor(settings_for(pg_url, tmp_path / "state", ingest_s)).dashboard_registry()()
    try:
        assert show_timeout(reader.db) == shown
    finally:
        reader.close()
