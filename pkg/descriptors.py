"""File descriptors against ``RLIMIT_NOFILE``: how many a process may still open, so that a
cache of open files (the token store's shard maps, one descriptor each) is sized from the
limit instead of a constant, and a limit too low to run at all is one clear error.

The daemon raises its soft limit to the hard limit at start, as most daemons do: the soft
limit is 1024 on many systems, 64 in a restrictive shell, while the hard limit is what the
administrator actually allows.
"""

from __future__ import annotations

import errno
import os
import resource

# Control's engine on the process's ZeroMQ context (it opens none of its own), measured with
# /proc/self/fd (2, 5 and 12 workers; tests/pkg/test_descriptors.py): 6 whatever the worker
# count (the ROUTER's listener and mailbox, the state and grads segments mapped through a
# descriptor each plus their mmap duplicates), 2 more for a ring of its own (a lent ring is
# its owner's, open already when control checks), and one ipc connection per worker.
ENGINE_FIXED = 6
ENGINE_RING = 2
ENGINE_PER_WORKER = 1
# Opened and closed again while running: a checkpoint's temporary files and fsynced
# directories, a restarted worker's /dev/null and exec pipe, a status reply, the store's
# index files read by a refresh.
RESERVE = 16
MIN_SHARD_MAPS = 4  # per reader: fewer, and nearly every batch reopens the maps it needs
MAX_SHARD_MAPS = 1024  # per reader, even under a generous limit: each map is also a VMA


class DescriptorLimitTooLow(OSError):
    """``RLIMIT_NOFILE`` leaves too few descriptors to run (a one-line message)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errno = errno.EMFILE


def raise_soft_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit where allowed; returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # not allowed here: keep the soft limit
            pass
    return soft


def soft_limit() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def open_descriptors() -> int:
    """How many descriptors this process holds now (Linux: /proc/self/fd)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the one listing it
    except OSError:
        return len(os.listdir("/dev/fd")) - 1


def free_descriptors() -> int:
    """What the soft limit leaves this process now, less :data:`RESERVE`."""
    return soft_limit() - open_descriptors() - RESERVE


def engine_descriptors(workers: int, lent_ring: bool = False) -> int:
    """Descriptors the control process's engine holds for ``workers`` worker processes (on
    the process's ZeroMQ context; ``lent_ring``: the ring is not the engine's)."""
    if workers <= 1:
        return 0
    return ENGINE_FIXED + (0 if lent_ring else ENGINE_RING) + ENGINE_PER_WORKER * workers


def _too_low(limit: int, need: int, what: str) -> DescriptorLimitTooLow:
    return DescriptorLimitTooLow(
        f"the open-files limit (RLIMIT_NOFILE) is {limit}, {what} needs at least {need}: "
        f"raise it (ulimit -n {need} or more before starting, LimitNOFILE= in the systemd unit)"
    )


def check_control_limit(workers: int, readers: int, lent_ring: bool = False) -> int:
    """Before the engine starts: DescriptorLimitTooLow unless the limit leaves room for the
    engine, the reserve and ``readers`` x ``MIN_SHARD_MAPS`` maps; returns the minimum."""
    engine = engine_descriptors(workers, lent_ring)
    need = open_descriptors() + engine + RESERVE + readers * MIN_SHARD_MAPS
    limit = soft_limit()
    if limit < need:
        raise _too_low(limit, need, f"the control process with {workers} workers")
    return need


def shard_map_cap(readers: int) -> int:
    """Maps each of ``readers`` store readers may keep open, from what is left under the limit
    now (call once the engine's workers are connected), less the reserve."""
    limit = soft_limit()
    in_use = open_descriptors()
    cap = (limit - in_use - RESERVE) // readers
    if cap < MIN_SHARD_MAPS:
        need = in_use + RESERVE + readers * MIN_SHARD_MAPS
        raise _too_low(limit, need, f"the control process ({in_use} open now)")
    return min(cap, MAX_SHARD_MAPS)
