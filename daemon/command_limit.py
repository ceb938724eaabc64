"""A share of wall time for a costly socket command (``generate``), per uid and for everyone.

Each uid has a bucket of seconds that refills at ``share_per_uid`` seconds per second, up to
``burst_s``; a command's wall time is charged when it ends, and a uid whose bucket is empty is
refused until it has refilled. All uids together draw on a second bucket refilling at
``share_total``, except the operators (root and the daemon's own user): they are charged to it
but never refused by it, so no one else can use it up to keep root from generating. A uid may
also have only one such command in flight, so opening more connections buys nothing. With the
defaults one looping client keeps generation to about a tenth of control's time, and any number
of them to a quarter (issue 19: four looping clients had taken training from 404 to 4 steps/s).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from .commands import CommandError

SHARE_PER_UID = 0.10
SHARE_TOTAL = 0.25
BURST_S = 10.0
MAX_BUCKETS = 1024  # full, idle buckets are forgotten beyond this: no unbounded table of uids


class TimeBucket:
    """Seconds that refill at ``rate`` per second up to ``capacity``; may go into debt."""

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.balance = capacity
        self.at = now

    def refill(self, now: float) -> None:
        self.balance = min(self.capacity, self.balance + (now - self.at) * self.rate)
        self.at = now

    def wait_s(self, now: float) -> float:
        """Seconds until the balance is positive again (0 when it is)."""
        self.refill(now)
        return 0.0 if self.balance > 0 else -self.balance / self.rate + 1e-3

    def full(self, now: float) -> bool:
        self.refill(now)
        return self.balance >= self.capacity


class CommandLimit:
    """Admission for one costly command: ``admit(uid)`` before it runs (CommandError when over
    the limit), ``done(uid, seconds)`` after, whatever the outcome."""

    def __init__(
        self,
        name: str,
        share_per_uid: float = SHARE_PER_UID,
        share_total: float = SHARE_TOTAL,
        burst_s: float = BURST_S,
        clock: Callable[[], float] = time.monotonic,
        operators: frozenset[int] | None = None,
    ) -> None:
        self.name = name
        self.operators = frozenset({0, os.getuid()}) if operators is None else operators
        self.share_per_uid = share_per_uid
        self.burst_s = burst_s
        self.clock = clock
        self.total = TimeBucket(share_total, burst_s, clock())
        self.buckets: dict[int, TimeBucket] = {}
        self.in_flight: set[int] = set()
        self.admitted = 0
        self.refused = 0

    def admit(self, uid: int) -> None:
        now = self.clock()
        if uid in self.in_flight:
            self.refused += 1
            raise CommandError(f"{self.name}: one at a time per user; uid {uid} has one running")
        bucket = self.buckets.get(uid)
        if bucket is None:
            self._forget_idle(now)
            bucket = self.buckets[uid] = TimeBucket(self.share_per_uid, self.burst_s, now)
        wait = bucket.wait_s(now)
        if uid not in self.operators:
            wait = max(wait, self.total.wait_s(now))
        if wait > 0:
            self.refused += 1
            who = f"uid {uid}" if bucket.balance <= 0 else "all users together"
            raise CommandError(
                f"{self.name} is rate-limited ({who} used the share of the daemon's time it may "
                f"take); try again in {wait:.1f} s"
            )
        self.in_flight.add(uid)
        self.admitted += 1

    def done(self, uid: int, seconds: float) -> None:
        self.in_flight.discard(uid)
        now = self.clock()
        for bucket in (self.buckets.get(uid), self.total):
            if bucket is not None:
                bucket.refill(now)
                bucket.balance -= seconds

    def _forget_idle(self, now: float) -> None:
        if len(self.buckets) < MAX_BUCKETS:
            return
        for uid in [u for u, b in self.buckets.items() if u not in self.in_flight and b.full(now)]:
            del self.buckets[uid]
        if len(self.buckets) >= MAX_BUCKETS:  # every one of them in debt: refuse newcomers
            self.refused += 1
            raise CommandError(f"{self.name}: too many users at once; try again later")

    def stats(self) -> dict[str, int]:
        return {"admitted": self.admitted, "refused": self.refused, "in_flight": len(self.in_flight)}
