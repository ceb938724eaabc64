"""The registry's reader (``read_only=True``, what the dashboard reads the latest documents
through): on either backend it never creates, migrates nor writes the registry, does not wait
for the ingest's write lock, and refuses a schema newer than this program's."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from crystalline.ingest.registry import (
    SCHEMA_VERSION,
    Record,
    Registry,
    RegistryAwaitsWriter,
    RegistryNotCreated,
)
from crystalline.ingest.registry_pg import MIGRATIONS, PgRegistry
from crystalline.postgres import Database
from tests._mount_namespace import UNSHARE, require_mount_namespace


def _documents(n: int) -> list[Record]:
    return [Record(f"spool:{i}", f"id{i}", f"https://h/{i}", "crawl", "done") for i in range(n)]


def _sources(registry: Registry) -> list[str]:
    return [str(doc["source"]) for doc in registry.latest(10)]


def test_a_sqlite_reader_never_creates_migrates_nor_writes_the_registry(tmp_path: Path) -> None:
    missing = tmp_path / "missing.sqlite3"
    with pytest.raises(RegistryNotCreated, match="does not exist yet"):
        Registry(missing, read_only=True)
    assert not missing.exists()

    path = tmp_path / "registry.sqlite3"
    writer = Registry(path)
    writer.record(_documents(3))
    writer.close()
    # the ingest mid-batch, holding the write lock: the reader neither waits for it nor needs it
    ingest = sqlite3.connect(path, isolation_level=None)
    ingest.execute("BEGIN IMMEDIATE")
    reader = Registry(path, read_only=True)
    try:
        assert _sources(reader) == ["https://h/2", "https://h/1", "https://h/0"]
    finally:
        reader.close()
        ingest.execute("ROLLBACK")
        ingest.close()

    # a read-only copy at an older schema (4) with other MinHash parameters: a writer would
    # migrate it (user_version, an index) and rewrite its meta row; the reader changes nothing
    copy = tmp_path / "copy" / "registry.sqlite3"
    copy.parent.mkdir()
    shutil.copy(path, copy)
    db = sqlite3.connect(copy)
    db.execute("PRAGMA journal_mode=DELETE")  # as writers before the kept WAL files left it
    db.execute("DROP INDEX documents_doc_id")
    db.execute("UPDATE meta SET value = 'older' WHERE key = 'minhash'")
    db.execute("PRAGMA user_version = 4")
    db.commit()
    db.close()
    os.chmod(copy, 0o444)
    before = (copy.stat().st_mtime_ns, copy.stat().st_size, copy.read_bytes())
    reader = Registry(copy, read_only=True)
    try:
        assert _sources(reader) == ["https://h/2", "https://h/1", "https://h/0"]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.record(_documents(4))
    finally:
        reader.close()
    assert (copy.stat().st_mtime_ns, copy.stat().st_size, copy.read_bytes()) == before
    db = sqlite3.connect(f"{copy.absolute().as_uri()}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA user_version").fetchone() == (4,)
        assert db.execute("SELECT value FROM meta WHERE key = 'minhash'").fetchone() == ("older",)
    finally:
        db.close()

    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=DELETE")  # a plain connection, which keeps no side file
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(RuntimeError, match="newer than this program's"):
        Registry(path, read_only=True)


def _read_in_read_only_directory(directory: Path) -> str:
    """What a reader of ``directory``'s registry reads where the directory is mounted read-only
    (a private mount namespace: not even root can write there)."""
    require_mount_namespace()
    script = (
        "from pathlib import Path\n"
        "from crystalline.ingest.registry import Registry\n"
        "reader = Registry(Path(__import__('sys').argv[1]) / 'registry.sqlite3', read_only=True)\n"
        "print(','.join(str(d['source']) for d in reader.latest(10)))\n"
        "reader.close()\n"
    )
    shell = 'mount --bind "$2" "$2" && mount -o remount,bind,ro "$2" && exec "$0" -c "$1" "$2"'
    out = subprocess.run(
        [*UNSHARE, "sh", "-c", shell, sys.executable, script, str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


_CLOSING_WRITER = """
import sys
from pathlib import Path
from crystalline.ingest.registry import Record, Registry
writer = Registry(Path(sys.argv[1]))
writer.record([Record(f"spool:{i}", f"id{i}", f"https://h/{i}", "crawl", "done") for i in range(50)])
print("closing", flush=True)
writer.close()
"""


def _killed_after(script: str, path: Path, said: str, after_s: float = 0.0) -> None:
    """Run ``script`` on ``path`` and SIGKILL it ``after_s`` after it printed ``said`` (the stop
    deadline's kill, a power cut)."""
    child = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == said
        time.sleep(after_s)
    finally:
        child.kill()
        child.wait(timeout=30)


@pytest.mark.timeout(300)
def test_a_sqlite_reader_writes_no_side_file_and_reads_where_it_cannot_write(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    side = ["registry.sqlite3", "registry.sqlite3-shm", "registry.sqlite3-wal"]
    # a writer closed: the registry stays in WAL with its side files (the -wal emptied), so a
    # reader creates none and reads even where it cannot write
    writer = Registry(path)
    writer.record(_documents(2))
    writer.close()
    assert sorted(os.listdir(tmp_path)) == side
    assert os.path.getsize(tmp_path / "registry.sqlite3-wal") == 0
    reader = Registry(path, read_only=True)
    assert _sources(reader) == ["https://h/1", "https://h/0"]
    reader.close()
    assert sorted(os.listdir(tmp_path)) == side
    assert _read_in_read_only_directory(tmp_path) == "https://h/1,https://h/0"

    # a writer open: read through its side files, the last commit included
    writer = Registry(path)
    writer.record(_documents(3)[2:])
    assert _read_in_read_only_directory(tmp_path) == "https://h/2,https://h/1,https://h/0"
    # a reader open beside the writer when it closes: still readable
    reader = Registry(path, read_only=True)
    writer.close()
    assert _sources(reader) == ["https://h/2", "https://h/1", "https://h/0"]
    reader.close()
    assert _read_in_read_only_directory(tmp_path) == "https://h/2,https://h/1,https://h/0"

    # a writer killed with uncheckpointed commits: its -wal and -shm are left, and read
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from crystalline.ingest.registry import Record, Registry\n"
        "writer = Registry(Path(sys.argv[1]))\n"
        "writer.record([Record('spool:9', 'id9', 'https://h/9', 'crawl', 'done')])\n"
        "print('recorded', flush=True)\n"
        "time.sleep(60)\n"
    )
    _killed_after(script, path, "recorded")
    assert sorted(os.listdir(tmp_path)) == side
    assert _read_in_read_only_directory(tmp_path) == "https://h/9,https://h/2,https://h/1,https://h/0"


@pytest.mark.timeout(600)
def test_a_writer_killed_while_closing_leaves_a_registry_every_reader_reads(tmp_path: Path) -> None:
    """Killed at moments spread over its close (checkpoint, fsyncs): never a hot -journal, and a
    reader (in-process; once in a directory it cannot write) reads the 50 documents."""
    for i in range(12):
        directory = tmp_path / str(i)
        directory.mkdir()
        _killed_after(_CLOSING_WRITER, directory / "registry.sqlite3", "closing", after_s=i * 0.0004)
        files = sorted(os.listdir(directory))
        assert "registry.sqlite3-journal" not in files, (i, files)
        reader = Registry(directory / "registry.sqlite3", read_only=True)
        try:
            assert len(reader.latest(100)) == 50
        finally:
            reader.close()
        assert sorted(os.listdir(directory)) == files
    assert _read_in_read_only_directory(tmp_path / "11").count(",") == 9  # latest(10)


def test_a_sqlite_reader_refuses_in_one_line_what_only_a_writer_resolves(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    writer = Registry(path)
    writer.record(_documents(3))
    writer.close()
    # a WAL registry whose side files were removed (a connection that does not keep them closed
    # it last): the reader would create them; it says so and creates nothing
    plain = sqlite3.connect(path)
    plain.execute("SELECT count(*) FROM documents").fetchone()
    plain.close()
    assert sorted(os.listdir(tmp_path)) == ["registry.sqlite3"]
    with pytest.raises(RegistryAwaitsWriter, match="WAL mode without its -wal/-shm files"):
        Registry(path, read_only=True)
    assert sorted(os.listdir(tmp_path)) == ["registry.sqlite3"]

    # a hot rollback journal (a writer of the rollback-journal mode killed mid-transaction, its
    # changes spilled into the file): a read-only connection cannot roll it back
    plain = sqlite3.connect(path)
    plain.execute("PRAGMA journal_mode=DELETE")
    plain.close()
    script = (
        "import sqlite3, sys, time\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "db.execute('PRAGMA cache_size=2')\n"
        "db.execute('BEGIN IMMEDIATE')\n"
        'db.execute("UPDATE documents SET reason = hex(randomblob(20000))")\n'
        "print('spilled', flush=True)\n"
        "time.sleep(60)\n"
    )
    _killed_after(script, path, "spilled")
    assert sorted(os.listdir(tmp_path)) == ["registry.sqlite3", "registry.sqlite3-journal"]
    with pytest.raises(RegistryAwaitsWriter, match="a hot -journal") as refused:
        Registry(path, read_only=True)
    assert len(str(refused.value).splitlines()) == 1
    # the ingest opening it rolls the write back: readable again, nothing of the write kept
    Registry(path).close()
    reader = Registry(path, read_only=True)
    try:
        assert _sources(reader) == ["https://h/2", "https://h/1", "https://h/0"]
        assert {str(doc["reason"]) for doc in reader.latest(10)} == {""}
    finally:
        reader.close()


def test_a_postgresql_reader_never_creates_migrates_nor_writes_the_registry(pg_url: str) -> None:
    import psycopg

    with pytest.raises(RegistryNotCreated, match="no schema yet"):
        PgRegistry(pg_url, read_only=True)
    old = Database(pg_url, "registry")
    try:
        # nothing was created: neither the version table nor the registry's schema
        assert old.execute("SELECT to_regclass('public.schema_versions')").fetchone() == (None,)
        assert old.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'registry'").fetchone() == (0,)
        assert old.migrate(MIGRATIONS[:2]) == 2
    finally:
        old.close()
    writer = PgRegistry(pg_url)  # migrates to the current schema
    try:
        writer.record(_documents(3))
        # taken back to an older schema with other MinHash parameters: a writer would migrate it
        # and rewrite its meta row; the reader changes nothing
        writer.db.execute("UPDATE public.schema_versions SET version = 2 WHERE component = 'registry'")
        writer.db.execute("UPDATE meta SET value = 'older' WHERE key = 'minhash'")
        with writer.exclusive():  # the ingest mid-batch, holding the registry's lock
            reader = PgRegistry(pg_url, read_only=True)
            try:
                assert _sources(reader) == ["https://h/2", "https://h/1", "https://h/0"]
                assert reader.db.execute("SHOW statement_timeout").fetchone() == ("2s",)
                with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                    reader.record(_documents(4))
                with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                    reader.db.execute("DELETE FROM documents")
            finally:
                reader.close()
        assert writer.db.execute(
            "SELECT version FROM public.schema_versions WHERE component = 'registry'"
        ).fetchone() == (2,)
        assert writer.db.execute("SELECT value FROM meta WHERE key = 'minhash'").fetchone() == ("older",)
        assert writer.db.execute("SELECT count(*) FROM documents").fetchone() == (3,)
        newer = (len(MIGRATIONS) + 1,)
        writer.db.execute("UPDATE public.schema_versions SET version = ? WHERE component = 'registry'", newer)
    finally:
        writer.close()
    with pytest.raises(RuntimeError, match="newer than this program's"):
        PgRegistry(pg_url, read_only=True)


def _unknown_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    from crystalline.ingest import persistent_wal

    monkeypatch.setattr(persistent_wal, "LAYOUT_KNOWN", ((2, 0), (2, 7)))


def _sqlite_built_in(monkeypatch: pytest.MonkeyPatch) -> None:
    import _sqlite3

    monkeypatch.delattr(_sqlite3, "__file__")  # compiled into the interpreter (no sqlite3_* exported here)


def _sqlite_symbols_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    import _ctypes
    import _sqlite3

    # linked statically, its sqlite3_* not exported: as an extension module without them
    monkeypatch.setattr(_sqlite3, "__file__", _ctypes.__file__)


def _another_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 0, 1))  # the module's SQLite is not the one found


@pytest.mark.parametrize(
    "python", [_unknown_layout, _sqlite_built_in, _sqlite_symbols_hidden, _another_sqlite]
)
def test_a_writer_that_cannot_keep_the_wal_files_still_opens_and_leaves_a_registry_readers_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, python: Any
) -> None:
    """Keeping the WAL files reads CPython's sqlite3.Connection layout through the SQLite library
    the module uses; on a Python where either is not known (another version, SQLite built into
    the interpreter or with its symbols hidden, another SQLite than the module's) the registry
    still opens and ingests, with one warning, and leaves WAL when it closes: readers read it
    after a clean stop."""
    python(monkeypatch)
    path = tmp_path / "registry.sqlite3"
    writer = Registry(path)
    try:
        writer.record(_documents(2))
    finally:
        writer.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "cannot keep the registry's WAL files" in warnings[0], warnings
    assert sorted(os.listdir(tmp_path)) == ["registry.sqlite3"]  # the last close removed them
    reader = Registry(path, read_only=True)
    try:
        assert _sources(reader) == ["https://h/1", "https://h/0"]
    finally:
        reader.close()
    assert sorted(os.listdir(tmp_path)) == ["registry.sqlite3"]
    reopened = Registry(path)
    try:
        assert _sources(reopened) == ["https://h/1", "https://h/0"]
    finally:
        reopened.close()


_SUPERVISOR = """
import json, os, subprocess, sys
from pathlib import Path
from crystalline.ingest.registry import Record, Registry
path = Path(sys.argv[1])
def documents(a, b):
    return [Record(f"spool:{i}", f"id{i}", f"https://h/{i}", "crawl", "done") for i in range(a, b)]
def locks():
    inode = os.stat(path).st_ino
    with open("/proc/locks", encoding="ascii") as file:
        return [line.split()[1:4] for line in file
                if line.split()[4] == str(os.getpid()) and line.split()[5].endswith(f":{inode}")]
ingest = Registry(path)
ingest.record(documents(0, 10))
held = locks()
for _ in range(5):  # the dashboard's reader, reopened after failed reads
    Registry(path, read_only=True).close()
other = "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('SELECT 1').fetchone(); c.close()"
subprocess.run([sys.executable, "-c", other, str(path)], check=True, timeout=60)
ingest.record(documents(10, 20))  # committed (synchronous=FULL)
print(json.dumps({"held": held, "after": locks(), "files": sorted(os.listdir(path.parent))}), flush=True)
os.kill(os.getpid(), 9)
"""


@pytest.mark.timeout(120)
def test_a_reader_beside_the_writer_in_one_process_keeps_its_locks_and_no_committed_row_is_lost(
    tmp_path: Path,
) -> None:
    """The supervisor holds the ingest's writer and the dashboard's reader: the reader must not
    open the database file itself (closing any descriptor of a file drops every POSIX lock the
    process holds on it, SQLite's included), or the next other connection to close thinks it is
    the last one, checkpoints and removes the side files under the live writer, whose commits
    then go to an unlinked -wal and are lost when the process is killed."""
    path = tmp_path / "registry.sqlite3"
    run = subprocess.run(
        [sys.executable, "-c", _SUPERVISOR, str(path)],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert run.returncode == -9, run.stderr
    seen = json.loads(run.stdout)
    assert seen["held"], "the writer holds a POSIX lock on the database file"
    assert seen["after"] == seen["held"]
    assert seen["files"] == ["registry.sqlite3", "registry.sqlite3-shm", "registry.sqlite3-wal"]
    reopened = Registry(path)
    try:
        assert reopened.db.execute("SELECT count(*) FROM documents").fetchone()[0] == 20
    finally:
        reopened.close()
