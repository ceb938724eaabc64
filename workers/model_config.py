"""The model's shape (``ModelConfig``): a plain dataclass the settings tree validates and
every checkpoint stores, kept apart from the parameter table (params.py) so that building the
command line and checking a [train] table import no numpy."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the GPT decoder; stored with every checkpoint."""

    vocab_size: int = 256
    seq_len: int = 64
    embed_dim: int = 128
    num_layers: int = 4
    num_heads: int = 4
    mlp_ratio: int = 4
    # options of later presets; the defaults are the original architecture, so checkpoints
    # written before they existed (no such keys) load as what they were
    mlp: str = "gelu"  # "gelu" (tanh approximation) or "relu2" (squared ReLU, as the speedrun)
    head: str = "tied"  # "tied" to the token embedding, or "untied" (its own lm_head, zero init)

    def validate(self) -> None:
        """Raise ValueError with a one-line reason for a shape that cannot work."""
        for name in ("vocab_size", "seq_len", "embed_dim", "num_layers", "num_heads", "mlp_ratio"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"num-heads ({self.num_heads}) must divide embed-dim ({self.embed_dim}) evenly")
        if self.mlp not in ("gelu", "relu2"):
            raise ValueError(f"mlp must be gelu or relu2, got {self.mlp!r}")
        if self.head not in ("tied", "untied"):
            raise ValueError(f"head must be tied or untied, got {self.head!r}")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads
