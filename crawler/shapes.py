"""Whether a page gives new text, judged against recent pages of the same host and URL shape.

The trap guard (``Frontier.judge``) needs to know, for each page it fetches, whether the page had
anything new to say. Ingest says so with authority (its exact and near-duplicate verdicts come
back through ``crawler.feedback``), but only later and only where ingest runs; this is the
crawler's own quick judgement at fetch time, deliberately narrow: the visible text outside
navigation, compared by SHA-256 with the last few pages of the same ``(origin, shape)``. Where a
query parameter makes the URL space (``/cal?month=2031-07``), digit runs are masked first: a page
that differs from the last only in the date or counter its parameter put there says nothing new.
Paths are taken at their word (``/p/17`` saying "page 17" is new), and near duplicates are left
to ingest, whose extraction sees past a site's template: a crawl without ingest must not cut a
site whose pages share most of their text.

Memory is bounded: ``RECENT`` digests for each of at most ``max_shapes`` shapes (LRU). A restart
forgets them, which only delays a verdict by a few pages; the verdicts themselves are kept in
the frontier.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict, deque

RECENT = 8  # digests kept per shape
_DIGITS = re.compile(r"\d+")


class TextNovelty:
    """Recent text digests per (origin, URL shape)."""

    def __init__(self, max_shapes: int = 10_000) -> None:
        self.max_shapes = max_shapes
        self._recent: OrderedDict[tuple[str, str], deque[bytes]] = OrderedDict()

    def novel(self, origin: str, shape: str, text: str) -> bool:
        """Whether ``text`` differs from the recent pages of the shape (and remember it). A page
        without text gives nothing new."""
        if "?" in shape:
            text = _DIGITS.sub("#", text)
        if not text:
            return False
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
        key = (origin, shape)
        recent = self._recent.get(key)
        if recent is None:
            recent = self._recent[key] = deque(maxlen=RECENT)
            while len(self._recent) > self.max_shapes:
                self._recent.popitem(last=False)
        else:
            self._recent.move_to_end(key)
        new = digest not in recent
        recent.append(digest)
        return new
