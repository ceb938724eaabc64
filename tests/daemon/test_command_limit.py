"""CommandLimit: a share of wall time per uid and for all uids together, one in flight per uid."""

from __future__ import annotations

import pytest

from crystalline.daemon.command_limit import CommandLimit
from crystalline.daemon.status_server import CommandError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limit(clock: Clock, **kw: float) -> CommandLimit:
    return CommandLimit(
        "generate", clock=clock, **{"share_per_uid": 0.1, "share_total": 0.25, "burst_s": 2.0, **kw}
    )


def test_a_uid_spends_its_burst_then_waits_for_its_share() -> None:
    clock = Clock()
    lim = limit(clock)
    lim.admit(7)
    lim.done(7, 2.5)  # took more than the burst: 0.5 s in debt
    with pytest.raises(CommandError, match=r"uid 7 used the share.*try again in 5\.0 s"):
        lim.admit(7)
    clock.now += 5.1  # refills at 0.1 s per second
    lim.admit(7)
    assert lim.stats() == {"admitted": 2, "refused": 1, "in_flight": 1}


def test_one_command_in_flight_per_uid_but_others_go_ahead() -> None:
    clock = Clock()
    lim = limit(clock)
    lim.admit(7)
    with pytest.raises(CommandError, match="one at a time"):
        lim.admit(7)
    lim.admit(8)  # another user is not blocked by uid 7
    lim.done(7, 0.1)
    lim.admit(7)


def test_all_uids_together_are_held_to_the_total_share() -> None:
    clock = Clock()
    lim = limit(clock, share_per_uid=1.0, burst_s=1.0)
    lim.admit(1)
    lim.done(1, 0.6)
    lim.admit(2)
    lim.done(2, 0.6)  # each uid has credit left, all of them together do not
    with pytest.raises(CommandError, match="all users together"):
        lim.admit(3)
    clock.now += 1.0  # the total refills at 0.25 s per second
    lim.admit(3)


def test_idle_buckets_are_forgotten_so_the_table_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("crystalline.daemon.command_limit.MAX_BUCKETS", 4)
    clock = Clock()
    lim = limit(clock, share_total=100.0, burst_s=100.0)
    for uid in range(10):
        lim.admit(uid)
        lim.done(uid, 0.0)
    assert len(lim.buckets) <= 4


def test_others_using_up_the_shared_share_do_not_lock_an_operator_out() -> None:
    clock = Clock()
    lim = CommandLimit("generate", 0.1, 0.25, 2.0, clock=clock, operators=frozenset({0}))
    for uid in (1001, 1002):  # two ordinary users take more than the whole shared burst
        lim.admit(uid)
        lim.done(uid, 1.5)
    with pytest.raises(CommandError, match="all users together"):
        lim.admit(1003)
    lim.admit(0)  # root: only its own bucket counts
    lim.done(0, 0.5)
    assert lim.stats() == {"admitted": 3, "refused": 1, "in_flight": 0}
    with pytest.raises(CommandError, match="all users together"):
        lim.admit(1003)  # root's time was charged to the shared bucket all the same
