"""bench/extract_engines.py: its ensembles on crafted pages, offline."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _bench() -> ModuleType:
    sys.path.insert(0, str(BENCH))  # it imports extract_heldout and extract_quality beside it
    try:
        import extract_engines
    finally:
        sys.path.remove(str(BENCH))
    return extract_engines


def test_prose_union_adds_missing_sentences_only() -> None:
    bench = _bench()
    ours = "The river rose over the old wall and the farmers moved their grain to the hill."
    missing = "In the spring the engineers raised the levee by two metres along the whole eastern bank."
    other = "\n".join(
        [
            ours,  # already ours: not added again
            missing,  # prose ours lacks
            "- A list item that is long enough to pass for prose if lists were not refused.",
            "| a table row | with cells that run on for more than sixty characters in all |",
            "Share this story with your friends",  # short and no sentence end
            "A long line of related headlines without any end punctuation at all to close it",
        ]
    )
    assert bench.union_prose(ours, other) == f"{ours}\n\n{missing}"
    assert bench.union_prose("", missing) == missing
    comma, stop = "\uff0c", "\u3002"  # the ideographic comma and full stop
    chinese = f"今天北京天气很好{comma}我们去公园散步{comma}看见许多孩子在湖边放风筝{comma}大家都很开心{stop}"
    assert len(chinese) < bench.PROSE_CHARS and not bench.is_prose(chinese)
    assert bench.is_prose(chinese * 2)


def test_trafilatura_first_falls_back_to_ours_on_a_short_text() -> None:
    bench = _bench()
    para = "The river rose over the old wall and the farmers moved their grain to the hill before dawn."
    page = f"<html><body><article><p>{para}</p></article></body></html>".encode()
    assert len(bench.TRAF_DEFAULT(page)) < bench.MIN_CHARS  # one sentence: under the filters' minimum
    assert bench.traf_then_ours(page) == bench.OURS_ALONE(page) == para
    paras = "".join(f"<p>{para} Day {day} of the flood brought no rain.</p>" for day in range(4))
    long_page = f"<html><body><article>{paras}</article></body></html>".encode()
    assert bench.traf_then_ours(long_page) == bench.TRAF_DEFAULT(long_page)
    assert len(bench.traf_then_ours(long_page)) >= bench.MIN_CHARS


def test_paired_interval_spans_zero_only_without_a_difference() -> None:
    bench = _bench()
    base = [(0.8, 0.7), (0.9, 0.95), (0.6, 0.5), (1.0, 0.9)]
    assert bench.paired_interval(base, base, rounds=200) == (0.0, 0.0)
    better = [(p, min(r + 0.05, 1.0)) for p, r in base]  # more recall on every page
    low, high = bench.paired_interval(base, better, rounds=200)
    assert 0 < low <= high
    assert bench.paired_interval(better, base, rounds=200) == (-high, -low)


def test_paired_interval_of_snippet_counts_resamples_pages() -> None:
    """On a snippet set the pages' counts are resampled and F1 = 2TP/(2TP+FP+FN) recomputed from
    their sums: no difference gives (0, 0), a configuration that finds more snippets on every page
    an interval above 0."""
    bench = _bench()
    counts = bench.heldout.SnippetCounts
    base = [counts(2, 1, 0, 3), counts(1, 2, 1, 2), counts(3, 0, 0, 3), counts(0, 3, 0, 3)]
    assert bench.snippet_f1(base) == 2 * 6 / (2 * 6 + 1 + 6)
    assert bench.paired_interval(base, base, rounds=200, stat=bench.snippet_f1) == (0.0, 0.0)
    better = [counts(c.tp + 1, c.fn - 1, c.fp, c.tn) if c.fn else c for c in base]
    low, high = bench.paired_interval(base, better, rounds=200, stat=bench.snippet_f1)
    assert 0 < low <= high


def test_trafilatura_as_the_engine_gives_way_to_ours_where_ours_is_much_longer() -> None:
    """fast|ours and traf|ours: trafilatura's text, ours alone where ours is over LONGER_SHARE times
    as long (trafilatura plainly missed text); fast>ours: ours where fast gives under MIN_CHARS."""
    bench = _bench()
    para = "The river rose over the old wall and the farmers moved their grain to the hill before dawn."
    paras = "".join(f"<p>{para} Day {day} of the flood brought no rain.</p>" for day in range(4))
    page = f"<html><body><article>{paras}</article></body></html>".encode()
    assert len(bench.TRAF_FAST(page)) >= bench.MIN_CHARS
    assert bench.fast_then_ours(page) == bench.TRAF_FAST(page)
    short = f"<html><body><article><p>{para}</p></article></body></html>".encode()
    assert bench.fast_then_ours(short) == bench.OURS_ALONE(short) == para
    assert bench.unless_ours_longer(bench.TRAF_FAST)(page) == bench.TRAF_FAST(page)

    def engine(body: bytes) -> str:
        return para if body == page else ""

    assert len(bench.OURS_ALONE(page)) > bench.LONGER_SHARE * len(para)
    assert bench.unless_ours_longer(engine)(page) == bench.OURS_ALONE(page)


def test_furniture_is_a_short_link_text_or_a_long_list_item_ending_no_sentence() -> None:
    bench = _bench()
    page = '<p><a href="/s">Share on Facebook</a> <a href="/n">Next story in the series</a></p>'
    links = bench.link_texts(page)
    assert links == "share on facebook\nnext story in the series"
    assert bench.is_furniture("Share on Facebook", links)
    assert bench.is_furniture("- Share on Facebook", links)
    assert not bench.is_furniture("Share on Facebook.", links)  # ends a sentence
    assert not bench.is_furniture("Next story in the series", links)  # over FURNITURE_CHARS
    assert not bench.is_furniture("Subheading", links)  # no link's text
    teaser = "- " + "Headline of another story and its summary that goes on " * 4
    assert len(teaser) > bench.MIN_CHARS + 2 and bench.is_furniture(teaser.strip(), links)
    assert not bench.is_furniture(teaser.strip() + ".", links)


def test_trafilatura_less_furniture_removes_the_teasers_ours_dropped() -> None:
    """A list of teasers (headline and summary, no sentence end) in a box ours drops by its class
    word and trafilatura keeps: traf-furn is trafilatura's text without them."""
    bench = _bench()
    para = "The river rose over the old wall and the farmers moved their grain to the hill before dawn."
    paras = "".join(f"<p>{para} Day {day} of the flood brought no rain.</p>" for day in range(4))
    teaser = "Headline of another story and its summary that goes on and on " * 4
    page = (
        f"<html><body><article>{paras}<ul class='promo'><li>{teaser}</li><li>{teaser}</li></ul>"
        "</article></body></html>"
    ).encode()
    full = bench.TRAF_DEFAULT(page).split("\n")
    assert len(full) == 6 and full[4:] == [f"- {teaser.strip()}"] * 2  # trafilatura keeps them
    assert "Headline" not in bench.OURS_ALONE(page)
    assert bench.traf_less_furniture(page) == "\n".join(full[:4])


def test_gap_filling_adds_our_paragraphs_between_trafilaturas_first_and_last_only() -> None:
    """gaps|ours: our paragraphs trafilatura lacks go in after the line of the paragraph before
    them, between the first and the last it holds; our edges (a teaser, a footer line) do not."""
    bench = _bench()
    first = "The river rose over the old wall and the farmers moved their grain to the hill."
    middle = "In the spring the engineers raised the levee by two metres along the eastern bank."
    last = "Until then the people of the delta will watch the water and read the sky."
    mine = "\n\n".join(["Read more: the budget", first, middle, last, "Share this story"])
    other = f"{first}\n{last}"
    assert bench.fill_gaps(other, mine) == f"{first}\n{middle}\n{last}"
    assert bench.fill_gaps(other, "Nothing of theirs here at all") == other
    assert bench.gaps_then_ours(mine, other) == f"{first}\n{middle}\n{last}"
    assert bench.gaps_then_ours(mine, "") == mine  # trafilatura found nothing: ours


def test_round_three_configurations_read_our_cleaned_tree() -> None:
    """longer fast, fast|ours 1.1, recall|ours and gaps|ours choose between the texts that
    extract_both gives: the crystalline row's rule at share 1.5 is extract_html's."""
    bench = _bench()
    para = "The river rose over the old wall and the farmers moved their grain to the hill before dawn."
    paras = "".join(f"<p>{para} Day {day} of the flood brought no rain.</p>" for day in range(4))
    page = f"<html><body><nav><a href='/'>Home</a></nav><article>{paras}</article></body></html>".encode()
    shipped = bench.CONFIGS["crystalline"](page)
    assert bench.on_our_tree(bench.ours_if_longer(bench.LONGER_SHARE))(page) == shipped
    for label in ("longer fast", "fast|ours 1.1", "recall|ours", "gaps|ours"):
        text = bench.CONFIGS[label](page)
        assert all(f"Day {day} of the flood" in text for day in range(4)) and "Home" not in text
    assert bench.ours_if_longer(1.0)("x" * 11, "y" * 10) == "x" * 11
    assert bench.ours_if_longer(1.1)("x" * 11, "y" * 10) == "y" * 10  # not over 1.1x
    assert bench.ours_if_longer(1.1)("x" * 12, "y" * 10) == "x" * 12


def test_round_four_vote_drops_one_engines_boilerplate_and_never_empties_the_shipped_text() -> None:
    bench = _bench()
    article = [
        f"The river rose over the old wall on day {day}, and the farmers moved their grain."
        for day in range(4)
    ]
    clean = "\n".join(article)
    noisy = "\n".join(["Subscribe to our newsletter for daily updates", *article])
    # trafilatura's text keeps a newsletter box that ours and readability's do not: voted out
    assert bench.vote_or_shipped(clean, noisy, clean) == clean
    # a line only one engine found (ours) is not kept; the rest of the article is
    assert bench.vote_or_shipped(noisy, clean, clean) == clean
    # only ours finds the article (trafilatura nothing, readability a cookie line): the vote keeps
    # nothing, so the shipped text stays: ours, as fast|ours takes it where trafilatura is empty
    assert bench.vote_or_shipped(clean, "", "Cookie settings") == clean
    # the vote keeping under KEEP_SHARE of the shipped text: the shipped text
    half = "\n".join(article[:2])
    assert bench.vote_or_shipped(half, clean, half) == clean
    # readability not asked: the shipped text
    assert bench.vote_or_shipped(clean, noisy, "") == noisy
    paras = "".join(f"<p>{a}</p>" for a in article)
    page = f"<html><body><nav><a href='/'>Home</a></nav><article>{paras}</article></body></html>"
    for label in ("vote 2/3", "vote disputed", "vote disp 0.1", "vote decides"):
        text = bench.CONFIGS[label](page.encode())
        assert all(f"day {day}," in text for day in range(4)) and "Home" not in text


def test_round_four_readability_reads_the_tree_trafilatura_read_and_leaves_the_other_texts_alone() -> None:
    # Round 4's third engine (with_readability): asked with ours and trafilatura's texts as
    # shipped, it gets the tree trafilatura was handed, without the hidden box and the
    # navigation, on a full article and on a short one where our relaxed retry ran.
    from crystalline.ingest.html_text import FAST, extract_both

    bench = _bench()
    lede = "The river carried more sediment this spring than in any year since the survey began."
    paras = "".join(f"<p>{lede} Day {day} of the flood brought no rain to the plain.</p>" for day in range(4))
    hidden = "<div style='display:none'><p>Hidden teaser text that no reader of the page sees.</p></div>"
    nav = (
        "<nav><ul>" + "".join(f"<li><a href='/s/{i}'>Section {i}</a></li>" for i in range(12)) + "</ul></nav>"
    )
    full = f"<html><body>{nav}<article><h1>The delta grows</h1>{hidden}{paras}</article></body></html>"
    short = f"<html><body>{nav}<div class='legal'>{hidden}<p>{lede}</p></div></body></html>"
    asked: list[tuple[str, str]] = []

    def ask(mine: str, other: str) -> bool:
        asked.append((mine, other))
        return True

    for html in (full, short):
        page, theirs = extract_both(html, FAST)
        asked.clear()
        page2, theirs2, third = bench.with_readability(html, ask)
        assert (page2, theirs2) == (page, theirs)
        assert asked == [(page.text, theirs)]
        assert lede in third
        assert "Hidden teaser" not in third and "Section 3" not in third
        assert bench.with_readability(html, lambda a, b: False)[2] == ""
    assert bench.with_readability(" ", ask) == (*extract_both(" ", FAST), "")  # an empty page
