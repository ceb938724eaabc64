"""Per-host politeness (Scrapy's downloader slot): how many requests a host may have in flight and
when it may get the next one.

The delay counts from the end of one response to the start of the next request, so a server sees
gaps of at least the delay between requests. It is the largest of the configured minimum, the
host's robots.txt ``Crawl-delay`` and an AutoThrottle delay that follows the host's latency; a
``Retry-After`` or an error backoff holds the host until its time has passed. With a delay of 0
a host may have ``per_host_concurrency`` requests in flight, otherwise one.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from .settings import CrawlSettings

FAR_FUTURE = 1e18  # "not before a slot frees": the frontier never hands out such a host


@dataclass
class HostSlot:
    """The politeness state of one origin."""

    origin: str
    active: int = 0
    crawl_delay: float = 0.0
    throttle_delay: float = 0.0
    hold_until: float = 0.0  # Retry-After or error backoff, unix time
    last_latency: float = 0.0
    free_at: float = 0.0  # unix time its last request's delay ends


class Politeness:
    """Host slots for the most recently used origins (an LRU of ``max_host_slots``: an evicted
    idle slot only forgets its adaptive delay, which restarts from the minimum)."""

    def __init__(self, settings: CrawlSettings) -> None:
        self.settings = settings
        self._slots: OrderedDict[str, HostSlot] = OrderedDict()

    def slot(self, origin: str) -> HostSlot:
        slot = self._slots.get(origin)
        if slot is None:
            slot = HostSlot(origin, throttle_delay=self.settings.min_delay)
            self._slots[origin] = slot
            self._evict()
        else:
            self._slots.move_to_end(origin)
        return slot

    def _evict(self) -> None:
        excess = len(self._slots) - self.settings.max_host_slots
        for origin in [o for o, s in self._slots.items() if s.active == 0][: max(excess, 0)]:
            del self._slots[origin]

    def delay(self, slot: HostSlot) -> float:
        s = self.settings
        delay = s.min_delay
        if s.honour_crawl_delay:
            delay = max(delay, min(slot.crawl_delay, s.max_crawl_delay))
        if s.adaptive_delay:
            delay = max(delay, slot.throttle_delay)
        return delay

    def capacity(self, slot: HostSlot) -> int:
        """Requests the host may be given now (ignoring time: the frontier's next_at says when)."""
        limit = self.settings.per_host_concurrency if self.delay(slot) == 0 else 1
        return max(0, limit - slot.active)

    def set_crawl_delay(self, origin: str, seconds: float | None) -> None:
        self.slot(origin).crawl_delay = max(0.0, seconds or 0.0)

    def started(self, origin: str) -> float:
        """Count a request in flight; return the host's next_at for the frontier."""
        slot = self.slot(origin)
        slot.active += 1
        return time.time() if self.capacity(slot) > 0 else FAR_FUTURE

    def finished(self, origin: str, latency: float | None, ok: bool, requested: bool = True) -> float:
        """A request ended (``latency`` None when there was no response); return the next_at.
        ``requested`` False: the claimed URL was settled without a request (robots.txt disallows
        it): the host owes no new delay, only what its last request left."""
        slot = self.slot(origin)
        slot.active = max(0, slot.active - 1)
        if not requested:
            return FAR_FUTURE if self.capacity(slot) == 0 else max(slot.free_at, slot.hold_until)
        if latency is not None:
            slot.last_latency = latency
            if self.settings.adaptive_delay:
                self._autothrottle(slot, latency, ok)
        slot.free_at = time.time() + self.delay(slot)
        if self.capacity(slot) == 0:
            return FAR_FUTURE
        return max(slot.free_at, slot.hold_until)

    def hold(self, origin: str, seconds: float) -> None:
        """No request to the host for ``seconds`` (Retry-After, backoff, robots unavailable)."""
        slot = self.slot(origin)
        slot.hold_until = max(slot.hold_until, time.time() + seconds)

    def _autothrottle(self, slot: HostSlot, latency: float, ok: bool) -> None:
        # Scrapy's AutoThrottle: aim for `target` requests in flight at the server, i.e. a delay of
        # latency / target; move halfway there each response, never below the latency-based target
        # (a slow server is not hammered while the average catches up), and let an error response
        # (a 5xx is often fast) only raise the delay, never lower it.
        s = self.settings
        target = latency / max(s.autothrottle_target_concurrency, 1e-3)
        new = max(target, (slot.throttle_delay + target) / 2.0)
        new = min(max(s.min_delay, new), s.autothrottle_max_delay)
        if not ok and new <= slot.throttle_delay:
            return
        slot.throttle_delay = new

    def __len__(self) -> int:
        return len(self._slots)
