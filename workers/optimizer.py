"""AdamW and Muon on flat vectors, the learning-rate schedule and gradient clipping.

The AdamW update works on any slice of the flat vectors, so that in the data-parallel engine
each owner of a parameter slice can step its slice alone: clipping needs only one scalar (the
global norm), which the owner receives. Muon (``optimizer = "muon"``) orthogonalises the
momentum of each hidden matrix with a Newton-Schulz iteration, which needs the whole matrix:
an ``UpdatePlan`` cuts a [lo, hi) range into AdamW runs and whole Muon matrices, and the
engine gives each Muon matrix to one owner (``owner_shares``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .optimizer_config import AdamWConfig
from .params import TensorSpec


def learning_rate(step: int, cfg: AdamWConfig) -> float:
    """Linear warmup to ``learning_rate``; then for ``schedule`` "cosine" a cosine decay to
    ``min_lr`` and the floor after it, for "stable" the peak for ever.

    ``step`` counts from 0; the first update uses (0 + 1) / warmup of the peak, as nanoGPT does.
    """
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "stable":
        return cfg.learning_rate
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
    """Optimizer state (first and second moments) for a flat parameter vector, stepped in place;
    with a ``plan`` (``update_plan``) the hidden matrices it names step by Muon instead."""

    def __init__(
        self, cfg: AdamWConfig, decay_mask: np.ndarray, plan: Sequence[PlanPart] | None = None
    ) -> None:
        cfg.validate()
        self.cfg = cfg
        self.plan = plan
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
        if self.plan is not None:
            state = (params, self.m, self.v)
            hybrid_step(self.plan, lo, len(params) if hi is None else hi, state, grad, self.decay_mask, state,
                        (self._a, self._b), step, lr, self.cfg, grad_scale)  # fmt: skip
            return
        sl = slice(lo, hi)
        p, m, v = params[sl], self.m[sl], self.v[sl]
        adamw_step(p, m, v, grad[sl], self.decay_mask[sl], (p, m, v), (self._a[sl], self._b[sl]),
                   step, lr, self.cfg, grad_scale)  # fmt: skip


# ---- Muon -------------------------------------------------------------------------------------

NS_COEFFS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic: fast rather than exact
NS_STEPS = 5
NS_EPS = 1e-7
# hidden matrices: stored (in, out) for x @ W; attn.qkv.w is three (C, C) matrices side by side,
# orthogonalised one by one as in the modded-nanogpt speedrun
MUON_SUFFIXES = ("attn.qkv.w", "attn.proj.w", "mlp.fc.w", "mlp.proj.w")


def newton_schulz(g: np.ndarray, steps: int = NS_STEPS) -> np.ndarray:
    """The nearest semi-orthogonal matrix to ``g`` (U V^T of its SVD), approximately: the quintic
    Newton-Schulz iteration of Muon, on a 2-D matrix or a stack of them (last two axes). Works in
    ``g``'s dtype (float32 on the engine; the speedrun's bfloat16 does not exist in numpy)."""
    if g.ndim > 2:  # one matrix at a time: numpy's stacked matmul is ~3x slower than 2-D BLAS calls
        return np.stack([newton_schulz(one, steps) for one in g])
    a, b, c = NS_COEFFS
    tall = g.shape[0] > g.shape[1]
    x = g.T if tall else g
    x = x / max(float(np.sqrt(np.sum(x * x))), NS_EPS)  # as PyTorch: norm.clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        poly = b * gram + c * (gram @ gram)
        x = a * x + poly @ x
    return x.T if tall else x


def muon_step(
    p: np.ndarray,
    m: np.ndarray,
    grad: np.ndarray,
    out: tuple[np.ndarray, np.ndarray],
    lr: float,
    cfg: AdamWConfig,
    grad_scale: float = 1.0,
    blocks: int = 1,
) -> None:
    """One Muon step on one matrix (PyTorch's torch.optim.Muon with Nesterov, no weight decay):
    m' = mu m + (1 - mu) g;  u = NS(g + mu (m' - g));  p' = p - lr sqrt(max(1, out/in)) u.

    ``p``, ``m`` and ``grad`` are (in, out) matrices (our x @ W layout: PyTorch's (out, in)
    transposed); ``blocks`` > 1 splits the columns into that many equal matrices orthogonalised
    separately (q, k and v). Outputs may alias the inputs; ``grad`` is never modified.
    """
    p_out, m_out = out
    mu = cfg.muon_momentum
    g = grad * grad_scale if grad_scale != 1.0 else grad
    np.add(m, (1.0 - mu) * (g - m), out=m_out)
    nesterov = g + mu * (m_out - g)
    rows, cols = nesterov.shape
    width = cols // blocks
    if blocks > 1:
        stack = nesterov.reshape(rows, blocks, width).transpose(1, 0, 2)
        update = newton_schulz(stack).transpose(1, 0, 2).reshape(rows, cols)
    else:
        update = newton_schulz(nesterov)
    # PyTorch's "original" adjustment: sqrt(max(1, A / B)) for an (A, B) = (out, in) weight
    update *= lr * math.sqrt(max(1.0, width / rows))
    np.subtract(p, update, out=p_out)


@dataclass(frozen=True)
class PlanPart:
    """A run of the flat vector updated one way: AdamW on [lo, hi), or Muon on one matrix."""

    lo: int
    hi: int
    muon: bool
    shape: tuple[int, ...] = ()
    blocks: int = 1


def update_plan(specs: Sequence[TensorSpec], cfg: AdamWConfig) -> list[PlanPart]:
    """The table's tensors in order, adjacent AdamW tensors merged into one run."""
    parts: list[PlanPart] = []
    for s in specs:
        if cfg.optimizer == "muon" and s.name.endswith(MUON_SUFFIXES):
            blocks = 3 if s.name.endswith("attn.qkv.w") else 1
            parts.append(PlanPart(s.offset, s.end, True, s.shape, blocks))
        elif parts and not parts[-1].muon and parts[-1].hi == s.offset:
            parts[-1] = PlanPart(parts[-1].lo, s.end, False)
        else:
            parts.append(PlanPart(s.offset, s.end, False))
    return parts


def owner_shares(plan: Sequence[PlanPart], total: int, parts: int, align: int = 16) -> list[tuple[int, int]]:
    """Split range(total) into ``parts`` contiguous [lo, hi) shares that never cut a Muon matrix
    (its owner needs all of it), boundaries inside AdamW runs on ``align``, the largest share as
    small as it can be; trailing shares may be empty."""
    muon = [(q.lo, q.hi) for q in plan if q.muon]
    if not muon:
        bounds = [min(total, (total * i // parts) // align * align) for i in range(parts)] + [total]
        return [(bounds[i], bounds[i + 1]) for i in range(parts)]

    def cut(capacity: int) -> list[int] | None:
        """Greedy cut points for shares of at most ``capacity`` (None if more than ``parts``)."""
        bounds, lo = [0], 0
        while lo < total:
            hi = min(total, lo + capacity)
            if hi < total:
                if hi // align * align > lo:
                    hi = hi // align * align
                for a, b in muon:
                    if a < hi < b:  # never inside a Muon matrix: stop before it, or take it whole
                        hi = a if a > lo else b
                        break
            bounds.append(hi)
            lo = hi
            if len(bounds) - 1 > parts:
                return None
        return bounds

    low, high = max(b - a for a, b in muon), total
    while low < high:
        mid = (low + high) // 2
        if cut(mid) is None:
            low = mid + 1
        else:
            high = mid
    found = cut(low)
    assert found is not None
    found += [total] * (parts + 1 - len(found))
    return [(found[i], found[i + 1]) for i in range(parts)]


def hybrid_step(
    plan: Sequence[PlanPart],
    lo: int,
    hi: int,
    src: tuple[np.ndarray, np.ndarray, np.ndarray],
    grad: np.ndarray,
    decay_mask: np.ndarray,
    out: tuple[np.ndarray, np.ndarray, np.ndarray],
    scratch: tuple[np.ndarray, np.ndarray],
    step: int,
    lr: float,
    cfg: AdamWConfig,
    grad_scale: float = 1.0,
) -> None:
    """The optimizer step on [lo, hi) of full-length flat vectors: AdamW runs by ``adamw_step``,
    whole Muon matrices by ``muon_step`` at ``lr * muon_lr / learning_rate`` (one schedule for
    both). A Muon matrix's moment lives in ``m``; its ``v`` stays untouched. [lo, hi) must not cut
    a Muon matrix (``owner_shares``); the same range gives the same bits in any process."""
    p, m, v = src
    p_out, m_out, v_out = out
    for part in plan:
        a, b = max(part.lo, lo), min(part.hi, hi)
        if a >= b:
            continue
        if part.muon:
            if (a, b) != (part.lo, part.hi):
                raise ValueError(f"range [{lo}, {hi}) cuts a Muon matrix at [{part.lo}, {part.hi})")
            shape = part.shape
            muon_step(p[a:b].reshape(shape), m[a:b].reshape(shape), grad[a:b].reshape(shape),
                      (p_out[a:b].reshape(shape), m_out[a:b].reshape(shape)),
                      lr * cfg.muon_lr / cfg.learning_rate, cfg, grad_scale, part.blocks)  # fmt: skip
            if v_out is not v:
                v_out[a:b] = v[a:b]
        else:
            n = b - a
            adamw_step(p[a:b], m[a:b], v[a:b], grad[a:b], decay_mask[a:b],
                       (p_out[a:b], m_out[a:b], v_out[a:b]), (scratch[0][:n], scratch[1][:n]),
                       step, lr, cfg, grad_scale)  # fmt: skip
