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
        for name in ("min_lr", "weight_decay", "grad_clip", "eps"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name.replace('_', '-')} must be a non-negative number, got {value}")
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


def adamw_step(
    p: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    grad: np.ndarray,
    decay_mask: np.ndarray,
    out: tuple[np.ndarray, np.ndarray, np.ndarray],
    scratch: tuple[np.ndarray, np.ndarray],
    step: int,
    lr: float,
    cfg: AdamWConfig,
    grad_scale: float = 1.0,
) -> None:
    """One AdamW step (PyTorch's formulation) from (p, m, v) into ``out`` = (p', m', v').

    Outputs may alias the inputs (an in-place step). Writing elsewhere keeps the inputs
    intact, which is what makes a step in the data-parallel engine redoable until its new
    version is published. ``step`` is 0-based (bias correction uses step + 1); ``grad_scale``
    is the clipping coefficient; ``grad`` is never modified. Decoupled weight decay applies
    where ``decay_mask`` is 1 (matrices and embeddings), never on norms and biases.
    """
    p_out, m_out, v_out = out
    a, b = scratch
    t = step + 1
    bias1 = 1.0 - cfg.beta1**t
    bias2 = 1.0 - cfg.beta2**t
    np.multiply(grad, grad_scale, out=a)  # the clipped gradient
    # m + (1 - b1) (g - m)  is  b1 m + (1 - b1) g  without a third buffer
    np.subtract(a, m, out=b)
    b *= 1.0 - cfg.beta1
    np.add(m, b, out=m_out)
    np.multiply(a, a, out=b)
    b -= v
    b *= 1.0 - cfg.beta2
    np.add(v, b, out=v_out)
    # b = lr / bias1 * m' / (sqrt(v') / sqrt(bias2) + eps)
    np.sqrt(v_out, out=b)
    b *= 1.0 / math.sqrt(bias2)
    b += cfg.eps
    np.divide(m_out, b, out=b)
    b *= lr / bias1
    if cfg.weight_decay:
        # decoupled decay on the pre-update weights: p' = p - lr * wd * mask * p - b
        np.multiply(p, decay_mask, out=a)
        a *= lr * cfg.weight_decay
        np.subtract(p, a, out=p_out)
        p_out -= b
    else:
        np.subtract(p, b, out=p_out)


class AdamW:
    """AdamW state (first and second moments) for a flat parameter vector, stepped in place."""

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
        """One in-place step on ``params[lo:hi]``; ``grad`` is the whole gradient."""
        sl = slice(lo, hi)
        p, m, v = params[sl], self.m[sl], self.v[sl]
        adamw_step(p, m, v, grad[sl], self.decay_mask[sl], (p, m, v), (self._a[sl], self._b[sl]),
                   step, lr, self.cfg, grad_scale)  # fmt: skip
