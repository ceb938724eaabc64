"""The tree of an HTML page nested deeper than libxml2 builds: its elements to a depth, their text
below it.

libxml2's tree builder stops at 2048 levels, XML_PARSE_HUGE (lxml's ``huge_tree``) or not (a
constant of its ``nodePush``), and halts the parse there: everything after the 2048th open
element was lost, the article under a page builder's deep nest and the rest of the page after
it alike. Its parser reports the page's elements to a parser target without that limit, so
:func:`parse_deep` builds the tree from those events, keeps the elements of the first
``max_depth`` levels (the tree libxml2 builds, where it builds one) and gives the text of the
deeper ones to the element at the last level, a line break at the edges of ``breaks`` tags
(block elements). Python works each element (about 1 s for 300k elements), so a page is
parsed so only where libxml2's own parse stopped at its depth limit.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Mapping

from lxml import etree

log = logging.getLogger(__name__)

# What libxml2 keeps in a text or attribute value and lxml refuses to set from Python: control
# characters (not tab, line feed or carriage return) and the two non-characters of XML.
_REFUSED = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


class _DepthCappedTarget:
    """A parser target building the tree with lxml's TreeBuilder, less the elements below
    ``max_depth`` levels (and any element whose tag lxml refuses to create: libxml2 reads
    ``<script="async">`` as a tag named ``script="async"``), whose text stays in place unless
    it is in an element of a ``drops`` tag (script, style, nav: the tree drops those elements,
    which it does not hold here), and less the characters lxml refuses in a text or value
    (_REFUSED) and the attributes whose names it refuses. An attribute without a value reads ""
    (libxml2's tree gives it its name: ``<option selected>``). What follows the end of the first
    root element is left out: libxml2 reports content after ``</html>`` as a second root, which
    its tree parse drops."""

    def __init__(
        self, maker: etree.HTMLParser, max_depth: int, breaks: Collection[str], drops: Collection[str]
    ) -> None:
        self._builder = etree.TreeBuilder(parser=maker)
        self._maker = maker
        self._max_depth = max_depth
        self._breaks = breaks
        self._drops = drops
        self._open: list[str | None] = []  # for each open element, its tag where it is in the tree
        self._dropped_at: int | None = None  # the level of the outermost open unbuilt drops element
        self._ended = False  # the first root element has ended

    def start(self, tag: str, attrib: Mapping[str, str]) -> None:
        built = not self._ended and len(self._open) < self._max_depth and self._build(tag, attrib)
        if not built and self._dropped_at is None and not self._ended:
            if tag in self._drops:
                self._dropped_at = len(self._open)
            elif tag in self._breaks:
                self._builder.data("\n")
        self._open.append(tag if built else None)

    def _build(self, tag: str, attrib: Mapping[str, str]) -> bool:
        # names are tried on an element of their own first: a TreeBuilder that refuses one is
        # left in a state it cannot go on from
        attributes = {k: _REFUSED.sub("", v) for k, v in attrib.items()}
        try:
            self._maker.makeelement(tag, attributes)
        except ValueError:  # a name lxml refuses, of the tag or of an attribute
            try:
                self._maker.makeelement(tag)
            except ValueError:
                return False
            attributes = {k: v for k, v in attributes.items() if self._attribute_valid(k)}
        self._builder.start(tag, attributes)
        return True

    def _attribute_valid(self, name: str) -> bool:
        try:
            self._maker.makeelement("span", {name: ""})
        except ValueError:
            return False
        return True

    def end(self, tag: str) -> None:
        built = self._open.pop()
        if built is not None:
            self._builder.end(built)
        elif self._dropped_at == len(self._open):
            self._dropped_at = None
        elif tag in self._breaks and self._dropped_at is None and not self._ended:
            self._builder.data("\n")
        if not self._open:
            self._ended = True

    def data(self, data: str) -> None:
        if self._dropped_at is None and not self._ended:
            self._builder.data(_REFUSED.sub("", data))

    def close(self) -> etree._Element:
        while self._open:  # elements left open where the page ends or the parse halted
            self.end("")
        return self._builder.close()


def parse_deep(
    page: str,
    maker: etree.HTMLParser,
    options: Mapping[str, bool],
    max_depth: int,
    breaks: Collection[str],
    drops: Collection[str],
) -> etree._Element | None:
    """``page``'s root element, its elements to ``max_depth`` levels created by ``maker`` (a
    parser whose element class lookup they take), parsed with the HTMLParser ``options``; None
    where libxml2 finds no element or the parse runs out of memory (a warning says so)."""
    target = _DepthCappedTarget(maker, max_depth, breaks, drops)
    try:
        return etree.fromstring(page, etree.HTMLParser(target=target, **options))
    except (etree.ParserError, etree.XMLSyntaxError, ValueError):
        return None
    except (MemoryError, AssertionError) as e:  # lxml's TreeBuilder asserts where a failure left it
        log.warning(
            "a page of %d characters nested past libxml2's depth: its parse again failed (%s)",
            len(page),
            type(e).__name__,
        )
        return None
