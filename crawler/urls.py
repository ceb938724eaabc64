"""URL rules: canonical form before dedup, the one fetch check every URL passes, scope, trap guards.

``UrlPolicy.check_fetch`` is the single gate in front of every request the crawler makes (pages,
robots.txt, sitemaps, redirect targets): scheme, host, length and the address policy live there,
so the SSRF rules of issue 7 have one place to go.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections import Counter
from urllib.parse import urlsplit, urlunsplit

from w3lib.url import canonicalize_url

from .settings import CrawlSettings

_DEFAULT_PORTS = {"http": 80, "https": 443}
_DIGITS = re.compile(r"\d+")


def canonical_url(url: str, encoding: str = "utf-8") -> str:
    """The form URLs are deduplicated in: w3lib's canonical URL (sorted query, no fragment,
    normalised percent-encoding, lower-case host) without the scheme's default port.

    ``encoding`` is the page's: browsers percent-encode a non-ASCII query in it."""
    canon = canonicalize_url(url.strip(), encoding=encoding)
    parts = urlsplit(canon)
    scheme = parts.scheme.lower()
    netloc = parts.netloc
    if parts.port is not None and _DEFAULT_PORTS.get(scheme) == parts.port:
        netloc = netloc.rsplit(":", 1)[0]
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def origin_of(url: str) -> str:
    """``scheme://host[:port]``: the unit of robots.txt and of politeness."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def host_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


_LEGACY_IPV4 = re.compile(r"[0-9a-fx.]+")


def is_private_host(host: str) -> bool:
    """True for loopback, private, link-local and other non-public literal addresses and localhost.

    Besides dotted quads this knows the forms ``inet_aton`` (and so the system resolver) accepts:
    ``127.1``, ``0x7f.0.0.1``, ``0177.0.0.1``, ``2130706433``; a trailing dot changes nothing."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        if not _LEGACY_IPV4.fullmatch(host) or not host[:1].isdigit():
            return False
        try:
            address = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not address.is_global


def url_pattern(url: str) -> str:
    """The URL's shape: path with digit runs masked and the query's sorted keys (a calendar's
    ``/cal?month=2031-07`` and ``/cal?month=1999-01`` share one)."""
    parts = urlsplit(url)
    keys = sorted({kv.split("=", 1)[0] for kv in parts.query.split("&") if kv})
    return _DIGITS.sub("#", parts.path) + ("?" + "&".join(keys) if keys else "")


class UrlPolicy:
    """Decides which URLs may be fetched and which are in scope for this crawl."""

    def __init__(self, settings: CrawlSettings) -> None:
        self.settings = settings
        self.allowed_domains: set[str] = {d.lower().lstrip(".") for d in settings.allowed_domains}
        self.scope_from_seeds = not self.allowed_domains

    def add_seed(self, url: str) -> None:
        """A start URL's host joins the scope when no allowed domains were configured."""
        if self.scope_from_seeds:
            self.allowed_domains.add(host_of(url))

    def check_fetch(self, url: str) -> str | None:
        """Why ``url`` must not be requested, or None. Every request goes through here."""
        if len(url) > self.settings.max_url_length:
            return f"URL longer than {self.settings.max_url_length} characters"
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            return f"malformed URL ({exc})"
        if parts.scheme not in self.settings.allowed_schemes:
            return f"scheme {parts.scheme or '(none)'!r} not allowed"
        host = (parts.hostname or "").lower()
        if not host:
            return "no host"
        if parts.username is not None or parts.password is not None:
            return "credentials in URL"
        if port == 0:
            return "port 0"
        if not self.settings.allow_private_addresses and is_private_host(host):
            return f"private or loopback address {host}"
        return None

    def in_scope(self, url: str) -> bool:
        host = host_of(url)
        return any(host == d or host.endswith("." + d) for d in self.allowed_domains)

    def check_trap(self, url: str) -> str | None:
        """Why ``url`` looks like a generated URL space (crawler trap), or None."""
        parts = urlsplit(url)
        segments = [s for s in parts.path.split("/") if s]
        if len(segments) > self.settings.max_path_segments:
            return f"more than {self.settings.max_path_segments} path segments"
        if segments:
            _, repeats = Counter(segments).most_common(1)[0]
            if repeats > self.settings.max_repeated_segment:
                return "repeated path segments"
        if parts.query.count("&") + 1 > self.settings.max_query_params:
            return f"more than {self.settings.max_query_params} query parameters"
        return None

    def check_discovered(self, url: str) -> str | None:
        """Why a found link is not queued (fetch check, scope, traps), or None."""
        return (
            self.check_fetch(url) or (None if self.in_scope(url) else "out of scope") or self.check_trap(url)
        )
