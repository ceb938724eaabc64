"""The parameter table: every tensor of the model as a view into one flat vector.

Keeping all parameters in one contiguous float32 vector lets the engine put them in
shared memory as is, lets AdamW run as a handful of vector operations, and makes
"reduce the full gradient" a single array sum (the C original shared only the
embedding gradient by mistake).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .model_config import ModelConfig


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor: where it lives in the flat vector and whether AdamW decays it."""

    name: str
    shape: tuple[int, ...]
    offset: int
    decay: bool

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def end(self) -> int:
        return self.offset + self.size


class ParamTable:
    """Ordered tensor table (name, shape, offset) for a ModelConfig."""

    def __init__(self, config: ModelConfig) -> None:
        config.validate()
        self.config = config
        c, v, t = config.embed_dim, config.vocab_size, config.seq_len
        hidden = config.mlp_ratio * c
        entries: list[tuple[str, tuple[int, ...], bool]] = [
            ("wte", (v, c), True),
            ("wpe", (t, c), True),
        ]
        for i in range(config.num_layers):
            p = f"h{i}."
            entries += [
                (p + "ln1.w", (c,), False),
                (p + "ln1.b", (c,), False),
                (p + "attn.qkv.w", (c, 3 * c), True),
                (p + "attn.qkv.b", (3 * c,), False),
                (p + "attn.proj.w", (c, c), True),
                (p + "attn.proj.b", (c,), False),
                (p + "ln2.w", (c,), False),
                (p + "ln2.b", (c,), False),
                (p + "mlp.fc.w", (c, hidden), True),
                (p + "mlp.fc.b", (hidden,), False),
                (p + "mlp.proj.w", (hidden, c), True),
                (p + "mlp.proj.b", (c,), False),
            ]
        entries += [("lnf.w", (c,), False), ("lnf.b", (c,), False)]
        if config.head == "untied":
            entries.append(("lm_head", (v, c), True))  # logits = x @ lm_head.T, as the tied wte
        specs: list[TensorSpec] = []
        offset = 0
        for name, shape, decay in entries:
            spec = TensorSpec(name, shape, offset, decay)
            specs.append(spec)
            offset = spec.end
        self.specs: tuple[TensorSpec, ...] = tuple(specs)
        self.by_name: dict[str, TensorSpec] = {s.name: s for s in specs}
        self.size: int = offset

    def __iter__(self) -> Iterator[TensorSpec]:
        return iter(self.specs)

    def views(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Named views (no copies) into a flat vector laid out by this table."""
        if flat.shape != (self.size,):
            raise ValueError(f"flat vector has shape {flat.shape}, the table needs ({self.size},)")
        return {s.name: flat[s.offset : s.end].reshape(s.shape) for s in self.specs}

    def decay_mask(self, dtype: type[np.floating] = np.float32) -> np.ndarray:
        """1.0 where weight decay applies (matrices and embeddings), 0.0 on norms and biases."""
        mask = np.zeros(self.size, dtype=dtype)
        for s in self.specs:
            if s.decay:
                mask[s.offset : s.end] = 1.0
        return mask

    def describe(self) -> list[dict[str, object]]:
        """The table as JSON-able rows, for checkpoints and status."""
        return [
            {"name": s.name, "shape": list(s.shape), "offset": s.offset, "decay": s.decay} for s in self.specs
        ]
