"""A throwaway PostgreSQL cluster for the tests (issue 17): initdb into a temporary directory,
started by the test session on a free loopback port, as an unprivileged user when the tests run
as root (postgres refuses root). Tests that need it skip with one line when PostgreSQL or psycopg
cannot be had."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


def _bindir() -> Path | None:
    """Where initdb, pg_ctl and postgres are (Debian keeps them out of PATH), or None."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    return Path(versions[-1]).parent if versions else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    """One postgres server: ``url(name)`` for its databases, ``stop``/``start``/``restart``."""

    def __init__(self, bindir: Path, root: Path, user: str | None) -> None:
        self.bindir = bindir
        self.data = root / "data"
        self.sockets = root / "sockets"
        self.port = free_port()
        self.user = user  # run as this user (None: as ourselves)
        self.log = root / "postgres.log"
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")

    def _run(self, tool: str, *args: str, timeout: float = 60.0) -> None:
        subprocess.run(
            [str(self.bindir / tool), *args],
            check=True,
            timeout=timeout,
            user=self.user,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start"
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def url(self, database: str = "postgres", port: int | None = None) -> str:
        return f"postgresql://postgres@127.0.0.1:{port or self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def start_cluster() -> tuple[PgCluster | None, str, Path | None]:
    """A started cluster, or None and why not (one line)."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        return None, f"PostgreSQL tests need psycopg (pip install 'crystalline[postgres]'): {exc}", None
    bindir = _bindir()
    if bindir is None or not (bindir / "initdb").exists():
        return None, "PostgreSQL is not installed (apt-get install postgresql; test.sh does it as root)", None
    user: str | None = None
    root = Path(tempfile.mkdtemp(prefix="crystalline-pg-"))
    if os.geteuid() == 0:
        user = "nobody"
        entry = pwd.getpwnam(user)
        os.chmod(root, 0o755)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    (root / "sockets").mkdir()
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(root / "sockets", entry.pw_uid, entry.pw_gid)
    try:
        cluster = PgCluster(bindir, root, user)
        cluster.start()
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        shutil.rmtree(root, ignore_errors=True)
        why = f"cannot start a PostgreSQL cluster: {exc} {detail.decode(errors='replace')[-200:]}"
        return None, why, None
    return cluster, "", root


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    cluster, why, root = start_cluster()
    if cluster is None:
        pytest.skip(why)
    try:
        yield cluster
    finally:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            cluster.stop()
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> Iterator[str]:
    """A fresh database on the session's cluster, dropped after the test."""
    url = pg_cluster.create_database()
    try:
        yield url
    finally:
        with contextlib.suppress(Exception):
            pg_cluster.drop_database(url)
