"""Sampling a continuation from the model: temperature, top-k and a seed."""

from __future__ import annotations

import numpy as np

from .model import GPT


def sample(
    model: GPT,
    params: np.ndarray,
    prompt: np.ndarray,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
) -> np.ndarray:
    """Token ids that continue ``prompt`` (1-D ids), one token at a time.

    The context is cropped to the model's last ``seq_len`` tokens. ``temperature`` 0 picks
    the most likely token; ``top_k`` > 0 keeps only the k most likely before sampling.
    """
    if max_new_tokens < 0:
        raise ValueError(f"number of tokens must not be negative, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must not be negative, got {temperature}")
    if top_k < 0:
        raise ValueError(f"top-k must not be negative, got {top_k}")
    if len(prompt) == 0:
        raise ValueError("the prompt must hold at least one token")
    rng = np.random.default_rng(seed)
    ids = [int(t) for t in prompt]
    out: list[int] = []
    for _ in range(max_new_tokens):
        context = np.asarray(ids[-model.config.seq_len :], dtype=np.int64)[None, :]
        probs = model.probabilities(params, context)[0, -1].astype(np.float64)
        token = pick_token(probs, temperature, top_k, rng)
        ids.append(token)
        out.append(token)
    return np.asarray(out, dtype=prompt.dtype if prompt.dtype.kind == "u" else np.int64)


def pick_token(probs: np.ndarray, temperature: float, top_k: int, rng: np.random.Generator) -> int:
    """One token id from next-token probabilities: the most likely at temperature 0, else a draw
    from p^(1/T) (renormalised: softmax(logits / T)) restricted to the ``top_k`` most likely."""
    if temperature == 0:
        return int(np.argmax(probs))
    vocab = probs.shape[0]
    logp = np.log(np.maximum(probs, 1e-300)) / temperature
    if 0 < top_k < vocab:
        kth = np.partition(logp, vocab - top_k)[vocab - top_k]
        logp[logp < kth] = -np.inf
    logp -= logp.max()
    weights = np.exp(logp)
    return int(rng.choice(vocab, p=weights / weights.sum()))
