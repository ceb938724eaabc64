"""Token data for `crystalline train`: the train/validation split and the batches.

A batch is a function of (seed, step) alone, so a resumed run sees exactly the batches an
uninterrupted run would have seen, and the data-parallel engine can cut the same global
batch into worker shares without any shared RNG state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .tokenizer import Tokenizer, iter_text_files, read_text_file


def held_out(key: str, fraction: float) -> bool:
    """Stable validation choice for a document: a hash of its key (path or URL) below ``fraction``."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction


@dataclass
class TokenSplit:
    """Training and validation tokens, each one contiguous id array."""

    train: np.ndarray
    val: np.ndarray
    documents: int
    val_documents: int


def load_split(paths: Sequence[Path], tokenizer: Tokenizer, val_fraction: float) -> TokenSplit:
    """Tokenize text files; a single file splits by its last ``val_fraction`` of tokens (as
    nanoGPT does), many files split whole documents by a hash of their path."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val-fraction must be in [0, 1), got {val_fraction}")
    files = iter_text_files(paths)
    if not files:
        raise ValueError("no training files found in " + ", ".join(str(p) for p in paths))
    dtype = tokenizer.encode("").dtype
    empty = np.zeros(0, dtype=dtype)
    if len(files) == 1:
        ids = tokenizer.encode(read_text_file(files[0]))
        cut = len(ids) - round(len(ids) * val_fraction)
        return TokenSplit(ids[:cut], ids[cut:], 1, 0)
    train_parts: list[np.ndarray] = []
    val_parts: list[np.ndarray] = []
    for f in files:
        ids = tokenizer.encode(read_text_file(f))
        (val_parts if held_out(str(f), val_fraction) else train_parts).append(ids)
    train = np.concatenate(train_parts) if train_parts else empty
    val = np.concatenate(val_parts) if val_parts else empty
    return TokenSplit(train, val, len(files), len(val_parts))


def batch_for_step(tokens: np.ndarray, seed: int, step: int, batch_size: int, seq_len: int) -> np.ndarray:
    """The global batch of optimizer step ``step``: ``batch_size`` windows of ``seq_len + 1``
    tokens at offsets drawn from a generator seeded by (seed, step)."""
    span = seq_len + 1
    if len(tokens) < span:
        raise ValueError(f"need at least {span} training tokens for seq-len {seq_len}, have {len(tokens)}")
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(tokens) - span + 1, size=batch_size)
    return tokens[starts[:, None] + np.arange(span)]


def eval_windows(tokens: np.ndarray, seq_len: int, limit: int = 0) -> np.ndarray:
    """Validation windows of ``seq_len + 1`` tokens: all non-overlapping ones, or ``limit``
    of them spread evenly over the split (fixed, so evals are comparable across steps)."""
    span = seq_len + 1
    count = (len(tokens) - 1) // seq_len if len(tokens) >= span else 0
    if count == 0:
        return np.zeros((0, span), dtype=tokens.dtype)
    starts = np.arange(count) * seq_len
    if 0 < limit < count:
        starts = starts[np.linspace(0, count - 1, limit).round().astype(np.int64)]
    return tokens[starts[:, None] + np.arange(span)]
