"""The batch ring on its own: slots filled in step order, refilled from a jumped-to step, a
release that is not owed ignored, and a take that cannot be served ends at its deadline."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest

from crystalline.shm.segments import list_segments
from crystalline.tokens.windows import NotEnoughTokens
from crystalline.workers.batch_ring import BatchRing, RingTimeout, ring_spec

pytestmark = pytest.mark.timeout(60)


def stamp(step: int, out: np.ndarray) -> dict[str, Any]:
    out[...] = step
    return {"step": step}


def make(fill: Any = stamp) -> tuple[BatchRing, str]:
    instance = "b" + uuid.uuid4().hex[:10]
    return BatchRing(f"crystalline-{instance}-ring", ring_spec(3, 2, 4, 256), fill), instance


def test_steps_in_order_a_jump_refills_and_a_stray_release_is_ignored() -> None:
    ring, instance = make()
    try:
        a = ring.take(0, 5)
        assert (a.step, a.info) == (0, {"step": 0}) and (ring.slots[a.slot] == 0).all()
        ring.release(a.slot)
        ring.release(a.slot)  # twice: must not let two steps share the slot
        ring.release(99)
        held = [ring.take(s, 5) for s in (1, 2, 3)]  # three slots lent at once
        assert len({t.slot for t in held}) == 3
        assert [int(ring.slots[t.slot][0, 0]) for t in held] == [1, 2, 3]
        for t in held:
            ring.release(t.slot)
        jumped = ring.take(10, 5)  # a restarted control resuming elsewhere
        assert jumped.step == 10 and (ring.slots[jumped.slot] == 10).all()
    finally:
        ring.close()
    assert list_segments(instance) == []


def test_a_filler_short_of_tokens_ends_the_take_at_its_deadline_with_the_reason() -> None:
    def short(step: int, out: np.ndarray) -> dict[str, Any]:
        raise NotEnoughTokens("the token store has 3 training tokens in 1 documents; a window needs 5")

    ring, instance = make(short)
    try:
        with pytest.raises(RingTimeout, match="no batch for step 4 within 1 s: the token store has 3"):
            ring.take(4, 1.0)
    finally:
        ring.close()
    assert list_segments(instance) == []
