"""The training loop behind `crystalline train`: steps, evals, metrics and checkpoints.

One path for every caller: the CLI, the daemon and the tests build a ``Trainer`` and call
``run``. The gradient of a step comes from a ``GradientSource``; here that is the model in
this process, and the data-parallel engine provides another with the same contract.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

import numpy as np

from .checkpoint import Checkpoint, load_latest, save_checkpoint
from .dataset import TokenSplit, batch_for_step, eval_windows, load_split
from .model import GPT, init_params
from .optimizer import AdamW, clip_coefficient, global_norm, learning_rate
from .params import ModelConfig
from .tokenizer import Tokenizer, load_tokenizer, tokenizer_from_json
from .train_config import TrainConfig, flag

log = logging.getLogger(__name__)

PROCESS_START = time.monotonic()
EVAL_BATCH = 64  # windows per forward pass when measuring validation loss


class TrainingError(Exception):
    """A condition that stops training with a one-line explanation."""


class GradientSource(Protocol):
    """Computes the mean-loss gradient of one global batch into ``grad``."""

    def compute(self, params: np.ndarray, windows: np.ndarray, grad: np.ndarray) -> tuple[float, int]: ...


class LocalGradient:
    """Forward and backward in this process."""

    def __init__(self, model: GPT) -> None:
        self.model = model

    def compute(self, params: np.ndarray, windows: np.ndarray, grad: np.ndarray) -> tuple[float, int]:
        return self.model.loss_and_grad(params, windows, grad)


def evaluate(model: GPT, params: np.ndarray, windows: np.ndarray) -> float:
    """Mean token loss over the given windows, in fixed-size forward passes."""
    if len(windows) == 0:
        return math.nan
    total, count = 0.0, 0
    for start in range(0, len(windows), EVAL_BATCH):
        loss_sum, n = model.loss(params, windows[start : start + EVAL_BATCH])
        total += loss_sum
        count += n
    return total / count


def data_fingerprint(split: TokenSplit) -> dict[str, Any]:
    digest = hashlib.sha256(split.train.tobytes())
    digest.update(split.val.tobytes())
    return {"train_tokens": len(split.train), "val_tokens": len(split.val), "sha256": digest.hexdigest()}


@dataclass
class TrainState:
    """Everything that changes during training; together with the config it is a checkpoint."""

    step: int  # completed optimizer steps
    tokens: int  # training tokens consumed
    params: np.ndarray
    optimizer: AdamW
    skipped_steps: int = 0
    last_val_loss: float = math.nan


@dataclass
class TrainResult:
    steps: int
    tokens: int
    val_loss: float
    train_loss: float
    reached_target: bool
    checkpoint: Path | None


class MetricsLog:
    """Appends JSON lines to DIR/metrics.jsonl, flushed per record so a crash loses nothing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: TextIO = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, allow_nan=False, default=_json_default) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


class Trainer:
    """Single-path training: set up from scratch or from the newest checkpoint, then run."""

    def __init__(self, paths: Sequence[Path], checkpoint_dir: Path, config: TrainConfig, resume: bool = False,
                 gradient: Callable[[GPT], GradientSource] = LocalGradient) -> None:  # fmt: skip
        config.validate()
        self.checkpoint_dir = checkpoint_dir
        existing = load_latest(checkpoint_dir) if checkpoint_dir.exists() else None
        if existing is not None and not resume:
            raise TrainingError(
                f"{checkpoint_dir} already holds checkpoints (newest step {existing.step}); "
                "pass --resume to continue or choose another --checkpoint-dir"
            )
        if existing is None and resume:
            raise TrainingError(f"--resume given but {checkpoint_dir} holds no checkpoint")

        tokenizer = load_tokenizer(config.tokenizer)
        if existing is not None:
            saved = tokenizer_from_json(existing.tokenizer_json)
            if saved.to_json() != tokenizer.to_json():
                raise TrainingError(
                    f"tokenizer mismatch: {checkpoint_dir} was trained with a {saved.kind} tokenizer "
                    f"(vocab {saved.vocab_size}), this run asks for {config.tokenizer!r}"
                )
            _check_same_run(existing.state["config"], config)
        self.tokenizer: Tokenizer = tokenizer
        self.config = config
        self.model_config: ModelConfig = config.model_config(tokenizer.vocab_size)
        self.model = GPT(self.model_config)
        self.split = load_split(paths, tokenizer, config.val_fraction)
        if len(self.split.train) < config.seq_len + 1:
            raise TrainingError(
                f"only {len(self.split.train)} training tokens; seq-len {config.seq_len} needs at least "
                f"{config.seq_len + 1} (give more text or a smaller --seq-len)"
            )
        self.val_windows = eval_windows(self.split.val, config.seq_len, config.eval_windows)
        self.fingerprint = data_fingerprint(self.split)
        self.gradient = gradient(self.model)

        optimizer = AdamW(config.adamw_config(), self.model.table.decay_mask())
        if existing is None:
            params = init_params(self.model.table, config.seed, embedding=config.init)
            self.state = TrainState(0, 0, params, optimizer)
        else:
            self.state = self._restore(existing, optimizer)
        self.grad = np.zeros_like(self.state.params)
        self.stop_requested = False

    def _restore(self, ckpt: Checkpoint, optimizer: AdamW) -> TrainState:
        params = ckpt.arrays.get("params")
        if params is None or params.shape != (self.model.num_params,) or params.dtype != np.float32:
            raise TrainingError(f"{ckpt.path}: parameters do not match the model ({self.model.num_params})")
        optimizer.m[...] = ckpt.arrays["adam_m"]
        optimizer.v[...] = ckpt.arrays["adam_v"]
        if ckpt.state.get("data", {}).get("sha256") != self.fingerprint["sha256"]:
            log.warning("training data differs from the data the checkpoint was trained on")
        s = ckpt.state
        return TrainState(s["step"], s["tokens"], params.copy(), optimizer, s.get("skipped_steps", 0),
                          s.get("val_loss") or math.nan)  # fmt: skip

    # ---- one step -------------------------------------------------------------------------
    def train_step(self) -> float:
        """One optimizer step; returns the mean training loss of its batch (nan if skipped)."""
        st, cfg = self.state, self.config
        windows = batch_for_step(self.split.train, cfg.seed, st.step, cfg.batch_size, cfg.seq_len)
        loss_sum, n = self.gradient.compute(st.params, windows, self.grad)
        norm = global_norm(self.grad)
        st.tokens += n
        if not (math.isfinite(norm) and math.isfinite(loss_sum)):
            # a non-finite gradient would poison the moments: skip the update, count it
            st.skipped_steps += 1
            st.step += 1
            log.warning("step %d: non-finite gradient, update skipped", st.step)
            return math.nan
        lr = learning_rate(st.step, st.optimizer.cfg)
        st.optimizer.update(st.params, self.grad, st.step, lr, clip_coefficient(norm, cfg.grad_clip))
        st.step += 1
        return loss_sum / n

    # ---- checkpoints ------------------------------------------------------------------------
    def checkpoint(self) -> Path:
        st = self.state
        state = {
            "step": st.step,
            "tokens": st.tokens,
            "skipped_steps": st.skipped_steps,
            "val_loss": _finite_or_none(st.last_val_loss),
            # batches are a function of (seed, step): this is the whole RNG state
            "rng": {"batch_seed": self.config.seed, "next_step": st.step, "generator": "PCG64([seed, step])"},
            "model": vars(self.model_config),
            "config": self.config.to_dict(),
            "param_table": self.model.table.describe(),
            "data": self.fingerprint,
        }
        arrays = {"params": st.params, "adam_m": st.optimizer.m, "adam_v": st.optimizer.v}
        ckpt = Checkpoint(st.step, arrays, state, self.tokenizer.to_json())
        return save_checkpoint(self.checkpoint_dir, ckpt, keep=self.config.keep_checkpoints)

    # ---- the loop ---------------------------------------------------------------------------
    def run(self, progress: TextIO | None = None) -> TrainResult:
        """Train until max-steps, the target validation loss, or ``stop_requested``."""
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        metrics = MetricsLog(self.checkpoint_dir / "metrics.jsonl")
        try:
            return self._loop(metrics, progress)
        finally:
            metrics.close()

    def _eval_record(self, train_losses: list[float]) -> dict[str, Any]:
        st = self.state
        st.last_val_loss = evaluate(self.model, st.params, self.val_windows)
        finite = [x for x in train_losses if math.isfinite(x)]
        return {
            "event": "eval",
            "step": st.step,
            "tokens": st.tokens,
            "elapsed_s": round(time.monotonic() - PROCESS_START, 3),
            "train_loss": _finite_or_none(sum(finite) / len(finite)) if finite else None,
            "val_loss": _finite_or_none(st.last_val_loss),
            "lr": learning_rate(max(st.step - 1, 0), st.optimizer.cfg),
        }

    def _loop(self, metrics: MetricsLog, progress: TextIO | None) -> TrainResult:
        cfg, st = self.config, self.state
        metrics.write({
            "event": "start", "params": self.model.num_params, "config": cfg.to_dict(),
            "resumed_from": st.step, "train_tokens": len(self.split.train),
            "val_tokens": len(self.split.val), "val_windows": len(self.val_windows),
        })  # fmt: skip
        reached = False
        train_losses: list[float] = []
        last_train_loss = math.nan
        last_ckpt: Path | None = None
        if st.step == 0:
            metrics.write(self._eval_record([]))
        t_rate, tokens_rate = time.monotonic(), st.tokens
        last_print = 0.0
        while st.step < cfg.max_steps and not self.stop_requested:
            train_losses.append(self.train_step())
            at_eval = st.step % cfg.eval_interval == 0 or st.step == cfg.max_steps
            if at_eval:
                record = self._eval_record(train_losses)
                metrics.write(record)
                train_losses = []
                if record["train_loss"] is not None:
                    last_train_loss = record["train_loss"]
                if cfg.target_val_loss and st.last_val_loss <= cfg.target_val_loss:
                    reached = True
            if progress is not None and (time.monotonic() - last_print > 0.5 or at_eval):
                last_print = time.monotonic()
                rate = (st.tokens - tokens_rate) / max(last_print - t_rate, 1e-9)
                loss = train_losses[-1] if train_losses else st.last_val_loss
                progress.write(f"\rstep {st.step}/{cfg.max_steps}  loss {loss:.4f}  "
                               f"val {st.last_val_loss:.4f}  {rate:,.0f} tok/s ")  # fmt: skip
                progress.flush()
            if st.step % cfg.checkpoint_interval == 0:
                last_ckpt = self.checkpoint()
            if reached:
                break
        if progress is not None:
            progress.write("\n")
        if last_ckpt is None or not last_ckpt.name.endswith(f"{st.step:08d}"):
            last_ckpt = self.checkpoint()
        if not math.isfinite(st.last_val_loss):
            st.last_val_loss = evaluate(self.model, st.params, self.val_windows)
        return TrainResult(st.step, st.tokens, st.last_val_loss, last_train_loss, reached, last_ckpt)


_SAME_RUN_KEYS = ("embed_dim", "num_layers", "num_heads", "seq_len", "seed", "batch_size", "init")


def _check_same_run(saved: dict[str, Any], config: TrainConfig) -> None:
    """A resumed run must have the model shape and batch stream of the checkpoint."""
    for key in _SAME_RUN_KEYS:
        if key in saved and saved[key] != getattr(config, key):
            raise TrainingError(
                f"checkpoint was trained with {flag(key)}={saved[key]}, this run asks for "
                f"{getattr(config, key)}; use the original options to resume"
            )


def progress_stream() -> TextIO | None:
    """stderr when it is a terminal (a progress line would only clutter logs)."""
    return sys.stderr if sys.stderr.isatty() and os.environ.get("TERM") != "dumb" else None
