"""Gradient accumulation ([train] micro-batch, workers/micro_batch.py): k micro-batches of b
give the gradient of one batch of k x b, through the one-process engine and the worker
processes, and a run with micro-batches resumes bit-exactly."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from crystalline.workers.checkpoint import load_latest
from crystalline.workers.micro_batch import accumulated_grad
from crystalline.workers.model import GPT, init_params
from crystalline.workers.model_config import ModelConfig
from crystalline.workers.train_config import TrainConfig
from crystalline.workers.trainer import Trainer

SMALL = ModelConfig(vocab_size=256, seq_len=16, embed_dim=32, num_layers=2, num_heads=2)
TINY = {"embed_dim": 32, "num_layers": 2, "num_heads": 2, "seq_len": 16, "batch_size": 8,
        "learning_rate": 1e-2, "warmup_steps": 5, "eval_windows": 16}  # fmt: skip


def windows(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(rows, SMALL.seq_len + 1), dtype=np.int64)


@pytest.mark.parametrize(("rows", "micro"), [(8, 2), (8, 4), (7, 3), (8, 1)])
def test_micro_batches_give_the_gradient_of_the_whole_batch(rows: int, micro: int) -> None:
    model = GPT(SMALL)
    params = init_params(model.table, 3)
    batch = windows(rows)
    whole = np.empty_like(params)
    loss, tokens = model.loss_and_grad(params, batch, whole)
    parts, scratch = np.full_like(params, np.nan), np.empty_like(params)
    part_loss, part_tokens = accumulated_grad(model, params, batch, parts, scratch, micro)
    assert part_tokens == tokens == rows * SMALL.seq_len
    assert part_loss == pytest.approx(loss, rel=1e-6)
    np.testing.assert_allclose(parts, whole, rtol=1e-4, atol=1e-7)
    assert np.abs(whole).max() > 1e-3  # a real gradient, not zeros on both sides


def test_no_micro_batch_is_one_pass() -> None:
    model = GPT(SMALL)
    params = init_params(model.table, 3)
    batch = windows(4)
    whole, again = np.empty_like(params), np.empty_like(params)
    model.loss_and_grad(params, batch, whole)
    accumulated_grad(model, params, batch, again, None, 0)
    assert np.array_equal(whole, again)
    with pytest.raises(ValueError, match="scratch"):
        accumulated_grad(model, params, batch, again, None, 2)


def train(tmp_path: Path, corpus: Path, name: str, **overrides: object) -> np.ndarray:
    cfg = TrainConfig(**{**TINY, "max_steps": 6, "eval_interval": 6, **overrides})  # type: ignore[arg-type]
    Trainer([corpus], tmp_path / name, cfg).run()
    ckpt = load_latest(tmp_path / name)
    assert ckpt is not None and ckpt.step == 6
    return ckpt.arrays["params"]


@pytest.mark.timeout(180)
def test_engines_with_micro_batches_match_one_pass(tmp_path: Path, corpus_file: Path) -> None:
    one_pass = train(tmp_path, corpus_file, "whole")
    local = train(tmp_path, corpus_file, "local", micro_batch=3)
    processes = train(tmp_path, corpus_file, "workers", micro_batch=1, workers=2)
    start = TrainConfig(**TINY).seed
    assert not np.allclose(one_pass, init_params(GPT(SMALL).table, start), atol=1e-3)  # it moved
    np.testing.assert_allclose(local, one_pass, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(processes, one_pass, rtol=1e-3, atol=1e-5)


class StopAt(Trainer):
    stop_at = 0

    def train_step(self) -> float:
        loss = super().train_step()
        if self.state.step >= self.stop_at:
            self.stop_requested = True
        return loss


@pytest.mark.timeout(180)
@pytest.mark.parametrize("workers", [1, 2])
def test_a_run_with_micro_batches_resumes_bit_exactly(
    tmp_path: Path, corpus_file: Path, workers: int
) -> None:
    cfg = TrainConfig(**{**TINY, "max_steps": 8, "eval_interval": 4, "micro_batch": 3, "workers": workers})  # type: ignore[arg-type]
    Trainer([corpus_file], tmp_path / "straight", cfg).run()
    first = StopAt([corpus_file], tmp_path / "split", cfg)
    first.stop_at = 5
    assert first.run().steps == 5
    Trainer([corpus_file], tmp_path / "split", cfg, resume=True).run()
    a, b = load_latest(tmp_path / "straight"), load_latest(tmp_path / "split")
    assert a is not None and b is not None and a.step == b.step == 8
    for name in ("params", "adam_m", "adam_v"):
        assert np.array_equal(a.arrays[name], b.arrays[name]), name
    assert a.state["config"]["micro_batch"] == 3


def test_a_negative_micro_batch_is_refused() -> None:
    with pytest.raises(ValueError, match="micro-batch must not be negative"):
        dataclasses.replace(TrainConfig(), micro_batch=-1).validate()
