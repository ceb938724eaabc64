"""AdamW on flat vectors, the learning-rate schedule and gradient clipping.

The update works on any slice of the flat vectors, so that in the data-parallel engine
each owner of a parameter slice can step its slice alone: clipping needs only one
scalar (the global norm), which the owner receives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AdamWConfig:
    """Hyperparameters of AdamW and of its schedule (stored with every checkpoint)."""

    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    decay_steps: int = 5000  # cosine decay from learning_rate to min_lr over this many steps
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 disables clipping

    def validate(self) -> None:
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning-rate must be a positive number, got {self.learning_rate}")
        if not 0 <= self.min_lr <= self.learning_rate:
            raise ValueError(f"min-lr must be between 0 and learning-rate, got {self.min_lr}")
        if self.warmup_steps < 0 or self.decay_steps < 0:
            raise ValueError("warmup-steps and decay steps must not be negative")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("weight-decay and grad-clip must not be negative")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError("betas must lie in [0, 1)")


def learning_rate(step: int, cfg: AdamWConfig) -> float:
    """Linear warmup to ``learning_rate``, then cosine decay to ``min_lr``, then the floor.

    ``step`` counts from 0; the first update uses (0 + 1) / warmup of the peak, as nanoGPT does.
    """
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    if step >= cfg.decay_steps:
        return cfg.min_lr
    span = cfg.decay_steps - cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / span if span > 0 else 1.0
    coeff = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)


def global_norm(grad: np.ndarray) -> float:
    """L2 norm of the whole gradient, accumulated in float64 for a stable sum."""
    return math.sqrt(float(np.dot(grad, grad)))


def clip_coefficient(norm: float, max_norm: float) -> float:
    """Factor that scales the gradient to ``max_norm`` when it is longer (1.0 otherwise)."""
    if max_norm <= 0 or norm <= max_norm:
        return 1.0
    return max_norm / (norm + 1e-6)


class AdamW:
    """AdamW state (first and second moments) for a flat parameter vector.

    ``update`` works on a slice ``[lo, hi)`` so that, in the data-parallel engine, each owner
    of a parameter slice steps its slice alone: clipping needs only the global norm's
    coefficient, which the owner receives as ``grad_scale``.
    """

    def __init__(self, cfg: AdamWConfig, decay_mask: np.ndarray) -> None:
        cfg.validate()
        self.cfg = cfg
        self.decay_mask = decay_mask
        self.m = np.zeros_like(decay_mask)
        self.v = np.zeros_like(decay_mask)
        self._a = np.empty_like(decay_mask)
        self._b = np.empty_like(decay_mask)

    def update(
        self,
        params: np.ndarray,
        grad: np.ndarray,
        step: int,
        lr: float,
        grad_scale: float = 1.0,
        lo: int = 0,
        hi: int | None = None,
    ) -> None:
        """One step in place on ``params[lo:hi]`` (PyTorch's AdamW formulation).

        ``step`` is the 0-based optimizer step (bias correction uses step + 1), ``grad`` is
        the whole gradient (left untouched) and ``grad_scale`` the clipping coefficient.
        Decoupled weight decay applies where the mask is 1 (matrices and embeddings).
        """
        sl = slice(lo, hi)
        p, g, m, v = params[sl], grad[sl], self.m[sl], self.v[sl]
        a, b, mask = self._a[sl], self._b[sl], self.decay_mask[sl]
        cfg = self.cfg
        t = step + 1
        bias1 = 1.0 - cfg.beta1**t
        bias2 = 1.0 - cfg.beta2**t
        np.multiply(g, grad_scale, out=a)  # the clipped gradient
        # m += (1 - b1) (g - m)  is  b1 m + (1 - b1) g  without a third buffer
        np.subtract(a, m, out=b)
        b *= 1.0 - cfg.beta1
        m += b
        np.multiply(a, a, out=b)
        b -= v
        b *= 1.0 - cfg.beta2
        v += b
        # decoupled decay on the pre-update weights: p -= lr * wd * mask * p
        if cfg.weight_decay:
            np.multiply(p, mask, out=a)
            a *= lr * cfg.weight_decay
            p -= a
        # p -= lr / bias1 * m / (sqrt(v) / sqrt(bias2) + eps)
        np.sqrt(v, out=b)
        b *= 1.0 / math.sqrt(bias2)
        b += cfg.eps
        np.divide(m, b, out=b)
        b *= lr / bias1
        p -= b
