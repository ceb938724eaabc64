"""The document registry (SQLite, WAL): one row per submission that entered ingest.

Each row is keyed by its *entry*, derived from the submission's content and name (a spool
file's name; a dropped file's SHA-256 and name), so a submission seen again after a crash is
recognised and not counted twice, while a different file under an old name is a new one. A
dropped file's row also keeps its ``file_key`` (device, inode, size, mtime, ctime), the fast
path that recognises the very same file without reading it again. A row's state is one of
``done`` (tokens in the store), ``duplicate``, ``failed`` or ``filtered``, each but ``done``
with a reason; ``rule`` names the filter (or duplicate test) behind a ``filtered`` or
``duplicate`` row, the audit trail that status counts, and ``text_edits`` counts the lines each
line rule removed and the PII each document had replaced. Rows are written only after the
tokens they describe are durable; near-duplicate candidates are found through the MinHash LSH
bands, verified with the stored MinHash signatures (see :mod:`minhash`), and the SimHash bands
(see :mod:`dedup`), written in the same transaction as their document, so the index grows with
each batch and survives any restart.

Text reaches SQLite as valid UTF-8 only (:func:`sql_text`): a file name that is not UTF-8 is
stored with ``\\xff`` escapes instead of failing the whole batch. The schema carries a version
(``PRAGMA user_version``); an older registry is migrated when opened, except by a reader
(``read_only=True``, the dashboard's), which never creates, migrates nor writes it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..documents import sql_text
from ..postgres import Sql
from ..sql_tables import META, Table, columns
from . import minhash
from .dedup import BANDS, NEAR_DISTANCE, bands, hamming, to_signed, to_unsigned
from .persistent_wal import keep_wal_files

log = logging.getLogger(__name__)

STATES = ("done", "duplicate", "failed", "filtered")
# what ``Registry.latest`` gives of a document (the dashboard's latest-documents panel)
LATEST_FIELDS = ("source", "origin", "kind", "state", "reason", "title", "language", "surprise", "tokens",
                 "created")  # fmt: skip

# The registry's tables, for both backends (``crystalline.sql_tables``): the SQLite registry
# creates ``documents`` with the columns of its first schema (up to ``file_key``) and adds the
# later ones (see SCHEMA_VERSION) when opened; ``registry_pg.py``'s migrations create and add them.
DOCUMENTS = Table(
    "documents",
    columns("""
    id id
    entry text NOT NULL UNIQUE
    doc_id text NOT NULL
    source text NOT NULL
    origin text NOT NULL
    kind text NOT NULL DEFAULT ''
    state text NOT NULL
    reason text NOT NULL DEFAULT ''
    content_hash text NOT NULL DEFAULT ''
    simhash int64 NOT NULL DEFAULT 0
    chars int64 NOT NULL DEFAULT 0
    tokens int64 NOT NULL DEFAULT 0
    split text NOT NULL DEFAULT ''
    shard int64
    title text NOT NULL DEFAULT ''
    language text NOT NULL DEFAULT ''
    created real NOT NULL
    file_key text NOT NULL DEFAULT ''
    rule text NOT NULL DEFAULT ''  -- schema 2
    language_score real NOT NULL DEFAULT 0
    source_group text NOT NULL DEFAULT ''  -- schema 4
    surprise real
    """),
)
SIMHASH_BANDS = Table(
    "simhash_bands",
    columns("""
    band int NOT NULL
    value int64 NOT NULL
    doc int64 NOT NULL REFERENCES documents (id)
    """),
)
MINHASH_BANDS = replace(SIMHASH_BANDS, name="minhash_bands")
MINHASH_SIGNATURES = Table(
    "minhash_signatures",
    columns("doc int64 PRIMARY KEY REFERENCES documents (id)\nsignature blob NOT NULL"),
)
TEXT_EDITS = Table(
    "text_edits",
    columns("""
    doc int64 NOT NULL REFERENCES documents (id)
    rule text NOT NULL
    count int64 NOT NULL
    """),
)
TABLES = (DOCUMENTS, SIMHASH_BANDS, MINHASH_BANDS, MINHASH_SIGNATURES, TEXT_EDITS, META)

_SCHEMA = f"""
{DOCUMENTS.create("sqlite", "file_key")};
CREATE INDEX IF NOT EXISTS documents_hash ON documents (content_hash) WHERE state = 'done';
{SIMHASH_BANDS.create("sqlite")};
CREATE INDEX IF NOT EXISTS simhash_bands_lookup ON simhash_bands (band, value);
{MINHASH_BANDS.create("sqlite")};
CREATE INDEX IF NOT EXISTS minhash_bands_lookup ON minhash_bands (band, value);
{MINHASH_SIGNATURES.create("sqlite")};
{TEXT_EDITS.create("sqlite")};
{META.create("sqlite")};
"""
_FILE_KEY_INDEX = "CREATE INDEX IF NOT EXISTS documents_file_key ON documents (file_key) WHERE file_key != ''"
# Surprise looks documents up by doc_id (surprise_known, record_surprise): without it each
# lookup scans the whole table, under the write lock when recording.
_DOC_ID_INDEX = "CREATE INDEX IF NOT EXISTS documents_doc_id ON documents (doc_id)"

#: 0: no version (entries of dropped files were path:size:mtime, no file_key column); 1: file_key;
#: 2: ``rule`` and ``language_score`` columns, MinHash bands, text edits, meta (parameters);
#: 3: MinHash signatures, which verify LSH candidates (the hash family changed with them, so
#: version 2's bands are dropped by :meth:`Registry._check_minhash_params`); 4: ``source_group``
#: (the source a document is evaluated under; '' in older rows, derived by
#: ``crystalline.documents.source_group``) and ``surprise`` (its loss before training, NULL
#: until measured); 5: an index on ``doc_id`` (the surprise lookups).
SCHEMA_VERSION = 5
# a reader's wait for a lock (WAL readers rarely wait: a writer's recovery, a checkpoint)
READER_TIMEOUT_S = 1.0
# the -wal file's size kept after a checkpoint resets it (and none once the last writer closes)
WAL_SIZE_LIMIT = 16 * 1024 * 1024
SQLITE_READONLY_ROLLBACK = 776  # a hot rollback journal, which a read-only connection cannot undo


class RegistryNotCreated(LookupError):
    """A reader found no registry (no ingest has opened it yet): nothing to read."""


class RegistryAwaitsWriter(LookupError):
    """A reader found the registry in a state only a writer resolves (a transaction to roll back,
    WAL side files to create); readable again once the ingest has opened it."""


# The registries this process has open (readers and writers), by real path: a reader reads the
# database file's header itself only while this process holds no connection to it (_check_readable)
_OPEN: collections.Counter[str] = collections.Counter()
_OPEN_LOCK = threading.Lock()


def _hold(path: Path) -> str:
    """Count a connection of this process to ``path`` before it opens; its key for _release."""
    key = os.path.realpath(path)
    with _OPEN_LOCK:
        _OPEN[key] += 1
    return key


def _release(key: str) -> None:
    with _OPEN_LOCK:
        _OPEN[key] -= 1
        if _OPEN[key] <= 0:
            del _OPEN[key]


def _check_readable(path: Path) -> None:
    """A reader's check before it opens ``path``: a WAL database without its ``-shm`` file
    (last closed by a writer that removed its side files) would make the reader create them.
    The header is read only while this process holds no connection to the file: closing any
    descriptor of a file drops every POSIX lock the process has on it, SQLite's included
    ("How To Corrupt An SQLite Database", 2.2), and the next connection of another process to
    close would then remove the side files under the live writer and lose its commits. Nothing
    needs reading with ``-shm`` there, nor with no ``-shm`` beside a connection of this process
    (an open WAL connection keeps ``-shm``: that database is not in WAL)."""
    if Path(f"{path}-shm").exists():
        return
    with _OPEN_LOCK:  # no connection of this process opens on the file while it is read
        if _OPEN[os.path.realpath(path)]:
            return
        with path.open("rb") as file:
            header = file.read(20)
    wal = len(header) == 20 and header[18] == 2  # the file format's write version: 2 is WAL
    if wal:
        raise RegistryAwaitsWriter(
            f"registry {path} is in WAL mode without its -wal/-shm files: readable once the ingest opens it"
        )


def check_version(version: int, known: int, where: str) -> None:
    """A SQLite registry's schema newer than this program's (``known``) is an error (PostgreSQL's:
    ``Database.version``)."""
    if version > known:
        raise RuntimeError(
            f"registry {where} has schema version {version}, newer than this program's {known}: "
            "upgrade crystalline"
        )


def failure_class(reason: str) -> str:
    """The kind of a failure, few enough to count and label a metric by: the reason up to its
    details (a parenthesis or a colon), digits as ``N``. "too large (12 bytes > 10)" is "too
    large", "extractor error (ValueError: ...)" "extractor error", "page 3 is unreadable"
    "page N is unreadable"."""
    head = re.split(r" \(|:", reason, maxsplit=1)[0]
    return re.sub(r"\d+", "N", head).strip()[:60] or "other"


@dataclass
class Record:
    """One registry row to write."""

    entry: str
    doc_id: str
    source: str
    origin: str
    state: str
    reason: str = ""
    kind: str = ""
    content_hash: str = ""
    simhash: int = 0
    chars: int = 0
    tokens: int = 0
    split: str = ""
    shard: int | None = None
    title: str = ""
    language: str = ""
    file_key: str = ""  # a dropped file's device:inode:size:mtime:ctime (see DropFolder)
    rule: str = ""  # the filter or duplicate test that decided a filtered or duplicate row
    language_score: float = 0.0
    minhash: list[int] = field(default_factory=list)  # LSH band keys of a stored document
    minhash_signature: bytes = b""  # its packed signature (minhash.pack); none: no bands kept
    edits: dict[str, int] = field(default_factory=dict)  # lines removed / PII replaced per rule
    group: str = ""  # the source it is evaluated under (crystalline.documents.source_group)


class Registry:
    """The registry of one data directory; used by one writer (the ingestor) at a time, and by
    any number of readers (``read_only=True``)."""

    def __init__(self, path: Path, timeout_s: float = 30.0, *, read_only: bool = False) -> None:
        """``read_only``: a reader beside the writer: the file opened read-only (``mode=ro``;
        :class:`RegistryNotCreated` while it does not exist), waiting READER_TIMEOUT_S at most
        for a lock, never migrated. A reader creates and removes no file: a WAL database is read
        through the ``-wal`` and ``-shm`` files, which a read-only connection can use but not
        remove, and would create when they are missing (or fail, "attempt to write a readonly
        database", in a directory it cannot write). A writer keeps them, even once the last one
        closes (:func:`keep_wal_files`; a killed writer leaves them too); the registry stays in
        WAL for good, unless they cannot be kept (see :meth:`close`). A state only a writer
        resolves (a WAL registry without its side files, a hot rollback journal a killed writer
        left) is :class:`RegistryAwaitsWriter`."""
        self.path = Path(path)
        self.read_only = read_only
        if read_only:
            if not self.path.exists():
                raise RegistryNotCreated(f"registry {self.path} does not exist yet")
            _check_readable(self.path)
        self._leave_wal = False  # on close: the side files could not be kept (see close)
        self._held = _hold(self.path)
        try:
            self._sqlite = self._open_reader() if read_only else self._open_writer(timeout_s)
        except BaseException:
            _release(self._held)
            raise
        self.db: Sql = self._sqlite

    def _open_reader(self) -> sqlite3.Connection:
        uri = f"{self.path.absolute().as_uri()}?mode=ro"
        connection = sqlite3.connect(
            uri, uri=True, timeout=READER_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        try:
            version = int(connection.execute("PRAGMA user_version").fetchone()[0])
            check_version(version, SCHEMA_VERSION, str(self.path))
        except sqlite3.OperationalError as exc:
            connection.close()
            if getattr(exc, "sqlite_errorcode", None) != SQLITE_READONLY_ROLLBACK:
                raise
            raise RegistryAwaitsWriter(
                f"registry {self.path} holds a write interrupted by a crash (a hot -journal), "
                "which only a writer rolls back: readable once the ingest opens it"
            ) from exc
        except BaseException:
            connection.close()
            raise
        return connection

    def _open_writer(self, timeout_s: float) -> sqlite3.Connection:
        # The ingestor calls in from worker threads (asyncio.to_thread) and status requests from
        # the loop: one connection shared under the lock of the caller (see Ingestor).
        connection = sqlite3.connect(
            self.path, timeout=timeout_s, isolation_level=None, check_same_thread=False
        )
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            try:  # for readers, even after the last writer closes
                keep_wal_files(connection, self.path)
            except RuntimeError as exc:  # another Python: a rollback journal once stopped (see close)
                log.warning("%s; the registry leaves WAL when its writer closes", exc)
                self._leave_wal = True
            connection.execute("PRAGMA synchronous=FULL")  # a commit is durable before a file moves
            self._sqlite = self.db = connection
            self._migrate()
        except BaseException:
            connection.close()
            raise
        return connection

    def _transaction(self) -> contextlib.AbstractContextManager[None]:
        return self._immediate()

    @contextlib.contextmanager
    def _immediate(self) -> Iterator[None]:
        with self._sqlite:
            self._sqlite.execute("BEGIN IMMEDIATE")
            yield

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the registry for one batch: its duplicate checks and the recording of its
        documents as one step. A SQLite registry has one writer (the ingestor's batch lock);
        ``PgRegistry`` locks it across machines."""
        yield

    def _migrate(self) -> None:
        """Create the schema, or bring an older registry up to :data:`SCHEMA_VERSION`."""
        with self._transaction():
            version = int(self.db.execute("PRAGMA user_version").fetchone()[0])
            check_version(version, SCHEMA_VERSION, str(self.path))
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self.db.execute(statement)
            columns = {str(r[1]) for r in self.db.execute("PRAGMA table_info(documents)")}
            if "file_key" not in columns:  # version 0: entries stay as they are, rows still count
                self.db.execute("ALTER TABLE documents ADD COLUMN file_key TEXT NOT NULL DEFAULT ''")
            self.db.execute(_FILE_KEY_INDEX)
            self.db.execute(_DOC_ID_INDEX)
            for column in DOCUMENTS.after("file_key"):  # schemas 2 and 4
                if column.name not in columns:
                    self.db.execute(f"ALTER TABLE documents ADD COLUMN {column.sql('sqlite')}")
            if version < 2:  # the rule of older rows, from their reasons (all basic filters then)
                self.db.execute("UPDATE documents SET rule = 'basic' WHERE state = 'filtered' AND rule = ''")
                self.db.execute(
                    "UPDATE documents SET rule = CASE WHEN reason LIKE 'same text%' THEN 'exact' "
                    "ELSE 'simhash' END WHERE state = 'duplicate' AND rule = ''"
                )
            self._check_minhash_params()
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _check_minhash_params(self) -> None:
        """Bands and signatures made under other MinHash parameters cannot match new ones: drop
        them (the exact and SimHash indexes still find copies of those documents) and record
        the new ones."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'minhash'").fetchone()
        if row is not None and row[0] != minhash.PARAMS:
            self.db.execute("DELETE FROM minhash_bands")
            self.db.execute("DELETE FROM minhash_signatures")
        self.db.execute(
            "INSERT INTO meta (key, value) VALUES ('minhash', ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (minhash.PARAMS,),
        )

    def backend(self) -> dict[str, object]:
        """Where the registry lives, for status (``PgRegistry``: the database's state too)."""
        return {"kind": "sqlite", "path": str(self.path)}

    def close(self) -> None:
        """A writer that could not keep its side files leaves WAL (a rollback journal), so that
        readers read after a clean stop; a writer killed while it leaves leaves a hot -journal,
        which readers refuse in one line until the ingest runs again."""
        if self._leave_wal:
            self._leave_wal = False
            with contextlib.suppress(sqlite3.OperationalError):  # another connection open: WAL stays
                self._sqlite.execute("PRAGMA busy_timeout=0")
                self._sqlite.execute("PRAGMA journal_mode=DELETE")
        self._sqlite.close()
        if self._held:
            _release(self._held)
            self._held = ""

    def state_of(self, entry: str) -> str | None:
        """The recorded state of a submission, or None if it has not been recorded."""
        row = self.db.execute("SELECT state FROM documents WHERE entry = ?", (sql_text(entry),)).fetchone()
        return str(row[0]) if row else None

    def reason_of(self, entry: str) -> str:
        row = self.db.execute("SELECT reason FROM documents WHERE entry = ?", (sql_text(entry),)).fetchone()
        return str(row[0]) if row else ""

    def find_file(self, file_key: str) -> tuple[str, str, str] | None:
        """``(entry, state, reason)`` of the row recorded for this very file (same device,
        inode, size, mtime and ctime), or None."""
        # "file_key != ''" repeats the partial index's condition: without it SQLite cannot use
        # the index (a full scan, 52-150 ms per dropped file at 500k rows)
        row = self.db.execute(
            "SELECT entry, state, reason FROM documents WHERE file_key = ? AND file_key != '' LIMIT 1",
            (file_key,),
        ).fetchone()
        return (str(row[0]), str(row[1]), str(row[2])) if row else None

    def exact_duplicate(self, content_hash: str) -> str | None:
        """The doc_id of a stored document with this exact text, if any."""
        row = self.db.execute(
            "SELECT doc_id FROM documents WHERE content_hash = ? AND state = 'done' LIMIT 1", (content_hash,)
        ).fetchone()
        return str(row[0]) if row else None

    def near_duplicate(self, fingerprint: int) -> str | None:
        """The doc_id of a stored document within :data:`NEAR_DISTANCE` bits, if any."""
        for band, value in enumerate(bands(fingerprint)):
            rows = self.db.execute(
                "SELECT d.doc_id, d.simhash FROM simhash_bands b JOIN documents d ON d.id = b.doc "
                "WHERE b.band = ? AND b.value = ?",
                (band, value),
            ).fetchall()
            for doc_id, other in rows:
                if hamming(fingerprint, to_unsigned(other)) <= NEAR_DISTANCE:
                    return str(doc_id)
        return None

    def minhash_duplicate(self, keys: list[int], signature: bytes) -> tuple[str, float] | None:
        """``(doc_id, estimated Jaccard)`` of a stored document that shares an LSH band with
        ``keys`` and whose signature is :data:`minhash.THRESHOLD` or more similar to
        ``signature`` (the most similar such document), or None. A shared band alone is only a
        candidate (see :mod:`minhash`); a candidate without a signature is not a duplicate."""
        seen: set[int] = set()
        best: tuple[str, float] | None = None
        for band, value in enumerate(keys):
            rows = self.db.execute(
                "SELECT d.id, d.doc_id, s.signature FROM minhash_bands b JOIN documents d ON d.id = b.doc "
                "LEFT JOIN minhash_signatures s ON s.doc = b.doc WHERE b.band = ? AND b.value = ?",
                (band, value),
            ).fetchall()
            for row_id, doc_id, stored in rows:
                if row_id in seen:
                    continue
                seen.add(row_id)
                estimate = minhash.similarity(signature, bytes(stored or b""))
                if (
                    estimate is not None
                    and estimate >= minhash.THRESHOLD
                    and (best is None or estimate > best[1])
                ):
                    best = (str(doc_id), estimate)
        return best

    def record(self, records: list[Record]) -> None:
        """Write ``records`` in one transaction; entries already present are left as they are."""
        now = time.time()
        with self._transaction():
            for r in records:
                row = self.db.execute(
                    "INSERT INTO documents (entry, doc_id, source, origin, kind, state, reason, "
                    "content_hash, simhash, chars, tokens, split, shard, title, language, created, file_key, "
                    "rule, language_score, source_group) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT DO NOTHING RETURNING id",
                    (
                        sql_text(r.entry),
                        r.doc_id,
                        sql_text(r.source),
                        r.origin,
                        r.kind,
                        r.state,
                        sql_text(r.reason),
                        r.content_hash,
                        to_signed(r.simhash),
                        r.chars,
                        r.tokens,
                        r.split,
                        r.shard,
                        sql_text(r.title),
                        r.language,
                        now,
                        r.file_key,
                        r.rule,
                        r.language_score,
                        sql_text(r.group),
                    ),
                ).fetchone()
                if row is None:  # recorded already
                    continue
                row_id = row[0]
                if r.edits:
                    self.db.executemany(
                        "INSERT INTO text_edits (doc, rule, count) VALUES (?, ?, ?)",
                        [(row_id, rule, n) for rule, n in r.edits.items()],
                    )
                if r.state == "done" and r.content_hash:
                    self.db.executemany(
                        "INSERT INTO simhash_bands (band, value, doc) VALUES (?, ?, ?)",
                        [(i, v, row_id) for i, v in enumerate(bands(r.simhash))][:BANDS],
                    )
                    # bands only with the signature that verifies them: a document recovered
                    # from a shard written before signatures has bands of the old hash family
                    if r.minhash and minhash.unpack(r.minhash_signature) is not None:
                        self.db.executemany(
                            "INSERT INTO minhash_bands (band, value, doc) VALUES (?, ?, ?)",
                            [(i, v, row_id) for i, v in enumerate(r.minhash)],
                        )
                        self.db.execute(
                            "INSERT INTO minhash_signatures (doc, signature) VALUES (?, ?)",
                            (row_id, r.minhash_signature),
                        )

    def counts(self) -> dict[str, int]:
        """Documents per state, and tokens stored (train and validation)."""
        out = dict.fromkeys(STATES, 0)
        for state, n in self.db.execute("SELECT state, COUNT(*) FROM documents GROUP BY state"):
            out[str(state)] = int(n)
        tokens = self.db.execute("SELECT COALESCE(SUM(tokens), 0) FROM documents WHERE state = 'done'")
        out["tokens"] = int(tokens.fetchone()[0])
        val = self.db.execute("SELECT COUNT(*) FROM documents WHERE state = 'done' AND split = 'val'")
        out["validation_documents"] = int(val.fetchone()[0])
        return out

    def counts_by_rule(self) -> dict[str, dict[str, int]]:
        """Filtered and duplicate documents per rule, failed ones per kind of reason
        (:func:`failure_class`), lines removed per line rule and PII replaced per kind (over
        every document extracted)."""
        out: dict[str, dict[str, int]] = {
            "filtered": {},
            "duplicate": {},
            "failed": {},
            "lines_removed": {},
            "pii": {},
        }
        for reason, n in self.db.execute(
            "SELECT reason, COUNT(*) FROM documents WHERE state = 'failed' GROUP BY reason"
        ):
            kind = failure_class(str(reason))
            out["failed"][kind] = out["failed"].get(kind, 0) + int(n)
        rows = self.db.execute(
            "SELECT state, rule, COUNT(*) FROM documents WHERE state IN ('filtered', 'duplicate') "
            "GROUP BY state, rule"
        )
        for state, rule, n in rows:
            out[str(state)][str(rule) or "other"] = int(n)
        for rule, n in self.db.execute("SELECT rule, SUM(count) FROM text_edits GROUP BY rule"):
            key, name = ("pii", rule[4:]) if rule.startswith("pii_") else ("lines_removed", rule)
            out[key][str(name)] = int(n)
        return out

    def surprise_known(self, doc_ids: list[str]) -> set[str]:
        """Those of ``doc_ids`` whose surprise is recorded (measured once, never again)."""
        if not doc_ids:
            return set()
        marks = ", ".join("?" * len(doc_ids))
        rows = self.db.execute(
            f"SELECT doc_id FROM documents WHERE surprise IS NOT NULL AND doc_id IN ({marks})", tuple(doc_ids)
        )
        return {str(r[0]) for r in rows}

    def record_surprise(self, measured: list[tuple[str, float]]) -> None:
        """Record each stored document's surprise, in one transaction; one already recorded
        keeps its first value."""
        if not measured:
            return
        with self._transaction():
            self.db.executemany(
                "UPDATE documents SET surprise = ? WHERE doc_id = ? AND state = 'done' AND surprise IS NULL",
                [(loss, doc_id) for doc_id, loss in measured],
            )

    def surprise_by_source(self) -> dict[str, tuple[int, float]]:
        """Per source: documents whose surprise is recorded, and their mean surprise."""
        rows = self.db.execute(
            "SELECT source_group, COUNT(*), AVG(surprise) FROM documents WHERE surprise IS NOT NULL "
            "GROUP BY source_group"
        )
        return {str(g): (int(n), float(mean)) for g, n, mean in rows}

    def latest(self, limit: int, origin: str = "") -> list[dict[str, Any]]:
        """The newest ``limit`` documents (of one ``origin``: "crawl", "drop", ...), newest
        first, as :data:`LATEST_FIELDS`."""
        where, params = ("WHERE origin = ? ", (origin, limit)) if origin else ("", (limit,))
        rows = self.db.execute(
            f"SELECT {', '.join(LATEST_FIELDS)} FROM documents {where}ORDER BY id DESC LIMIT ?", params
        )
        return [dict(zip(LATEST_FIELDS, row, strict=True)) for row in rows]

    def entries(self) -> set[str]:
        return {str(r[0]) for r in self.db.execute("SELECT entry FROM documents")}
