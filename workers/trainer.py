"""The training loop behind `crystalline train`: steps, evals, metrics and checkpoints.

One path for every caller: the CLI, the daemon and the tests build a ``Trainer`` and call
``run``. A step is computed by a step engine (engine.py): in this process for one worker,
by control and worker processes otherwise, with the same results either way.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

import numpy as np

from crystalline.tokens.tokenizer import Tokenizer, load_tokenizer, tokenizer_from_json
from crystalline.tokens.windows import FileWindows, NotEnoughTokens

from .batch_ring import Ring
from .bits_per_byte import beside, bits_per_byte, token_byte_lengths
from .checkpoint import Checkpoint, CheckpointError, load_latest, save_checkpoint, set_aside
from .engine import (
    EngineSettings,
    EngineStopped,
    GradientExchange,
    LocalEngine,
    ProcessEngine,
    StepAbandoned,
    StepEngine,
    batch_bytes,
)
from .model import GPT, init_params
from .model_config import ModelConfig
from .optimizer import learning_rate
from .train_config import TrainConfig, flag

if TYPE_CHECKING:
    import zmq

log = logging.getLogger(__name__)

PROCESS_START = time.monotonic()
EVAL_BATCH = 64  # windows per forward pass when measuring validation loss


class TrainingError(Exception):
    """A condition that stops training with a one-line explanation."""


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


class TrainingData(Protocol):
    """Where a run's tokens come from: batches by step, and the validation windows."""

    def batch(self, step: int) -> np.ndarray: ...
    def val_windows(self) -> np.ndarray: ...
    def describe(self) -> dict[str, Any]: ...


def file_windows(paths: Sequence[Path], tokenizer: Tokenizer, config: TrainConfig) -> FileWindows:
    """`crystalline train`'s data: the files' windows, cut by ``tokens.windows`` as the daemon's are."""
    try:
        return FileWindows(
            paths, tokenizer, batch_size=config.batch_size, seq_len=config.seq_len, seed=config.seed,
            val_fraction=config.val_fraction, eval_limit=config.eval_windows,
        )  # fmt: skip
    except NotEnoughTokens as exc:
        raise TrainingError(str(exc)) from None


def engine_instance(checkpoint_dir: Path) -> str:
    """Shared-memory instance name for a checkpoint dir: stable, so the next start can sweep
    what a killed run left behind, and distinct between directories."""
    return "t" + hashlib.sha256(str(checkpoint_dir.resolve()).encode()).hexdigest()[:12]


@dataclass
class TrainState:
    """The counters of a run; with the engine's parameters and moments it is a checkpoint."""

    step: int  # completed optimizer steps
    tokens: int  # training tokens consumed
    skipped_steps: int = 0
    last_val_loss: float = math.nan  # of the served weights (the EMA when the run keeps one)
    last_val_bpb: float = math.nan
    last_val_loss_raw: float = math.nan  # of the raw weights, when the EMA is what serves
    last_val_bpb_raw: float = math.nan
    # batch losses (and their bits per byte) since the last eval, checkpointed so a resumed run
    # reports the same train_loss
    pending_losses: list[float] = field(default_factory=list)
    pending_bpb: list[float] = field(default_factory=list)


@dataclass
class TrainResult:
    steps: int
    tokens: int
    val_loss: float
    train_loss: float
    val_bpb: float
    train_bpb: float
    reached_target: bool
    checkpoint: Path | None


class MetricsLog:
    """Appends JSON lines to DIR/metrics.jsonl, flushed per record so a crash loses nothing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: TextIO = path.open("a", encoding="utf-8")
        self.lost = 0  # records that could not be written (a full disk)

    def write(self, record: dict[str, Any]) -> None:
        """Append one record; a write error (a full disk) loses the record, not the run."""
        try:
            self._file.write(json.dumps(record, allow_nan=False) + "\n")
            self._file.flush()
        except OSError as exc:
            self.lost += 1
            if self.lost == 1 or self.lost % 100 == 0:
                log.error("%s: %d metrics records lost: %s", self.path, self.lost, exc)

    def close(self) -> None:
        try:
            self._file.close()
        except OSError as exc:
            log.error("%s: could not flush the last metrics records: %s", self.path, exc)


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


class Trainer:
    """Single-path training: set up from scratch or from the newest checkpoint, then ``run``.

    The engine (in-process for one worker, control + worker processes otherwise) exists from
    construction until ``run`` returns or ``close`` is called.
    """

    def __init__(
        self,
        data: Sequence[Path] | Callable[[Tokenizer], TrainingData],
        checkpoint_dir: Path,
        config: TrainConfig,
        resume: bool = False,
        ring: Ring | None = None,
        exchange: GradientExchange | None = None,
        zmq_context: zmq.Context[Any] | None = None,
    ) -> None:
        """``ring``: the batch ring lent by the daemon's supervisor (filled there, from the
        store); without it the process engine fills its own from ``data``. ``exchange``: the
        allreduce with other machines (``--cluster``). ``zmq_context``: the caller's ZeroMQ
        context, for the process engine's socket (else it creates its own)."""
        config.validate()
        self.ring = ring
        self.exchange = exchange
        self.zmq_context = zmq_context
        self.checkpoint_dir = checkpoint_dir
        self.config = config
        self.stop_requested = False
        # None: a checkpoint that cannot be written (full disk) ends the run; the daemon sets a
        # handler that reports it and goes on (the previous checkpoints are untouched)
        self.on_checkpoint_error: Callable[[OSError], None] | None = None
        skipped: list[tuple[Path, CheckpointError]] = []
        existing = load_latest(checkpoint_dir, skipped) if checkpoint_dir.exists() else None
        # what was wrong with the checkpoints skipped on the way to ``existing`` (for status)
        self.checkpoint_warnings: list[str] = [f"skipped unusable checkpoint {e}" for _, e in skipped]
        if existing is not None and not resume:
            raise TrainingError(
                f"{checkpoint_dir} already holds checkpoints (newest step {existing.step}); "
                "pass --resume to continue or choose another --checkpoint-dir"
            )
        if existing is None and resume:
            raise TrainingError(f"--resume given but {checkpoint_dir} holds no checkpoint")
        if config.tokenizer == "learned":
            raise TrainingError(
                "tokenizer 'learned' is the daemon's (the vocabulary it learns in its state directory); "
                "crystalline train takes bytes or a file from vocab-build"
            )
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
        self.token_bytes = token_byte_lengths(tokenizer)
        self.model_config: ModelConfig = config.model_config(tokenizer.vocab_size)
        self.model = GPT(self.model_config)
        self.data: TrainingData = data(tokenizer) if callable(data) else file_windows(data, tokenizer, config)
        self.adamw = config.adamw_config()

        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self._lock: TextIO | None = _lock_dir(checkpoint_dir)
        if existing is not None and existing.path is not None:
            # resuming past damaged newer checkpoints: set them aside, or they would keep a
            # place among the kept ones (and crowd out good ones) until the run passes their step
            for damaged, _ in skipped:
                if damaged.is_dir():
                    log.warning("moved damaged checkpoint aside to %s", set_aside(damaged).name)
        try:
            self.engine: StepEngine = self._make_engine()
            if existing is None:
                params = init_params(self.model.table, config.seed, embedding=config.init)
                self.engine.load_state(params, np.zeros_like(params), np.zeros_like(params))
                self.state = TrainState(0, 0)
            else:
                self.state = self._restore(existing)
        except BaseException:
            self.close()
            raise

    def _make_engine(self) -> StepEngine:
        cfg = self.config
        if cfg.workers == 1:
            return LocalEngine(
                self.model, self.adamw, self.data.batch, self.token_bytes, self.exchange, cfg.micro_batch
            )
        settings = EngineSettings(
            workers=cfg.workers, instance=engine_instance(self.checkpoint_dir), micro_batch=cfg.micro_batch
        )
        return ProcessEngine(
            self.model,
            self.adamw,
            self.data.batch,
            cfg.batch_size,
            settings,
            should_stop=lambda: self.stop_requested,
            token_bytes=self.token_bytes,
            ring=self.ring,
            exchange=self.exchange,
            zmq_context=self.zmq_context,
        )

    def _restore(self, ckpt: Checkpoint) -> TrainState:
        size = self.model.num_params
        for name in ("params", "adam_m", "adam_v"):
            arr = ckpt.arrays.get(name)
            if arr is None or arr.shape != (size,) or arr.dtype != np.float32:
                raise TrainingError(f"{ckpt.path}: {name} does not match the model ({size} float32)")
        ema = ckpt.arrays.get("ema")
        if ema is not None and (ema.shape != (size,) or ema.dtype != np.float32):
            raise TrainingError(f"{ckpt.path}: ema does not match the model ({size} float32)")
        if ema is None and self.adamw.ema_decay > 0:
            log.info("%s holds no moving average of the weights: it starts from its weights", ckpt.path)
        self.engine.load_state(ckpt.arrays["params"], ckpt.arrays["adam_m"], ckpt.arrays["adam_v"], ema)
        saved, now = ckpt.state.get("data", {}), self.data.describe()
        if saved.get("kind") == now.get("kind") == "files" and saved.get("sha256") != now.get("sha256"):
            log.warning("training data differs from the data the checkpoint was trained on")
        s = ckpt.state

        def numbers(key: str) -> list[float]:
            return [math.nan if x is None else float(x) for x in s.get(key, [])]

        def number(key: str) -> float:
            return math.nan if s.get(key) is None else float(s[key])

        if self.exchange is not None:
            try:
                history = s.get("cluster", {})  # absent: a checkpoint written without --cluster
                if not isinstance(history, dict):
                    raise ValueError(f"the checkpoint's cluster history is not an object: {history!r}"[:300])
                self.exchange.restore_history(history)
            except ValueError as exc:
                raise TrainingError(f"{ckpt.path}: {exc}") from None
        losses = numbers("pending_losses")
        bpb = numbers("pending_bpb") or [math.nan] * len(losses)  # a checkpoint from before bpb
        return TrainState(
            s["step"], s["tokens"], s.get("skipped_steps", 0), number("val_loss"), number("val_bpb"),
            number("val_loss_raw"), number("val_bpb_raw"), losses, bpb,
        )  # fmt: skip

    def close(self) -> None:
        """Stop the engine's processes and release the checkpoint dir (idempotent)."""
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # ---- one step -------------------------------------------------------------------------
    def train_step(self) -> float:
        """One optimizer step; returns the mean training loss of its batch (nan if skipped)."""
        st = self.state
        outcome = self.engine.step(st.step, learning_rate(st.step, self.adamw))
        st.tokens += outcome.tokens
        st.step += 1
        if not outcome.applied:
            st.skipped_steps += 1
            st.pending_bpb.append(math.nan)
            return math.nan
        loss = outcome.loss_sum / outcome.tokens
        st.pending_bpb.append(bits_per_byte(loss, outcome.tokens, outcome.bytes))
        return loss

    # ---- checkpoints ------------------------------------------------------------------------
    def checkpoint(self) -> Path:
        st = self.state
        state = {
            "step": st.step,
            "tokens": st.tokens,
            "skipped_steps": st.skipped_steps,
            "val_loss": _finite_or_none(st.last_val_loss),
            "val_bpb": _finite_or_none(st.last_val_bpb),
            "val_loss_raw": _finite_or_none(st.last_val_loss_raw),
            "val_bpb_raw": _finite_or_none(st.last_val_bpb_raw),
            "pending_losses": [_finite_or_none(x) for x in st.pending_losses],
            "pending_bpb": [_finite_or_none(x) for x in st.pending_bpb],
            # batches are a function of (seed, step): this is the whole RNG state
            "rng": {"batch_seed": self.config.seed, "next_step": st.step, "generator": "PCG64([seed, step])"},
            "model": vars(self.model_config),
            "config": self.config.to_dict(),
            "param_table": self.model.table.describe(),
            "data": self.data.describe(),
        }
        m, v = self.engine.moments()
        arrays = {"params": self.engine.params(), "adam_m": m, "adam_v": v}
        ema = self.engine.ema()
        if ema is not None:
            arrays["ema"] = ema
        if self.exchange is not None:  # --cluster: the state's lineage (workers/cluster_member.py)
            state["cluster"] = self.exchange.history()
        ckpt = Checkpoint(st.step, arrays, state, self.tokenizer.to_json())
        return save_checkpoint(self.checkpoint_dir, ckpt, keep=self.config.keep_checkpoints)

    # ---- the loop ---------------------------------------------------------------------------
    def run(
        self, progress: TextIO | None = None, between_steps: Callable[[], None] | None = None
    ) -> TrainResult:
        """Train until max-steps, the target validation loss, or ``stop_requested``; then
        checkpoint and close the engine. ``between_steps`` runs before every step (the daemon's
        control process serves its commands there, and blocks there while paused)."""
        try:  # the engine is closed whatever fails, the metrics file's opening included
            metrics = MetricsLog(self.checkpoint_dir / "metrics.jsonl")
            self.metrics = metrics
            try:
                return self._loop(metrics, progress, between_steps)
            finally:
                metrics.close()
        finally:
            self.close()

    def _evaluate(self) -> dict[str, Any]:
        """Validation loss now, and the eval record (which consumes the pending batch losses)."""
        st = self.state
        windows = self.data.val_windows()
        tokens, nbytes = windows[:, 1:].size, batch_bytes(windows, self.token_bytes)
        ema = self.engine.ema()
        st.last_val_loss = evaluate(self.model, self.engine.params() if ema is None else ema, windows)
        st.last_val_bpb = bits_per_byte(st.last_val_loss, tokens, nbytes)
        raw: dict[str, Any] = {}
        if ema is not None:
            st.last_val_loss_raw = evaluate(self.model, self.engine.params(), windows)
            st.last_val_bpb_raw = bits_per_byte(st.last_val_loss_raw, tokens, nbytes)
            raw = beside("val_loss_raw", st.last_val_loss_raw, st.last_val_bpb_raw)
        finite = [x for x in st.pending_losses if math.isfinite(x)]
        finite_bpb = [x for x in st.pending_bpb if math.isfinite(x)]
        st.pending_losses, st.pending_bpb = [], []
        train_loss = sum(finite) / len(finite) if finite else math.nan
        return {
            "event": "eval",
            "step": st.step,
            "tokens": st.tokens,
            "elapsed_s": round(time.monotonic() - PROCESS_START, 3),
            **beside("train_loss", train_loss, sum(finite_bpb) / len(finite_bpb) if finite_bpb else math.nan),
            **beside("val_loss", st.last_val_loss, st.last_val_bpb),
            **raw,
            "lr": learning_rate(max(st.step - 1, 0), self.adamw),
        }

    def _reached(self) -> bool:
        target = self.config.target_val_loss
        return bool(target) and self.state.last_val_loss <= target

    def _loop(
        self, metrics: MetricsLog, progress: TextIO | None, between_steps: Callable[[], None] | None
    ) -> TrainResult:
        cfg, st = self.config, self.state
        metrics.write(
            {
                "event": "start",
                "params": self.model.num_params,
                "config": cfg.to_dict(),
                "resumed_from": st.step,
                **self.data.describe(),
                "val_windows": len(self.data.val_windows()),
            }
        )
        last_train_loss = last_train_bpb = math.nan
        last_ckpt: Path | None = None
        if st.step == 0:
            metrics.write(self._evaluate())
        reached = self._reached()
        t_rate, tokens_rate = time.monotonic(), st.tokens
        last_print = 0.0
        while st.step < cfg.max_steps and not self.stop_requested and not reached:
            if between_steps is not None:
                between_steps()
                if self.stop_requested:
                    break
            try:
                st.pending_losses.append(self.train_step())
            except EngineStopped:
                break  # the step was abandoned; nothing of it was published
            except StepAbandoned as exc:  # between_steps waits for the cluster's next group
                log.warning("step %d abandoned: %s", st.step, exc)
                continue
            at_eval = st.step % cfg.eval_interval == 0 or st.step == cfg.max_steps
            if at_eval:
                record = self._evaluate()
                metrics.write(record)
                if record["train_loss"] is not None:
                    last_train_loss = record["train_loss"]
                    last_train_bpb = record["train_bpb"] if record["train_bpb"] is not None else math.nan
                reached = self._reached()
            if progress is not None and (time.monotonic() - last_print > 0.5 or at_eval):
                last_print = time.monotonic()
                rate = (st.tokens - tokens_rate) / max(last_print - t_rate, 1e-9)
                progress.write(
                    f"\rstep {st.step}/{cfg.max_steps}  val {st.last_val_loss:.4f} "
                    f"({st.last_val_bpb:.3f} bpb)  {rate:,.0f} tok/s "
                )
                progress.flush()
            if st.step % cfg.checkpoint_interval == 0:
                try:
                    last_ckpt = self.checkpoint()
                except OSError as exc:
                    if self.on_checkpoint_error is None:
                        raise
                    self.on_checkpoint_error(exc)  # the daemon reports it and trains on
        if progress is not None:
            progress.write("\n")
        if last_ckpt is None or last_ckpt.name != f"step-{st.step:08d}":
            last_ckpt = self.checkpoint()
        return TrainResult(
            st.step,
            st.tokens,
            st.last_val_loss,
            last_train_loss,
            st.last_val_bpb,
            last_train_bpb,
            reached,
            last_ckpt,
        )


def _lock_dir(directory: Path) -> TextIO:
    """An exclusive lock on DIR/.lock for as long as the returned file stays open: two
    trainers in one directory would overwrite each other's checkpoints."""
    f = (directory / ".lock").open("a+", encoding="utf-8")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise TrainingError(f"{directory} is in use by another crystalline process") from None
    return f


_SAME_RUN_KEYS = (
    "embed_dim", "num_layers", "num_heads", "seq_len", "seed", "batch_size", "init",
    "mlp", "head", "optimizer",
)  # fmt: skip


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
