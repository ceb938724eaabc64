"""The training configuration: one flat dataclass, defaults < TOML file < command line."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .optimizer import AdamWConfig
from .params import ModelConfig


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of `crystalline train`; each is also a CLI flag and a TOML key."""

    tokenizer: str = "bytes"
    embed_dim: int = 128
    num_layers: int = 4
    num_heads: int = 4
    seq_len: int = 64
    batch_size: int = 12  # global sequences per optimizer step, whatever the worker count
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    warmup_steps: int = 100
    max_steps: int = 2000
    lr_decay_steps: int = 0  # 0: decay over max_steps
    beta2: float = 0.99
    eval_interval: int = 250
    eval_windows: int = 0  # 0: the whole validation split in non-overlapping windows
    val_fraction: float = 0.1
    target_val_loss: float = 0.0  # 0: no target
    checkpoint_interval: int = 500
    keep_checkpoints: int = 3
    workers: int = 1
    seed: int = 1337
    init: str = "normal"  # token-embedding initialisation: normal or lattice
    # later presets (the defaults are the original recipe, so old checkpoints resume as they were)
    mlp: str = "gelu"  # gelu or relu2 (squared ReLU)
    head: str = "tied"  # tied (to the token embedding) or untied
    optimizer: str = "adamw"  # adamw, or muon for the hidden matrices (AdamW for the rest)
    muon_lr: float = 0.02  # Muon's peak learning rate (same warmup and decay as learning-rate)
    muon_momentum: float = 0.95

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
        if self.eval_windows < 0:
            raise ValueError(f"eval-windows must not be negative, got {self.eval_windows}")
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


FIELD_TYPES: dict[str, type] = {f.name: type(f.default) for f in fields(TrainConfig)}


def coerce(name: str, value: Any, source: str) -> Any:
    """Check and convert one value for key ``name``; ValueError names the source on mismatch."""
    if name not in FIELD_TYPES:
        raise ValueError(f"{source}: unknown option {flag(name)!r}")
    kind = FIELD_TYPES[name]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        raise ValueError(f"{source}: {flag(name)} must be a {kind.__name__}, got {value!r}")
    return value


def read_toml(path: Path) -> dict[str, Any]:
    """A config file's TOML document; ValueError with a one-line reason naming the file."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: cannot read config: {exc}") from None


def load_toml(path: Path) -> dict[str, Any]:
    """Options from a TOML file (keys with dashes or underscores, top level or under [train])."""
    data = read_toml(path)
    table = data.get("train", data)
    if not isinstance(table, dict):
        raise ValueError(f"{path}: [train] must be a table")
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        out[name] = coerce(name, value, str(path))
    return out


def resolve(file_values: dict[str, Any], cli_values: dict[str, Any]) -> TrainConfig:
    """Defaults, overridden by the file, overridden by the command line; then validated."""
    merged = {**file_values, **{k: v for k, v in cli_values.items() if v is not None}}
    cfg = TrainConfig(**merged)
    cfg.validate()
    return cfg
