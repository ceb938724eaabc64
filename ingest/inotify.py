"""inotify on one directory through libc (ctypes): names as the kernel gives them (bytes), and
the queue overflow reported, so the drop folder knows when to rescan.

watchdog hides ``IN_Q_OVERFLOW`` behind a log line and starts one inotify instance and two
threads per watch; the drop folder needs one directory, a handful of event kinds and the
overflow, for the daemon's whole life, so this is one inotify descriptor whose watch is moved
when the directory is recreated (never a second instance).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import select
import struct
from dataclasses import dataclass

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

#: What the drop folder watches: a file complete (closed after writing, or renamed in), a file
#: created (it may be moved in from elsewhere: no close event follows), the folder itself gone.
DROP_MASK = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
#: The directory's watch is gone (deleted, moved away, unmounted): it must be watched again.
GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED | IN_UNMOUNT

_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len
_READ_SIZE = 64 * 1024  # one read returns at most this many bytes of events (a bounded buffer)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]


@dataclass(frozen=True)
class Event:
    """One inotify event: its mask and the name in the directory (``b""`` for the directory)."""

    mask: int
    name: bytes


def _check(result: int, what: str) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return result


class DirectoryWatch:
    """One inotify instance watching at most one directory at a time."""

    def __init__(self) -> None:
        self.fd = _check(_libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC), "inotify_init1")
        self._wd: int | None = None

    def watch(self, path: str | bytes, mask: int = DROP_MASK) -> None:
        """Watch ``path`` (a directory, not followed if a link), replacing the previous watch."""
        self.unwatch()
        self._wd = _check(
            _libc.inotify_add_watch(self.fd, os.fsencode(path), mask | IN_DONT_FOLLOW), "inotify"
        )

    def unwatch(self) -> None:
        if self._wd is not None:
            _libc.inotify_rm_watch(self.fd, self._wd)  # EINVAL if the kernel already removed it
            self._wd = None

    def read(self, timeout_s: float, wake_fd: int | None = None) -> list[Event]:
        """Events available within ``timeout_s`` (none: ``[]``); returns early when ``wake_fd``
        becomes readable. Events of an older watch (before :meth:`watch` moved it) are dropped."""
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        if wake_fd is not None:
            poller.register(wake_fd, select.POLLIN)
        ready = {fd for fd, _ in poller.poll(max(0.0, timeout_s) * 1000)}
        if self.fd not in ready:
            return []
        try:
            data = os.read(self.fd, _READ_SIZE)
        except BlockingIOError:
            return []
        except OSError as e:
            if e.errno == errno.EINTR:
                return []
            raise
        events: list[Event] = []
        offset = 0
        while offset + _HEADER.size <= len(data):
            wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
            offset += _HEADER.size
            name = data[offset : offset + length].rstrip(b"\0")
            offset += length
            if mask & IN_Q_OVERFLOW or wd == self._wd:
                events.append(Event(mask, name))
        return events

    def close(self) -> None:
        self.unwatch()
        os.close(self.fd)
