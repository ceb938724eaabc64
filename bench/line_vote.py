"""A line-level majority vote of several extractors' texts of one page (issue 11, engine round 4).

After Bevendorff et al., "An Empirical Comparison of Web Content Extraction Algorithms" (SIGIR
2023): a line of the union of the engines' texts is kept where at least ``k`` of the ``n``
engines hold it. Lines are aligned by their words (``\\w+``, lower case), not by their markup: a
line of one engine is held by another whose text holds its words in a row (trafilatura splits
and joins paragraphs differently from ours); a short line (under SHORT_WORDS words: a heading,
"Share", "Advertisement") only where the other engine has a line of exactly those words, since a
word or two turns up inside any long text. The order is the backbone's, the engine with the most
kept text, and each kept line the backbone lacks goes after the kept line its own engine had
before it. Used by bench/extract_engines.py's round-4 rows; no round-4 row passed its decision
rule, so the shipped engine does not vote.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_NOT_WORD = re.compile(r"[^\w\n]+")
# A line of fewer words is held by another engine only where it has that very line.
SHORT_WORDS = 4


def line_key(line: str) -> str:
    """The words (``\\w+``) of ``line``, lower case, one space apart: what the vote compares."""
    return _NOT_WORD.sub(" ", line.lower().replace("\n", " ")).strip()


class _Engine:
    """One engine's lines (those with words) and what it holds, for the vote."""

    def __init__(self, text: str) -> None:
        # one substitution over the whole text: it keeps the newlines, so keys and lines pair up
        keys = _NOT_WORD.sub(" ", text.lower()).split("\n")
        lines = text.split("\n")
        if len(keys) != len(lines):  # lower() made a line break of a character: key each line
            keys = [line_key(line) for line in lines]
        pairs = zip(lines, keys, strict=True)
        self.lines = [(line.strip(), key) for line, raw in pairs if (key := raw.strip())]
        self.keys = {key for _, key in self.lines}
        self.whole = " " + " ".join(key for _, key in self.lines) + " "

    def holds(self, key: str) -> bool:
        if key in self.keys:
            return True
        return key.count(" ") + 1 >= SHORT_WORDS and f" {key} " in self.whole


def vote(texts: Sequence[str], k: int) -> str:
    """The lines of ``texts`` held by at least ``k`` of them, one a line, in the backbone's order
    (see the module's docstring); "" where none is."""
    engines = [_Engine(text) for text in texts]
    kept = [
        [(line, key) for line, key in e.lines if sum(other.holds(key) for other in engines) >= k]
        for e in engines
    ]
    backbone = max(range(len(engines)), key=lambda i: sum(len(key) for _, key in kept[i]))
    out = _Out(kept[backbone])
    for i, e in enumerate(engines):
        if i == backbone or not kept[i]:
            continue
        chosen = {key for _, key in kept[i]}
        place = -1  # the index in ``out`` after which this engine's next kept line goes
        for line, key in e.lines:
            found = out.find(key, place)
            if found is not None:
                place = found
            elif key in chosen:
                place += 1
                out.insert(place, line, key)
    return "\n".join(out.lines)


class _Out:
    """The vote's lines so far and their keys."""

    def __init__(self, lines: list[tuple[str, str]]) -> None:
        self.lines = [line for line, _ in lines]
        self.keys = [key for _, key in lines]
        self._whole: str | None = None

    def insert(self, at: int, line: str, key: str) -> None:
        self.lines.insert(at, line)
        self.keys.insert(at, key)
        self._whole = None

    def find(self, key: str, after: int) -> int | None:
        """The index of the first line from ``after`` on (else from the start) that is ``key``
        or, where ``key`` is not short, holds it; None if none does."""
        after = max(after, 0)
        for start, stop in ((after, len(self.keys)), (0, after)):
            try:
                return self.keys.index(key, start, stop)
            except ValueError:
                pass
        if key.count(" ") + 1 < SHORT_WORDS:
            return None
        if self._whole is None:  # two spaces between lines: a key (one space apart) spans none
            self._whole = " " + "  ".join(self.keys) + " "
        if f" {key} " not in self._whole:
            return None
        for start, stop in ((after, len(self.keys)), (0, after)):
            for j in range(start, stop):
                if f" {key} " in f" {self.keys[j]} ":
                    return j
        return None


def _held_words(text: _Engine, by: _Engine) -> tuple[int, int]:
    """Words of ``text``'s lines that ``by`` holds, and all its lines' words."""
    held = total = 0
    for _, key in text.lines:
        words = key.count(" ") + 1
        total += words
        if by.holds(key):
            held += words
    return held, total


def disputed(a: str, b: str) -> float:
    """The share of the words of ``a``'s and ``b``'s lines that the other does not hold (0 where
    both hold all of each other's lines, 1 where they share none)."""
    ea, eb = _Engine(a), _Engine(b)
    held_a, all_a = _held_words(ea, eb)
    held_b, all_b = _held_words(eb, ea)
    total = all_a + all_b
    return 1 - (held_a + held_b) / total if total else 0.0


def agreement(text: str, judge: str) -> float:
    """How well ``text`` agrees with ``judge``: the F1 of the share of ``text``'s line words that
    ``judge`` holds (precision) and of ``judge``'s that ``text`` holds (recall); 0 if either is
    empty."""
    et, ej = _Engine(text), _Engine(judge)
    held_p, all_p = _held_words(et, ej)
    held_r, all_r = _held_words(ej, et)
    p = held_p / all_p if all_p else 0.0
    r = held_r / all_r if all_r else 0.0
    return 2 * p * r / (p + r) if p + r else 0.0
