"""The optimizer's hyperparameters (``AdamWConfig``, stored with every checkpoint), kept
apart from the update steps (optimizer.py) so that building the command line and checking a
[train] table import no numpy."""

from __future__ import annotations

import math
from dataclasses import dataclass


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
    # "muon": hidden matrices (attention and MLP weights) by Muon at muon_lr (scaled by the same
    # schedule as learning_rate), embeddings, head, norms and biases by AdamW; "adamw": all AdamW
    optimizer: str = "adamw"
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    # "cosine": warmup, cosine decay over decay_steps to min_lr, then min_lr (a finite run);
    # "stable": warmup, then learning_rate for ever (a run that never ends, served through the EMA)
    schedule: str = "cosine"
    ema_decay: float = 0.0  # the weights' moving average (ema.py); 0: none, the raw weights serve

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
        if self.optimizer not in ("adamw", "muon"):
            raise ValueError(f"optimizer must be adamw or muon, got {self.optimizer!r}")
        if not (self.muon_lr > 0 and math.isfinite(self.muon_lr)):
            raise ValueError(f"muon-lr must be a positive number, got {self.muon_lr}")
        if not 0 <= self.muon_momentum < 1:
            raise ValueError(f"muon-momentum must lie in [0, 1), got {self.muon_momentum}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be {' or '.join(SCHEDULES)}, got {self.schedule!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema-decay must lie in [0, 1), got {self.ema_decay}")


SCHEDULES = ("cosine", "stable")
