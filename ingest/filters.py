"""The filter pipeline one extracted document goes through in a pool worker, in order:

1. C4 line filters (lines removed, counted per rule);
2. the basic rules of :mod:`normalize` (length, letters, replacement characters): ``basic``;
3. language identification (:mod:`language`), a filter only when ``languages`` is set: ``language``;
4. C4's document rules, Gopher's quality rules, Gopher's repetition rules (:mod:`quality_rules`);
5. PII (e-mail and IP addresses) replaced by placeholders (:mod:`pii`) in what is kept.

Every rule gives a verdict ("kept" or its reason) so that ``crystalline extract --json`` can
show them all; the first failure is the document's reason, whose prefix (``"gopher_quality"``)
is what the registry and status count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .language import identify
from .normalize import QualityRules, quality_problem
from .pii import scrub_pii
from .quality_rules import FilterRules, document_verdicts, filter_lines

KEPT = "kept"


@dataclass(frozen=True)
class FilterSettings:
    """What the filters are told: the language filter, PII and the rules' thresholds."""

    languages: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "keep only these languages (ISO 639, repeatable; none: all)",
            "aliases": ("language",),
        },
    )
    # FineWeb's threshold, applied with ``languages``
    language_min_score: float = field(default=0.65, metadata={"help": "language score a kept language needs"})
    pii: bool = field(default=True, metadata={"help": "replace e-mail and IP addresses before tokenizing"})
    rules: FilterRules = field(
        default_factory=FilterRules,
        metadata={
            "key": "quality_rule",
            "help": "NAME=VALUE: a rule threshold of ingest/quality_rules.py, "
            "e.g. gopher_max_words=100000 (repeatable)",
            "parse": lambda items: FilterRules().with_overrides(items),
        },
    )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FilterSettings:
        """Back from ``dataclasses.asdict`` (the pool's JSON config)."""
        return cls(
            languages=tuple(data.get("languages", ())),
            language_min_score=float(data.get("language_min_score", 0.65)),
            pii=bool(data.get("pii", True)),
            rules=FilterRules(**data.get("rules", {})),
        )


@dataclass
class Verdict:
    """What the filters made of one document."""

    text: str  # after line removal and PII replacement
    problem: str  # "" if kept, else the first failing rule's reason
    language: str
    language_score: float
    verdicts: dict[str, str]  # rule group -> "kept" or its reason
    edits: dict[str, int]  # c4_* rule -> lines removed; pii_* -> replacements


def judge(text: str, config: dict[str, Any]) -> Verdict:
    """Run the pipeline over normalised ``text`` under the pool's ``config`` (a dict of
    :class:`PoolConfig`: ``filters``, ``min_chars``, ``min_words``)."""
    settings = FilterSettings.from_dict(config.get("filters", {}))
    basic = QualityRules(min_chars=config.get("min_chars", 200), min_words=config.get("min_words", 30))
    text, edits = filter_lines(text, settings.rules)
    language, score = identify(text)
    verdicts: dict[str, str | None] = {"basic": quality_problem(text, basic)}
    if verdicts["basic"]:
        verdicts["basic"] = f"basic: {verdicts['basic']}"
    verdicts["language"] = _language_problem(language, score, settings)
    # the English stop-word rule only where the text is confidently English (random words and
    # short mixed pages get "en" at 0.1 from lid.176)
    sure = language if score >= settings.language_min_score else ""
    verdicts.update(document_verdicts(text, settings.rules, sure))
    problem = next((v for v in verdicts.values() if v), "")
    if settings.pii and not problem:
        text, found = scrub_pii(text)
        edits.update({f"pii_{k}": n for k, n in found.items()})
    return Verdict(text, problem or "", language, score, {k: v or KEPT for k, v in verdicts.items()}, edits)


def _language_problem(language: str, score: float, settings: FilterSettings) -> str | None:
    if not settings.languages:
        return None
    if language not in settings.languages:
        return f"language: {language or 'none'} ({score:.2f}) is not one of {', '.join(settings.languages)}"
    if score < settings.language_min_score:
        return f"language: {language} score {score:.2f} < {settings.language_min_score:g}"
    return None


def rule_of(reason: str) -> str:
    """The rule a filtered document's reason names (its prefix before the colon)."""
    return reason.split(":", 1)[0].strip() if ":" in reason else "basic"
