"""The exponential moving average of the weights that a never-ending run serves.

After every applied optimizer step ``t`` (0-based), ``ema' = ema + (1 - d_t) (params' - ema)``
with ``d_t = min(decay, (1 + t) / (10 + t))``: the decay ramps up over the first steps (as
TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``), so the random initialisation
does not dominate the average of a young run. The update is elementwise, so a slice gives the
same bits as the whole vector: in the engine each owner of a parameter slice averages its slice
right after its optimizer update, reading buffer ``src`` and writing ``dst`` like the update
itself (redoable until control publishes).
"""

from __future__ import annotations

import numpy as np


def decay_at(step: int, decay: float) -> float:
    """The decay used after optimizer step ``step`` (0-based) for a configured ``decay``."""
    return min(decay, (1.0 + step) / (10.0 + step))


def ema_step(ema: np.ndarray, params: np.ndarray, decay: float, out: np.ndarray, scratch: np.ndarray) -> None:
    """``out = ema + (1 - decay) (params - ema)``; ``out`` may alias ``ema``, ``scratch`` is a
    buffer of the same length that must alias neither."""
    np.subtract(params, ema, out=scratch)
    scratch *= 1.0 - decay
    np.add(ema, scratch, out=out)
