"""Validation loss per source (issue 13): the served weights scored on each source's held-out
windows (``tokens.windows.SourceValidation``), after each of the trainer's evaluations.

A source is a crawled host or a drop sub-folder (``crystalline.documents.source_group``).
Control keeps the last line of each source for status (``training.sources``) and appends every
evaluation to the run's ``metrics.jsonl`` (``{"event": "sources", ...}``), so the lines over
time survive restarts; bounded per evaluation by the windows :class:`SourceValidation` gives.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..workers.bits_per_byte import beside, bits_per_byte
from ..workers.engine import batch_bytes
from ..workers.trainer import Trainer, evaluate


def served_params(trainer: Trainer) -> np.ndarray:
    """The weights that evaluation and generation serve: the moving average when kept."""
    ema = trainer.engine.ema()
    return trainer.engine.params() if ema is None else ema


def score(trainer: Trainer, windows: np.ndarray, params: np.ndarray) -> dict[str, Any]:
    """Mean token loss of ``windows`` under ``params``, with bits per byte and perplexity."""
    loss = evaluate(trainer.model, params, windows)
    nbytes = batch_bytes(windows, trainer.token_bytes)
    return beside("val_loss", loss, bits_per_byte(loss, windows[:, 1:].size, nbytes))


def evaluate_sources(
    trainer: Trainer, windows: dict[str, np.ndarray], documents: dict[str, int]
) -> list[dict[str, Any]]:
    """One line per source: source, documents, windows scored, val_loss, val_bpb, val_perplexity."""
    params = served_params(trainer)
    return [
        {
            "source": source,
            "documents": documents.get(source, 0),
            "windows": len(rows),
            **score(trainer, rows, params),
        }
        for source, rows in windows.items()
    ]
