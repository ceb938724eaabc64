"""The line-level vote of several extractors' texts (bench/line_vote.py, issue 11's round 4)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
try:
    from line_vote import agreement, disputed, line_key, vote
finally:
    sys.path.pop(0)

ARTICLE = [
    "The council approved the new budget on Tuesday after a long debate.",
    "Spending on schools rises by four percent, the mayor said in a statement.",
    "Opponents argued that the plan leaves the roads without repairs for another year.",
]


def test_a_line_key_is_the_lines_words_in_lower_case() -> None:
    assert line_key("  The Council, approved -- it!  ") == "the council approved it"
    assert line_key("- * |") == ""


def test_boilerplate_one_engine_keeps_and_two_do_not_is_voted_out() -> None:
    noisy = "\n".join(["Subscribe to our newsletter for daily updates", *ARTICLE, "Share this on Facebook"])
    clean = "\n".join(ARTICLE)
    # the other two engines split the same article differently: one paragraph per line, one joined
    joined = ARTICLE[0] + " " + ARTICLE[1] + "\n" + ARTICLE[2]
    for texts in ([noisy, clean, joined], [clean, noisy, joined], [joined, clean, noisy]):
        out = vote(texts, 2)
        assert "Subscribe" not in out and "Share this" not in out
        assert line_key(out) == line_key(clean)


def test_a_line_two_of_three_hold_is_kept_in_its_place() -> None:
    missing = "\n".join([ARTICLE[0], ARTICLE[2]])  # the backbone lacks the middle line
    out = vote(["\n".join(ARTICLE), missing, missing], 2)
    assert out.split("\n") == [ARTICLE[0], ARTICLE[2]]  # one engine alone: not kept
    third = "\n".join(ARTICLE)
    out = vote([missing, third, third], 2)
    assert out.split("\n") == ARTICLE


def test_a_short_line_counts_only_where_another_engine_has_that_very_line() -> None:
    # "Share" and "Read more" turn up inside the others' prose, but not as lines of their own
    prose = "Share the road, the council said. Read more about the plan at the town hall."
    one = "\n".join(["Share", "Read more", prose])
    out = vote([one, prose, prose], 2)
    assert out == prose
    # a heading two engines give as a line of its own is kept
    out = vote(["Budget vote\n" + prose, "Budget vote\n" + prose, prose], 2)
    assert out == "Budget vote\n" + prose


def test_where_one_engine_alone_finds_the_article_the_vote_keeps_nothing() -> None:
    # the caller (bench/extract_engines.py's voted) then takes the shipped text instead
    assert vote(["\n".join(ARTICLE), "", "Cookie settings"], 2) == ""
    assert vote(["", "", ""], 2) == ""


def test_disputed_and_agreement_measure_the_shared_line_words() -> None:
    text = "\n".join(ARTICLE)
    assert disputed(text, text) == 0.0
    assert disputed(text, "Something else entirely, with no line of the article in it.") == 1.0
    half = disputed(text, "\n".join(ARTICLE[:1]))
    assert 0.0 < half < 1.0
    assert agreement(text, text) == 1.0
    assert agreement(text, "") == 0.0
    assert agreement("\n".join(ARTICLE[:2]), text) > agreement("\n".join(ARTICLE[:1]), text)
