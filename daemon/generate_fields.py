"""A generation request's fields, checked in one place (the socket's ``generate``, the
dashboard's chat and the generation process): a module of its own, light enough for the
generation process to import without the daemon's settings and services."""

from __future__ import annotations

from typing import Any

from ..tokens.tokenizer import MAX_BPE_VOCAB
from .commands import CommandError

MAX_PROMPT = 4000  # characters
MAX_TOKENS = 2000  # tokens of one generation
MAX_TEMPERATURE = 5.0
MAX_SEED = 2**32 - 1


def generate_fields(body: dict[str, Any]) -> dict[str, Any]:
    """A generation request's fields, checked: the one check of the socket's ``generate``, the
    dashboard's chat and the generation process (CommandError, one line naming the field and
    what it takes). The wire is JSON, whose integers have neither point nor exponent: ``n``,
    ``top_k`` and ``seed`` must arrive as such (what the page's number fields and
    ``crystalline ctl generate n=50`` send); a bool, a float (2.0 as much as 2.9 or 1e309) or a
    string is refused, not rounded."""
    prompt = body.get("prompt", "")
    if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT:
        raise CommandError(f"prompt must be a string of at most {MAX_PROMPT} characters")
    n = _integer(body, "n", 200, 1, MAX_TOKENS)
    top_k = _integer(body, "top_k", 0, 0, MAX_BPE_VOCAB, " (0: all tokens)")
    seed = None if body.get("seed") is None else _integer(body, "seed", None, 0, MAX_SEED, " or null")
    temperature = body.get("temperature", 0.8)
    # compared before any float(): an int of 400 digits would overflow it; NaN fails the range
    if not _number(temperature) or not 0 <= temperature <= MAX_TEMPERATURE:
        raise CommandError(f"temperature must be a number from 0 (the likeliest token) to {MAX_TEMPERATURE}")
    return {"prompt": prompt or "\n", "n": n, "temperature": float(temperature), "top_k": top_k, "seed": seed}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(body: dict[str, Any], name: str, default: int | None, lo: int, hi: int, note: str = "") -> int:
    value = body.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise CommandError(f"{name} must be an integer from {lo} to {hi}{note}")
    return value
