"""Sitemaps (sitemaps.org) and feeds: URLs a site lists, with when they last changed.

A sitemap is a ``<urlset>`` of pages or a ``<sitemapindex>`` of sitemaps, possibly gzipped; as
sitemaps.org allows, an RSS 2.0 or Atom feed and a plain list of URLs (one a line) are read as
sitemaps too. Everything is bounded: at most ``max_bytes`` after decompression (a gzip bomb stops
there and what came before it is read) and ``max_urls`` entries per file (sitemaps.org's own
limits: 50 MB, 50,000 URLs). The XML parser resolves no entities and reads nothing from the
network.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

import lxml.etree

INDEX, URLSET = "index", "urlset"


@dataclass(frozen=True)
class SitemapEntry:
    """One ``<url>`` (or ``<sitemap>``, feed item): where, when it last changed (unix time), how often."""

    loc: str
    lastmod: float | None = None
    changefreq: str | None = None


@dataclass
class Sitemap:
    """A parsed sitemap: ``kind`` INDEX (entries are sitemaps) or URLSET (entries are pages)."""

    kind: str
    entries: list[SitemapEntry] = field(default_factory=list)
    truncated: str = ""  # why not every entry was read ("" when all were)
    feed: bool = False  # an RSS or Atom feed (its items are a hop from the page linking it)


def parse_time(text: str | None) -> float | None:
    """Unix time of a W3C datetime (``2026-11-30``, ``2026-11-30T08:00:00Z``) or an RFC 822 date
    (RSS), None if absent or unreadable; a time without a zone is UTC."""
    if not text:
        return None
    text = text.strip()
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def decode(body: bytes, max_bytes: int) -> tuple[bytes, bool]:
    """The body, gunzipped when it is gzip, cut at ``max_bytes``; and whether it was cut."""
    if body[:2] != b"\x1f\x8b":
        return body[:max_bytes], len(body) > max_bytes
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
    try:
        data = inflater.decompress(body, max_bytes + 1)
    except zlib.error:
        return b"", False  # not gzip after all, or corrupt from the start: nothing to read
    return data[:max_bytes], len(data) > max_bytes


def _local(tag: object) -> str:
    return tag.rsplit("}", 1)[-1].lower() if isinstance(tag, str) else ""


def _child_text(element: lxml.etree._Element, name: str) -> str | None:
    for child in element:
        if _local(child.tag) == name:
            return (child.text or "").strip() or None
    return None


def parse(body: bytes, max_bytes: int, max_urls: int) -> Sitemap:
    """Read a sitemap, sitemap index, feed or URL list from a fetched body (gzip or not)."""
    data, cut = decode(body, max_bytes)
    sitemap = Sitemap(URLSET, truncated=f"more than {max_bytes} bytes" if cut else "")
    if data.lstrip()[:1] != b"<":
        for line in data.decode("utf-8", "replace").splitlines():
            line = line.strip()
            if line.startswith(("http://", "https://")):
                if len(sitemap.entries) >= max_urls:
                    sitemap.truncated = f"more than {max_urls} URLs"
                    break
                sitemap.entries.append(SitemapEntry(line))
        return sitemap
    events = lxml.etree.iterparse(
        io.BytesIO(data),
        events=("start", "end"),
        recover=True,
        resolve_entities=False,
        no_network=True,
        huge_tree=False,
        load_dtd=False,
    )
    depth = 0
    try:
        for event, element in events:
            name = _local(element.tag)
            if event == "start":
                if depth == 0 and name == "sitemapindex":
                    sitemap.kind = INDEX
                elif depth == 0 and name in ("rss", "feed", "RDF"):
                    sitemap.feed = True
                depth += 1
                continue
            depth -= 1
            entry = _entry(name, element)
            if entry is None:
                continue
            element.clear()
            if len(sitemap.entries) >= max_urls:
                sitemap.truncated = f"more than {max_urls} URLs"
                break
            sitemap.entries.append(entry)
    except lxml.etree.XMLSyntaxError:
        pass  # a cut or broken file: the entries before the damage are kept
    return sitemap


def _entry(name: str, element: lxml.etree._Element) -> SitemapEntry | None:
    """The entry an element closes: a sitemap ``url``/``sitemap``, an RSS ``item``, an Atom ``entry``."""
    if name in ("url", "sitemap"):
        loc = _child_text(element, "loc")
        changefreq = _child_text(element, "changefreq")
        return SitemapEntry(loc, parse_time(_child_text(element, "lastmod")), changefreq) if loc else None
    if name == "item":  # RSS 2.0
        loc = _child_text(element, "link")
        return SitemapEntry(loc, parse_time(_child_text(element, "pubdate"))) if loc else None
    if name == "entry":  # Atom 1.0: the alternate link (or the first without rel)
        href = None
        for child in element:
            if _local(child.tag) == "link" and child.get("rel", "alternate") == "alternate":
                href = child.get("href")
                break
        updated = _child_text(element, "updated") or _child_text(element, "published")
        return SitemapEntry(href.strip(), parse_time(updated)) if href else None
    return None
