"""Durable writes shared by every part that stores something: a file appears complete or not
at all (temp file in the same directory, fsync, rename), and a rename survives a crash once
its directory is fsynced. What it creates is private to the daemon's user and group whatever
the umask: files ``FILE_MODE`` (0640), directories ``DIR_MODE`` (0750)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

FILE_MODE = 0o640
DIR_MODE = 0o750


def fsync_dir(path: Path) -> None:
    """Fsync a directory so entries created, renamed or removed in it survive a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, sync_dir: bool = False) -> None:
    """Write ``data`` to ``path`` through a fsynced temp file and a rename; on any failure (a
    full disk) the temp file is removed, so nothing partial is left taking space. The file
    gets ``FILE_MODE`` (mkstemp's 0600 would hide it from the daemon's group)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), FILE_MODE)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(path.parent)
