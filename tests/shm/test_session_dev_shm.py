"""The test session's own /dev/shm (tests/_session_shm.py): where it could make
one, a segment made here is not in the shared /dev/shm, where another session's leak check
would take it for a leak of its own and remove it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crystalline.shm.segments import Segment, list_segments
from tests._session_shm import PRIVATE_DEV_SHM


def test_a_segment_of_this_session_is_not_in_the_shared_dev_shm(instance: str) -> None:
    if not PRIVATE_DEV_SHM:
        pytest.skip("no private mount namespace here (needs root): the session uses the shared /dev/shm")
    parent = Path(f"/proc/{os.getppid()}")  # what started pytest: the namespace sessions share
    assert os.stat(parent / "ns" / "mnt").st_ino != os.stat("/proc/self/ns/mnt").st_ino
    shared = parent / "root" / "dev" / "shm"
    assert os.stat(shared).st_dev != os.stat("/dev/shm").st_dev
    segment = Segment.create(f"crystalline-{instance}-state", 4096)
    try:
        assert list_segments(instance) == [f"crystalline-{instance}-state"]
        assert list_segments(instance, shared) == []
    finally:
        segment.close()
        segment.unlink()
