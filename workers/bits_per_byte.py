"""Bits per byte and perplexity beside a loss in nats per token, so that models with different
tokenizers compare: bpb = loss / ln 2 x tokens / bytes of the text scored.

For the byte tokenizer a token is a byte and bpb is the loss in bits. For byte-level BPE the
bytes of a window are the sum of its tokens' byte lengths (``token_byte_lengths``): a
byte-level token's string holds one character per byte.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from crystalline.tokens.tokenizer import BpeTokenizer, Tokenizer

LN2 = math.log(2.0)


def token_byte_lengths(tokenizer: Tokenizer) -> np.ndarray:
    """The UTF-8 byte length of every token id, as an int64 array indexed by id."""
    if not isinstance(tokenizer, BpeTokenizer):
        return np.ones(tokenizer.vocab_size, dtype=np.int64)
    hf = tokenizer.hf_tokenizer
    lengths = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    for i in range(tokenizer.vocab_size):
        token = hf.id_to_token(i)
        lengths[i] = 0 if token is None else len(token)
    return lengths


def bits_per_byte(loss: float, tokens: int, nbytes: int) -> float:
    """Bits per byte of a mean loss (nats per token) over ``tokens`` tokens spelling ``nbytes``
    bytes; nan when there is nothing to score."""
    if nbytes <= 0 or not math.isfinite(loss):
        return math.nan
    return loss / LN2 * tokens / nbytes


def perplexity(loss: float) -> float:
    """e to the mean loss in nats per token (inf past what a float holds)."""
    if not math.isfinite(loss):
        return math.nan
    return math.exp(loss) if loss < 709.0 else math.inf


def beside(name: str, loss: float, bpb: float) -> dict[str, Any]:
    """A loss keyed ``name`` with its bits per byte and perplexity, keyed by ``name`` with
    "loss" replaced ("val_loss": "val_bpb", "val_perplexity"); finite numbers, else None."""
    out = {name: loss, name.replace("loss", "bpb"): bpb, name.replace("loss", "perplexity"): perplexity(loss)}
    return {k: (v if isinstance(v, float) and math.isfinite(v) else None) for k, v in out.items()}
