"""Main text of an HTML page: headings and paragraphs of the article, in order, without the
navigation, footers, cookie banners, share bars, comments and scripts around it.

As shipped (:func:`extract_html`), trafilatura's fast mode gives the text and our extractor
replaces it where ours is over 1.5x as long or trafilatura finds nothing: the configuration that
three held-out sets, read by three other readers, chose over ours alone, which was tuned on the
dev set (issue 11). Ours also gives the title and language.

Our extractor's method is readability's, on lxml directly (bs4 is ~5x slower and recurses on
deep trees): drop elements that are boilerplate by tag, ARIA role or class/id words; score each container by
the prose it holds (paragraph length and commas, discounted by link text); take the best one and
its siblings of similar quality, less the links and teasers under headings such as "Related";
emit its blocks, dropping link lists and short fragments that carry no sentence. Every walk is iterative, and
the tree is at most 2048 levels deep (the parser is told the tree may be huge, which also lets
a text or attribute over 10 MB through; a page nested deeper keeps its elements to 2000 levels
and the text of the deeper ones, see parse_html), so 100k nested tags cost no more than 2048.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from lxml import etree
from lxml import html as lxml_html

log = logging.getLogger(__name__)
# trafilatura's own log lines ("discarding data: None" on every page where it finds nothing) say
# nothing that extract_html does not decide; its errors still show.
logging.getLogger("trafilatura").setLevel(logging.ERROR)

_DROP_TAGS = frozenset(
    (
        "script",
        "style",
        "noscript",
        "template",
        "svg",
        "math",
        "iframe",
        "button",
        "select",
        "input",
        "textarea",
        "nav",
        "footer",
        "aside",
        "canvas",
        "object",
        "embed",
        "dialog",
        "menu",
        "video",
        "audio",
        "map",
    )
)
# aria-hidden does not drop an element of this many characters or more found once on the page,
# its link text under this share of it (see _Shown).
_ARIA_SHOWN_MIN = 500
_ARIA_SHOWN_LINKS = 0.1
# The elements of a page that get the copy check (see _Shown): a page shows the eye a few long
# aria-hidden blocks of its own text at most (GitHub's file view: one); past these, the rest
# stay hidden as aria-hidden says, so a page of thousands costs this many searches, not one each.
_ARIA_SHOWN_SEARCHES = 16
# The attributes that can hide an element (see _is_hidden), and tags never dropped for words.
_HIDING_ATTRS = frozenset(("role", "aria-hidden", "hidden", "style"))
_SHIELDS = frozenset(("html", "body", "article", "main"))
# Dropped by both extractors, but trafilatura first takes formulas out of <math>: the tree it is
# handed keeps it. (A <figure> is not dropped: its caption is read with the story.)
_SALVAGED = frozenset(("math",))
_DROP_ROLES = {
    "navigation",
    "banner",
    "contentinfo",
    "complementary",
    "search",
    "dialog",
    "alertdialog",
    "menu",
    "menubar",
    "toolbar",
}
# Words in class/id that mark boilerplate. Matched as whole words of the split attribute, so
# "post-content" does not match "post" rules and "shadow" does not match "ad". Not "caption":
# a news photo's caption is read with the story.
_BOILER_WORDS = {
    "nav",
    "navbar",
    "navigation",
    "menu",
    "footer",
    "sidebar",
    "breadcrumb",
    "breadcrumbs",
    "cookie",
    "cookies",
    "consent",
    "gdpr",
    "banner",
    "share",
    "sharing",
    "social",
    "related",
    "recommended",
    "advert",
    "advertisement",
    "ads",
    "ad",
    "sponsor",
    "sponsored",
    "promo",
    "newsletter",
    "subscribe",
    "signup",
    "popup",
    "modal",
    "comment",
    "comments",
    "disqus",
    "widget",
    "toolbar",
    "pagination",
    "pager",
    "skip",
    "masthead",
    "tags",
    "tagcloud",
    "byline",
    "author",
    "meta",
    "dateline",
    "toc",
    "outbrain",
    "taboola",
    "login",
    "hidden",
    "sr",
    "print",
    "copyright",
    "legal",
    "infobox",
    "navbox",
    "reflist",
    "references",
    "footnotes",
    "cta",
    "trending",
    "most",
    "popular",
}
_GOOD_WORDS = {
    "article",
    "content",
    "entry",
    "main",
    "post",
    "story",
    "text",
    "body",
    "blog",
    "prose",
    "articlebody",
    "page",
}
# Below this many characters of main text the page is retried without class-word removal.
_SHORT = 500
# trafilatura reads pages of up to this many characters of HTML; a larger page gets our text alone.
# On big pages trafilatura's fast mode takes 2-3x our peak memory and 2-5x our CPU (measured,
# one process, no limit: `word<br>` lines 2 MB 515 MB RSS 4.9 s against ours alone 195 MB 0.9 s,
# 4 MB 994 MB 9.8 s against 352 MB 1.7 s; 500 attributes per <p> 4.4 MB 692 MB 2.2 s against
# 302 MB 1.0 s; 250-deep <div> nests 1.4 MB 5.3 s against 1.1 s, ~3.8 s a MB). The pool's limits
# per document (2 GB of address space, 120 s) are crossed between 8 and 16 MB (`word<br>` lines in
# the pool: 8 MB passed, 1.95 GB peak; at 16 MB trafilatura ran out of memory; at 24 MB our pass
# after it did too, and the page failed) and at ~30 MB (the nests); 3 MB keeps 2.7x below the
# first, and every dev page (at most 1.6 MB) and all held-out pages but one (5.1 MB) are under it.
_TRAFILATURA_MAX_CHARS = 3_000_000
# Our text replaces trafilatura's where it is over this many times as long (see extract_html).
_LONGER_SHARE = 1.5
# trafilatura.extract's options as shipped: its fast mode (no readability/justext comparison).
FAST: Mapping[str, bool] = MappingProxyType({"fast": True})
_WORD = re.compile(r"\w+")
# A paragraph of this many characters with links under this share of them is prose; the
# container widens to an ancestor with this much more prose, and at least this share more.
_PROSE_CHARS = 80
_PROSE_LINKS = 0.3
_WIDEN_CHARS = 100
_WIDEN_SHARE = 0.1
_SPLIT = re.compile(r"[^a-z0-9]+")
# Reader comments marked by words that also name an article's own sections (a paper's
# "discussion", a consultation's "how-to-respond"): only their exact shapes count. WordPress's
# comment form is the whole id "respond"; a thread of replies (Kinja's <section class="js_replies">)
# says reply and holds two or more <article>s or <li>s that say reply or comment.
_COMMENT_FORM_ID = "respond"
_REPLY_WORDS = frozenset(("reply", "replies"))
_REPLY_TAGS = ("article", "li")
# A boilerplate or reply word standing alone among the lower-cased class and id words (as _SPLIT
# cuts them).
_ANY_BOILER_WORD = re.compile(
    rf"(?<![a-z0-9])(?:{'|'.join(sorted(_BOILER_WORDS | _REPLY_WORDS | {_COMMENT_FORM_ID}))})(?![a-z0-9])"
)
_XML_DECLARATION = re.compile(r"\A\s*<\?xml\b[^>]*>")
_HIDDEN = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.IGNORECASE)
_HEADINGS = frozenset(("h1", "h2", "h3", "h4", "h5", "h6"))
# Block-level elements: text is cut into blocks at their edges. Lines split by <br> stay one
# block (kept or dropped together: a poem or an address), and a table row is one block of its
# cells (a film list's "1947" is kept with its title and synopsis).
_BLOCK_TAGS = _HEADINGS | {
    "p", "div", "li", "ul", "ol", "dl", "dt", "dd", "pre", "blockquote", "tr", "table",
    "section", "article", "main", "header", "body", "hr", "address", "details", "summary", "center",
    "figure", "figcaption",
}  # fmt: skip
# Elements inside a line of text (see _in_sentence).
_INLINE_TAGS = frozenset(
    ("a", "span", "em", "i", "b", "strong", "abbr", "cite", "time", "mark", "small", "u", "q")
)
_CELL_TAGS = ("td", "th")
# A run-in heading is a short label (see _run_in_heading).
_RUN_IN_CHARS = 40
# Blocks that are paragraphs of an article's flow (see _continued).
_FLOW_TAGS = ("p", "div")
# Characters outside links that make a paragraph ending as a sentence, or an item of a list of
# the article's, prose whose words are mostly linked (see _keep and _continued).
_UNLINKED_CHARS = 20
# A table cell with at most this many characters (and no table inside) holds data: see _small_cell.
_CELL_CHARS = 200
_PARA_TAGS = ("p", "pre", "blockquote", "td", "dd", "li", "h2", "h3", "div")
# Share of a paragraph's score that goes to its parent, grandparent and further ancestors.
_SHARES = (1.0, 1 / 2, 1 / 6, 1 / 9, 1 / 12)
# Han, kana and hangul: characters that stand for a word or a syllable.
_WIDE = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
# A heading that announces links to other pages, not a section of the article: the whole
# heading is one of these phrases ("Related", "More from The Times", "Other opinion columns",
# not "Related work" or "Recommended settings").
_TEASER_NOUNS = (
    r"(?:articles|stories|posts|news|content|links|videos|reads|reading|searches|columns|headlines)"
)
# The same in other languages, whole phrases only ("Artículos relacionados", "関連記事"); Chinese
# in its traditional and simplified spellings. Not the "See also" of wikis ("Siehe auch",
# "Voir aussi", "См. также"): that section is the article's own.
_TEASER_PHRASES = (
    # German, French, Spanish, Italian, Portuguese, Dutch
    "ähnliche artikel", "verwandte artikel", "mehr zum thema", "weitere artikel", "lesen sie auch",
    "das könnte sie auch interessieren", "meistgelesen", "articles similaires", "articles connexes",
    "à lire aussi", "lire aussi", "sur le même sujet", "vous aimerez aussi", "les plus lus",
    "artículos relacionados", "noticias relacionadas", "te puede interesar", "lee también",
    "lo más leído", "más noticias", "leggi anche", "articoli correlati", "potrebbe interessarti",
    "ti potrebbe interessare", "i più letti", "artigos relacionados", "notícias relacionadas",
    "leia também", "veja também", "mais lidas", "gerelateerde artikelen", "lees ook",
    "meest gelezen",
    # Polish, Czech, Swedish, Turkish, Russian, Ukrainian, Arabic
    "podobne artykuły", "powiązane artykuły", "czytaj także", "czytaj też", "najczęściej czytane",
    "související články", "čtěte také", "relaterade artiklar", "läs också", "läs även",
    "ilgili haberler", "benzer haberler", "похожие статьи", "читайте также", "новости по теме",
    "другие новости", "популярное", "схожі статті", "читайте також", "مقالات ذات صلة",
    "اقرأ أيضا", "أخبار ذات صلة",
    # Chinese, Japanese, Korean
    "相關文章", "相关文章", "相關新聞", "相关新闻", "相關閱讀", "相关阅读", "延伸閱讀", "延伸阅读",
    "推薦閱讀", "推荐阅读", "熱門文章", "热门文章", "熱門新聞", "热门新闻", "最新文章", "猜你喜歡",
    "猜你喜欢", "您可能會有興趣的文章", "你可能感兴趣的文章", "関連記事", "関連ニュース",
    "おすすめ記事", "人気記事", "注目記事", "こちらもおすすめ", "あわせて読みたい", "合わせて読みたい",
    "관련 기사", "관련기사", "추천 기사", "많이 본 뉴스", "인기 기사",
)  # fmt: skip
_TEASER_HEADING = re.compile(
    rf"(?:related(?: {_TEASER_NOUNS})?|recommended(?: for you| {_TEASER_NOUNS})?|read (?:more|next|also)|"
    rf"you (?:might|may) (?:also )?(?:like|enjoy)|more (?:from|on|in) [\w' .&-]{{1,40}}|more {_TEASER_NOUNS}|"
    rf"(?:most|top) (?:read|popular|viewed|shared|{_TEASER_NOUNS})|"
    rf"(?:popular|trending|latest)(?: now| {_TEASER_NOUNS})|"
    rf"other [\w ]{{1,30}}{_TEASER_NOUNS}|more like this|{'|'.join(map(re.escape, _TEASER_PHRASES))})\W*",
    re.IGNORECASE,
)
_TEASER_CHARS = 60  # a teaser heading is a short phrase
# Sentence ends: "..." and "…" alike, the CJK full stop and full-width marks; also closed by a
# bracket or followed by a note mark ("[Alden: Stop it.]", "was born. [M1]", "cities.[206]").
_SENTENCE_END = re.compile("[.!?:;\"')\u201d\u2026\u3002\uff01\uff1f]\\s*(?:\\]|\\[[^\\[\\]]{1,12}\\])?\\s*$")
# A short paragraph that is part of the article's flow: it ends as a sentence (a ':' too: "Or
# this conversation:" introduces the article's next lines; the furniture that ends so, "Sign up
# for our daily newsletter:", is _FURNITURE's), or is a numbered point ("2. Check the peep hole",
# "1.Check the locks", "1) performance overhead"; not "3.5 million").
_SENTENCE_LIKE = re.compile(_SENTENCE_END.pattern + "|^\\d{1,3}[.)]\\s*(?=[^\\W\\d_])")
# A news template's furniture in a paragraph of its own, whatever its punctuation or type:
# "Advertisement" (in a few languages), "Continue reading the main story", "Sign up for ...",
# a photo credit ("Image: Reuters", "(Photo: Getty Images)"). Never kept as a short paragraph.
_FURNITURE = re.compile(
    r"[(\[]?(?:(?:advertisement|advertising|sponsored content|anzeige|werbung|publicité|publicidad|"
    r"pubblicità|reklama|реклама|广告|広告|광고|continue reading|read more|sign up|subscribe)\b|"
    r"(?:photo|image|picture|credit|foto|bild|фото)s?\s*:\s*[^.!?]{0,40}[)\]]?\s*$)",
    re.IGNORECASE,
)


Engines = Literal["fast|ours", "never"]


@dataclass(frozen=True)
class HtmlText:
    """What :func:`extract_html` finds: the main text, the page title and language ("" if none)."""

    text: str
    title: str
    language: str


def _words(el: etree._Element) -> set[str]:
    attrs = f"{el.get('class', '')} {el.get('id', '')}".lower()
    return set(_SPLIT.split(attrs)) if attrs.strip() else set()


def _is_hidden(el: etree._Element, shown: _Shown) -> bool:
    """Page furniture by its ARIA role, or not shown: the hidden attribute or an inline style
    that hides it, or aria-hidden (unless it holds long text found nowhere else, see _Shown)."""
    if el.get("role", "").lower() in _DROP_ROLES:
        return True
    if el.get("hidden") is not None or _HIDDEN.search(el.get("style", "")):
        return True
    return el.get("aria-hidden") == "true" and shown.hides(el)


class _Shown:
    """The aria-hidden verdicts of one page. aria-hidden takes an element out of what a screen
    reader reads, not off the screen: pages put it on icons, on decorative copies of text the
    reader gets elsewhere (a carousel's cloned slides) and on the page behind an open dialog
    (yahoo-2 of the dev set: a wrapper of the whole page, its navigation included, behind a
    photo viewer holding the story), which are dropped; but an element of _ARIA_SHOWN_MIN
    characters or more whose first _ARIA_SHOWN_MIN characters appear once on the page (itself)
    and which holds no navigation (link text under _ARIA_SHOWN_LINKS of its text) is content
    shown to the eye, and stays (GitHub's file view: the file's lines are aria-hidden, read to a
    screen reader from a text area that a script fills). Each element is judged once, on the
    page as parsed, so every pass and trafilatura's tree agree.

    Linear in the page: the first judgement measures every element's text and link text in one
    bottom-up walk (_text_sizes); only the first _ARIA_SHOWN_SEARCHES elements that pass the
    length and link checks get the copy check (their first _ARIA_SHOWN_MIN characters gathered
    and searched in the page's text, two C-speed str.find), the rest stay hidden as aria-hidden
    says: a hostile page of 2,000 nested or 10,000 flat long aria-hidden blocks costs one walk
    and at most that many searches, where a search per block and a text per nested block cost
    minutes."""

    def __init__(self, body: etree._Element) -> None:
        self._body = body
        self._page: str | None = None
        self._sizes: dict[etree._Element, tuple[int, int]] | None = None
        self._searches = 0
        self._verdicts: dict[etree._Element, bool] = {}

    def hides(self, el: etree._Element) -> bool:
        verdict = self._verdicts.get(el)
        if verdict is None:
            verdict = self._judge(el)
            self._verdicts[el] = verdict
        return verdict

    def _judge(self, el: etree._Element) -> bool:
        if self._sizes is None:
            self._sizes = _text_sizes(self._body)
        chars, links = self._sizes.get(el, (0, 0))  # not of the page as parsed: hidden
        if chars < _ARIA_SHOWN_MIN or links >= _ARIA_SHOWN_LINKS * chars:
            return True
        if self._searches >= _ARIA_SHOWN_SEARCHES:
            return True
        self._searches += 1
        return self._copied(_text_head(el, _ARIA_SHOWN_MIN))

    def _copied(self, head: str) -> bool:
        """Whether the page's text holds ``head`` twice or more (once is the element's own)."""
        if self._page is None:
            self._page = _shown_text(self._body)
        first = self._page.find(head)
        return first >= 0 and self._page.find(head, first + 1) >= 0


def _shown_parts(el: etree._Element) -> Iterator[str]:
    """The texts under ``el`` in document order, less scripts' and styles' (and ``el``'s tail)."""
    for node in el.iter():
        if node.text and node.tag not in ("script", "style") and isinstance(node.tag, str):
            yield node.text
        if node.tail and node is not el:
            yield node.tail


def _shown_text(el: etree._Element) -> str:
    """The text under ``el`` less scripts and styles, whitespace collapsed to single spaces."""
    return " ".join(" ".join(_shown_parts(el)).split())


def _text_head(el: etree._Element, size: int) -> str:
    """The first ``size`` characters of _shown_text(el), reading no further than they need."""
    words: list[str] = []
    length = -1  # the words joined by single spaces
    for part in _shown_parts(el):
        for word in part.split():
            words.append(word)
            length += len(word) + 1
            if length >= size:
                return " ".join(words)[:size]
    return " ".join(words)


def _text_sizes(root: etree._Element) -> dict[etree._Element, tuple[int, int]]:
    """len(_shown_text(el)) and the sum of it over the <a> under ``el`` (``el`` included), of
    every element under ``root``, in one bottom-up walk. Parts are joined by a space before
    whitespace is collapsed, so a text's length is its words' characters plus one less space
    than it has words, and both add up over the parts."""
    subtree: dict[etree._Element, tuple[int, int, int]] = {}  # characters of words, words, links
    sizes: dict[etree._Element, tuple[int, int]] = {}
    for _event, el in etree.iterwalk(root, events=("end",)):
        chars = count = links = 0
        if el.text and isinstance(el.tag, str) and el.tag not in ("script", "style"):
            words = el.text.split()
            chars, count = sum(map(len, words)), len(words)
        for child in el:
            child_chars, child_count, child_links = subtree.pop(child, (0, 0, 0))
            words = child.tail.split() if child.tail else []
            chars += child_chars + sum(map(len, words))
            count += child_count + len(words)
            links += child_links
        size = chars + count - 1 if count else 0
        if el.tag == "a":
            links += size
        subtree[el] = (chars, count, links)
        sizes[el] = (size, links)
    return sizes


def _has_boiler_words(el: etree._Element, said: dict[tuple[str, str], set[str] | None]) -> bool:
    """Class or id words that say boilerplate, unless they also say article, name the section's
    own heading, or sit inside a heading. ``said``: what each class and id pair of the page says
    (see _attribute_words), filled as they come: a page repeats its class names."""
    key = (el.get("class", ""), el.get("id", ""))
    if key in said:
        words = said[key]
    else:
        words = said[key] = _attribute_words(*key)
    if words is None:
        return False
    if not words & _BOILER_WORDS and not _comment_markup(el, words):
        return False
    # A link or span inside a heading is the title's (docutils' <a class="toc-backref">).
    return not _named_after_heading(el) and next(el.iterancestors(*_HEADINGS), None) is None


def _attribute_words(cls: str, ident: str) -> set[str] | None:
    """The lower-cased words of a class and an id that may say boilerplate, or None where they
    cannot: no boilerplate or reply word stands alone among them, or they also say article."""
    attrs = f"{cls} {ident}".lower()
    if not _ANY_BOILER_WORD.search(attrs):  # most elements: one regex instead of a set of words
        return None
    words = set(_SPLIT.split(attrs))
    return None if words & {"article", "main", "content", "entry", "story"} else words


def _comment_markup(el: etree._Element, words: set[str]) -> bool:
    """WordPress's comment form (the whole id "respond") or a thread of replies: words saying
    reply on an element holding two or more replies (see _is_reply). The search stops at the
    second reply; libxml2's depth cap bounds how often a subtree is searched again."""
    if el.get("id", "").strip().lower() == _COMMENT_FORM_ID:
        return True
    if not words & _REPLY_WORDS:
        return False
    replies = (reply for reply in el.iter(*_REPLY_TAGS) if reply is not el and _is_reply(reply))
    return len(list(itertools.islice(replies, 2))) == 2


def _is_reply(el: etree._Element) -> bool:
    """An <article> or <li> whose class or id words say reply or comment."""
    return el.tag in _REPLY_TAGS and bool(_words(el) & (_REPLY_WORDS | {"comment", "comments"}))


def _named_after_heading(el: etree._Element) -> bool:
    """True if the boilerplate words come only from an id that spells the section's own heading
    (``<div id="sharing-with-a-single-developer"><h2>Sharing with a single developer``): docs
    and wikis name sections after their titles, and a title may hold "sharing" or "related"."""
    ident = el.get("id", "").lower()
    if not ident or (set(_SPLIT.split(el.get("class", "").lower())) & _BOILER_WORDS):
        return False
    heading = next(el.iter(*_HEADINGS), None)
    if heading is None:
        return False
    title = set(_SPLIT.split(_text_of(heading).lower()))
    return set(_SPLIT.split(ident)) - {""} <= title


def _no_article(el: etree._Element) -> bool:
    """True unless ``el`` holds the page's <h1> or an <article>: a class like "ad-free" on a
    wrapper must not take the article with it. An <article> whose own class or id words say
    boilerplate (WordPress themes wrap each comment in ``<article class="comment-body">``)
    does not count."""
    if el.find(".//h1") is not None:
        return False
    return all(_boiler_article(art) for art in el.iter("article"))


def _boiler_article(art: etree._Element) -> bool:
    """An <article> whose class or id words say boilerplate or reply: a comment, not the page's."""
    return bool(_words(art) & (_BOILER_WORDS | _REPLY_WORDS))


class _Cut:
    """The removals from a parsed page, recorded so that they can be undone: the relaxed retry
    (see extract_both) reads the page as parsed again without parsing it a second time. Each record
    is O(1) (no child index: a parent of 100k children stays linear), and undoing them in reverse
    order puts every element back after the sibling it followed, with its tail and its
    neighbour's text as they were."""

    def __init__(self) -> None:
        # (element, parent, previous sibling, whether its tail was merged, the text merged into)
        self._undo: list[tuple[etree._Element, etree._Element, etree._Element | None, bool, str | None]] = []

    def remove(self, el: etree._Element, keep_tail: bool = True) -> None:
        """Remove ``el`` and its subtree; its tail text stays with the parent where ``keep_tail``
        (it belongs to the parent), else it goes with ``el``."""
        parent = el.getparent()
        if parent is None:
            return
        previous = el.getprevious()
        tail = el.tail if keep_tail else None
        if not tail:
            self._undo.append((el, parent, previous, False, None))
        elif previous is not None:
            self._undo.append((el, parent, previous, True, before := previous.tail))
            previous.tail = (before or "") + tail
        else:
            self._undo.append((el, parent, previous, True, before := parent.text))
            parent.text = (before or "") + tail
        parent.remove(el)  # lxml: el keeps its own tail

    def undo(self) -> None:
        """Put back every element removed, newest first: the page as it was parsed."""
        while self._undo:
            el, parent, previous, merged, before = self._undo.pop()
            if previous is None:
                parent.insert(0, el)
                if merged:
                    parent.text = before
            else:
                previous.addnext(el)
                if merged:
                    previous.tail = before


def _text_of(el: etree._Element) -> str:
    return "".join(el.itertext())


def _in_sentence(el: etree._Element) -> bool:
    """An inline element with words of its paragraph right before it and, after it, more words
    or the end of the paragraph's sentence: a name or a topic link inside a sentence
    ("neighboring <a class="meta-loc">South Sudan</a>, cease"), a note link closing one, which
    its class words must not cut out of the sentence."""
    parent = el.getparent()
    if el.tag not in _INLINE_TAGS or parent is None or parent.tag != "p":
        return False
    previous = el.getprevious()
    before = parent.text if previous is None else previous.tail
    if not _WORD.search(before or ""):
        return False
    if _WORD.search(el.tail or ""):
        return True
    # the last of its paragraph, ending a sentence: 'were <a class=popup>born?"</a>', 'by <a
    # class=meta>Reuters</a>.'; not "<span class=ad>Advertisement</span>"
    return el.getnext() is None and bool(_SENTENCE_END.search(_text_of(el) + (el.tail or "")))


def _doomed(root: etree._Element, strict: bool, shown: _Shown) -> list[etree._Element]:
    """The elements under ``root`` (itself included) to drop, in document order. One loop over
    every node of the page (a large page has 10k+): the checks are inline and attribute-free
    elements cost a tag test and one ``keys()``. Read on the page as parsed (nothing cut), where
    _no_article is a lookup in _article_holders."""
    doomed: list[etree._Element] = []
    said: dict[tuple[str, str], set[str] | None] = {}
    holders = _article_holders(root) if strict else set()
    for el in root.iter():
        tag = el.tag
        # comments and processing instructions have no str tag
        if not isinstance(tag, str) or tag in _DROP_TAGS or (tag == "header" and _page_header(el)):
            doomed.append(el)
        elif keys := el.keys():  # most elements: no class, id, role, style or hidden to judge
            hidden = not _HIDING_ATTRS.isdisjoint(keys) and _is_hidden(el, shown)
            if not strict:  # the retry keeps what class words condemn, never what is not shown
                if hidden:
                    doomed.append(el)
            elif tag not in _SHIELDS and el not in holders:
                named = "class" in keys or "id" in keys  # what class words are read from
                if hidden or (named and _has_boiler_words(el, said) and not _in_sentence(el)):
                    doomed.append(el)
    return doomed


def _article_holders(root: etree._Element) -> set[etree._Element]:
    """The elements for which _no_article is False, of ``root``'s subtree as it is now: the
    ancestors of each <h1> and each <article> that is not boilerplate (see _boiler_article)
    with its ancestors. Each walk up stops at an element already in the set (its ancestors are
    too), so 2,000 nested <article>s cost 2,000 steps, not 2,000 x 2,000."""
    holders: set[etree._Element] = set()
    for start in itertools.chain(
        (h1.getparent() for h1 in root.iter("h1")),
        (art for art in root.iter("article") if not _boiler_article(art)),
    ):
        el = start
        while el is not None and el not in holders:
            holders.add(el)
            el = el.getparent()
    return holders


def _page_header(header: etree._Element) -> bool:
    """A <header> that is the site's or a box's (a logo, a menu, "Related Coverage"), not the
    article's: it holds neither the page's <h1> nor, inside an <article> or <main>, a stretch of
    prose (a text of _PROSE_CHARS or more outside links and scripts), as the lede that a story's
    <header> sets above its body."""
    if header.find(".//h1") is not None:
        return False
    if next(header.iterancestors("article", "main"), None) is None:
        return True
    for el in header.iter():
        if el.tag in _DROP_TAGS or not isinstance(el.tag, str):
            continue
        texts = (el.text, *(child.tail for child in el)) if el.tag != "a" else (child.tail for child in el)
        if any(t and len(t.strip()) >= _PROSE_CHARS for t in texts):
            return False
    return True


def _attached(el: etree._Element, root: etree._Element) -> bool:
    """True if ``el`` is still under ``root`` (not inside a subtree already dropped)."""
    return el is root or any(anc is root for anc in el.iterancestors())


def _text_stats(root: etree._Element) -> tuple[dict[etree._Element, int], dict[etree._Element, int]]:
    """Characters of text and of link text under each element, in one bottom-up pass."""
    chars: dict[etree._Element, int] = {}
    links: dict[etree._Element, int] = {}
    for event, el in etree.iterwalk(root, events=("end",)):
        del event
        n = len((el.text or "").strip())
        k = 0
        for child in el:
            n += chars.get(child, 0) + len((child.tail or "").strip())
            k += links.get(child, 0)
        if el.tag == "a":
            k = n
        chars[el] = n
        links[el] = k
    return chars, links


def _scores(
    root: etree._Element, chars: dict, links: dict, prose: dict[etree._Element, int]
) -> dict[etree._Element, float]:
    """Readability's candidate scores: each paragraph of 25+ characters gives 1 + its commas +
    a point per 100 characters (at most 3) to its parent, half to the grandparent and a falling
    share to three more ancestors; a container's total is discounted by its link density. Fills
    ``prose`` with the characters of prose paragraphs (few links) under every ancestor."""
    scores: dict[etree._Element, float] = {}
    for el in root.iter(*_PARA_TAGS):
        if el.tag == "div" and any(child.tag in _BLOCK_TAGS for child in el):
            continue  # a div of blocks is a container, not a paragraph
        n = chars.get(el, 0)
        if n < 25:
            continue
        text = _text_of(el) if n < 20_000 else (el.text or "")
        score = 1.0 + text.count(",") + text.count("\uff0c") + min(n / 100.0, 3.0)
        if n >= _PROSE_CHARS and links.get(el, 0) < _PROSE_LINKS * n:
            for anc in el.iterancestors():
                prose[anc] = prose.get(anc, 0) + n
        parent = el.getparent()
        for share in _SHARES:
            if parent is None:
                break
            scores[parent] = scores.get(parent, 0.0) + score * share
            parent = parent.getparent()
    for el, score in scores.items():
        words = _words(el)
        if el.tag in ("article", "main") or el.get("itemprop") == "articleBody" or words & _GOOD_WORDS:
            score *= 1.25
        scores[el] = score * (1.0 - links.get(el, 0) / max(chars.get(el, 1), 1))
    return scores


def _best_container(
    root: etree._Element, scores: dict[etree._Element, float], prose: dict[etree._Element, int]
) -> etree._Element:
    """The element that holds the article: the best-scored one, widened to the ancestor that
    near-best candidates share (an article split into sections scores each section), to a
    parent that scores higher than its best child (readability's rules), and to an ancestor
    that holds markedly more prose."""
    if not scores:
        return root
    ranked = sorted(scores, key=scores.__getitem__, reverse=True)
    best, top = ranked[0], scores[ranked[0]]
    if top <= 0:
        return root
    # Two or more of the next four candidates within 75% of the best under one ancestor.
    near = [el for el in ranked[1:5] if scores[el] >= 0.75 * top]
    if len(near) >= 2:
        near_ancestors = [{el, *el.iterancestors()} for el in near]
        for anc in best.iterancestors():
            if anc is root or anc.tag in ("body", "html"):
                break
            if sum(anc in a for a in near_ancestors) >= 2:
                best = anc
                break
    # Climb while the parent keeps scoring at least a third of the child; stop at a parent
    # that scores more than what we hold.
    last, parent = scores.get(best, top), best.getparent()
    while parent is not None and parent is not root and parent.tag not in ("body", "html"):
        ps = scores.get(parent)
        if ps is None:
            parent = parent.getparent()
            continue
        if ps < last / 3:
            break
        if ps > last:
            best = parent
            break
        last, parent = ps, parent.getparent()
    # Widen to an ancestor that holds markedly more prose: an article whose sections sit in
    # wrappers at different depths scores each section apart, and the best one is only a part.
    held = prose.get(best, 0)
    for anc in best.iterancestors():
        if anc is root or anc.tag in ("body", "html"):
            break
        if prose.get(anc, 0) - held >= max(_WIDEN_CHARS, _WIDEN_SHARE * held):
            best, held = anc, prose.get(anc, 0)
    # A lone child stands for its parent.
    while (parent := best.getparent()) is not None and parent is not root and len(parent) == 1:
        if parent.tag in ("body", "html"):
            break
        best = parent
    return best


def _selected(
    best: etree._Element, scores: dict[etree._Element, float], chars: dict, links: dict
) -> list[etree._Element]:
    """``best`` plus siblings that look like more of the same article (readability's rule): a
    sibling scoring a fifth of the best, or a paragraph of prose with few links."""
    parent = best.getparent()
    if parent is None or best.tag in ("body", "html"):
        return [best]
    top = scores.get(best, 0.0)
    threshold = max(10.0, 0.2 * top)
    best_class = best.get("class", "")
    out = []
    for sib in parent:
        if sib is best:
            out.append(sib)
            continue
        if not isinstance(sib.tag, str):
            continue
        bonus = 0.2 * top if best_class and sib.get("class", "") == best_class else 0.0
        n = chars.get(sib, 0)
        density = links.get(sib, 0) / max(n, 1)
        prose = (sib.tag in ("p", "pre", "blockquote") or sib.tag in _HEADINGS) and n > 0 and density < 0.25
        if prose or scores.get(sib, 0.0) + bonus >= threshold:
            out.append(sib)
    return out


@dataclass
class _Block:
    text: list[str]
    link_chars: int  # of links that lead away from the page ("#..." anchors do not count)
    heading: bool
    tag: str
    breaks: list[int] = field(default_factory=list)  # indices in ``text`` where a <br> was
    opener: etree._Element | None = None  # the element that opened the block

    def lines(self) -> str:
        """The block's text, whitespace collapsed, one line per <br>-separated line."""
        cuts = [0, *self.breaks, len(self.text)]
        parts = (" ".join("".join(self.text[a:b]).split()) for a, b in itertools.pairwise(cuts))
        return "\n".join(part for part in parts if part)


def _blocks(roots: list[etree._Element]) -> list[_Block]:
    """Split the selected subtrees into text blocks at block-level element boundaries."""
    blocks: list[_Block] = []
    cur = _Block([], 0, False, "p")
    links: list[bool] = []  # open <a> elements: does each lead away from the page?
    cell: etree._Element | None = None  # a small table cell whose inner blocks join its row

    def flush(tag: str, opener: etree._Element | None = None) -> None:
        nonlocal cur
        if "".join(cur.text).strip():
            blocks.append(cur)
        cur = _Block([], 0, tag in _HEADINGS, tag, opener=opener)

    for root in roots:
        flush(root.tag if isinstance(root.tag, str) else "p")
        for event, el in etree.iterwalk(root, events=("start", "end")):
            tag = el.tag if isinstance(el.tag, str) else ""
            if event == "start":
                if cell is not None and tag in _BLOCK_TAGS:
                    cur.text.append(" ")
                elif tag in _BLOCK_TAGS:
                    flush(tag, el)
                elif tag == "br":
                    cur.breaks.append(len(cur.text))
                elif tag in _CELL_TAGS:
                    cur.text.append(" ")
                    if cell is None and _small_cell(el):
                        cell = el
                if tag == "a":
                    links.append(not el.get("href", "").startswith("#"))
                if el.text:
                    cur.text.append(el.text)
                    if any(links):
                        cur.link_chars += len(el.text.strip())
            else:
                if tag == "a":
                    links.pop()
                if cell is not None and tag in _BLOCK_TAGS:
                    cur.text.append(" ")
                elif tag in _BLOCK_TAGS:
                    flush("p")
                elif tag in _CELL_TAGS:
                    cur.text.append(" ")
                    if el is cell:
                        cell = None
                if el is not root and el.tail:
                    cur.text.append(el.tail)
                    if any(links):
                        cur.link_chars += len(el.tail.strip())
        flush("p")
    return blocks


def _small_cell(cell: etree._Element) -> bool:
    """A table cell of data, not of layout: short text and no table inside. Its <div>s and
    <p>s (a cell wrapped for styling, "71.1 MB" in a <div>) stay with its row's block, which
    is kept or dropped whole; a layout cell holding a page's article is split as a page is."""
    if cell.find(".//table") is not None:
        return False
    return sum(len(t.strip()) for t in cell.itertext()) <= _CELL_CHARS


def _weight(text: str) -> int:
    """Length of ``text`` in Latin-script characters: a Chinese, Japanese or Korean character
    carries about what a word does, so it counts as three (a 30-character Chinese sentence is
    no fragment; the length rules were written for alphabetic text)."""
    return len(text) + 2 * len(_WIDE.findall(text))


def _keep(block: _Block, text: str) -> bool:
    n = _weight(text)
    # a paragraph mostly of links is a link list, unless it ends as a sentence with some words of
    # its own (a comment's paragraph linking most of its clauses)
    own = n - block.link_chars >= _UNLINKED_CHARS and block.tag == "p" and _SENTENCE_END.search(text)
    # a heading is judged by what it titles (see _titles), links or not: a list article's
    # "<a>Thumper</a> ($20)", a blog post's permalink
    if block.heading:
        return n <= 300
    if block.link_chars > 0.5 * n and not own:
        return False
    if n >= 80:
        return True
    # an item, a row, code or a caption ("Memory leak in action" in a <figcaption> or an element
    # whose class says caption) is no fragment of a sentence; a photo credit in a caption is the
    # caption's ("Foto: LA NACION"), in a paragraph of its own the template's
    captioned = block.tag == "figcaption" or (block.opener is not None and "caption" in _words(block.opener))
    if not captioned and _FURNITURE.match(text):
        return False
    if n >= 25 and _SENTENCE_END.search(text):
        return True
    # a data table's row may link a cell ("<a>4.2.3</a> April 2014"), a caption its credit
    # ("Photo by <a>Jo Reed</a>"): their links are under half of them (above), a layout table's
    # menu row or another story's teaser are not
    linked = block.tag == "tr" or captioned
    return (
        (block.tag in ("li", "tr", "td", "dd", "pre") or captioned)
        and n >= 15
        and (linked or not block.link_chars)
    )


def _continued(blocks: list[_Block], texts: list[str]) -> list[bool]:
    """Which blocks to keep: :func:`_keep`, and also short paragraphs (<p>s, or <div>s of text,
    each with the wrappers that hold it alone: see _siblings) without links between two kept
    paragraphs of the same parent that end as a sentence, are numbered, are set in bold or
    italics, or come several in a row (a story's dialogue, "Seriously?" in a blog post, a
    subheading in a <p>, a poem's stanza, a recipe's lines): the article's flow, which the
    length rule alone cuts into pieces; after the last kept paragraph of a parent, its closing
    lines that end as a sentence ("I doubt I will."; see _closes). A chart's labels in <p>s of
    their own wrapper are not, nor a news template's furniture, by its words ("Advertisement",
    "Continue reading the main story", "Image: Reuters", see _FURNITURE) between the story's
    paragraphs. Also a run-in heading right before its paragraph (see _run_in_heading), and
    the items of a list of the article's own (one item kept without links)
    that link a part of a sentence ("Thanks to evilpie, users can now <a>import logins from
    KeePass</a>"), not a list of links."""
    keep = [_keep(b, t) for b, t in zip(blocks, texts, strict=True)]
    short = [not k and b.tag in _FLOW_TAGS and b.link_chars == 0 for b, k in zip(blocks, keep, strict=True)]
    i = 0
    while i < len(blocks):
        if not short[i]:
            i += 1
            continue
        j = i
        while j < len(blocks) and short[j]:
            j += 1
        run = blocks[i - 1 : j + 1]
        if i > 0 and keep[i - 1] and _siblings(blocks[i - 1 : j]) and _closing(blocks[j - 1]):
            # the article's last lines ("I doubt I will."): sentences, not "Share this:"
            keep[i:j] = [_closes(t) for t in texts[i:j]]
        elif i > 0 and j < len(blocks) and keep[i - 1] and keep[j] and _siblings(run):
            # several short lines in a row are a stanza or a recipe's list, kept whole
            stanza = j - i >= 2
            keep[i:j] = [
                not _FURNITURE.match(t)
                and (stanza or _SENTENCE_LIKE.search(t) is not None or _emphasised(b.opener))
                for b, t in zip(blocks[i:j], texts[i:j], strict=True)
            ]
        i = j
    # A run-in heading: an element's short leading label set as a heading ("<div><span
    # class='head'>Step 1</span><p>Measure the cloche...") right before a kept paragraph of
    # that element.
    for n in range(len(blocks) - 1):
        label, following = blocks[n], blocks[n + 1]
        if not keep[n] and keep[n + 1] and following.tag in _FLOW_TAGS and _run_in_heading(label, texts[n]):
            keep[n] = following.opener is not None and following.opener.getparent() is label.opener
    # A list of the article's own (one of its items kept without links) keeps its items that
    # link a part of a sentence: 20 characters or more outside their links.
    own_lists = {_list_of(b) for b, k in zip(blocks, keep, strict=True) if k and not b.link_chars} - {None}
    for n, (b, t) in enumerate(zip(blocks, texts, strict=True)):
        if not keep[n] and _list_of(b) in own_lists:
            keep[n] = _weight(t) - b.link_chars >= _UNLINKED_CHARS
    return keep


def _run_in_heading(block: _Block, text: str) -> bool:
    """True if ``block`` is the leading text of a <p> or <div>, without links, that one inline
    child holds whole, set in bold or with class words of a heading ("head", "headline2",
    "title"): a label heading what follows it inside the same element."""
    el = block.opener
    if el is None or block.tag not in _FLOW_TAGS or block.link_chars or (el.text or "").strip():
        return False
    if _weight(text) > _RUN_IN_CHARS or len(el) == 0 or _FURNITURE.match(text):
        return False
    first = el[0]
    if first.tag not in _INLINE_TAGS or " ".join(_text_of(first).split()) != text:
        return False
    return first.tag in ("strong", "b") or any(
        w.startswith(("head", "title", "subhead")) for w in _words(first)
    )


def _closing(block: _Block) -> bool:
    """True if ``block`` is the last element of its parent (with the wrappers that hold it alone)."""
    return block.opener is not None and _wrapped(block.opener).getnext() is None


def _closes(text: str) -> bool:
    """A short line that can close an article: words ending as a sentence, not as an announcement
    (':' or ';', "Share this:"), and no furniture ("Continue reading.")."""
    return (
        _WORD.search(text) is not None
        and _SENTENCE_END.search(text) is not None
        and not text.rstrip().endswith((":", ";"))
        and not _FURNITURE.match(text)
    )


def _list_of(block: _Block) -> etree._Element | None:
    """The list that ``block`` is an item of (the parent of the <li> that opened it), or None."""
    return block.opener.getparent() if block.tag == "li" and block.opener is not None else None


def _siblings(blocks: list[_Block]) -> bool:
    """True if ``blocks`` are all paragraphs (<p>, or <div>s of text) of one parent element, each
    counted with the wrappers that hold it alone (``<div><div><span>Alden stared at him.``)."""
    parents = [
        _wrapped(b.opener).getparent() if b.opener is not None and b.tag in _FLOW_TAGS else None
        for b in blocks
    ]
    return parents[0] is not None and all(parent is parents[0] for parent in parents)


def _wrapped(el: etree._Element) -> etree._Element:
    """``el`` or the outermost of the elements around it that hold it alone, without text."""
    while (parent := el.getparent()) is not None and len(parent) == 1 and not (parent.text or "").strip():
        el = parent
    return el


def _emphasised(el: etree._Element | None) -> bool:
    """True if all the text of ``el`` is in <strong>, <b>, <em> or <i> children: a subheading set
    in a paragraph ("1. Check the peep hole", "Whole Foods future", "<em>A new plan</em>")."""
    if el is None or len(el) == 0 or (el.text or "").strip():
        return False
    return all(child.tag in ("strong", "b", "em", "i") and not (child.tail or "").strip() for child in el)


def _drop_teaser_boxes(
    selected: list[etree._Element],
    chars: dict[etree._Element, int],
    links: dict[etree._Element, int],
    cut: _Cut,
) -> None:
    """Remove from the selected subtrees each heading that announces other pages (see
    _TEASER_HEADING) with what follows it in its box (the smallest element around the heading
    that holds more than it), where that is links and items (see _Boxes.teasers): the story's
    paragraphs before a "Related" heading at the end of its body stay, and so does a section of
    prose titled "Read next". Teaser lists carry whole paragraphs of other stories, which pass
    every per-block rule."""
    roots = set(selected)
    boxes: _Boxes | None = None  # built at the first teaser heading: most pages have none
    for root in selected:
        for heading in list(root.iter(*_HEADINGS)):
            if chars.get(heading, 0) > _TEASER_CHARS or not _TEASER_HEADING.fullmatch(
                " ".join(_text_of(heading).split())
            ):
                continue
            anchor = heading  # the heading, or the wrapper holding it and nothing more
            while (
                anchor not in roots
                and (box := anchor.getparent()) is not None
                and box not in roots
                and chars.get(box, 0) <= chars.get(heading, 0)
            ):
                anchor = box
            if anchor in roots or anchor.getparent() is None or not _attached(anchor, root):
                continue
            boxes = boxes or _Boxes(selected, chars, links)
            if boxes.teasers(anchor):
                for el in [anchor, *anchor.itersiblings()]:
                    # the box's tail too: an inline box's summary after its headline link
                    cut.remove(el, keep_tail=False)


class _Boxes:
    """What the elements after a teaser heading hold, from one bottom-up pass over the selected
    subtrees and one pass over each box's children: every check is then a lookup, so a page of
    10k "Related" headings costs no more than its size."""

    def __init__(self, selected: list[etree._Element], chars: dict, links: dict) -> None:
        # loose: characters of link text outside prose paragraphs (headlines, link lists);
        # article: holds the <h1>, a non-boilerplate <article> or two prose paragraphs side by side
        # (the article's flow; a teaser item has one summary under its headline link). An
        # <article> with a headline link and one prose paragraph at most is a card of a
        # "related posts" grid (WordPress wraps each in one), not the page's article.
        self.loose: dict[etree._Element, int] = {}
        self.prose: set[etree._Element] = set()
        self.article: set[etree._Element] = set()
        self._after: dict[etree._Element, tuple[int, bool]] = {}
        paragraphs: dict[etree._Element, int] = {}  # prose paragraphs under each element, up to 2
        for root in selected:
            for event, el in etree.iterwalk(root, events=("end",)):
                del event
                n, k = chars.get(el, 0), links.get(el, 0)
                blocks = any(child.tag in _BLOCK_TAGS for child in el)
                if (el.tag in ("p", "pre", "blockquote") or (el.tag == "div" and not blocks)) and (
                    n >= _PROSE_CHARS and k < _PROSE_LINKS * n
                ):
                    self.prose.add(el)
                    self.loose[el] = 0
                else:
                    self.loose[el] = k if el.tag == "a" else sum(self.loose.get(child, 0) for child in el)
                paragraphs[el] = min(2, (el in self.prose) + sum(paragraphs.get(child, 0) for child in el))
                card = self.loose[el] > 0 and paragraphs[el] < 2
                if (
                    el.tag == "h1"
                    or (el.tag == "article" and not _boiler_article(el) and not card)
                    or sum(child in self.prose for child in el) >= 2
                    or any(child in self.article for child in el)
                ):
                    self.article.add(el)

    def teasers(self, anchor: etree._Element) -> bool:
        """True if the siblings after ``anchor`` hold links outside prose paragraphs, no prose
        paragraph of the box's own and nothing of the article (see __init__)."""
        if anchor not in self._after:
            parent = anchor.getparent()
            loose, clean = 0, True
            for child in reversed(list(parent)) if parent is not None else ():
                self._after[child] = (loose, clean)
                loose += self.loose.get(child, 0)
                clean = clean and child not in self.prose and child not in self.article
        loose, clean = self._after[anchor]
        return loose > 0 and clean


def _titles(kept: list[tuple[_Block, str]]) -> list[bool]:
    """For each block, whether it is a heading with text kept under it: a non-heading block
    before the next heading of its level or a higher one (an <h3> whose section opens with an
    <h4> titles what the <h4> holds). A heading with nothing under it is navigation, not a
    title; the <h1> is always the title."""
    titled = [False] * len(kept)
    under = [False] * 7  # by level 1..6: text before the next heading of that level or higher
    for i in range(len(kept) - 1, -1, -1):
        block = kept[i][0]
        if not block.heading:
            under = [True] * 7
            continue
        level = int(block.tag[1])
        titled[i] = level == 1 or under[level]
        for deeper in range(level, 7):  # a heading of level L ends the sections of L and deeper
            under[deeper] = False
    return titled


def extract_html(html: str, engines: Engines = "fast|ours") -> HtmlText:
    """Extract the main text, title and language of an HTML document given as text.

    ``engines`` "fast|ours" (as shipped): trafilatura's fast mode gives the main text, and ours
    replaces it where ours is over _LONGER_SHARE times as long (trafilatura plainly missed part
    of the article) or where trafilatura finds nothing or fails; the title and language are
    ours; a page over _TRAFILATURA_MAX_CHARS characters gets ours alone (the pool's memory and
    time limits). "never": our extractor alone. Chosen on three held-out sets read by three other
    readers (issue 11, README's extraction section): ours alone was tuned on the dev set."""
    page, other = extract_both(html, None if engines == "never" else FAST)
    if engines == "never" or len(page.text) > _LONGER_SHARE * len(other):
        return page
    return HtmlText(other, page.title, page.language)


@dataclass
class StrictPass:
    """Our strict pass's judgement of a parsed page (``doc``, from parse_html): its ``body`` (the
    page itself where it has none), what it shows (``shown``, see _Shown), the elements the pass
    drops in document order (``doomed``, see _doomed), and ``cut``, what has been removed from the
    tree so far (see _Cut). Made once a page by strict_pass; extract_both's two passes and the
    engine bench (bench/extract_engines.py, readability on the tree trafilatura is handed) read it."""

    doc: etree._Element
    body: etree._Element
    shown: _Shown
    doomed: list[etree._Element]
    cut: _Cut

    def clean_for_trafilatura(self) -> etree._Element:
        """Remove from the page what trafilatura is not handed (see _trafilatura_text), recording
        it in ``cut``; returns the page."""
        from trafilatura.settings import MANUALLY_CLEANED

        doc, body = self.doc, self.body
        stripped = _DROP_TAGS.intersection(MANUALLY_CLEANED) - _SALVAGED
        # Under ``body`` every element of those tags is in ``doomed``; the rest of the page (its
        # <head>) is stripped unrecorded: the retry reads ``body`` alone. Last first (see _main_text).
        for el in reversed(self.doomed):
            if el.tag in stripped:
                self.cut.remove(el)
        for part in list(doc) if body is not doc else ():
            if part is body:
                continue
            if part.tag in stripped:
                self.cut.remove(part)
            else:
                etree.strip_elements(part, *stripped, with_tail=False)
        for el in reversed([el for el in self.doomed if _hidden_furniture(el, self.shown)]):
            self.cut.remove(el)
        return doc


def strict_pass(doc: etree._Element) -> StrictPass:
    """The strict pass's judgement of every element of the parsed page ``doc``, nothing cut yet."""
    body = doc.find("body")
    if body is None:
        body = doc
    shown = _Shown(body)
    return StrictPass(doc, body, shown, _doomed(body, strict=True, shown=shown), _Cut())


def extract_both(html: str, trafilatura: Mapping[str, bool] | None) -> tuple[HtmlText, str]:
    """Our page (text, title, language) and, unless ``trafilatura`` is None, trafilatura's text
    with those options of ``trafilatura.extract`` ("fast", "favor_recall", "favor_precision";
    FAST as shipped, the benches try others), ""
    where it finds none, fails, or the page is over _TRAFILATURA_MAX_CHARS. The page is parsed
    once: our strict pass judges every element first, trafilatura is handed the tree less the
    elements that it and we both drop (see _trafilatura_text; it works on a copy), then our pass
    cuts the tree up."""
    nothing = HtmlText("", "", ""), ""
    if not html.strip():
        return nothing
    doc = parse_html(html)
    if doc is None:
        return nothing
    title_el = doc.find(".//title")
    title = " ".join((_text_of(title_el) if title_el is not None else "").split())
    if not title:
        og = doc.find(".//meta[@property='og:title']")
        title = " ".join((og.get("content", "") if og is not None else "").split())
    language = (doc.get("lang") or doc.get("xml:lang") or "").strip().lower()[:16]
    judged = strict_pass(doc)
    other = (
        _trafilatura_text(judged, len(html), trafilatura)
        if trafilatura is not None and len(html) <= _TRAFILATURA_MAX_CHARS
        else ""
    )
    text = _main_text(judged.body, judged.doomed, judged.cut)
    # Class words ("widget", "hidden", "meta") sometimes sit on the article's own wrapper; if the
    # strict pass finds less than a short article, retry on the page as parsed (every cut undone)
    # keeping such elements.
    if _weight(text) < _SHORT:
        judged.cut.undo()
        relaxed = _main_text(judged.body, _doomed(judged.body, strict=False, shown=judged.shown), _Cut())
        if len(relaxed) > len(text):
            text = relaxed
    return HtmlText(text, title, language), other


def _hidden_furniture(el: etree._Element, shown: _Shown) -> bool:
    """Not shown or page furniture by its attributes, and neither the page's wrapper (<body>,
    <main>, ...) nor holding its <h1> or an <article>: a page hides its body until a script shows
    it, or marks its wrapper aria-hidden while a cookie dialog is open (as the strict pass)."""
    hidden = not _HIDING_ATTRS.isdisjoint(el.keys()) and _is_hidden(el, shown)
    return hidden and el.tag not in _SHIELDS and _no_article(el)


_PARSE_OPTIONS: Mapping[str, bool] = MappingProxyType(
    {
        "collect_ids": False,
        "default_doctype": False,
        "remove_comments": True,
        "remove_pis": True,
        "no_network": True,
        "huge_tree": True,
    }
)
# The levels of elements kept of a page nested deeper than libxml2 builds (see parse_html): under
# its 2048, so the tree is one that libxml2 could have built (its copies recurse).
_MAX_DEPTH = 2000
_HTML_CLASSES = etree.ElementDefaultClassLookup(
    element=lxml_html.HtmlElement,
    comment=lxml_html.HtmlComment,
    pi=lxml_html.HtmlProcessingInstruction,
    entity=lxml_html.HtmlEntity,
)


def _trafilatura_text(judged: StrictPass, size: int, options: Mapping[str, bool]) -> str:
    """Trafilatura's main text of the parsed page ("" if it finds none or fails) with
    ``options`` (FAST: without its own fallback extractors, ours takes their place), without
    comments. It is
    handed the tree less the elements that it and we both drop whole (scripts, styles, <nav>,
    <footer>, form controls; not <math>, see _SALVAGED) and less what the page does not show
    (_hidden_furniture, of the strict pass's ``doomed``): its XPath pruning and link-density
    passes walk a smaller tree (~15% less of its time when measured), and hidden text stays out.
    On the dev set the shipped mode with this text gives F1 0.9202 (repaired truth; 0.8250 as
    given) against 0.9172 (0.8227) with ``trafilatura.extract(page bytes, fast=True)``, comments
    included, the round-2 bench's "fast|ours". The one loss: its recall retry, which undoes its
    own deletions where no paragraph survives them, no longer sees those elements. ``size``: the
    page's characters of HTML, for the warning where it runs out of memory; what is removed is
    recorded in ``judged.cut`` (see _Cut)."""
    import trafilatura  # ~0.2 s to import: only where a page first needs it

    try:
        doc = judged.clean_for_trafilatura()
        # trafilatura copies a tree it is given before it changes it: ours stays whole
        text = trafilatura.extract(
            doc,
            include_comments=False,
            include_tables=True,
            fast=options.get("fast", False),
            favor_recall=options.get("favor_recall", False),
            favor_precision=options.get("favor_precision", False),
        )
    except MemoryError:  # its copy of the tree is freed on return; ours may still fit
        log.warning("trafilatura ran out of memory on a page of %d characters; our text is used", size)
        return ""
    except Exception as e:  # a library bug on a hostile page must not cost the page our text
        log.debug("trafilatura failed: %s: %s", type(e).__name__, e)
        return ""
    return text or ""


def parse_html(html: str) -> etree._Element | None:
    """The page's root element as both extractors read it (the benches parse with it too), or
    None where libxml2 finds none; parsed as trafilatura parses a string (utils.HTML_PARSER,
    less its encoding: ours is decoded), with lxml.html's element class, which trafilatura
    needs, for every element: lxml.html's own lookup picks a class per
    tag (forms, inputs) in Python for each element touched, ~1.7 ms a page of the two passes,
    the default lookup in C. A leading XML declaration is dropped first: lxml refuses a str
    that declares an encoding (an XHTML page beginning ``<?xml version="1.0"
    encoding="utf-8"?>`` came out empty). ``huge_tree``: libxml2's limits without it (256
    levels, 10 MB a text or attribute) cut a page there and lose the rest of it: an article
    nested 300 deep, or everything after an inline image of over 10 MB. With it, text as long
    as the page, whose size the pool bounds, and 2048 levels, past which libxml2 halts the
    parse whatever it is told: such a page is parsed again by html_deep_tree, its elements kept
    to _MAX_DEPTH levels and the text of deeper ones in place but for _DROP_TAGS elements'
    (trafilatura recursing into 2000-deep lists raises RecursionError, caught: our text is
    used). The halted tree is let go first (the two at once doubled the memory of a wide page);
    where the parse again fails (out of memory), the page is the halted tree, parsed once more."""
    parser = etree.HTMLParser(**_PARSE_OPTIONS)
    parser.set_element_class_lookup(_HTML_CLASSES)
    page = _XML_DECLARATION.sub("", html, count=1)
    try:
        root = etree.fromstring(page, parser)
    except (etree.ParserError, ValueError):
        return None
    halt = parser.error_log.last_error  # libxml2 halts at a limit: it is the parse's last error
    if halt is not None and halt.type == etree.ErrorTypes.ERR_RESOURCE_LIMIT:
        from .html_deep_tree import parse_deep

        del root
        deep = parse_deep(page, parser, _PARSE_OPTIONS, _MAX_DEPTH, _BLOCK_TAGS | {"br"}, _DROP_TAGS)
        return etree.fromstring(page, parser) if deep is None else deep
    return root


def _main_text(body: etree._Element, doomed: list[etree._Element], cut: _Cut) -> str:
    """Our pass over ``body``: drop ``doomed`` (see _doomed), choose the container, keep its
    blocks; ``cut`` records what is removed. The last in document order goes first: an element
    inside another is removed before it, so no removal moves a subtree holding the ones removed
    later (lxml walks the subtree it moves: 2,000-deep nests cost depth squared otherwise).
    The tree is the same in either order."""
    for el in reversed(doomed):
        cut.remove(el)
    chars, links = _text_stats(body)
    prose: dict[etree._Element, int] = {}
    scores = _scores(body, chars, links, prose)
    best = _best_container(body, scores, prose)
    selected = _selected(best, scores, chars, links)
    _drop_teaser_boxes(selected, chars, links, cut)
    blocks = _blocks(selected)
    texts = [b.lines() for b in blocks]
    kept = [(b, t) for b, t, k in zip(blocks, texts, _continued(blocks, texts), strict=True) if k]
    out = [t for (b, t), titled in zip(kept, _titles(kept), strict=True) if not b.heading or titled]
    return "\n\n".join(out)
