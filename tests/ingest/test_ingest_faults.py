"""Ingest under faults: a process killed between the shard and the registry, near duplicates
through the whole path, and files that arrive while the ingestor runs."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import _ingest_samples as samples
import pytest
from _wait import until, until_async

from crystalline.documents import Document, Spool
from crystalline.ingest.drop_folder import DropFolder
from crystalline.ingest.ingestor import Ingestor
from crystalline.ingest.settings import IngestSettings
from crystalline.tokens.token_store import StoreReader
from crystalline.tokens.tokenizer import load_tokenizer

SETTINGS = IngestSettings(processes=1, min_chars=50, min_words=5, val_fraction=0.0)
HERE = Path(__file__).resolve().parent


def article(i: int, tweak: str = "") -> Document:
    # a paragraph of its own: the shared ones alone would make near-duplicates (MinHash)
    paras = [f"Story {i}. " + p for p in samples.PARAGRAPHS] + [samples.prose(i)]
    paras[-1] += tweak
    return Document(
        f"https://example.org/{i}{'b' if tweak else ''}",
        samples.article_page(paras).encode(),
        "text/html",
        "utf-8",
    )


@pytest.mark.timeout(180)
def test_sigkill_between_shard_and_registry_loses_nothing_counts_nothing_twice(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    for i in range(4):
        spool.put(article(i))
    # a real process, killed with SIGKILL right after its shard is durable and before the
    # registry commit: the worst moment
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(HERE)!r})
        from pathlib import Path
        from crystalline.documents import Spool
        from crystalline.ingest.ingestor import Ingestor
        from crystalline.ingest.registry import Registry
        from crystalline.ingest.settings import IngestSettings
        from crystalline.tokens.tokenizer import load_tokenizer
        Registry.record = lambda self, records: os.kill(os.getpid(), signal.SIGKILL)
        settings = IngestSettings(processes=1, min_chars=50, min_words=5, val_fraction=0.0)
        ing = Ingestor(settings, Path({str(tmp_path / "data")!r}), load_tokenizer("bytes"),
                       spool=Spool(Path({str(tmp_path / "spool")!r})))
        ing.run_once()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=150)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    reader = StoreReader(tmp_path / "data" / "tokens")
    reader.refresh()
    assert len(reader.documents) == 4  # the shard was durable before the kill
    assert spool.count() == 4  # and nothing was released from the spool
    with Ingestor(SETTINGS, tmp_path / "data", load_tokenizer("bytes"), spool=spool) as ing:
        while ing.run_once():
            pass
        stats = ing.stats()
    reader = StoreReader(tmp_path / "data" / "tokens")
    reader.refresh()
    assert [d.source for d in reader.documents] == [f"https://example.org/{i}" for i in range(4)]
    assert stats["documents"] == 4 and stats["duplicates"] == 0 and spool.count() == 0


def long_text(seed: int, words: int = 600) -> str:
    return samples.prose(seed, words)


@pytest.mark.timeout(120)
def test_a_near_duplicate_is_counted_not_stored(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    text = long_text(1)
    spool.put(Document("https://example.org/a", text.encode(), "text/plain"))
    edited = text.replace("storm", "gale", 1)  # the same page with a one-word edit
    spool.put(Document("https://example.org/a-edited", edited.encode(), "text/plain"))
    spool.put(Document("https://example.org/b", long_text(2).encode(), "text/plain"))
    with Ingestor(SETTINGS, tmp_path / "data", load_tokenizer("bytes"), spool=spool) as ing:
        while ing.run_once():
            pass
        stats = ing.stats()
    assert (stats["documents"], stats["duplicates"]) == (2, 1)


@pytest.mark.timeout(120)
def test_files_dropped_while_running_are_ingested(tmp_path: Path) -> None:
    drop = DropFolder(tmp_path / "drop", settle_s=0.2)

    async def main() -> dict[str, int]:
        stop = asyncio.Event()
        with Ingestor(SETTINGS, tmp_path / "data", load_tokenizer("bytes"), drop_folder=drop) as ing:
            task = asyncio.create_task(ing.run(stop, idle_s=0.1))
            await asyncio.sleep(0.5)  # the watch is on
            (drop.root / "late.html").write_text(samples.article_page(), encoding="utf-8")
            late = drop.done / "late.html"
            await until_async(late.exists, "a file written while running was never ingested", 60, 0.1)
            stop.set()
            await asyncio.wait_for(task, 30)
            return ing.stats()

    stats = asyncio.run(main())
    assert stats["documents"] == 1 and stats["pending"] == 0


@pytest.mark.timeout(120)
def test_a_truncated_document_is_stored_with_its_reason(tmp_path: Path) -> None:
    from crystalline.ingest.extract import ExtractLimits
    from crystalline.ingest.registry import Registry

    text = long_text(3, words=4000)
    settings = IngestSettings(
        processes=1, min_chars=50, min_words=5, val_fraction=0.0, limits=ExtractLimits(max_chars=5000)
    )
    spool = Spool(tmp_path / "spool")
    spool.put(Document("https://example.org/long", text.encode(), "text/plain"))
    with Ingestor(settings, tmp_path / "data", load_tokenizer("bytes"), spool=spool) as ing:
        while ing.run_once():
            pass
        stats = ing.stats()
    assert stats["documents"] == 1
    registry = Registry(tmp_path / "data" / "registry.sqlite3")
    try:
        (reason,) = registry.db.execute("SELECT reason FROM documents").fetchone()
    finally:
        registry.close()
    assert reason.startswith("truncated:")


@pytest.mark.timeout(120)
def test_sigkill_inside_spool_put_leaves_an_orphan_the_next_start_sweeps(tmp_path: Path) -> None:
    import os
    import signal

    spool_dir, fifo = tmp_path / "spool", tmp_path / "seam"
    os.mkfifo(fifo)
    # a real producer: one document committed, then a second whose body is durable and whose
    # metadata write blocks on a FIFO (the seam between the two), where it is SIGKILLed
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(HERE)!r}, {str(HERE.parent)!r}]  # this module, and the _wait it imports
        from pathlib import Path
        import crystalline.documents as document
        from test_ingest_faults import article
        spool = document.Spool(Path({str(spool_dir)!r}))
        spool.put(article(0))
        real = document.write_atomic
        def blocking(path, data, sync_dir=False):
            if path.suffix == ".json":
                open({str(fifo)!r}, "rb").read()
            real(path, data, sync_dir)
        document.write_atomic = blocking
        spool.put(article(1))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    try:

        def opened() -> tuple[int] | None:  # a writer may open the FIFO only once the producer reads it
            try:
                return (os.open(fifo, os.O_WRONLY | os.O_NONBLOCK),)
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
                return None

        (seam,) = until(opened, "the producer never reached the seam", 60, 0.05)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        os.close(seam)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    spool = Spool(spool_dir)
    bodies = sorted(spool_dir.glob("*.body"))
    (orphan,) = [b for b in bodies if not b.with_suffix(".json").exists()]
    assert len(bodies) == 2 and spool.count() == 1
    # the next start comes later: the orphan is 2 minutes old; a body a producer is writing
    # right now (no metadata yet, seconds old) must be left alone
    old = time.time() - 120
    os.utime(orphan, (old, old))
    in_flight = spool_dir / f"{'f' * 32}-{time.time_ns()}.body"
    in_flight.write_bytes(b"being written")

    async def start_and_ingest() -> dict[str, int]:
        stop = asyncio.Event()
        with Ingestor(SETTINGS, tmp_path / "data", load_tokenizer("bytes"), spool=spool) as ing:
            task = asyncio.create_task(ing.run(stop, idle_s=0.1))
            await until_async(
                lambda: ing.stats()["documents"] >= 1, "the committed document was never ingested", 60, 0.1
            )
            stop.set()
            await asyncio.wait_for(task, 30)
            return ing.stats()

    stats = asyncio.run(start_and_ingest())
    assert not orphan.exists() and in_flight.exists()
    reader = StoreReader(tmp_path / "data" / "tokens")
    reader.refresh()
    assert [d.source for d in reader.documents] == ["https://example.org/0"]
    assert stats["documents"] == 1 and spool.count() == 0
