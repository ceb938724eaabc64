"""Every crawler setting and its default, in one flat dataclass (Scrapy's settings module, typed).

It is the [crawl] table of the settings tree (``crystalline.settings_tree``): each field is a
TOML key, a flag of `crystalline crawl` (and `crystalline run --crawl-...`) and an environment
variable (``CRYSTALLINE_CRAWL_CONCURRENCY``), with its help text in the field's metadata.
Components receive the ``CrawlSettings`` they need when built. Times are seconds, sizes are bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..postgres import check_database_url
from ..statement_deadline import STATEMENT_TIMEOUT_S, check_statement_timeout

DEFAULT_USER_AGENT = "crystalline-bot/0.1 (+https://github.com/crystalline/crystalline)"


@dataclass(frozen=True)
class CrawlSettings:
    """What to crawl, how fast, and where the frontier lives."""

    # where to start: a start URL's host is in scope unless allowed_domains is given
    start_url: tuple[str, ...] = field(default=(), metadata={"help": "where to start (repeatable)"})
    # the frontier (frontier.sqlite) and, for `crystalline crawl`, the spool of fetched pages
    data_dir: Path = field(
        default=Path("crawl-data"), metadata={"help": "frontier and spool of fetched documents"}
    )
    # the frontier on PostgreSQL, shared by the crawlers of several machines (issue 17)
    database: str = field(
        default="",
        metadata={
            "help": "postgresql://user@host:port/name: the frontier there, shared by several machines "
            "(empty: frontier.sqlite in the data dir)"
        },
    )
    host_lease: float = field(
        default=30.0,
        metadata={"help": "with --database: seconds a dead machine's hosts wait before another takes them"},
    )
    database_timeout_s: float = field(
        default=STATEMENT_TIMEOUT_S,
        metadata={
            "help": "with --database: seconds the server gives one of the crawl's statements (its "
            "frontier, ingest's verdicts) before cancelling it; the crawl gives up 2 s later (1-60)"
        },
    )
    user_agent: str = field(
        default=DEFAULT_USER_AGENT,
        metadata={"help": "User-Agent header; robots.txt is matched on its text before the first '/'"},
    )

    # scope and limits
    allowed_domains: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "crawl only these domains and their subdomains (repeatable; none: the start URLs' hosts)",
            "aliases": ("allowed_domain",),
        },
    )
    max_pages: int = field(
        default=0,
        metadata={
            "help": "stop after this many pages are stored in the data dir, all runs together (0: no limit)"
        },
    )
    max_pages_per_host: int = field(default=0, metadata={"help": "pages stored per host (0: no limit)"})
    max_depth: int = field(
        default=20, metadata={"help": "link hops from a start URL"}
    )  # Heritrix's default max hops
    max_url_length: int = 2048

    # trap guards: a generated URL space (calendars, session ids, /a/b/a/b/...) must end
    max_path_segments: int = 32
    max_repeated_segment: int = 3  # one path segment appearing more often than this is a trap
    max_query_params: int = 24
    # (a URL shape is cut by what its pages give, not by how many there are: see frontier.TRAP_WINDOW)

    # a bounded frontier (0: no cap). A queued URL costs about 250 bytes of SQLite (a 60-character
    # URL twice, in the row and its unique index, the origin twice, two queue indexes; measured by
    # bench/frontier_bounds.py), so the defaults keep the queue under ~25 MB per host and ~250 MB
    # in all. A URL dropped at a cap leaves no row and is offered again by the next page linking
    # to it: a large site is still crawled whole, its queue refilling as it drains.
    # (a long article links to a few hundred)
    max_links_per_page: int = field(
        default=1000, metadata={"help": "new URLs one page may queue (0: no cap)"}
    )
    max_queued_per_host: int = field(
        default=100_000, metadata={"help": "URLs queued per host; the deepest/newest give way (0: no cap)"}
    )
    max_queued: int = field(
        default=1_000_000, metadata={"help": "URLs queued in all; the deepest/newest give way (0: no cap)"}
    )
    robots_per_minute: int = field(
        default=60, metadata={"help": "robots.txt requests per minute, all hosts; new hosts wait (0: no cap)"}
    )

    # revisits (Nutch's adaptive schedule): a stored page is fetched again after its interval, with
    # If-None-Match / If-Modified-Since; the interval shrinks by revisit_dec_rate when the page
    # changed and grows by revisit_inc_rate when not, within [min_revisit, max_revisit]
    # min_revisit is also a new page's first interval (a sitemap's changefreq may raise it)
    min_revisit: float = field(
        default=24 * 3600.0,
        metadata={"help": "seconds before a stored page is due again (its shortest interval)"},
    )
    max_revisit: float = field(
        default=30 * 24 * 3600.0, metadata={"help": "longest revisit interval in seconds"}
    )
    # per-host bounds in place of [min_revisit, max_revisit]: (host, min, max), a host matching
    # itself and its subdomains, the longest match winning (``--host-revisit news.example=600:86400``)
    host_revisit: tuple[tuple[str, float, float], ...] = field(
        default=(),
        metadata={
            "help": "HOST=MIN:MAX: revisit bounds in seconds for HOST and its subdomains in place of "
            "min-revisit/max-revisit (repeatable)",
            "parse": lambda items: tuple(parse_host_revisit(spec) for spec in items),
        },
    )
    revisit_inc_rate: float = 0.4
    revisit_dec_rate: float = 0.2
    # a one-shot crawl (``crystalline crawl --min-revisit S``) also takes every page fetched at
    # least this long ago as due, whatever its interval says (None: the schedule alone decides)
    revisit_after: float | None = field(default=None, metadata={"internal": True})
    revisit_share: float = field(
        default=0.5, metadata={"help": "share of requests for revisits while new URLs wait"}
    )
    max_fetches_per_host_per_day: int = field(
        default=0,
        metadata={
            "help": "requests per host per day, revisits included; the host is deferred past it (0: no cap)"
        },
    )

    # a host whose robots.txt cannot be had (5xx, unreachable) is deferred, its URLs kept: the
    # first wait is defer_base, doubling each time up to defer_max, +-10 % jitter
    defer_base: float = 60.0
    defer_max: float = 24 * 3600.0

    # sitemaps (robots.txt Sitemap: lines and /sitemap.xml) seed the frontier
    sitemaps: bool = field(default=True, metadata={"help": "read robots.txt Sitemap: lines and /sitemap.xml"})
    sitemap_max_bytes: int = 50 * 1024 * 1024  # after decompression (sitemaps.org: 50 MB)
    sitemap_max_urls: int = 50_000  # per sitemap file (sitemaps.org: 50,000)
    sitemap_max_depth: int = 2  # sitemap index -> sitemap -> pages
    # new URLs sitemaps and feeds may queue per host per day (0: no cap); more are dropped and
    # counted (a link to one of them from a page still queues it)
    max_listed_per_host_per_day: int = field(
        default=0,
        metadata={
            "help": "new URLs sitemaps and feeds may queue per host per day; more are dropped (0: no cap)"
        },
    )

    # WARC: every response (with its request) as WARC/1.1 records, when warc_dir is set
    warc_dir: Path | None = field(
        default=None,
        metadata={
            "help": "write every response as WARC/1.1 records here "
            "(the daemon: relative to the state directory)"
        },
    )
    warc_file_bytes: int = field(default=1024**3, metadata={"help": "start a new WARC file past this size"})
    warc_max_bytes: int = field(
        default=0,
        metadata={"help": "retention: the oldest WARC files are deleted past this total (0: keep all)"},
    )

    # concurrency and timeouts
    concurrency: int = field(default=16, metadata={"help": "requests in flight, all hosts together"})
    per_host_concurrency: int = field(
        default=2, metadata={"help": "requests in flight per host when its delay is 0"}
    )
    connect_timeout: float = 10.0
    read_timeout: float = 20.0  # between two reads of the socket
    total_timeout: float = field(
        default=60.0, metadata={"help": "seconds per request, body included", "aliases": ("timeout",)}
    )
    max_body_bytes: int = field(
        default=10 * 1024 * 1024, metadata={"help": "larger bodies (after decompression) are dropped"}
    )
    max_redirects: int = 5  # hops followed from one URL (each hop is a frontier entry)
    submit_timeout: float = 600.0  # the sink's backpressure wait before the URL is requeued
    stop_grace: float = 10.0  # on stop, requests in flight get this long to finish, then are requeued

    # politeness
    min_delay: float = field(
        default=1.0,
        metadata={
            "help": "minimum seconds between requests to one host; 0 also turns off the adaptive delay",
            "aliases": ("delay",),
        },
    )
    honour_crawl_delay: bool = True
    max_crawl_delay: float = 60.0  # a larger robots.txt Crawl-delay is clamped to this
    autothrottle: bool = True
    autothrottle_target_concurrency: float = 1.0
    autothrottle_max_delay: float = 60.0
    max_retries: int = 3  # on 5xx, 429, network errors and timeouts; never on other 4xx
    backoff_base: float = 2.0  # first retry after this, doubling per attempt
    max_backoff: float = 600.0  # also caps Retry-After

    # robots.txt
    obey_robots: bool = True
    robots_ttl: float = 24 * 3600.0  # RFC 9309: should not be cached for more than 24 h
    robots_error_ttl: float = 600.0  # 5xx/unreachable: disallow all this long, then ask again
    robots_max_bytes: int = 500 * 1024  # RFC 9309: at least 500 KiB must be parsed

    # safety (issue 7 extends this): loopback/private addresses are refused unless allowed
    allow_private_addresses: bool = field(
        default=False,
        metadata={
            "help": "allow loopback, link-local and private addresses (local test servers)",
            "aliases": ("allow_private",),
        },
    )
    # host names the resolver guard lets resolve to private addresses while the rest stay refused
    # (an intranet seed; tests that give a "public" name to a loopback server)
    trusted_hosts: tuple[str, ...] = ()
    allowed_schemes: tuple[str, ...] = ("http", "https")

    # bounded memory
    max_host_slots: int = 10_000  # politeness state kept in memory for the most recent hosts
    max_robots_cached: int = 10_000

    # media types ingest handles; others are skipped and logged
    content_types: frozenset[str] = field(
        default_factory=lambda: frozenset(
            {
                "text/html",
                "application/xhtml+xml",
                "text/plain",
                "application/pdf",
                "image/jpeg",
                "image/png",
                "image/gif",
                "image/webp",
                "image/tiff",
                "image/bmp",
            }
        )
    )

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.per_host_concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        for name in ("min_delay", "connect_timeout", "read_timeout", "total_timeout", "max_backoff"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name.replace('_', '-')} must not be negative")
        if self.max_body_bytes < 1 or self.max_pages < 0 or self.max_depth < 0:
            raise ValueError("max-body-bytes must be positive, max-pages and max-depth non-negative")
        if self.min_revisit < 0 or self.max_revisit < self.min_revisit:
            raise ValueError("min-revisit must not be negative nor above max-revisit")
        for host, low, high in self.host_revisit:
            if not host or low < 0 or high < low:
                raise ValueError(
                    f"host-revisit {host}: the minimum must not be negative nor above the maximum"
                )
        if self.database:
            check_database_url(self.database)
        check_statement_timeout(self.database_timeout_s)
        if self.host_lease <= 0:
            raise ValueError("host-lease must be positive")
        if not 0.0 <= self.revisit_share <= 1.0:
            raise ValueError("revisit-share must be between 0 and 1")
        for name in ("max_links_per_page", "max_queued_per_host", "max_queued", "robots_per_minute",
                     "max_fetches_per_host_per_day", "max_listed_per_host_per_day",
                     "warc_max_bytes"):  # fmt: skip
            if getattr(self, name) < 0:
                raise ValueError(f"{name.replace('_', '-')} must not be negative (0: no cap)")

    def revisit_bounds(self, host: str) -> tuple[float, float]:
        """The (min, max) revisit interval of ``host``: its ``host_revisit`` entry (the longest
        matching one), else the global ``min_revisit``/``max_revisit``."""
        host = host.lower().rstrip(".")
        best: tuple[str, float, float] | None = None
        for entry in self.host_revisit:
            name = entry[0]
            if (host == name or host.endswith("." + name)) and (best is None or len(name) > len(best[0])):
                best = entry
        return (best[1], best[2]) if best is not None else (self.min_revisit, self.max_revisit)

    @property
    def adaptive_delay(self) -> bool:
        """Whether a host's delay follows its latency (autothrottle; a min_delay of 0 turns it off)."""
        return self.autothrottle and self.min_delay > 0

    @property
    def frontier_path(self) -> Path:
        return self.data_dir / "frontier.sqlite"

    @property
    def product_token(self) -> str:
        """The robots.txt product token: the User-Agent up to the first '/' (RFC 9309 2.2.1)."""
        return self.user_agent.split("/", 1)[0].strip().split()[0] if self.user_agent.strip() else "*"


def parse_host_revisit(spec: str) -> tuple[str, float, float]:
    """``HOST=MIN:MAX`` (seconds) as ``(host, min, max)``; ValueError naming what is wrong."""
    host, sep, bounds = spec.partition("=")
    low, colon, high = bounds.partition(":")
    host = host.strip().lower().rstrip(".")
    try:
        if not sep or not colon or not host:
            raise ValueError
        low_s, high_s = float(low), float(high)
    except ValueError:
        raise ValueError(f"host-revisit must be HOST=MIN:MAX (seconds), got {spec!r}") from None
    if not 0 <= low_s <= high_s:
        raise ValueError(f"host-revisit {spec!r}: the minimum must not be negative nor above the maximum")
    return host, low_s, high_s
