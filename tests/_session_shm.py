"""The test session's own /dev/shm: a private mount namespace with a fresh tmpfs on /dev/shm,
made once, when this module is first imported (by tests/conftest.py, before any test starts a
process), and inherited by every process the tests start. Sessions running side by side on one
machine shared /dev/shm: one's leak check (tests/conftest.py) took another's segments for leaks
(a killed run's, left for the next start's sweep) and removed them, failing both.

A plain module, imported once: tests/conftest.py is loaded as ``conftest`` by pytest, so a test
importing it as ``tests.conftest`` ran its body a second time (a second namespace, a second tmpfs
over the first). The namespace is also recorded in the environment, so a process that inherited
it (a pytest started by a test) does not make one more."""

from __future__ import annotations

import ctypes
import os
import threading

CLONE_NEWNS, MS_NOSUID, MS_NODEV, MS_REC, MS_PRIVATE = 0x20000, 2, 4, 1 << 14, 1 << 18
SIZE_CAP = 4 << 30  # a session's tmpfs at most (the segments of its tests take far less)
NAMESPACE_ENV = "CRYSTALLINE_TEST_SHM_NAMESPACE"  # the mount namespace (inode) holding the tmpfs


def _namespace() -> str:
    return str(os.stat("/proc/self/ns/mnt").st_ino)


def private_dev_shm() -> bool:
    """Enter a private mount namespace with a tmpfs on /dev/shm (the shared one's size, at most
    SIZE_CAP): True, or True at once where this process is in one already. Needs root and a
    process with one thread (unshare moves only the calling thread); otherwise (False) the
    shared /dev/shm stays."""
    if os.environ.get(NAMESPACE_ENV) == _namespace():
        return True
    if threading.active_count() != 1:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    shared = os.statvfs("/dev/shm")
    if libc.unshare(CLONE_NEWNS) != 0:
        return False
    options = f"size={min(shared.f_blocks * shared.f_frsize, SIZE_CAP)},mode=1777".encode()
    made = (
        libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) == 0
        and libc.mount(b"tmpfs", b"/dev/shm", b"tmpfs", MS_NOSUID | MS_NODEV, options) == 0
    )
    if made:
        os.environ[NAMESPACE_ENV] = _namespace()
    return made


PRIVATE_DEV_SHM = private_dev_shm()
