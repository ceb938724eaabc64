"""A real `crystalline run --database postgresql://...` (issue 17): the daemon's frontier and
registry are the database's (nothing of either in the state directory), it crawls and ingests
through them, and status says where they live and that the database answers."""

from __future__ import annotations

from pathlib import Path

import pytest
from _dashboard_daemon import running_daemon
from _local_site import prose
from test_daemon_revisits import Site, wait_for

from crystalline.ingest.registry_pg import PgRegistry


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_the_daemon_crawls_and_ingests_through_postgresql(tmp_path: Path, pg_url: str) -> None:
    site = Site()
    try:
        args = ("--database", pg_url, "--crawl-start-url", site.url + "/p/0",
                "--crawl-allow-private-addresses", "--crawl-min-delay", "0",
                "--crawl-no-sitemaps")  # fmt: skip
        with running_daemon(tmp_path, {"seed.txt": prose(999)}, *args, crawl=True) as daemon:
            data = wait_for(
                daemon["run"], "5 pages and the seed ingested", lambda d: d["ingest"].get("documents", 0) >= 6
            )
        crawler, ingest = data["crawler"]["database"], data["ingest"]["database"]
        assert (crawler["kind"], crawler["available"], crawler["crawl"]) == ("postgresql", True, "running")
        assert (ingest["kind"], ingest["available"]) == ("postgresql", True)
        assert pg_url.rsplit("/", 1)[1] in crawler["database"]
        assert not (tmp_path / "s" / "crawl" / "frontier.sqlite").exists()
        assert not (tmp_path / "s" / "ingest" / "registry.sqlite3").exists()
        registry = PgRegistry(pg_url)
        try:
            assert registry.counts()["done"] >= 6
        finally:
            registry.close()
    finally:
        site.close()
