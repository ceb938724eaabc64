"""Targets for child processes started with the ``spawn`` method (importable by name).

They receive segment names only, never segment objects.
"""

from __future__ import annotations

import time
from typing import Any

from crystalline.shm.blocks import ArrayBlock
from crystalline.shm.segments import Segment


def write_bytes(name: str, offset: int, data: bytes) -> None:
    with Segment.attach(name) as segment:
        segment.buf[offset : offset + len(data)] = data


def write_row(name: str, array: str, row: int, value: float) -> None:
    with ArrayBlock.attach(name) as block:
        block.arrays[array][row, :] = value


def attach_and_hang(name: str, ready: Any) -> None:
    """Attach, say so, then wait to be killed."""
    segment = Segment.attach(name)
    ready.set()
    time.sleep(60)
    segment.close()


def attach_and_exit(name: str) -> None:
    segment = Segment.attach(name)
    segment.close()


def attach_repeatedly(name: str, barrier: Any, times: int) -> None:
    """Wait at ``barrier`` for the other children, then all attach and close ``times`` times."""
    barrier.wait()
    for _ in range(times):
        Segment.attach(name).close()
