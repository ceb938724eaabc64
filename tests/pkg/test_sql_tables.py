"""One definition of the frontier's and the registry's tables for both backends
(``crystalline.sql_tables``): a SQLite file and a PostgreSQL schema made by the two backends
have the same columns in the same order, NOT NULL where the other has it, in each dialect's
type; PostgreSQL's frontier has its cluster columns on top and nothing else."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from crystalline.crawler import frontier, frontier_pg
from crystalline.ingest import registry, registry_pg
from crystalline.postgres import Database
from crystalline.sql_tables import TYPES, Column, Dialect, Table, columns
from tests._postgres import PgCluster

# what a cluster needs on top of the SQLite frontier (host leases, the claimer of a URL)
PG_ONLY = {"urls": ["claimed_by"], "hosts": ["lease_owner", "lease_until"]}
PG_TYPES = {"integer": "INTEGER", "bigint": "BIGINT", "double precision": "DOUBLE PRECISION", "text": "TEXT",
            "bytea": "BYTEA"}  # fmt: skip


def sqlite_columns(path: Path, table: str) -> list[tuple[str, str, bool]]:
    db = sqlite3.connect(path)
    try:
        return [(r[1], r[2], bool(r[3] or r[5])) for r in db.execute(f"PRAGMA table_info({table})")]
    finally:
        db.close()


def pg_columns(url: str, schema: str, table: str) -> list[tuple[str, str, bool]]:
    import psycopg

    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns"
            " WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
            (schema, table),
        ).fetchall()
    return [(name, PG_TYPES[kind], nullable == "NO") for name, kind, nullable in rows]


def declared(column: Column, dialect: Dialect) -> str:
    """The type a backend reports for ``column`` (a row id: SQLite's INTEGER, PostgreSQL's BIGINT)."""
    return TYPES[column.type][dialect].removesuffix(" PRIMARY KEY").split(" GENERATED")[0]


@pytest.mark.parametrize(
    ("schema", "tables", "open_sqlite", "open_pg", "file"),
    [
        ("frontier", frontier.TABLES, frontier.Frontier, frontier_pg.PgFrontier, "frontier.sqlite"),
        ("registry", registry.TABLES, registry.Registry, registry_pg.PgRegistry, "registry.sqlite3"),
    ],
)
def test_both_backends_make_the_same_columns_from_one_definition(
    tmp_path: Path,
    pg_url: str,
    schema: str,
    tables: tuple[Table, ...],
    open_sqlite: Callable[[Path], object],
    open_pg: Callable[[str], object],
    file: str,
) -> None:
    for opened in (open_sqlite(tmp_path / file), open_pg(pg_url)):
        opened.close()  # type: ignore[attr-defined]
    for table in tables:
        lite = sqlite_columns(tmp_path / file, table.name)
        pg = pg_columns(pg_url, schema, table.name)
        extra = PG_ONLY.get(table.name, []) if schema == "frontier" else []
        # the cluster's columns come where their migration put them (a later column after them)
        assert sorted(c[0] for c in pg if c[0] in extra) == sorted(extra), table.name
        shared = [c for c in pg if c[0] not in extra]
        assert [c[0] for c in shared] == [c[0] for c in lite], table.name
        assert [c[0] for c in lite] == [c.name for c in table.columns], table.name
        for column, (_, lite_type, lite_not_null), (_, pg_type, pg_not_null) in zip(
            table.columns, lite, shared, strict=True
        ):
            assert (lite_type, pg_type) == (declared(column, "sqlite"), declared(column, "postgresql"))
            # SQLite's rowid alias reports no NOT NULL, a primary key in PostgreSQL is NOT NULL
            assert lite_not_null == pg_not_null or "PRIMARY KEY" in column.rest or column.type == "id", column


def test_a_column_written_wrong_is_one_line_naming_it() -> None:
    assert columns("n int NOT NULL  -- a count\n-- a comment line\nname text") == (
        Column("n", "int", "NOT NULL"),
        Column("name", "text"),
    )
    with pytest.raises(ValueError, match="column 'queued': expected 'name type"):
        columns("queued")
    with pytest.raises(ValueError, match="column n: unknown type 'integer'"):
        columns("n integer NOT NULL")


# What each shipped PostgreSQL migration left, kept here as the record (a shipped migration never
# changes): per version, each table's columns of its definition up to the one named, then the
# cluster's columns (the frontier's host leases and claimer).
FRONTIER_V1 = {
    "urls": ("judged_n", ["claimed_by"]),
    "hosts": ("errors", ["lease_owner", "lease_until"]),
    "patterns": ("trapped", []),
    "drops": ("n", []),
    "robots": ("body", []),
    "meta": ("value", []),
}
REGISTRY_V1 = {
    "documents": ("language_score", []),
    "simhash_bands": ("doc", []),
    "minhash_bands": ("doc", []),
    "minhash_signatures": ("signature", []),
    "text_edits": ("count", []),
    "meta": ("value", []),
}
REGISTRY_V2 = {**REGISTRY_V1, "documents": ("surprise", [])}
SHIPPED = {"frontier": [FRONTIER_V1], "registry": [REGISTRY_V1, REGISTRY_V2, REGISTRY_V2]}  # v3: an index


@pytest.mark.parametrize(
    ("schema", "tables", "migrations", "open_pg"),
    [
        ("frontier", frontier.TABLES, frontier_pg.MIGRATIONS, frontier_pg.PgFrontier),
        ("registry", registry.TABLES, registry_pg.MIGRATIONS, registry_pg.PgRegistry),
    ],
)
def test_a_database_upgraded_from_each_shipped_version_has_the_columns_of_a_fresh_one(
    pg_cluster: PgCluster,
    pg_url: str,
    schema: str,
    tables: tuple[Table, ...],
    migrations: tuple[str, ...],
    open_pg: Callable[[str], object],
) -> None:
    definitions = {t.name: t for t in tables}
    open_pg(pg_url).close()  # type: ignore[attr-defined]
    fresh = {name: pg_columns(pg_url, schema, name) for name in definitions}
    assert len(migrations) == len(SHIPPED[schema]), "a new migration: record what it leaves in SHIPPED"
    for version, shipped in enumerate(SHIPPED[schema], 1):
        url = pg_cluster.create_database()
        try:
            old = Database(url, schema)
            try:
                assert old.migrate(migrations[:version]) == version
            finally:
                old.close()
            for name, (last, cluster) in shipped.items():
                made = [c[0] for c in pg_columns(url, schema, name)]
                assert made == [c.name for c in definitions[name].upto(last)] + cluster, (
                    f"{schema} migration {version} no longer makes what it shipped with: {name} {made}"
                )
            open_pg(url).close()  # type: ignore[attr-defined]
            assert {name: pg_columns(url, schema, name) for name in definitions} == fresh, version
        finally:
            pg_cluster.drop_database(url)


@pytest.mark.parametrize(
    ("schema", "tables", "open_pg"),
    [
        ("frontier", frontier_pg.TABLES, frontier_pg.PgFrontier),
        ("registry", registry.TABLES, registry_pg.PgRegistry),
    ],
)
def test_every_column_of_the_definitions_is_made_by_a_migration(
    pg_url: str, schema: str, tables: tuple[Table, ...], open_pg: Callable[[str], object]
) -> None:
    """The definitions are what the last migration leaves: a column added to one without a
    migration of its own fails here (the shipped migrations name their last columns)."""
    open_pg(pg_url).close()  # type: ignore[attr-defined]
    for table in tables:
        made = {name: (kind, not_null) for name, kind, not_null in pg_columns(pg_url, schema, table.name)}
        defined = {
            c.name: (
                declared(c, "postgresql"),
                "NOT NULL" in c.rest or "PRIMARY KEY" in c.rest or c.type == "id",
            )
            for c in table.columns
        }
        missing = sorted(defined.keys() - made.keys())
        assert not missing, (
            f"{schema}.{table.name}: {missing} defined but made by no migration: add one (ALTER TABLE ..."
            " ADD COLUMN); a shipped migration never changes"
        )
        assert made == defined, (
            f"{schema}.{table.name}: the migrations make {made}, the definition says {defined}"
        )
