"""The learned block classifier of issue 11's round 5 (bench/block_classifier.py, bench-only):
its blocks, labels, models and the committed weights."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
try:
    import block_classifier as bc
finally:
    sys.path.pop(0)

ARTICLE = (
    "The council approved the new budget on Tuesday after a long debate, and the mayor said the "
    "plan keeps every school open. Spending on roads rises by four percent, while the parks, "
    "libraries and pools keep the hours they had last year, according to the city's statement."
)
NAV = "".join(f'<li><a href="/s{i}">Section {i}</a></li>' for i in range(12))
PAGE = f"""<html><head><title>Budget</title><script>var x = 1;</script></head><body>
<nav class="site-nav"><ul>{NAV}</ul></nav>
<main><article class="post-content"><h1>Council approves the budget</h1>
<p>{ARTICLE}</p><p>{ARTICLE.replace("Tuesday", "Monday")}</p>
<div hidden>Hidden promo that nobody sees on the screen.</div>tail text stays</article></main>
<footer class="footer"><a href="/about">About</a> <a href="/privacy">Privacy</a></footer>
</body></html>"""


def test_blocks_keep_order_tags_links_and_landmarks_and_drop_what_is_not_shown() -> None:
    page = bc.blocks(PAGE)
    texts = [b.text for b in page]
    assert not any("var x" in t for t in texts)
    assert not any("Hidden promo" in t for t in texts)
    assert any(t == "tail text stays" for t in texts)
    nav = [b for b in page if b.text.startswith("Section")]
    assert len(nav) == 12 and all(b.tag == "li" and b.link_chars == len(b.text) for b in nav)
    assert all(b.flags[bc._FLAGS.index("nav")] for b in nav)
    para = next(b for b in page if b.text.startswith("The council"))
    assert para.tag == "p" and para.link_chars == 0 and para.flags[bc._FLAGS.index("article")]
    assert "content" in para.near and "post" in para.near
    assert texts.index(para.text) > texts.index("Section 11")


def test_a_block_is_content_where_half_its_word_trigrams_are_the_truths() -> None:
    page = bc.blocks(PAGE)
    truth = "Council approves the budget\n" + ARTICLE
    got = dict(zip((b.text for b in page), bc.labels(page, truth), strict=True))
    assert got[ARTICLE] == 1
    assert got["Council approves the budget"] == 1
    assert got["Section 3"] == 0  # two words, not in the truth in a row
    assert got["About Privacy"] == 0
    # the second paragraph differs in one word: most of its 3-grams are still the truth's
    assert got[ARTICLE.replace("Tuesday", "Monday")] == 1


def test_features_have_the_named_width_and_the_container_holds_the_article() -> None:
    page = bc.blocks(PAGE)
    rows = bc.features(page)
    assert len(rows) == len(page)
    dense = len(bc.NAMES) - bc.HASH_BUCKETS
    assert all(len(d) == dense and all(0 <= k < bc.HASH_BUCKETS for k in b) for d, b in rows)
    in_main = bc.NAMES.index("in_main") - 1  # the dense row has the bias first, BASE after it
    by_text = {blk.text: d for blk, (d, _) in zip(page, rows, strict=True)}
    assert by_text[ARTICLE][1 + in_main] == 1.0
    assert by_text["Section 0"][1 + in_main] == 0.0


def test_the_regression_learns_a_separable_rule() -> None:
    rng = np.random.default_rng(0)
    x = np.column_stack([np.ones(400), rng.normal(size=(400, 3))])
    y = (x[:, 1] - x[:, 2] > 0).astype(float)
    beta = bc.fit(x, y, np.ones(400), l2=0.1)
    assert ((x @ beta > 0) == (y == 1)).mean() > 0.97
    assert bc._sigmoid(100.0) == pytest.approx(1.0) and bc._sigmoid(-100.0) == pytest.approx(0.0)


def test_plain_python_logits_are_numpys_over_the_feature_matrix() -> None:
    rows = bc.features(bc.blocks(PAGE))
    beta = np.random.default_rng(2).normal(size=len(bc.NAMES))
    got = bc.logits(rows, beta.tolist())
    assert got == pytest.approx((bc.matrix(rows) @ beta).tolist())


def test_boosted_trees_learn_a_threshold_and_are_read_in_plain_python() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(600, 4))
    y = ((x[:, 2] > 0.6) | (x[:, 0] < 0.1)).astype(float)
    trees = bc.fit_trees(x, y, np.ones(600))
    assert len(trees) == bc.TREES
    assert all(len(node) in (1, 4) for tree in trees for node in tree)
    z = np.array([sum(bc.tree_value(t, row.tolist()) for t in trees) for row in x])
    assert ((z > 0) == (y == 1)).mean() > 0.97


def test_the_committed_weights_load_and_keep_an_article_and_drop_a_navigation() -> None:
    doc = bc.load_weights()
    assert doc["training"]["pages"] == 124 and len(doc["registered"]) == 2
    page = bc.blocks(PAGE)
    for reg in doc["registered"]:
        model = bc.model_of(doc, reg["config"])
        probs = dict(zip((b.text for b in page), bc.probabilities(model, page), strict=True))
        assert probs[ARTICLE] >= reg["threshold"], reg["label"]
        assert probs["Section 5"] < reg["threshold"], reg["label"]
        text = bc.config_text(reg["config"], model, PAGE, reg["threshold"])
        assert ARTICLE in text and "Section 5" not in text


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("{not json", "cannot read the weights"),
        (json.dumps({"format": "someone else's", "features": []}), "not this script's weights"),
        (json.dumps([1, 2]), "not this script's weights"),
    ],
)
def test_a_corrupt_or_foreign_weights_file_is_one_line_error(tmp_path: Path, content: str, says: str) -> None:
    path = tmp_path / "weights.json"
    path.write_text(content)
    with pytest.raises(SystemExit) as exc:
        bc.load_weights(path)
    message = str(exc.value)
    assert says in message and "\n" not in message and str(path) in message
