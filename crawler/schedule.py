"""When to ask again: a stored page's next revisit (Nutch's AdaptiveFetchSchedule) and a deferred
host's backoff.

A page's interval starts at ``min_revisit`` (or what its sitemap's ``changefreq`` says); each
revisit that finds it changed multiplies it by ``1 - revisit_dec_rate``, each that finds it
unchanged (a 304, the same body, or text ingest found the same) by ``1 + revisit_inc_rate``, and
it stays within ``[min_revisit, max_revisit]`` (or its host's ``host_revisit`` bounds): a page
that changes daily settles near a day, one that never changes drifts out to a month. A host whose
robots.txt cannot be had waits ``defer_base`` seconds, doubling each time in a row up to
``defer_max``, with +-10 % jitter so that hosts deferred together do not come back together.
"""

from __future__ import annotations

import random

from .settings import CrawlSettings

# sitemaps.org's changefreq values as first intervals ("always" is as often as allowed)
CHANGEFREQ = {
    "always": 0.0,
    "hourly": 3600.0,
    "daily": 86400.0,
    "weekly": 7 * 86400.0,
    "monthly": 30 * 86400.0,
    "yearly": 365 * 86400.0,
    "never": float("inf"),
}


def clamp_interval(settings: CrawlSettings, interval: float, host: str = "") -> float:
    low, high = settings.revisit_bounds(host)
    return min(max(interval, low), high)


def first_interval(settings: CrawlSettings, hint: float = 0.0, host: str = "") -> float:
    """A page's interval after its first fetch: the sitemap's hint, else the host's minimum."""
    return clamp_interval(settings, hint or settings.revisit_bounds(host)[0], host)


def next_interval(settings: CrawlSettings, interval: float, changed: bool, host: str = "") -> float:
    """The interval after a revisit that found the page ``changed`` (or not), within the bounds
    of ``host`` (the URL's host name)."""
    interval = interval or settings.revisit_bounds(host)[0]
    rate = -settings.revisit_dec_rate if changed else settings.revisit_inc_rate
    return clamp_interval(settings, interval * (1.0 + rate), host)


def defer_wait(settings: CrawlSettings, deferrals: int, rng: random.Random) -> float:
    """Seconds a host waits after ``deferrals`` deferrals in a row (0 for the first)."""
    base = min(settings.defer_base * 2.0 ** min(deferrals, 40), settings.defer_max)
    return base * rng.uniform(0.9, 1.1)
