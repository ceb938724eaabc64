"""Links of an HTML page: ``<a>``/``<area>`` hrefs resolved against ``<base href>`` or the page URL,
without ``rel=nofollow`` ones, and none at all under ``<meta name=robots content=nofollow>``; and,
from the same parse, the page's visible text outside navigation (what the trap guard compares)."""

from __future__ import annotations

import codecs
from urllib.parse import urljoin

import lxml.etree
import lxml.html

from .urls import canonical_url

# Not navigations at all. Other schemes (ftp:, file:, gopher:, ...) are returned so that the URL
# policy refuses them where it is logged, like any other link the crawler must not follow.
_SKIP_SCHEMES = ("javascript:", "mailto:", "tel:", "data:")
# An href longer than this is no URL any crawl would fetch (the default limit is 2048): it is
# dropped before urljoin/canonicalisation, whose cost grows with its length.
MAX_HREF_CHARS = 16 * 1024


def _codec(charset: str | None) -> str | None:
    """Python's name for a declared charset, or None when unknown (lxml then sniffs <meta>)."""
    if not charset:
        return None
    try:
        return codecs.lookup(charset).name
    except LookupError:
        return None


_FEED_TYPES = ("application/rss+xml", "application/atom+xml")
_MAX_FEEDS = 8  # per page: a feed per category is common, hundreds are not
# Elements whose text is not the page's own: code, and the chrome every page of a site repeats.
_NOT_TEXT = ("script", "style", "noscript", "template", "nav", "header", "footer", "head")


def extract_links(body: bytes, page_url: str, charset: str | None = None) -> list[str]:
    """Canonical absolute URLs linked from ``body``, in document order, without duplicates."""
    return parse_page(body, page_url, charset)[0]


def parse_page(body: bytes, page_url: str, charset: str | None = None) -> tuple[list[str], str, list[str]]:
    """The page's links (as ``extract_links``), its visible text outside scripts, styles and
    navigation (whitespace collapsed), and the RSS/Atom feeds it announces
    (``<link rel=alternate type=application/rss+xml href=...>``)."""
    encoding = _codec(charset)
    parser = lxml.html.HTMLParser(encoding=encoding, no_network=True, recover=True)
    try:
        root = lxml.html.document_fromstring(body, parser=parser)
    except (lxml.etree.ParserError, ValueError, LookupError):
        return [], "", []  # empty or undecodable document: nothing to follow
    nofollow = _nofollow(root)
    links = [] if nofollow else _links(root, page_url, encoding)
    feeds = [] if nofollow else _feeds(root, page_url)
    for element in list(root.iter(*_NOT_TEXT)):
        element.drop_tree()
    return links, " ".join(root.text_content().split()), feeds


def _feeds(root: lxml.html.HtmlElement, page_url: str) -> list[str]:
    found: list[str] = []
    for element in root.iter("link"):
        rel = (element.get("rel") or "").lower().split()
        kind = (element.get("type") or "").lower().strip()
        href = (element.get("href") or "").strip()
        if "alternate" in rel and kind in _FEED_TYPES and href and len(href) <= MAX_HREF_CHARS:
            try:
                url = canonical_url(urljoin(page_url, href))
            except ValueError:
                continue
            if url not in found:
                found.append(url)
    return found[:_MAX_FEEDS]


def _nofollow(root: lxml.html.HtmlElement) -> bool:
    """``<meta name=robots content=nofollow>``: follow nothing from this page."""
    return any(
        (meta.get("name") or "").lower() == "robots" and "nofollow" in (meta.get("content") or "").lower()
        for meta in root.iter("meta")
    )


def _links(root: lxml.html.HtmlElement, page_url: str, encoding: str | None) -> list[str]:
    base = page_url
    for element in root.iter("base"):
        href = (element.get("href") or "").strip()
        if href:
            base = urljoin(page_url, href)
            break
    url_encoding = encoding or "utf-8"
    seen: set[str] = set()
    links: list[str] = []
    for element in root.iter("a", "area"):
        href = (element.get("href") or "").strip()
        if not href or len(href) > MAX_HREF_CHARS or href.startswith("#"):
            continue
        if href.lower().startswith(_SKIP_SCHEMES):
            continue
        if "nofollow" in (element.get("rel") or "").lower().split():
            continue
        try:
            url = canonical_url(urljoin(base, href), encoding=url_encoding)
        except ValueError:
            continue  # e.g. an invalid IPv6 literal: not a link we can follow
        if url not in seen:
            seen.add(url)
            links.append(url)
    return links
