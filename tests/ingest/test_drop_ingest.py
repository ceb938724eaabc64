"""Dropped files through the real ingest path (inotify watch, claim, pool processes, registry,
token store): any name, identity by content, nothing stranded, odd entries refused unread."""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import stat
import string
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Awaitable
from pathlib import Path

import pytest
from _wait import until_async

from crystalline.daemon.component_runner import Backoff, ComponentRunner
from crystalline.ingest.drop_folder import DropFolder
from crystalline.ingest.ingestor import Ingestor
from crystalline.ingest.registry import SCHEMA_VERSION, Registry
from crystalline.ingest.settings import IngestSettings
from crystalline.tokens.token_store import StoreReader
from crystalline.tokens.tokenizer import load_tokenizer

SETTINGS = IngestSettings(processes=1, min_chars=50, min_words=5, val_fraction=0.0, drop_settle_s=0.0)
BAD_NAME = os.fsdecode(b"bad-\xff\xfe-name.txt")  # not UTF-8: the name SQLite refused


def text(seed: int, words: int = 300) -> str:
    """Prose-like text of random lowercase words: another seed is neither a copy nor a near one."""
    rng = random.Random(seed)
    made = (
        "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 8))) for _ in range(words)
    )
    return f"Document {seed}. " + " ".join(made) + "\n"


def stored_texts(data: Path) -> list[str]:
    """Every stored document's text (the byte tokenizer's ids are the UTF-8 bytes)."""
    reader = StoreReader(data / "tokens")
    reader.refresh()
    return [bytes(reader.tokens(d).astype("uint8")).decode("utf-8") for d in reader.documents]


def inotify_instances() -> int:
    fd_dir = Path("/proc/self/fd")
    count = 0
    for fd in fd_dir.iterdir():
        try:
            count += os.readlink(fd) == "anon_inode:inotify"
        except OSError:
            continue
    return count


def threads() -> int:
    """Threads other than asyncio.to_thread's executor (its pool grows and shrinks by itself)."""
    return sum(not t.name.startswith("asyncio_") for t in threading.enumerate())


def drain(ing: Ingestor) -> dict:
    while ing.run_once():
        pass
    return ing.stats()


@pytest.mark.timeout(180)
def test_undecodable_names_are_ingested_by_the_running_ingestor(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    drop = DropFolder(inbox, settle_s=0.2)
    names = [BAD_NAME, "good-1.txt", "good-2.txt", "good-3.txt"]

    async def main() -> dict:
        stop = asyncio.Event()
        with Ingestor(SETTINGS, tmp_path / "data", load_tokenizer("bytes"), drop_folder=drop) as ing:
            task = asyncio.create_task(ing.run(stop, idle_s=0.1))
            await asyncio.sleep(0.5)  # the watch is on
            for i, name in enumerate(names):
                (inbox / name).write_text(text(i), encoding="utf-8")
            (inbox / os.fsdecode(b"empty-\xff.txt")).write_bytes(b"")  # fails, with a readable reason
            await until_async(
                lambda: ing.stats()["documents"] >= len(names) and not ing.stats()["pending"],
                lambda: str(ing.stats()),
                90,
                0.1,
            )
            stop.set()
            await asyncio.wait_for(task, 30)
            return ing.stats()

    stats = asyncio.run(main())
    assert (stats["documents"], stats["failed"], stats["pending"]) == (4, 1, 0)
    assert "error" not in stats
    assert sorted(os.listdir(drop.done)) == sorted(names)  # the original bytes kept
    reason = (drop.failed / (os.fsdecode(b"empty-\xff.txt") + ".reason.txt")).read_text(encoding="utf-8")
    assert "empty" in reason.splitlines()[0] and "empty-\\xff.txt" in reason
    registry = Registry(tmp_path / "data" / "registry.sqlite3")
    try:
        sources = {s for (s,) in registry.db.execute("SELECT source FROM documents")}
    finally:
        registry.close()
    assert str(inbox.resolve() / "bad-\\xff\\xfe-name.txt") in sources


@pytest.mark.timeout(150)
def test_cli_ingests_a_folder_holding_an_undecodable_name(tmp_path: Path, cli_env: dict[str, str]) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / BAD_NAME).write_text(text(1), encoding="utf-8")
    (src / "good.txt").write_text(text(2), encoding="utf-8")
    cmd = [
        sys.executable,
        "-m",
        "crystalline.ingest.command",
        "ingest",
        str(src),
        "--data-dir",
        str(tmp_path / "d"),
    ]
    first = subprocess.run(cmd, capture_output=True, text=True, env=cli_env, timeout=120, check=False)
    assert first.returncode == 0, first.stderr
    assert "documents=2" in first.stdout and "failed=0" in first.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, env=cli_env, timeout=120, check=False)
    assert "documents=0" in again.stdout and "skipped=2" in again.stdout


@pytest.mark.timeout(120)
def test_same_name_size_and_mtime_with_new_content_is_a_new_document(tmp_path: Path) -> None:
    drop = DropFolder(tmp_path / "inbox", settle_s=0.0)
    first, second = text(1), text(2)
    second = second[: len(first)].ljust(len(first), "x")  # the same length
    mtime = time.time() - 3600
    with Ingestor(SETTINGS, tmp_path / "data", load_tokenizer("bytes"), drop_folder=drop) as ing:
        for body in (first, second):  # as tar, rsync -t or unzip leave them: the same mtime
            (drop.root / "a.txt").write_text(body, encoding="utf-8")
            os.utime(drop.root / "a.txt", (mtime, mtime))
            drop.scan()
            stats = drain(ing)
    assert (stats["documents"], stats["duplicates"], stats["pending"]) == (2, 0, 0)
    assert sorted(os.listdir(drop.done)) == ["a-1.txt", "a.txt"]
    assert sorted(stored_texts(tmp_path / "data")) == sorted([first.strip(), second.strip()])


@pytest.mark.timeout(120)
def test_the_same_file_dropped_again_is_recognised_a_copy_is_a_duplicate(tmp_path: Path) -> None:
    drop = DropFolder(tmp_path / "inbox", settle_s=0.0)
    with Ingestor(SETTINGS, tmp_path / "data", load_tokenizer("bytes"), drop_folder=drop) as ing:
        (drop.root / "a.txt").write_text(text(1), encoding="utf-8")
        drop.scan()
        drain(ing)
        (drop.root / "a.txt").write_text(text(1), encoding="utf-8")  # dropped again
        (drop.root / "copy.txt").write_text(text(1), encoding="utf-8")  # same text, other name
        drop.scan()
        stats = drain(ing)
    assert (stats["documents"], stats["duplicates"]) == (1, 1)
    assert sorted(os.listdir(drop.done)) == ["a-1.txt", "a.txt", "copy.txt"]


@pytest.mark.timeout(120)
def test_links_fifos_sockets_and_devices_fail_at_once_with_a_reason(tmp_path: Path) -> None:
    drop = DropFolder(tmp_path / "inbox", settle_s=60.0)  # regular files would wait: these must not
    secret = tmp_path / "secret.txt"
    secret.write_text(text(9))
    os.symlink(secret, drop.root / "link.txt")
    os.mkfifo(drop.root / "a-fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(drop.root / "a-socket"))
    expected = {"link.txt": "symbolic link", "a-fifo": "FIFO", "a-socket": "socket"}
    try:
        os.mknod(drop.root / "a-device", stat.S_IFCHR | 0o600, os.makedev(1, 3))  # like /dev/null
        expected["a-device"] = "character device"
    except PermissionError:
        pass  # not root: the three others still run
    (drop.root / "subdir").mkdir()  # a directory is left alone
    with Ingestor(SETTINGS, tmp_path / "data", load_tokenizer("bytes"), drop_folder=drop) as ing:
        drop.start()
        stats = drain(ing)
    sock.close()
    assert sorted(n for n in os.listdir(drop.failed) if not n.endswith(".reason.txt")) == sorted(expected)
    for name, kind in expected.items():
        assert (drop.failed / f"{name}.reason.txt").read_text().startswith(kind), name
    assert (drop.failed / "link.txt").is_symlink() and secret.read_text() == text(9)
    assert os.listdir(drop.done) == [] and stats["failed"] == len(expected) and stats["pending"] == 0
    assert sorted(os.listdir(drop.root)) == [".ingesting", "done", "failed", "subdir"]


@pytest.mark.timeout(120)
def test_a_failing_batch_is_retried_without_leaking_watches_or_threads(tmp_path: Path) -> None:
    drop = DropFolder(tmp_path / "inbox", settle_s=0.0)
    before = (inotify_instances(), threads())
    tokens = tmp_path / "data" / "tokens"

    async def main() -> dict:
        stop = asyncio.Event()
        with Ingestor(SETTINGS, tmp_path / "data", load_tokenizer("bytes"), drop_folder=drop) as ing:
            for i in range(3):
                (drop.root / f"doc-{i}.txt").write_text(text(i), encoding="utf-8")
            tokens.rename(tmp_path / "tokens-aside")
            tokens.write_text("a file where the store's directory should be")  # every batch fails

            # retried as the daemon retries it: the component runner calls run again after a backoff
            def once() -> Awaitable[None]:
                return ing.run(stop, idle_s=0.05, on_progress=runner.progress)

            runner = ComponentRunner("ingest", once, Backoff(0.05, 0.1), stop)
            task = asyncio.create_task(runner.run())
            await until_async(lambda: runner.error is not None, "the failing batch was not reported", 60)
            await asyncio.sleep(1.0)  # several retries
            during = (inotify_instances(), threads(), ing.stats()["pending"])
            tokens.unlink()
            (tmp_path / "tokens-aside").rename(tokens)
            await until_async(lambda: ing.stats()["documents"] >= 3, lambda: str(ing.stats()), 60)
            stop.set()
            await asyncio.wait_for(task, 30)
            assert runner.restarts >= 2 and runner.error is None and runner.state == "stopped"
            task = asyncio.create_task(ing.run(stop))  # a second run on the same watch
            await asyncio.wait_for(task, 30)
            assert inotify_instances() == before[0] + 1
            return {"during": during, **ing.stats()}

    stats = asyncio.run(main())
    assert stats["during"] == (before[0] + 1, before[1] + 1, 3)  # one watch, one thread; all waiting
    assert (stats["documents"], stats["failed"], stats["pending"]) == (3, 0, 0) and "error" not in stats
    assert inotify_instances() == before[0]  # closed with the ingestor


@pytest.mark.timeout(180)
def test_sigkill_after_the_registry_before_the_move_counts_the_file_once(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(3):
        (inbox / f"doc-{i}.txt").write_text(text(i), encoding="utf-8")
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from crystalline.ingest.drop_folder import DropFolder
        from crystalline.ingest.ingestor import Ingestor
        from crystalline.ingest.settings import IngestSettings
        from crystalline.tokens.tokenizer import load_tokenizer
        DropFolder.finish = lambda self, item, reason: os.kill(os.getpid(), signal.SIGKILL)
        settings = IngestSettings(processes=1, min_chars=50, min_words=5, val_fraction=0.0)
        drop = DropFolder(Path({str(inbox)!r}), settle_s=0.0)
        drop.scan()
        data = Path({str(tmp_path / "data")!r})
        Ingestor(settings, data, load_tokenizer("bytes"), drop_folder=drop).run_once()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=150)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert sorted(os.listdir(inbox / ".ingesting")) == [f"doc-{i}.txt" for i in range(3)]
    drop = DropFolder(inbox, settle_s=0.0)
    with Ingestor(SETTINGS, tmp_path / "data", load_tokenizer("bytes"), drop_folder=drop) as ing:
        drop.scan()
        stats = drain(ing)
    assert (stats["documents"], stats["duplicates"], stats["pending"]) == (3, 0, 0)
    assert sorted(os.listdir(drop.done)) == [f"doc-{i}.txt" for i in range(3)]
    assert len(stored_texts(tmp_path / "data")) == 3  # nothing stored twice


BIG_RUN = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path
    from crystalline.ingest.drop_folder import DropFolder
    from crystalline.ingest.filters import FilterSettings
    from crystalline.ingest.ingestor import Ingestor
    from crystalline.ingest.quality_rules import FilterRules
    from crystalline.ingest.settings import IngestSettings
    from crystalline.tokens.tokenizer import load_tokenizer

    def main():
        root = Path(sys.argv[1])
        # 64 MB of a repeated block: the Gopher rules would remove it (this test is about memory)
        filters = FilterSettings(rules=FilterRules.disabled())
        settings = IngestSettings(processes=1, min_chars=50, min_words=5, val_fraction=0.0, filters=filters)
        drop = DropFolder(root / "inbox", settle_s=0.0)
        with Ingestor(settings, root / "data", load_tokenizer("bytes"), drop_folder=drop) as ing:
            drop.scan()
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            batches = []
            while n := ing.run_once():
                batches.append(n)
            stats = ing.stats()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"base_kb": base, "peak_kb": peak, "batches": batches, **stats}))

    if __name__ == "__main__":
        main()
""")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_three_64_mb_files_then_a_small_one_all_ingested_in_bounded_memory(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    size = 64 * 1024 * 1024  # each at the 64 MB batch and file limits
    for i in range(3):
        rng = random.Random(i)  # letters only, a vocabulary per file: no file is a near-duplicate
        vocab = [
            "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9)))
            for _ in range(3000)
        ]
        block = (" ".join(rng.choice(vocab) for _ in range(100_000)) + "\n").encode()
        with open(inbox / f"big-{i}.txt", "wb") as f:
            for start in range(0, size, len(block)):
                f.write(block[: size - start])
    (inbox / "small.txt").write_text(text(1), encoding="utf-8")
    script = tmp_path / "big_run.py"
    script.write_text(BIG_RUN)
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=840
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (result["documents"], result["pending"]) == (4, 0), result
    assert sorted(os.listdir(inbox / "done")) == ["big-0.txt", "big-1.txt", "big-2.txt", "small.txt"]
    # one batch's input (64 MB) and its ids (32 M uint16 tokens: 64 MB) at a time, plus the
    # reply being received; the whole batch at once with copies was 255-740 MB.
    grown_mb = (result["peak_kb"] - result["base_kb"]) / 1024
    assert grown_mb < 3 * 64, result


def test_registry_of_schema_0_is_migrated(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "registry.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE documents (id INTEGER PRIMARY KEY, entry TEXT NOT NULL UNIQUE, doc_id TEXT NOT NULL,"
        " source TEXT NOT NULL, origin TEXT NOT NULL, kind TEXT NOT NULL DEFAULT '', state TEXT NOT NULL,"
        " reason TEXT NOT NULL DEFAULT '', content_hash TEXT NOT NULL DEFAULT '', simhash INTEGER NOT NULL"
        " DEFAULT 0, chars INTEGER NOT NULL DEFAULT 0, tokens INTEGER NOT NULL DEFAULT 0, split TEXT NOT NULL"
        " DEFAULT '', shard INTEGER, title TEXT NOT NULL DEFAULT '', language TEXT NOT NULL DEFAULT '',"
        " created REAL NOT NULL);"
        "INSERT INTO documents (entry, doc_id, source, origin, state, tokens, created)"
        " VALUES ('drop:/in/a.txt:10:5', 'x', '/in/a.txt', 'drop', 'done', 7, 0);"
    )
    old.commit()
    old.close()
    registry = Registry(path)
    try:
        assert registry.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert registry.counts()["done"] == 1 and registry.counts()["tokens"] == 7
        assert registry.find_file("1:2:3:4:5") is None
        assert registry.state_of(os.fsdecode(b"drop:\xff")) is None  # an undecodable key: no error
    finally:
        registry.close()


@pytest.mark.timeout(180)
def test_a_150000_word_book_dropped_is_stored_under_the_default_filters(tmp_path: Path) -> None:
    import _ingest_samples as samples

    # Gopher's 100,000-word cap (made for web pages) removed every book; it is off by default
    chapters = [f"Chapter {i + 1}\n\n" + samples.prose(i, 1500) for i in range(100)]
    book = "\n\n".join(chapters) + "\n"
    assert len(book.split()) > 150_000
    drop = DropFolder(tmp_path / "inbox", settle_s=0.0)
    (drop.root / "war-and-peace.txt").write_text(book, encoding="utf-8")
    settings = IngestSettings(processes=1, drop_settle_s=0.0)  # the default filters and limits
    with Ingestor(settings, tmp_path / "data", load_tokenizer("bytes"), drop_folder=drop) as ing:
        drop.scan()
        stats = drain(ing)
    assert (stats["documents"], stats["filtered"], stats["pending"]) == (1, 0, 0), stats
    assert stored_texts(tmp_path / "data") == [book.strip()]
