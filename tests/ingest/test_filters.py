"""The quality filters on small crafted documents: each kept or removed with its reason."""

from __future__ import annotations

import dataclasses
import random
import re
import unicodedata
from collections import Counter

import _ingest_samples as samples
import pytest

from crystalline.ingest import quality_rules
from crystalline.ingest.filters import FilterSettings, judge
from crystalline.ingest.language import identify
from crystalline.ingest.normalize import normalize_text
from crystalline.ingest.pii import scrub_pii
from crystalline.ingest.quality_rules import LINE_RULES, FilterRules, document_verdicts, filter_lines

GOOD = samples.prose(1, 200)


def config(settings: FilterSettings | None = None) -> dict:
    settings = settings or FilterSettings()
    return {"min_chars": 50, "min_words": 5, "filters": dataclasses.asdict(settings)}


def test_good_prose_passes_every_rule() -> None:
    v = judge(GOOD, config())
    assert v.problem == "" and set(v.verdicts.values()) == {"kept"}


def test_c4_line_rules_remove_boilerplate_lines_and_count_them() -> None:
    text = GOOD + "\nPlease enable JavaScript to view the comments.\nThis site uses cookies.\n" + GOOD[:300]
    out, removed = filter_lines(text, FilterRules())
    assert removed == {"c4_javascript": 1, "c4_policy": 1}
    assert "JavaScript" not in out and "cookies" not in out and out.startswith(GOOD[:50])


def line_rule_on(field: str) -> str:
    """A setting that turns the line rule ``field`` on: its default, or C4's 3 words a line."""
    default = getattr(FilterRules(), field)
    return "on" if isinstance(default, bool) else str(default or 3)


def test_line_rules_asked_of_the_whole_text_decide_as_each_line_does(monkeypatch: pytest.MonkeyPatch) -> None:
    # filter_lines first asks the whole text whether any line can fail; the answer must be what
    # asking every line gives, with every line rule (LINE_RULES) on and off (case, dotted capital
    # I, final sigma); each rule fails at least one of these lines (add one for a new rule)
    lines = ["Our COOKIE Policy applies.", "Turn on JavaScript İ.", "ΟΔΟΣ\nΣ " + "x" * 1001,
             "plain words only", "a \u00a0b\tc", "ends in javaScrİpt", "terms of\nuse",
             "No stop"]  # fmt: skip
    for rule in LINE_RULES:
        alone = FilterRules.disabled().with_overrides([f"{rule.field}={line_rule_on(rule.field)}"])
        assert rule.reason in filter_lines("\n".join(lines), alone)[1], f"no line fails {rule.field}"
    rng = random.Random(5)
    for _ in range(300):
        text = "\n".join(rng.sample(lines, rng.randint(0, len(lines))))
        rules = FilterRules.disabled().with_overrides(
            [f"{r.field}={line_rule_on(r.field) if rng.random() < 0.5 else 0}" for r in LINE_RULES]
        )
        quick = filter_lines(text, rules)
        with monkeypatch.context() as m:
            m.setattr(quality_rules, "_no_line_fails", lambda _text, _on: False)
            assert filter_lines(text, rules) == quick, (text, rules)


def test_every_c4_rule_is_a_line_rule_or_a_document_rule() -> None:
    # filter_lines' whole-text answer and its pass over each line both read LINE_RULES, so a line
    # rule is a row there or nowhere: a c4_ setting that is neither that nor a document rule would
    # be a rule that never runs
    documents = {"c4_lorem_ipsum", "c4_curly_bracket", "c4_min_sentences"}
    c4 = {f.name for f in dataclasses.fields(FilterRules) if f.name.startswith("c4_")}
    assert c4 == {rule.field for rule in LINE_RULES} | documents
    names, reasons = {r.field for r in LINE_RULES}, {r.reason for r in LINE_RULES}
    assert len(names) == len(reasons) == len(LINE_RULES)  # one row each
    for field in documents:  # a document rule removes no line
        on = FilterRules.disabled().with_overrides([f"{field}={line_rule_on(field)}"])
        assert filter_lines("lorem ipsum {\nshort", on) == ("lorem ipsum {\nshort", {})


def test_normalized_text_is_what_the_two_substitutions_gave() -> None:
    # each line's whitespace runs as one space and no space at a line's edges, as the regular
    # expressions [^\S\n]+ -> " " then " *\n *" -> "\n" made it, over every kind of space
    spaces = [c for c in map(chr, range(0x110000)) if c.isspace()]
    pieces = [*spaces, "\r\n", "a", "b", "e\u0301", "\u200b", "\x00", "Σ"]
    rng = random.Random(9)
    for _ in range(20_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        expected = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
        expected = re.sub("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u200e\u200f\ufeff]", "", expected)
        expected = re.sub(r"\n{3,}", "\n\n", re.sub(r" *\n *", "\n", re.sub(r"[^\S\n]+", " ", expected)))
        assert normalize_text(text) == expected.strip(), repr(text)


def test_c4_terminal_punctuation_rule_when_turned_on() -> None:
    rules = FilterRules().with_overrides(["c4_terminal_punct_lines=on"])
    out, removed = filter_lines("A heading\nA sentence that ends.\n", rules)
    assert removed == {"c4_no_terminal_punct": 1} and out == "A sentence that ends."


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        (GOOD + " Lorem ipsum dolor sit amet.", "c4"),
        ("word " * 40, "gopher_quality"),  # under 50 words
        ("a b c d e f g " * 20, "gopher_quality"),  # mean word length 1
        ("\n".join(f"# {samples.prose(i, 8)}" for i in range(40)).replace(".", " ###"), "gopher_quality"),
        ("\n".join([samples.prose(3, 12)] * 20), "gopher_repetition"),  # the same line 20 times
        (GOOD + " " + " ".join(["buy cheap shoes now"] * 60), "gopher_repetition"),
    ],
)
def test_each_document_rule_removes_with_its_reason(text: str, rule: str) -> None:
    v = judge(text, config())
    assert v.problem.startswith(rule), v.verdicts
    assert v.verdicts[rule] == v.problem


def test_ellipsis_and_bullet_lines() -> None:
    ellipsis = "\n".join(samples.prose(i, 12)[:-1] + "..." for i in range(10))
    assert "ellipsis" in (document_verdicts(ellipsis, FilterRules())["gopher_quality"] or "")
    bullets = "\n".join("• " + samples.prose(i, 12) for i in range(10))
    assert "bullets" in (document_verdicts(bullets, FilterRules())["gopher_quality"] or "")


def test_stop_word_rule_applies_to_confident_english_only() -> None:
    stops = {"the", "of", "and", "to", "that", "with", "have", "be", "in"}
    no_stops = " ".join(w for w in GOOD.split() if w.lower().strip(".") not in stops)
    assert "stop words" in (document_verdicts(no_stops, FilterRules(), "en")["gopher_quality"] or "")
    assert document_verdicts(no_stops, FilterRules(), "")["gopher_quality"] is None


def test_ngram_repetition_rules_name_the_rule_and_the_share() -> None:
    # Line and paragraph rules off, so that the n-gram rules speak. Two 2-grams occur ten times
    # each: the one seen first is the top one (as Counter.most_common), so the order of the two
    # runs changes the share ("grain barge" is longer than "mill lock").
    only_ngrams = FilterRules().with_overrides(
        [f"gopher_dup_{unit}{share}_frac=0" for unit in ("line", "para") for share in ("", "_char")]
    )
    tail = " ".join(f"w{i}" for i in range(60))
    top = "gopher_repetition: top 2-gram covers {}% of characters > 20%"
    assert _repetition("grain barge " * 10 + "mill lock " * 10 + tail, only_ngrams) == top.format(29)
    assert _repetition("mill lock " * 10 + "grain barge " * 10 + tail, only_ngrams) == top.format(23)
    # A 14-word sentence said twice among unique words: its second copy is 21% of the characters,
    # over the 5-gram threshold; with that rule off, the 6-gram rule (14%) names it, and so on.
    said = "the old mill by the eastern channel was rebuilt after the flood of spring"
    text = " ".join([*(f"w{i}" for i in range(30)), said, *(f"v{i}" for i in range(30)), said])
    dup = "gopher_repetition: duplicate {}-grams cover 21% of characters > {}%"
    assert _repetition(text, only_ngrams) == dup.format(5, 15)
    no_5 = only_ngrams.with_overrides(["gopher_dup_5gram_frac=0"])
    assert _repetition(text, no_5) == dup.format(6, 14)
    assert _repetition(text, no_5.with_overrides(["gopher_dup_6gram_frac=0"])) == dup.format(7, 13)
    assert _repetition(" ".join(f"w{i}" for i in range(200)), only_ngrams) is None


def _counted_ngram_verdict(text: str, rules: FilterRules) -> str | None:
    """Gopher's n-gram rules the plain way (a Counter of every n-gram's words), to hold the
    quick version (only the starts whose (n-1)-gram repeats) to."""
    words = text.lower().split()
    word_chars = max(sum(map(len, words)), 1)
    for n in range(2, min(10, len(words)) + 1):
        frac = getattr(rules, f"gopher_{'top' if n <= 4 else 'dup'}_{n}gram_frac")
        if not frac:
            continue
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        if n <= 4:
            gram, count = Counter(grams).most_common(1)[0]
            share = sum(map(len, gram)) * count / word_chars
            if count > 1 and share > frac:
                return f"gopher_repetition: top {n}-gram covers {share:.0%} of characters > {frac:.0%}"
            continue
        seen: set[tuple[str, ...]] = set()
        covered = [False] * len(words)
        for i, gram in enumerate(grams):
            if gram in seen:
                covered[i : i + n] = [True] * n
            seen.add(gram)
        share = sum(len(w) for w, c in zip(words, covered, strict=True) if c) / word_chars
        if share > frac:
            return f"gopher_repetition: duplicate {n}-grams cover {share:.0%} of characters > {frac:.0%}"
    return None


def test_ngram_rules_give_what_counting_every_ngram_gives() -> None:
    # random texts of few distinct words (many repeats of every length), under the default
    # thresholds and under thresholds that let each rule in turn be the one that speaks
    rng = random.Random(11)
    only_ngrams = FilterRules().with_overrides(
        [f"gopher_dup_{unit}{share}_frac=0" for unit in ("line", "para") for share in ("", "_char")]
    )
    spoken = Counter()
    for trial in range(300):
        vocabulary = [f"w{i}" * rng.randint(1, 3) for i in range(rng.randint(2, 40))]
        words = [rng.choice(vocabulary) for _ in range(rng.randint(0, 300))]
        if trial % 3 == 0 and len(words) > 20:  # a passage said again
            start = rng.randrange(len(words) - 10)
            words += words[start : start + rng.randint(5, 20)]
        text = " ".join(words)
        for rules in (
            only_ngrams,
            only_ngrams.with_overrides(
                [f"gopher_dup_{n}gram_frac=0.5" for n in range(5, 10)]
                + [f"gopher_top_{n}gram_frac=0.9" for n in (2, 3, 4)]
            ),
        ):
            expected = _counted_ngram_verdict(text, rules)
            assert _repetition(text, rules) == expected, text
            spoken[expected.split(" ")[2] if expected else None] += 1
    assert {"2-gram", "5-grams", "10-grams", None} <= set(spoken), spoken  # the texts reach each kind


def test_only_the_rules_turned_on_judge() -> None:
    # Each statistic is counted only for a rule that is on: rules off let through what the
    # rules on remove, and a text that fails one rule of a family fails by the next one on.
    repeated = "grain barge mill lock ... # " * 400 + "\n" + "- the same line\n" * 400
    off = {"c4": None, "gopher_quality": None, "gopher_repetition": None}
    assert document_verdicts(repeated, FilterRules.disabled(), "en") == off
    on = document_verdicts(repeated, FilterRules(), "en")
    assert on["gopher_quality"] and on["gopher_repetition"]
    only_top_4 = FilterRules.disabled().with_overrides(["gopher_top_4gram_frac=0.16"])
    assert _repetition(repeated, only_top_4) == "gopher_repetition: top 4-gram covers 53% of characters > 16%"
    only_alpha = FilterRules.disabled().with_overrides(["gopher_min_alpha_words=0.9"])
    assert document_verdicts(repeated, only_alpha)["gopher_quality"] == (
        "gopher_quality: 70% of words have a letter < 90%"
    )


def test_no_words_with_the_word_minimum_off_is_judged_not_raised() -> None:
    # gopher_min_words=0 and a text of spaces: the per-word ratios have nothing to divide by.
    verdicts = document_verdicts(" \n \n ", FilterRules().with_overrides(["gopher_min_words=0"]))
    assert verdicts["gopher_quality"] is None


def _repetition(text: str, rules: FilterRules) -> str | None:
    return document_verdicts(text, rules)["gopher_repetition"]


def test_thresholds_are_configurable_and_bad_ones_refused() -> None:
    text = "\n".join([samples.prose(3, 12)] * 20)
    loose = FilterRules.disabled().with_overrides(["gopher_dup_line_frac=0.99"])
    assert document_verdicts(text, loose)["gopher_repetition"] is None
    with pytest.raises(ValueError, match="no_such_rule"):
        FilterRules().with_overrides(["no_such_rule=1"])
    with pytest.raises(ValueError, match="not a float"):
        FilterRules().with_overrides(["gopher_dup_line_frac=lots"])


@pytest.mark.parametrize(
    ("text", "code"),
    [
        (
            "The committee met on Tuesday and agreed that the new bridge should be finished before winter.",
            "en",
        ),
        (
            "Le comité s'est réuni mardi et a convenu que le nouveau pont devait être terminé avant l'hiver.",
            "fr",
        ),
        (
            "Der Ausschuss traf sich am Dienstag und beschloss, die Brücke vor dem Winter zu bauen.",
            "de",
        ),
        (
            "El comité se reunió el martes y acordó que el nuevo puente debía terminarse antes del invierno.",
            "es",
        ),
        ("Комитет собрался во вторник и решил, что новый мост должен быть закончен до зимы.", "ru"),
    ],
)
def test_language_identification(text: str, code: str) -> None:
    language, score = identify(text)
    assert language == code and score > 0.65


def test_language_filter_keeps_only_the_languages_asked_for() -> None:
    french = " ".join(
        ["Le comité s'est réuni mardi et a convenu que le nouveau pont devait être terminé."] * 1
    )
    french = " ".join(f"{french} Phrase numéro {i} du rapport annuel de la ville." for i in range(8))
    only_en = config(FilterSettings(languages=("en",)))
    v = judge(french, only_en)
    assert v.problem.startswith("language: fr") and v.language == "fr"
    assert judge(french, config()).verdicts["language"] == "kept"  # default: every language


def test_pii_replaced_and_look_alikes_kept() -> None:
    text = (
        "Write to jane.doe@mail.example.org or call from 203.0.113.77; "
        "the router is fe80::1ff:fe23:4567:890a, its peer 2001:0db8:85a3:0000:0000:8a2e:0370:7334. "
        "Release v1.2.3.4, version 10.0.0.1, Python 3.11.4, "
        "OID 1.3.6.1.4.1, at 12:30:45, ratio 3:2, std::vector."
    )
    out, counts = scrub_pii(text)
    assert counts == {"email": 1, "ipv4": 1, "ipv6": 2}  # the second in full (no "::")
    assert "jane.doe" not in out and "203.0.113.77" not in out and "fe80" not in out and "7334" not in out
    for keep in ("v1.2.3.4", "version 10.0.0.1", "3.11.4", "1.3.6.1.4.1", "12:30:45", "3:2", "std::vector"):
        assert keep in out


def test_pii_is_replaced_in_kept_text_and_can_be_turned_off() -> None:
    text = GOOD + " Contact the harbour office at office@harbour.example.net for the survey."
    on = judge(text, config())
    assert "office@harbour" not in on.text and on.edits == {"pii_email": 1}
    off = judge(text, config(FilterSettings(pii=False)))
    assert "office@harbour.example.net" in off.text and off.edits == {}


def test_extract_json_shows_language_score_and_verdicts(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    import json

    from crystalline.ingest.command import main

    (tmp_path / "good.txt").write_text(GOOD + " Mail ann@example.org.", encoding="utf-8")
    (tmp_path / "lorem.txt").write_text(GOOD + " Lorem ipsum dolor sit amet.", encoding="utf-8")
    assert main(["extract", "--json", str(tmp_path / "good.txt"), str(tmp_path / "lorem.txt")]) == 0
    good, lorem = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert good["language"] == "en" and 0 < good["language_score"] <= 1
    assert set(good["verdicts"].values()) == {"kept"} and good["edits"] == {"pii_email": 1}
    assert lorem["verdicts"]["c4"].startswith("c4_lorem_ipsum")


@pytest.mark.timeout(180)
def test_every_bundled_sample_passes_the_default_filters() -> None:
    from pathlib import Path

    from crystalline.documents import Document
    from crystalline.ingest.extract import ExtractLimits, extract_document

    folder = Path(__file__).resolve().parents[2] / "daemon" / "samples"
    paths = sorted(folder.iterdir())
    assert len(paths) >= 40
    for path in paths:
        text = extract_document(Document(str(path), path.read_bytes(), ""), ExtractLimits()).text
        v = judge(text, {})
        assert v.problem == "", (path.name, v.verdicts)
