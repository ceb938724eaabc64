"""Web-corpus quality rules: C4's line filters, Gopher's repetition and quality rules.

Each rule has the threshold its paper gives as the default and can be changed by name
(:meth:`FilterRules.with_overrides`, the daemon's ``quality-rule NAME=VALUE``). A document is
removed by the first rule it fails, with a reason ``"<rule>: <what>"`` whose prefix is what the
registry and status count; a line is removed by the C4 line filters and counted per rule.

Sources: C4 (Raffel et al. 2020, sec. 2.2, as datatrove's ``C4QualityFilter``), Gopher's
MassiveText rules (Rae et al. 2021, appendix A.1.1-2, tables A1-A2, as datatrove's
``GopherRepetitionFilter`` and ``GopherQualityFilter``). Two C4 rules are off by default, as in
FineWeb: lines without terminal punctuation (it removes verse, lists and headings wholesale: 58%
of the lines of the bundled Shakespeare samples) and pages containing ``{`` (code). Gopher's
100,000-word cap is off too: it was made for web pages, and here a user drops whole books into
the inbox (``quality-rule gopher_max_words=100000`` turns it back on, for every origin).
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields
from itertools import compress
from typing import Any

# ASCII and typographic closers, CJK full stops (escapes: ruff flags look-alike characters)
_TERMINAL = (".", "!", "?", '"', "'", "\u201d", "\u2019", "\u00bb", "\u3002", "\uff01", "\uff1f")
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
_BULLETS = ("•", "●", "○", "■", "□", "▪", "▫", "◦", "‣", "\u2043", "\u2013", "-", "*", "·")
_ELLIPSIS = ("...", "…")
_STOP_WORDS = frozenset(("the", "be", "to", "of", "and", "that", "have", "with"))
_SENTENCE_END = re.compile("[.!?\u3002\uff01\uff1f]+(?:\\s|$)")
_WORD_EDGE = re.compile(r"^\W+|\W+$")
_PARAGRAPH_BREAK = re.compile(r"\n{2,}")


@dataclass(frozen=True)
class FilterRules:
    """Thresholds of every rule (the papers' defaults); a 0 or False turns a rule off."""

    # C4 line filters (a line that fails is removed, the document stays)
    c4_javascript_lines: bool = True  # lines mentioning "javascript"
    c4_policy_lines: bool = True  # "terms of use", "cookie policy", "uses cookies", ...
    c4_min_line_words: int = 0  # C4: 3; off by default: it drops headings and speakers' names
    c4_terminal_punct_lines: bool = False  # C4: on; FineWeb: off (removes too much)
    c4_max_word_length: int = 1000  # lines with a longer "word" (base64, minified code)
    # C4 document filters
    c4_lorem_ipsum: bool = True
    c4_curly_bracket: bool = False  # C4: on; off here: it removes every page of code
    c4_min_sentences: int = 0  # C4: 5; off by default: verse and OCR text have few full stops
    # Gopher repetition (table A1)
    gopher_dup_line_frac: float = 0.30
    gopher_dup_para_frac: float = 0.30
    gopher_dup_line_char_frac: float = 0.20
    gopher_dup_para_char_frac: float = 0.20
    gopher_top_2gram_frac: float = 0.20
    gopher_top_3gram_frac: float = 0.18
    gopher_top_4gram_frac: float = 0.16
    gopher_dup_5gram_frac: float = 0.15
    gopher_dup_6gram_frac: float = 0.14
    gopher_dup_7gram_frac: float = 0.13
    gopher_dup_8gram_frac: float = 0.12
    gopher_dup_9gram_frac: float = 0.11
    gopher_dup_10gram_frac: float = 0.10
    # Gopher quality (appendix A.1.2)
    gopher_min_words: int = 50
    gopher_max_words: int = 0  # Gopher: 100,000; off: it removed every book dropped in
    # the inbox (War and Peace has 560k words, tinyshakespeare.txt 203k)
    gopher_min_mean_word_length: float = 3.0
    gopher_max_mean_word_length: float = 10.0
    gopher_max_symbol_word_ratio: float = 0.10  # "#" and ellipses per word
    gopher_max_bullet_lines: float = 0.90  # share of lines starting with a bullet
    gopher_max_ellipsis_lines: float = 0.30  # share of lines ending in an ellipsis
    gopher_min_alpha_words: float = 0.80  # share of words with a letter
    gopher_min_stop_words: int = 2  # English only: the, be, to, of, and, that, have, with

    @classmethod
    def disabled(cls) -> FilterRules:
        """Every rule off (for input whose quality is not the point, such as load tests)."""
        return cls(**{f.name: type(f.default)() for f in fields(cls)})  # type: ignore[misc]

    def with_overrides(self, pairs: Iterable[str]) -> FilterRules:
        """A copy with ``NAME=VALUE`` pairs applied; ValueError naming a bad pair."""
        kinds = {f.name: type(getattr(self, f.name)) for f in fields(self)}
        changes: dict[str, object] = {}
        for pair in pairs:
            name, sep, raw = pair.partition("=")
            name = name.strip().replace("-", "_")
            if not sep or name not in kinds:
                names = ", ".join(kinds)
                raise ValueError(f"quality rule {pair!r}: expected NAME=VALUE with NAME one of {names}")
            kind = kinds[name]
            try:
                if kind is bool:
                    if raw.strip().lower() not in ("1", "0", "true", "false", "on", "off", "yes", "no"):
                        raise ValueError(raw)
                    changes[name] = raw.strip().lower() in ("1", "true", "on", "yes")
                else:
                    changes[name] = kind(raw.strip())
            except ValueError:
                raise ValueError(f"quality rule {name}: {raw!r} is not a {kind.__name__}") from None
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def filter_lines(text: str, rules: FilterRules) -> tuple[str, dict[str, int]]:
    """``text`` without the lines C4's line rules remove, and the count removed per rule."""
    on = [(rule, setting) for rule in LINE_RULES if (setting := getattr(rules, rule.field))]
    if _no_line_fails(text, on):
        return text, {}
    removed: Counter[str] = Counter()
    kept: list[str] = []
    for line in text.split("\n"):
        reason = _line_problem(line, on) if line.strip() else None
        if reason is None:
            kept.append(line)
        else:
            removed[reason] += 1
    if not removed:
        return text, {}
    out = "\n".join(kept)
    out = re.sub(r"\n{3,}", "\n\n", out).strip()
    return out, dict(removed)


@dataclass(frozen=True)
class LineRule:
    """One C4 line rule: the :class:`FilterRules` field that turns it on (its value the
    threshold), the reason a removed line is counted under, whether a line fails it (given the
    line, its lower case, its words and the setting) and whether any line of a whole text can
    (given the text and its lower case; None where only each line's own look tells)."""

    field: str
    reason: str
    fails: Callable[[str, str, list[str], Any], bool]
    anywhere: Callable[[str, str, Any], bool] | None


def _phrase_rule(field: str, reason: str, phrases: tuple[str, ...]) -> LineRule:
    """The rule that removes a line holding one of ``phrases`` (lower case): one test, asked of
    each line's lower case and of the whole text's. The whole text's answer is what its lines'
    give: no phrase spans a newline, and lower-casing does not look across one (final sigma)."""

    def holds(lower: str) -> bool:
        return any(phrase in lower for phrase in phrases)

    return LineRule(
        field, reason, lambda _line, lower, _words, _on: holds(lower), lambda _text, lower, _on: holds(lower)
    )


def _longer_word(words: Iterable[str], longest: int) -> bool:
    """Whether one of ``words`` (a line's, or the whole text's) is longer than ``longest``."""
    return max(map(len, words), default=0) > longest


#: The line rules, in the order a line is asked (the first it fails is counted).
LINE_RULES = (
    _phrase_rule("c4_javascript_lines", "c4_javascript", ("javascript",)),
    _phrase_rule("c4_policy_lines", "c4_policy", _POLICY),
    LineRule(
        "c4_max_word_length", "c4_long_word",
        lambda _line, _lower, words, longest: _longer_word(words, longest),
        lambda text, _lower, longest: _longer_word(text.split(), longest),
    ),
    LineRule(
        "c4_min_line_words", "c4_short_line",
        lambda _line, _lower, words, least: len(words) < least,
        None,
    ),
    LineRule(
        "c4_terminal_punct_lines", "c4_no_terminal_punct",
        lambda line, _lower, _words, _on: not line.rstrip().endswith(_TERMINAL),
        None,
    ),
)  # fmt: skip


def _no_line_fails(text: str, on: list[tuple[LineRule, Any]]) -> bool:
    """Whether no line of ``text`` can fail the line rules that are ``on`` (each with its
    setting), each asked once of the whole text (most pages: 0.05 instead of 0.2 ms); False
    when one of them can only be asked of each line."""
    if any(rule.anywhere is None for rule, _ in on):
        return False
    lower = text.lower() if on else ""
    return not any(rule.anywhere(text, lower, setting) for rule, setting in on if rule.anywhere)


def _line_problem(line: str, on: list[tuple[LineRule, Any]]) -> str | None:
    lower, words = line.lower(), line.split()
    for rule, setting in on:
        if rule.fails(line, lower, words, setting):
            return rule.reason
    return None


#: The document rules in the order they are applied (the first failure is the reason).
DOCUMENT_RULES = ("c4", "gopher_quality", "gopher_repetition")


def document_verdicts(text: str, rules: FilterRules, language: str = "") -> dict[str, str | None]:
    """Each document rule's verdict on ``text``: None (passed) or ``"<rule>: <what>"``.
    ``language`` (ISO 639) decides whether the English stop-word rule applies."""
    return {
        "c4": _c4_document(text, rules),
        "gopher_quality": _gopher_quality(text, rules, language),
        "gopher_repetition": _gopher_repetition(text, rules),
    }


def _c4_document(text: str, rules: FilterRules) -> str | None:
    lower = text.lower()
    if rules.c4_lorem_ipsum and "lorem ipsum" in lower:
        return "c4_lorem_ipsum: contains lorem ipsum"
    if rules.c4_curly_bracket and "{" in text:
        return "c4_curly_bracket: contains {"
    if rules.c4_min_sentences:
        sentences = len(_SENTENCE_END.findall(text))
        if sentences < rules.c4_min_sentences:
            return f"c4_min_sentences: {sentences} sentences < {rules.c4_min_sentences}"
    return None


def _gopher_quality(text: str, rules: FilterRules, language: str) -> str | None:
    words = text.split()
    n = len(words)
    if rules.gopher_min_words and n < rules.gopher_min_words:
        return f"gopher_quality: {n} words < {rules.gopher_min_words}"
    if rules.gopher_max_words and n > rules.gopher_max_words:
        return f"gopher_quality: {n} words > {rules.gopher_max_words}"
    if not n:  # no words, and no word minimum (gopher_min_words=0): nothing more to judge
        return None
    # each statistic is counted only when a rule that reads it is on (a rule off costs nothing)
    bare: list[str] = []
    if rules.gopher_min_mean_word_length or rules.gopher_max_mean_word_length:
        bare = _bare_words(words)
        mean = sum(map(len, bare)) / max(len(bare), 1)
        if rules.gopher_min_mean_word_length and mean < rules.gopher_min_mean_word_length:
            return f"gopher_quality: mean word length {mean:.1f} < {rules.gopher_min_mean_word_length:g}"
        if rules.gopher_max_mean_word_length and mean > rules.gopher_max_mean_word_length:
            return f"gopher_quality: mean word length {mean:.1f} > {rules.gopher_max_mean_word_length:g}"
    if most := rules.gopher_max_symbol_word_ratio:
        symbols = text.count("#") + sum(text.count(e) for e in _ELLIPSIS)
        if symbols / n > most:
            return f"gopher_quality: {symbols / n:.2f} symbols per word > {most:g}"
    if rules.gopher_max_bullet_lines or rules.gopher_max_ellipsis_lines:
        lines = [line for line in text.split("\n") if line.strip()]
        bullets = sum(1 for line in lines if line.lstrip().startswith(_BULLETS)) / len(lines)
        if rules.gopher_max_bullet_lines and bullets > rules.gopher_max_bullet_lines:
            return f"gopher_quality: {bullets:.0%} of lines are bullets > {rules.gopher_max_bullet_lines:.0%}"
        ellipsis = sum(1 for line in lines if line.rstrip().endswith(_ELLIPSIS)) / len(lines)
        if rules.gopher_max_ellipsis_lines and ellipsis > rules.gopher_max_ellipsis_lines:
            limit = rules.gopher_max_ellipsis_lines
            return f"gopher_quality: {ellipsis:.0%} of lines end in an ellipsis > {limit:.0%}"
    if rules.gopher_min_alpha_words:
        alpha = sum(1 for w in words if w.isalpha() or any(map(str.isalpha, w))) / n
        if alpha < rules.gopher_min_alpha_words:
            return f"gopher_quality: {alpha:.0%} of words have a letter < {rules.gopher_min_alpha_words:.0%}"
    if rules.gopher_min_stop_words and language == "en":
        stops = sum(map(_STOP_WORDS.__contains__, map(str.lower, bare or _bare_words(words))))
        if stops < rules.gopher_min_stop_words:
            return f"gopher_quality: {stops} English stop words < {rules.gopher_min_stop_words}"
    return None


def _bare_words(words: list[str]) -> list[str]:
    """The words without their edges' non-word characters, the empty ones left out."""
    # a word of letters and digits has no edge to strip (re's \w is str.isalnum or "_")
    return [w for w in (w if w.isalnum() else _WORD_EDGE.sub("", w) for w in words) if w]


def _duplicates(items: list[str]) -> tuple[int, int]:
    """How many items repeat an earlier one, and their characters."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


def _ngrams(
    words: list[str], longest: int
) -> Iterator[tuple[int, list[int], list[int], list[int], list[int]]]:
    """For n = 2 .. ``longest`` (while there are n words and some (n-1)-gram occurs twice): n,
    where the n-grams that may repeat start (ascending), the id of the n-gram at each of those
    starts, how often each id occurs among them, and the index (into the starts) of each id's
    first occurrence. An n-gram can repeat only where its (n-1)-gram does, so only those starts
    are looked at (on the dev-set pages a median 21% of them at n = 3, 6% at n = 4); every other
    n-gram occurs once. Ids are exact (an n-gram's id numbers the pair of its (n-1)-gram's id and
    its last word's, in order of first occurrence), with no hashing. Plain lists and dicts, no
    numpy: `crystalline extract` would pay its import (60-95 ms of CPU alone, 27-31 ms more
    than what trafilatura imports anyway) for 0.3 ms a page less (0.6 against 0.9 ms)."""
    vocabulary: dict[str, int] = {}
    ids = [vocabulary.setdefault(w, len(vocabulary)) for w in words]
    size = len(vocabulary)  # word ids are under it: (gram, word) -> gram * size + word is one-to-one
    occurs = [0] * size
    for i in ids:
        occurs[i] += 1
    starts = [s for s, i in enumerate(ids) if occurs[i] > 1]  # where the 1-gram occurs twice
    grams = [ids[s] for s in starts]
    for n in range(2, min(longest, len(words)) + 1):
        while starts and starts[-1] > len(words) - n:  # no n-gram starts there
            starts.pop()
            grams.pop()
        if not starts:
            return  # no (n-1)-gram repeats: no longer one does either
        numbers: dict[int, int] = {}
        last = [ids[s + n - 1] for s in starts]  # each n-gram's last word
        grams = [numbers.setdefault(g * size + w, len(numbers)) for g, w in zip(grams, last, strict=True)]
        counts, first = [0] * len(numbers), [-1] * len(numbers)
        for j, g in enumerate(grams):
            counts[g] += 1
            if first[g] < 0:
                first[g] = j
        yield n, starts, grams, counts, first
        again = [j for j, g in enumerate(grams) if counts[g] > 1]
        starts, grams = [starts[j] for j in again], [grams[j] for j in again]


def _lines(text: str) -> list[str]:
    return text.split("\n")


def _ngram_frac(rules: FilterRules, n: int) -> float:
    """The threshold of the n-gram rule for ``n`` (2-4: the top n-gram, 5-10: duplicates)."""
    return float(getattr(rules, f"gopher_top_{n}gram_frac" if n <= 4 else f"gopher_dup_{n}gram_frac"))


def _gopher_repetition(text: str, rules: FilterRules) -> str | None:
    total = max(len(text), 1)
    for name, split, frac, char_frac in (
        ("paragraphs", _PARAGRAPH_BREAK.split, rules.gopher_dup_para_frac, rules.gopher_dup_para_char_frac),
        ("lines", _lines, rules.gopher_dup_line_frac, rules.gopher_dup_line_char_frac),
    ):
        if not (frac or char_frac):
            continue  # both rules off: not counted
        items = [p for p in split(text) if p.strip()]
        count, chars = _duplicates(items)
        if frac and items and count / len(items) > frac:
            return f"gopher_repetition: duplicate {name} {count / len(items):.0%} > {frac:.0%}"
        if char_frac and chars / total > char_frac:
            return f"gopher_repetition: characters in duplicate {name} {chars / total:.0%} > {char_frac:.0%}"
    longest = max((n for n in range(2, 11) if _ngram_frac(rules, n)), default=0)
    if not longest:
        return None  # every n-gram rule off: no n-grams counted
    words = text.lower().split()
    lengths = list(map(len, words))
    word_chars = max(sum(lengths), 1)
    for n, starts, grams, counts, first in _ngrams(words, longest):
        frac = _ngram_frac(rules, n)
        if not frac:
            continue
        if n <= 4:
            # the most frequent n-gram, the earliest seen among equals (as Counter.most_common)
            count = max(counts)
            at = starts[min(f for f, c in zip(first, counts, strict=True) if c == count)]
            share = sum(lengths[at : at + n]) * count / word_chars
            if count > 1 and share > frac:
                return f"gopher_repetition: top {n}-gram covers {share:.0%} of characters > {frac:.0%}"
            continue
        # the words of every n-gram that repeats an earlier one
        covered = bytearray(len(words))
        for j, (s, g) in enumerate(zip(starts, grams, strict=True)):
            if first[g] != j:
                covered[s : s + n] = b"\1" * n
        share = sum(compress(lengths, covered)) / word_chars
        if share > frac:
            return f"gopher_repetition: duplicate {n}-grams cover {share:.0%} of characters > {frac:.0%}"
    return None
