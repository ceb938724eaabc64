"""The document registry on PostgreSQL, shared by the ingest of several machines (issue 17).

The SQLite registry's tables (``registry.py``) with PostgreSQL's types, in the ``registry``
schema of the database ``--database`` names, created and migrated here (``schema_versions``).
What sharing needs is one thing: two machines that fetched the same text keep one copy. A
batch's duplicate checks (exact hash, MinHash LSH, SimHash bands), the durable write of its
tokens and the recording of its documents run inside :meth:`PgRegistry.exclusive`: one
transaction holding an advisory lock that every machine's ingest takes, so the second machine's
checks see the first one's rows. A reader (``read_only=True``, the dashboard's) neither creates
nor migrates the schema, and its transactions are read-only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from ..postgres import Database
from ..sql_tables import add_columns
from ..statement_deadline import STATEMENT_TIMEOUT_S
from .registry import (
    DOCUMENTS,
    META,
    MINHASH_BANDS,
    MINHASH_SIGNATURES,
    SIMHASH_BANDS,
    TEXT_EDITS,
    Registry,
    RegistryNotCreated,
)

# The SQLite registry's tables (``registry.TABLES``) in PostgreSQL's types. Each migration is
# frozen: it names the last column it makes (a column added to a definition later comes with a
# migration of its own; tests/pkg/test_sql_tables.py checks both).
_SCHEMA_V1 = f"""
{DOCUMENTS.create("postgresql", "language_score")};
CREATE INDEX documents_hash ON documents (content_hash) WHERE state = 'done';
CREATE INDEX documents_file_key ON documents (file_key) WHERE file_key != '';
{SIMHASH_BANDS.create("postgresql", "doc")};
CREATE INDEX simhash_bands_lookup ON simhash_bands (band, value);
{MINHASH_BANDS.create("postgresql", "doc")};
CREATE INDEX minhash_bands_lookup ON minhash_bands (band, value);
{MINHASH_SIGNATURES.create("postgresql", "signature")};
{TEXT_EDITS.create("postgresql", "count")};
{META.create("postgresql", "value")}
"""
# SQLite's schema 4: the source a document is evaluated under, its surprise (NULL until measured)
_SCHEMA_V2 = add_columns("documents", DOCUMENTS.after("language_score", upto="surprise"), "postgresql")
# SQLite's schema 5: the surprise lookups by doc_id use an index instead of scanning the table
_SCHEMA_V3 = """
CREATE INDEX documents_doc_id ON documents (doc_id)
"""
MIGRATIONS = (_SCHEMA_V1, _SCHEMA_V2, _SCHEMA_V3)


class PgRegistry(Registry):
    """The registry in the PostgreSQL database at ``url``, shared by every machine's ingest."""

    def __init__(
        self, url: str, *, read_only: bool = False, statement_timeout_s: float = STATEMENT_TIMEOUT_S
    ) -> None:
        """``read_only``: a reader (one connection, read-only transactions, short statement
        timeouts); :class:`RegistryNotCreated` while no ingest has created the schema.
        ``statement_timeout_s``: the server cancels a statement after this long."""
        name = "crystalline-registry-reader" if read_only else "crystalline-registry"
        self._pg = Database(
            url,
            "registry",
            name=name,
            max_size=1 if read_only else 4,
            read_only=read_only,
            statement_timeout_s=statement_timeout_s,
        )
        self.db = self._pg
        self.path = Path(self._pg.redacted())
        try:
            if read_only:
                if not self._pg.version(len(MIGRATIONS)):
                    raise RegistryNotCreated(f"registry {self.path}: no schema yet (no ingest has opened it)")
                return
            self._pg.migrate(MIGRATIONS)
            with self._transaction():
                self._check_minhash_params()
        except BaseException:
            self._pg.close()
            raise

    def _transaction(self) -> contextlib.AbstractContextManager[None]:
        return self._pg.transaction()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """One transaction, under the registry's advisory lock, for this thread's calls: the
        duplicate checks of a batch and its records, one machine at a time."""
        with self._pg.transaction():
            self._pg.lock("registry")
            yield

    def backend(self) -> dict[str, object]:
        return {"kind": "postgresql", **self._pg.state()}

    def close(self) -> None:
        self._pg.close()


def open_registry(
    database: str | None,
    path: Path,
    *,
    read_only: bool = False,
    timeout_s: float = 30.0,
    statement_timeout_s: float = STATEMENT_TIMEOUT_S,
) -> Registry:
    """The SQLite registry at ``path``, or the PostgreSQL one when ``database`` is a URL (a
    reader of it with ``read_only``). ``timeout_s``: a writer's wait for SQLite's lock;
    ``statement_timeout_s``: PostgreSQL's deadline on a statement (see ``crystalline.postgres``)."""
    if database:
        return PgRegistry(database, read_only=read_only, statement_timeout_s=statement_timeout_s)
    return Registry(path, timeout_s, read_only=read_only)
