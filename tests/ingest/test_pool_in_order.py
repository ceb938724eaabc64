"""The pool's in-order buffering (ingest/in_order.py): release in input order, hold back at most
what the bound allows, refuse an index twice."""

from __future__ import annotations

import random

import pytest

from crystalline.ingest.in_order import InputOrder


def test_items_are_released_in_input_order_whatever_order_they_come_in() -> None:
    order = InputOrder[str](10)
    assert order.release(2, "c") == [] and order.release(1, "b") == []  # held for index 0
    assert order.release(0, "a") == [(0, "a"), (1, "b"), (2, "c")]
    order.finish()  # none held
    assert order.release(3, "d") == [(3, "d")]  # nothing before it missing: out at once


def test_work_may_run_at_most_ahead_past_the_oldest_index_not_yet_released() -> None:
    order = InputOrder[str](4)
    assert [order.may_take(i) for i in range(6)] == [True] * 4 + [False] * 2
    assert order.release(3, "d") == [] and not order.may_take(4)  # a later item frees nothing
    assert order.release(0, "a") == [(0, "a")]
    assert order.may_take(4) and not order.may_take(5)  # one out: one more may start
    assert order.release(1, "b") == [(1, "b")] and order.release(2, "c") == [(2, "c"), (3, "d")]
    assert order.may_take(7) and not order.may_take(8)


def test_an_index_that_came_already_is_refused() -> None:
    order = InputOrder[str](4)
    order.release(1, "b")
    with pytest.raises(ValueError, match="index 1 came twice"):
        order.release(1, "again")
    order.release(0, "a")
    with pytest.raises(ValueError, match="index 0 came twice"):
        order.release(0, "again")
    with pytest.raises(ValueError, match="at least 1"):
        InputOrder[str](0)


@pytest.mark.parametrize("seed", range(20))
def test_a_pool_of_workers_finishing_at_random_gets_every_result_once_in_order(seed: int) -> None:
    # what ExtractionPool._map does with it: a free worker takes the next document while the
    # bound allows; documents finish in any order; every result comes out once, in input order
    rng = random.Random(seed)
    workers, documents = rng.randint(1, 4), rng.randint(0, 60)
    order = InputOrder[int](2 * workers)
    running: list[int] = []
    taken = came = 0
    out: list[tuple[int, int]] = []
    while len(out) < documents:
        while len(running) < workers and taken < documents and order.may_take(taken):
            running.append(taken)
            taken += 1
        assert running, "no document runs and none may start: the bound stalled the pool"
        index = running.pop(rng.randrange(len(running)))
        out += order.release(index, index * 10)
        came += 1
        assert came - len(out) < 2 * workers and taken - len(out) <= 2 * workers  # held, in work
    assert out == [(i, i * 10) for i in range(documents)]
    order.finish()  # nothing held: the end of the work passes


def test_the_end_of_the_work_with_an_item_still_held_raises() -> None:
    # review R13b N4: a lost index would hold back every item behind it; the pool's map ends
    # with finish(), which says so instead of dropping them without a word
    order = InputOrder[str](4)
    order.release(1, "b")
    order.release(2, "c")
    with pytest.raises(
        RuntimeError, match=r"^2 results held back at the end of the work: index 0 never came$"
    ):
        order.finish()
    assert order.release(0, "a") == [(0, "a"), (1, "b"), (2, "c")]
    order.finish()
