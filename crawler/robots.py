"""robots.txt per origin (RFC 9309): fetched once, shared by concurrent requests, cached with a lifetime.

Parsing and matching are protego's (Scrapy's parser): the group of the most specific matching
product token wins, within it the longest matching rule, Allow on a tie; ``*`` and ``$`` are
wildcards and percent-encoding is normalised. A 4xx robots.txt allows everything; a 5xx or an
unreachable host disallows everything until ``robots_error_ttl`` has passed (the crawl defers such
a host with a growing backoff). With a ``RobotsStore`` (the frontier) a robots.txt answer (2xx or
4xx) is kept with its fetch time and reused after a restart while younger than ``ttl`` (RFC 9309
2.4: 24 hours), then fetched again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from protego import Protego

log = logging.getLogger("crystalline.crawler.robots")


@dataclass(frozen=True)
class RobotsResponse:
    """What fetching /robots.txt gave: an HTTP status (0 when unreachable) and the body."""

    status: int
    body: bytes
    error: str = ""


class RobotsRules:
    """The rules of one origin for one product token."""

    def __init__(self, product_token: str, parser: Protego | None, allow_all: bool, reason: str) -> None:
        self.product_token = product_token
        self._parser = parser
        self._allow_all = allow_all
        self.reason = reason  # "parsed", "404 allows all", "503 disallows all", ...

    @classmethod
    def parse(cls, text: str, product_token: str) -> RobotsRules:
        return cls(product_token, Protego.parse(text), allow_all=False, reason="parsed")

    @classmethod
    def allow_everything(cls, product_token: str, reason: str) -> RobotsRules:
        return cls(product_token, None, allow_all=True, reason=reason)

    @classmethod
    def disallow_everything(cls, product_token: str, reason: str) -> RobotsRules:
        return cls(product_token, None, allow_all=False, reason=reason)

    @property
    def unavailable(self) -> bool:
        """True when everything is disallowed because robots.txt could not be had (5xx, network)."""
        return self._parser is None and not self._allow_all

    def allowed(self, url: str) -> bool:
        if self._parser is None:
            return self._allow_all
        return bool(self._parser.can_fetch(url, self.product_token))

    def crawl_delay(self) -> float | None:
        if self._parser is None:
            return None
        delay = self._parser.crawl_delay(self.product_token)
        return float(delay) if delay is not None else None

    def sitemaps(self) -> list[str]:
        return list(self._parser.sitemaps) if self._parser is not None else []


def rules_from_response(response: RobotsResponse, product_token: str) -> RobotsRules:
    """RFC 9309 2.3.1: 2xx parse, 4xx allow all, 5xx or unreachable disallow all."""
    if 200 <= response.status < 300:
        text = response.body.decode("utf-8", errors="replace")
        return RobotsRules.parse(text, product_token)
    if 400 <= response.status < 500:
        return RobotsRules.allow_everything(product_token, f"robots.txt {response.status}: allow all")
    why = f"robots.txt {response.status}" if response.status else f"robots.txt unreachable ({response.error})"
    return RobotsRules.disallow_everything(product_token, f"{why}: disallow all")


class RobotsStore(Protocol):
    """Where robots.txt answers outlive the process (``Frontier`` is one)."""

    def load_robots(self, origin: str) -> tuple[float, int, bytes] | None: ...

    def save_robots(self, origin: str, fetched_at: float, status: int, body: bytes) -> None: ...


class RobotsCache:
    """Rules per origin, each fetched at most once at a time and kept for a lifetime (LRU-bounded)."""

    def __init__(
        self,
        fetch: Callable[[str], Awaitable[RobotsResponse]],
        product_token: str,
        ttl: float,
        error_ttl: float,
        max_entries: int,
        store: RobotsStore | None = None,
    ) -> None:
        self._fetch = fetch  # origin -> response of origin/robots.txt
        self._store = store
        self.product_token = product_token
        self.ttl = ttl
        self.error_ttl = error_ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, RobotsRules]] = OrderedDict()
        self._pending: dict[str, asyncio.Future[RobotsRules]] = {}
        self.fetches = 0

    def needs_fetch(self, origin: str) -> bool:
        """Whether asking for the origin's rules now would request its robots.txt."""
        return origin not in self._pending and self.cached(origin) is None

    def cached(self, origin: str) -> RobotsRules | None:
        """The origin's rules if they are still fresh: in memory, or stored by an earlier process."""
        entry = self._entries.get(origin)
        if entry is None or entry[0] <= time.monotonic():
            return self._from_store(origin)
        self._entries.move_to_end(origin)
        return entry[1]

    def known(self, origin: str) -> RobotsRules | None:
        """The origin's rules if they are fresh in memory and were had (not a 5xx): what link
        admission may judge by without a read or a request."""
        entry = self._entries.get(origin)
        if entry is None or entry[0] <= time.monotonic() or entry[1].unavailable:
            return None
        return entry[1]

    def _from_store(self, origin: str) -> RobotsRules | None:
        saved = self._store.load_robots(origin) if self._store is not None else None
        if saved is None:
            return None
        fetched_at, status, body = saved
        age = time.time() - fetched_at
        if not 0 <= age < self.ttl:
            return None
        rules = rules_from_response(RobotsResponse(status, body), self.product_token)
        self._entries[origin] = (time.monotonic() + self.ttl - age, rules)
        self._entries.move_to_end(origin)
        self._evict()
        return rules

    def forget(self, origin: str) -> None:
        """Drop the origin's rules: the next request for them fetches robots.txt again."""
        self._entries.pop(origin, None)

    async def rules(self, origin: str) -> tuple[RobotsRules, bool]:
        """The origin's rules, and whether this call fetched them (the caller then owes the host
        a politeness delay before its next request)."""
        rules = self.cached(origin)
        if rules is not None:
            return rules, False
        pending = self._pending.get(origin)
        if pending is not None:
            return await asyncio.shield(pending), False
        future: asyncio.Future[RobotsRules] = asyncio.get_running_loop().create_future()
        self._pending[origin] = future
        try:
            self.fetches += 1
            response = await self._fetch(origin)
            rules = rules_from_response(response, self.product_token)
            log.info("robots %s: %s", origin, rules.reason)
            self._keep(origin, rules)
            if self._store is not None and not rules.unavailable:
                body = response.body if 200 <= response.status < 300 else b""
                self._store.save_robots(origin, time.time(), response.status, body)
            future.set_result(rules)
            return rules, True
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else must log it
            raise
        finally:
            del self._pending[origin]

    def _keep(self, origin: str, rules: RobotsRules) -> None:
        lifetime = self.error_ttl if rules.unavailable else self.ttl
        self._entries[origin] = (time.monotonic() + lifetime, rules)
        self._entries.move_to_end(origin)
        self._evict()

    def _evict(self) -> None:
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


class RobotsBudget:
    """At most ``per_minute`` robots.txt requests in any 60 seconds (0: no limit).

    Each new host costs a robots.txt request before its first page, so a page linking to
    thousands of hostnames (wildcard DNS) would otherwise open thousands of hosts at once; with a
    budget they open at its pace while known hosts go on. Keeps the last ``per_minute`` times."""

    WINDOW = 60.0

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._times: deque[float] = deque(maxlen=max(per_minute, 1))
        self._next_retry = 0.0

    def take(self) -> bool:
        """Spend one request if the window has room; False (nothing spent) if not."""
        if not self.per_minute:
            return True
        now = time.monotonic()
        if len(self._times) == self.per_minute and now - self._times[0] < self.WINDOW:
            return False
        self._times.append(now)
        return True

    def refund(self) -> None:
        """Give back the last request taken (it was not made)."""
        if self.per_minute and self._times:
            self._times.pop()

    def wait(self) -> float:
        """Seconds until ``take`` can succeed."""
        if not self.per_minute or len(self._times) < self.per_minute:
            return 0.0
        return max(0.0, self._times[0] + self.WINDOW - time.monotonic())

    def retry_in(self) -> float:
        """Seconds a host turned away should wait: successive ones are spaced a request's share
        of the window apart, so a thousand waiting hosts come back about one per free request
        instead of all together (each asking again, and writing its wait, a thousand times)."""
        now = time.monotonic()
        spacing = self.WINDOW / max(self.per_minute, 1)
        self._next_retry = max(self._next_retry + spacing, now + self.wait())
        return self._next_retry - now
