"""The training configuration: the [train] table of the settings tree (crystalline.settings_tree),
shared by `crystalline train` and the daemon. A field is a TOML key, a flag and an environment
variable (``CRYSTALLINE_TRAIN_EMBED_DIM``); its help is its metadata's or its trailing comment."""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..settings_tree import Tree, table
from .model_config import ModelConfig
from .optimizer_config import AdamWConfig
from .presets import NONE, PRESETS


def _one_of(help: str, default: str, *others: str) -> str:
    """A setting that takes one of a few words, ``default`` first among its choices."""
    value: str = field(default=default, metadata={"help": help, "choices": (default, *others)})
    return value


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of `crystalline train`; each is also a CLI flag and a TOML key."""

    preset: str = field(
        default=NONE,
        metadata={
            "help": "a model and its optimizer: small (0.8M parameters, bytes) or base (6 layers, "
            "384 wide, context 256); the keys it sets are overridden by any given explicitly",
            "choices": (NONE, *PRESETS),
            "presets": PRESETS,
        },
    )
    tokenizer: str = "bytes"  # 'bytes', a tokenizer file from vocab-build, or (the daemon) learned
    # tokenizer = "learned" (the base preset): a byte-level BPE learned once from the first
    # text the daemon ingests, then fixed (tokens/learned_vocab.py)
    learned_vocab: int = 8192  # the learned vocabulary's size
    learned_vocab_bytes: int = 32 * 2**20  # the training text it is learned from, in bytes
    embed_dim: int = 128
    num_layers: int = 4
    num_heads: int = 4
    seq_len: int = 64
    batch_size: int = 12  # global sequences per optimizer step, whatever the worker count
    # gradient accumulation: a worker runs its rows of a step this many at a time and sums
    micro_batch: int = 0  # most windows per forward/backward in one worker (0: all its rows)
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    warmup_steps: int = 100
    max_steps: int = 2000
    lr_decay_steps: int = 0  # cosine decay length in steps (0: max-steps)
    beta2: float = 0.99
    eval_interval: int = 250  # steps between validation evaluations
    eval_windows: int = 0  # validation windows per eval (0: the whole split)
    # the daemon: each source's held-out documents (a crawled host, a drop sub-folder), in turn
    source_eval_windows: int = 16  # validation windows per source per eval (0: none per source)
    surprise_windows: int = 2  # windows from each new document's start scored before it trains (0: off)
    # documents by a hash of their source; a single file: its tail
    val_fraction: float = 0.1  # share held out for validation
    target_val_loss: float = 0.0  # stop once validation loss is at or below this (0: no target)
    checkpoint_interval: int = 500
    keep_checkpoints: int = 3
    workers: int = 1  # worker processes computing gradients (1: in this process)
    seed: int = 1337
    init: str = _one_of("token-embedding initialisation (lattice: prime/Ulam spiral)", "normal", "lattice")
    # later presets (the defaults are the original recipe, so old checkpoints resume as they were)
    mlp: str = _one_of("MLP activation (relu2: squared ReLU)", "gelu", "relu2")
    head: str = _one_of("output head tied to the token embedding or its own", "tied", "untied")
    optimizer: str = _one_of("muon: Muon for the hidden matrices, AdamW for the rest", "adamw", "muon")
    muon_lr: float = 0.02  # Muon's peak learning rate (same warmup and decay as learning-rate)
    muon_momentum: float = 0.95
    schedule: str = _one_of(
        "learning-rate schedule after warmup: cosine (decay to min-lr over lr-decay-steps, "
        "then the floor) or stable (the peak for ever: the daemon's, whose run never ends)",
        "cosine",
        "stable",
    )
    ema_decay: float = field(
        default=0.0,
        metadata={
            "help": "decay of the exponential moving average of the weights that evaluation, "
            "generation and checkpoints serve (0: none, the raw weights; the daemon: 0.99)"
        },
    )

    # the daemon's replay policy (README, "What it trains on"): batches stay a pure function of
    # (seed, step, documents visible), so resume is exact under any policy
    fresh_share: float = 0.25  # share of each batch's rows from the newest documents (0: replay only)
    fresh_tokens: int = 65536  # the newest training tokens by arrival that count as fresh
    source_cap: float = 1.0  # most of a batch's rows one source may take (1: no cap)

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(
            vocab_size=vocab_size,
            seq_len=self.seq_len,
            embed_dim=self.embed_dim,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            mlp=self.mlp,
            head=self.head,
        )

    def adamw_config(self) -> AdamWConfig:
        return AdamWConfig(
            learning_rate=self.learning_rate,
            min_lr=self.min_lr,
            warmup_steps=self.warmup_steps,
            decay_steps=self.lr_decay_steps or self.max_steps,
            weight_decay=self.weight_decay,
            beta2=self.beta2,
            grad_clip=self.grad_clip,
            optimizer=self.optimizer,
            muon_lr=self.muon_lr,
            muon_momentum=self.muon_momentum,
            schedule=self.schedule,
            ema_decay=self.ema_decay,
        )

    def validate(self) -> None:
        """Raise ValueError naming the first absurd option."""
        self.model_config(256).validate()
        self.adamw_config().validate()
        positive = ("batch_size", "max_steps", "eval_interval", "checkpoint_interval", "keep_checkpoints",
                    "workers")  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{flag(name)} must be at least 1, got {getattr(self, name)}")
        for name in ("eval_windows", "source_eval_windows", "surprise_windows", "micro_batch"):
            if getattr(self, name) < 0:
                raise ValueError(f"{flag(name)} must not be negative, got {getattr(self, name)}")
        for name in ("fresh_share", "source_cap"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{flag(name)} must be in [0, 1], got {getattr(self, name)}")
        if self.source_cap == 0.0:
            raise ValueError("source-cap must be above 0 (1: no cap)")
        if not 257 <= self.learned_vocab <= 65536:
            raise ValueError(f"learned-vocab must be in [257, 65536], got {self.learned_vocab}")
        if self.learned_vocab_bytes < 1:
            raise ValueError(f"learned-vocab-bytes must be at least 1, got {self.learned_vocab_bytes}")
        if self.fresh_tokens < 1:
            raise ValueError(f"fresh-tokens must be at least 1, got {self.fresh_tokens}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.target_val_loss < 0 or not math.isfinite(self.target_val_loss):
            raise ValueError(f"target-val-loss must be a non-negative number, got {self.target_val_loss}")
        if self.seed < 0:
            raise ValueError(f"seed must not be negative, got {self.seed}")
        if self.init not in ("normal", "lattice"):
            raise ValueError(f"init must be normal or lattice, got {self.init!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def flag(name: str) -> str:
    """The CLI spelling of a config key."""
    return name.replace("_", "-")


def settings_tree() -> Tree:
    """`crystalline train`'s settings: the [train] table."""
    return Tree({"train": table("train", TrainConfig)})


def from_file(path: Path) -> TrainConfig:
    """The [train] table of a TOML file over the defaults, validated (the benchmarks' recipes)."""
    return settings_tree().resolve(argparse.Namespace(), {}, path).tables["train"]
