"""Ingest on a PostgreSQL registry (issue 17): the same documents dropped on two machines are
stored once in the cluster, the other copy recorded as a duplicate of it; a stopped database
is waited out with nothing lost."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from crystalline.ingest.drop_folder import DropFolder
from crystalline.ingest.ingestor import Ingestor
from crystalline.ingest.registry_pg import PgRegistry
from crystalline.postgres import DatabaseUnavailable
from crystalline.tokens.tokenizer import load_tokenizer
from tests._postgres import PgCluster
from tests.ingest.test_drop_ingest import SETTINGS, drain, stored_texts, text


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_same_documents_ingested_on_two_machines_are_kept_once(tmp_path: Path, pg_url: str) -> None:
    shared = [text(seed) for seed in range(8)]
    procs = []
    for machine in range(2):
        inbox = tmp_path / f"inbox{machine}"
        inbox.mkdir()
        for i, body in enumerate(shared):
            (inbox / f"shared-{i}.txt").write_text(body, encoding="utf-8")
        for i in range(2):
            (inbox / f"own-{i}.txt").write_text(text(100 + 10 * machine + i), encoding="utf-8")
        argv = [sys.executable, "-m", "crystalline.ingest.command", "ingest", "--data-dir",
                str(tmp_path / f"data{machine}"), "--database", pg_url, "--min-chars", "50",
                "--min-words", "5", "--batch-documents", "2", str(inbox)]  # fmt: skip
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env))
    for proc in procs:
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, out.decode(errors="replace")
    stored = Counter(t.strip() for t in stored_texts(tmp_path / "data0") + stored_texts(tmp_path / "data1"))
    assert all(stored[body.strip()] == 1 for body in shared), stored
    assert sum(stored.values()) == len(shared) + 4
    registry = PgRegistry(pg_url)
    try:
        counts = registry.counts()
        by_rule = registry.counts_by_rule()
    finally:
        registry.close()
    assert (counts["done"], counts["duplicate"]) == (len(shared) + 4, len(shared))
    assert by_rule["duplicate"] == {"exact": len(shared)}


@pytest.mark.timeout(180)
def test_ingest_waits_out_a_stopped_database_and_loses_nothing(
    tmp_path: Path, pg_cluster: PgCluster, pg_url: str
) -> None:
    """PostgreSQL stopped under a running ingest: a batch fails with DatabaseUnavailable, its
    files go back to the queue, status says the database is away and why; once it is back the
    same files are ingested, each once."""
    drop = DropFolder(tmp_path / "inbox", settle_s=0.0)
    settings = dataclasses.replace(SETTINGS, database=pg_url)
    with Ingestor(settings, tmp_path / "data", load_tokenizer("bytes"), drop_folder=drop) as ing:
        for i in range(4):
            (drop.root / f"d{i}.txt").write_text(text(i), encoding="utf-8")
        drop.scan()
        pg_cluster.stop()
        try:
            with pytest.raises(DatabaseUnavailable):
                ing.run_once()
            down = ing.stats()["database"]
        finally:
            pg_cluster.start()
        stats = drain(ing)
    assert down["kind"] == "postgresql" and down["available"] is False and down["last_error"]
    assert stats["database"]["available"] is True
    assert (stats["documents"], stats["duplicates"], stats["pending"]) == (4, 0, 0)
    assert sorted(stored_texts(tmp_path / "data")) == sorted(text(i).strip() for i in range(4))
    assert sorted(os.listdir(drop.done)) == [f"d{i}.txt" for i in range(4)]
