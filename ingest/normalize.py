"""Text normalisation and quality filters applied to every extracted document.

Normalising before hashing makes exact dedup insensitive to trivia (CRLF, runs of spaces,
composed vs decomposed accents); the filters keep empty pages, binary garbage and menus out
of the training data, each rejection with a reason so it can be counted.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# C0/C1 controls except tab and newline, plus zero-width and BOM characters.
_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u200e\u200f\ufeff]")
_BLANK_LINES = re.compile(r"\n{3,}")


def normalize_text(text: str) -> str:
    """NFC, no control characters, single spaces, at most one blank line, no edge whitespace."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = unicodedata.normalize("NFC", text)
    text = _CONTROLS.sub("", text)
    # each line's runs of whitespace as one space, none at its edges (str.split's whitespace is
    # str.isspace's, re's \s: what two substitutions did, at half the cost)
    text = "\n".join(" ".join(line.split()) for line in text.split("\n"))
    text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()


@dataclass(frozen=True)
class QualityRules:
    """Thresholds of :func:`quality_problem`; defaults suit prose in any alphabetic script."""

    min_chars: int = 200
    min_words: int = 30
    min_letter_ratio: float = 0.5  # letters among non-space characters
    max_replacement_ratio: float = 0.02  # U+FFFD: text decoded with the wrong charset


def quality_problem(text: str, rules: QualityRules) -> str | None:
    """The reason ``text`` (already normalised) should not be trained on, or None if it is fine.

    Only a prefix is inspected for the ratios, so a 20 MB document costs no more than a page.
    """
    if len(text) < rules.min_chars:
        return f"too short ({len(text)} chars < {rules.min_chars})"
    sample = text[:200_000]
    split = sample.split()  # on exactly the characters str.isspace calls spaces
    words = len(split)
    if words < rules.min_words and len(text) <= len(sample):
        return f"too few words ({words} < {rules.min_words})"
    visible = sum(map(len, split))
    if not visible:
        return "no visible characters"
    letters = sum(map(str.isalpha, sample))  # a letter is never a space
    if letters / visible < rules.min_letter_ratio:
        return f"too few letters ({letters / visible:.0%} of characters)"
    bad = sample.count("\ufffd")
    if bad / len(sample) > rules.max_replacement_ratio:
        return f"undecodable text ({bad} replacement characters)"
    return None
