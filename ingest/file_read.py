"""Reading a whole file, never more than a limit: the one way the drop folder, ``crystalline
extract`` and ``crystalline ingest`` read the files they are given.

Only a regular file is read. Anything else (a FIFO, a socket, a device such as ``/dev/zero``, a
directory) is refused before it is opened and again after (``fstat`` of what was opened, for a
name swapped in between); it is opened with ``O_NONBLOCK``, so even a FIFO swapped in never
blocks the open. At most ``limit + 1`` bytes are read, so a file that grows after its size was
taken is read no further than that and called too large.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

#: What a file that is not regular is, in the reasons given for refusing it.
KINDS = {
    stat.S_IFLNK: "symbolic link",
    stat.S_IFIFO: "FIFO",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFDIR: "directory",
}
_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class NotRegular(ValueError):
    """A named file that is not a regular file; its message is the one-line reason."""


def _refuse_irregular(st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = KINDS.get(stat.S_IFMT(st.st_mode), "special file")
        raise NotRegular(f"not a regular file ({kind})")


def read_at_most(fd: int, size: int, limit: int) -> bytes:
    """The bytes of the open regular file ``fd`` (``size``: its size from fstat), at most
    ``limit + 1`` of them (more than ``limit`` means too large)."""
    chunks: list[bytes] = []
    offset = 0
    while offset <= limit:
        # pread allocates what it is asked for: ask for the size fstat gave plus one (a writer
        # may still append), not for limit + 1 (64 MB for a 1 kB file, a MemoryError under a
        # tight RLIMIT_AS)
        want = max(size + 1 - offset, 1 << 20)
        chunk = os.pread(fd, min(want, limit + 1 - offset), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def read_named(path: Path, limit: int) -> tuple[bytes, os.stat_result]:
    """A file named by the user (a symbolic link is followed: the file it names is checked) and
    its fstat; the body is empty when the size is over ``limit`` (not read), and has
    ``limit + 1`` bytes when the file grew past it while read. Raises :class:`NotRegular` for
    anything but a regular file, OSError when it cannot be opened or read."""
    _refuse_irregular(os.stat(path))  # a device or FIFO is not even opened
    fd = os.open(path, _FLAGS)
    try:
        st = os.fstat(fd)
        _refuse_irregular(st)
        return (b"" if st.st_size > limit else read_at_most(fd, st.st_size, limit)), st
    finally:
        os.close(fd)
