"""Gradient accumulation: forward and backward over a step's windows in micro-batches.

A worker's activations grow with the windows it runs at once; ``[train] micro-batch`` caps
them, so the global batch (``batch-size``) is no longer tied to workers x memory: each worker
(or the one-process engine) runs its rows of the step's batch ``micro-batch`` at a time and
sums their gradients before the reduce. The batch of a step is the same windows whatever the
micro-batch, so the run's batches stay a pure function of (seed, step, documents visible); the
gradient equals one pass over the whole batch to float32 round-off (the sum's order differs).
"""

from __future__ import annotations

import numpy as np

from .model import GPT


def accumulated_grad(
    model: GPT,
    params: np.ndarray,
    windows: np.ndarray,
    grad: np.ndarray,
    scratch: np.ndarray | None,
    micro_batch: int,
    scale: float | None = None,
) -> tuple[float, int]:
    """``model.loss_and_grad`` over ``windows`` in runs of at most ``micro_batch`` rows (0: all
    at once), their gradients summed into ``grad`` (overwritten); ``scratch`` holds each later
    run's gradient. ``scale`` defaults to 1/(the windows' tokens), the mean loss's gradient.
    Returns (sum of token losses, tokens)."""
    rows = len(windows)
    if scale is None:
        scale = 1.0 / max(rows * (windows.shape[1] - 1), 1)
    if micro_batch <= 0 or rows <= micro_batch:
        return model.loss_and_grad(params, windows, grad, scale=scale)
    if scratch is None:
        raise ValueError("micro-batches need a scratch gradient buffer")
    loss_sum, tokens = model.loss_and_grad(params, windows[:micro_batch], grad, scale=scale)
    for start in range(micro_batch, rows, micro_batch):
        part_loss, part_tokens = model.loss_and_grad(
            params, windows[start : start + micro_batch], scratch, scale=scale
        )
        grad += scratch
        loss_sum += part_loss
        tokens += part_tokens
    return loss_sum, tokens
