"""Per-test shared-memory instance names, and a check that no test leaves a segment behind."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from crystalline.shm.segments import list_segments, unlink_segment


@pytest.fixture(autouse=True)
def _shm_instances() -> Iterator[list[str]]:
    """Instance names used by this test; afterwards none may have a segment left in /dev/shm.

    Leftovers are unlinked before the assertion so one failing test does not cascade.
    """
    instances = [f"test_{uuid.uuid4().hex[:12]}"]
    yield instances
    leftovers = [name for instance in instances for name in list_segments(instance)]
    for name in leftovers:
        unlink_segment(name)
    assert not leftovers, f"test left shared memory segments behind: {leftovers}"


@pytest.fixture
def instance(_shm_instances: list[str]) -> str:
    """A unique instance name for this test (checked for leftovers at teardown)."""
    return _shm_instances[0]


@pytest.fixture
def new_instance(_shm_instances: list[str]) -> Callable[..., str]:
    """Make further instance names (unique, or as given), also checked for leftovers at teardown."""

    def make(name: str | None = None) -> str:
        name = name or f"test_{uuid.uuid4().hex[:12]}"
        _shm_instances.append(name)
        return name

    return make
