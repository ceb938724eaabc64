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
from crystalline.sql_tables import TYPES, Column, Dialect, Table, columns

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
        assert [c[0] for c in pg] == [c[0] for c in lite] + extra, table.name
        assert [c[0] for c in lite] == [c.name for c in table.columns], table.name
        for column, (_, lite_type, lite_not_null), (_, pg_type, pg_not_null) in zip(
            table.columns, lite, pg[: len(lite)], strict=True
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
