"""Keep a SQLite database's ``-wal`` and ``-shm`` files when its last connection closes
(``SQLITE_FCNTL_PERSIST_WAL``), so a read-only reader always finds them and never has to create
them (a ``mode=ro`` connection to a WAL database without them creates them, or fails in a
directory it cannot write). Leaving WAL instead, on close, is not crash-safe: it rewrites page 1
through a rollback journal, and a writer killed then leaves a hot ``-journal`` that no read-only
connection can roll back.

Python's :mod:`sqlite3` has no ``file_control`` (3.11-3.13), so it is called through ctypes on
the SQLite library the module itself uses, with the connection's ``sqlite3 *`` read from the
CPython object (the first field after the object header: ``Modules/_sqlite/connection.h``,
3.11 to 3.14). The version gate (``LAYOUT_KNOWN``) is the only guard of that read: the check of
the handle against the database's file name is a sanity check, since a wrong layout would crash
the process in ``sqlite3_db_filename`` rather than fail closed. Any failure here is a
RuntimeError: the registry then opens without keeping its side files (see ``Registry.close``)."""

from __future__ import annotations

import _sqlite3
import ctypes
import os
import sqlite3
import sys
from pathlib import Path

SQLITE_OK = 0
SQLITE_FCNTL_PERSIST_WAL = 10
LAYOUT_KNOWN = ((3, 11), (3, 14))  # CPython versions whose sqlite3.Connection starts with ``db``


def _library() -> ctypes.CDLL:
    """The SQLite library :mod:`sqlite3` is linked to (dlsym on the extension module searches its
    dependencies; the interpreter's own symbols where ``_sqlite3`` is built in or hides them), so
    one SQLite owns the process's POSIX locks: checked by its version (that of the module's)."""
    major, minor, patch = sqlite3.sqlite_version_info
    expected = major * 1_000_000 + minor * 1_000 + patch
    found: list[str] = []
    for name in dict.fromkeys((getattr(_sqlite3, "__file__", None), None)):
        try:
            library = ctypes.CDLL(name)
            library.sqlite3_db_filename.restype = ctypes.c_char_p
            library.sqlite3_db_filename.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            library.sqlite3_file_control.restype = ctypes.c_int
            library.sqlite3_file_control.argtypes = [
                ctypes.c_void_p,
                ctypes.c_char_p,
                ctypes.c_int,
                ctypes.c_void_p,
            ]
            version = int(library.sqlite3_libversion_number())
        except (OSError, AttributeError) as exc:  # no such file, or no sqlite3_* symbols in it
            found.append(str(exc))
            continue
        if version == expected:
            return library
        found.append(f"{name or 'the interpreter'}: SQLite {version}, not the module's {expected}")
    raise RuntimeError(
        f"cannot keep the registry's WAL files: this Python's SQLite is not reachable ({'; '.join(found)})"
    )


def _handle(connection: sqlite3.Connection, path: Path, library: ctypes.CDLL) -> int:
    """The connection's ``sqlite3 *``, checked: it names ``path`` as its main database."""
    low, high = LAYOUT_KNOWN
    if sys.implementation.name != "cpython" or not low <= sys.version_info[:2] <= high:
        raise RuntimeError(
            f"cannot keep the registry's WAL files on {sys.implementation.name} "
            f"{sys.version_info[0]}.{sys.version_info[1]}: its sqlite3.Connection layout is not "
            f"known here (CPython {low[0]}.{low[1]} to {high[0]}.{high[1]})"
        )
    handle = ctypes.c_void_p.from_address(id(connection) + object.__basicsize__).value
    named = library.sqlite3_db_filename(handle, b"main") if handle else None
    if handle is None or named is None or os.path.realpath(os.fsdecode(named)) != os.path.realpath(path):
        raise RuntimeError(f"cannot keep the WAL files of {path}: the connection's handle names {named!r}")
    return handle


def keep_wal_files(connection: sqlite3.Connection, path: Path) -> None:
    """Make the connection, when it closes last, checkpoint and keep its ``-wal`` (truncated
    to nothing where ``journal_size_limit`` is set) and ``-shm`` files rather than remove them."""
    library = _library()
    flag = ctypes.c_int(1)
    handle = _handle(connection, path, library)
    code = library.sqlite3_file_control(handle, b"main", SQLITE_FCNTL_PERSIST_WAL, ctypes.byref(flag))
    if code != SQLITE_OK:
        raise RuntimeError(f"cannot keep the WAL files of {path}: sqlite3_file_control returned {code}")
