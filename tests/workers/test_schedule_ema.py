"""The schedule of a run that never ends and the moving average of the weights it serves:
the learning-rate math, the EMA against a direct computation, the EMA of the real engines
(one process and worker processes), checkpoints that store it, a resume after SIGKILL that is
bit-exact with it, and checkpoints written before it that keep loading."""

from __future__ import annotations

import dataclasses
import logging
import math
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from _wait import until

from crystalline.tokens.windows import batch_for_step
from crystalline.workers.checkpoint import list_checkpoints, load_latest, save_checkpoint
from crystalline.workers.ema import decay_at, ema_step
from crystalline.workers.engine import EngineSettings, LocalEngine, ProcessEngine, StepEngine
from crystalline.workers.model import GPT, init_params
from crystalline.workers.model_config import ModelConfig
from crystalline.workers.optimizer import learning_rate
from crystalline.workers.optimizer_config import AdamWConfig
from crystalline.workers.sampling import sample
from crystalline.workers.train_config import TrainConfig
from crystalline.workers.trainer import Trainer

TINY = {"embed_dim": 32, "num_layers": 2, "num_heads": 2, "seq_len": 16, "batch_size": 4,
        "learning_rate": 1e-2, "min_lr": 1e-3, "warmup_steps": 5, "eval_windows": 16}  # fmt: skip


# ---- the schedule -------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["cosine", "stable"])
def test_warmup_is_linear_from_one_step_of_the_peak(schedule: str) -> None:
    cfg = AdamWConfig(learning_rate=0.02, min_lr=0.001, warmup_steps=10, decay_steps=100, schedule=schedule)
    assert [learning_rate(s, cfg) for s in range(10)] == pytest.approx([0.002 * (s + 1) for s in range(10)])


def test_stable_holds_the_peak_for_ever() -> None:
    cfg = AdamWConfig(learning_rate=0.02, min_lr=0.001, warmup_steps=10, decay_steps=100, schedule="stable")
    for step in (10, 11, 99, 100, 10**6, 1 << 62):
        assert learning_rate(step, cfg) == 0.02


def test_cosine_is_unchanged() -> None:
    """The finite cosine of `crystalline train`: peak after warmup, the mean halfway, the floor at
    the end and after it, and the closed form in between."""
    cfg = AdamWConfig(learning_rate=0.02, min_lr=0.002, warmup_steps=10, decay_steps=110)
    assert cfg.schedule == "cosine" and TrainConfig().schedule == "cosine"
    assert learning_rate(10, cfg) == pytest.approx(0.02)
    assert learning_rate(60, cfg) == pytest.approx(0.011)
    assert learning_rate(110, cfg) == learning_rate(10**9, cfg) == 0.002
    for step in (23, 47, 91):
        expected = 0.002 + 0.5 * (1 + math.cos(math.pi * (step - 10) / 100)) * 0.018
        assert learning_rate(step, cfg) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("schedule", "wsd", "schedule must be cosine or stable"),
        ("ema_decay", 1.0, "ema-decay"),
        ("ema_decay", -0.1, "ema-decay"),
    ],
)
def test_bad_schedule_or_decay_is_one_clear_error(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TrainConfig(), **{field: value}).validate()


# ---- the moving average ---------------------------------------------------------------------------


def test_decay_ramps_up_to_the_configured_one() -> None:
    assert decay_at(0, 0.999) == pytest.approx(0.1)
    assert decay_at(10, 0.999) == pytest.approx(11 / 20)
    assert decay_at(10**6, 0.999) == 0.999
    assert [decay_at(s, 0.5) for s in (0, 1, 8, 9, 100)] == [0.1, 2 / 11, 0.5, 0.5, 0.5]


def test_ema_equals_the_weighted_sum_of_the_history() -> None:
    """ema_T = prod(d) p_0 + sum_k (1 - d_k) prod_{j>k} d_j p_{k+1}, computed directly in float64."""
    rng = np.random.default_rng(0)
    history = rng.normal(size=(60, 257)).astype(np.float32)
    ema, scratch = history[0].copy(), np.empty(257, np.float32)
    for t in range(59):
        ema_step(ema, history[t + 1], decay_at(t, 0.9), ema, scratch)
    d = np.array([decay_at(t, 0.9) for t in range(59)])
    weights = np.empty(60)
    weights[0] = np.prod(d)
    for k in range(59):
        weights[k + 1] = (1 - d[k]) * np.prod(d[k + 1 :])
    assert weights.sum() == pytest.approx(1.0)
    direct = weights @ history.astype(np.float64)
    np.testing.assert_allclose(ema, direct, rtol=1e-5, atol=1e-6)


def test_ema_of_slices_is_bitwise_the_ema_of_the_whole() -> None:
    rng = np.random.default_rng(1)
    ema, params = rng.normal(size=1000).astype(np.float32), rng.normal(size=1000).astype(np.float32)
    whole, scratch = np.empty_like(ema), np.empty_like(ema)
    ema_step(ema, params, 0.97, whole, scratch)
    parts = np.empty_like(ema)
    for lo, hi in ((0, 16), (16, 500), (500, 1000)):
        ema_step(ema[lo:hi], params[lo:hi], 0.97, parts[lo:hi], scratch[: hi - lo])
    assert np.array_equal(whole, parts)


CFG = ModelConfig(vocab_size=256, seq_len=16, embed_dim=32, num_layers=2, num_heads=2)


def _engine(workers: int, adamw: AdamWConfig) -> StepEngine:
    tokens = np.random.default_rng(5).integers(0, 256, 20_000).astype(np.uint16)

    def source(step: int) -> np.ndarray:
        return batch_for_step(tokens, 0, step, 6, CFG.seq_len)

    model = GPT(CFG)
    if workers == 0:
        return LocalEngine(model, adamw, source)
    return ProcessEngine(model, adamw, source, 6, EngineSettings(workers, "ema" + uuid.uuid4().hex[:8]))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [0, 3], ids=["one-process", "3-workers"])
@pytest.mark.parametrize("clip", [1.0, 1e-3], ids=["speculated", "clipped-and-redone"])
def test_engine_ema_is_the_ema_of_its_published_weights(workers: int, clip: float) -> None:
    """Each step's average, computed by the engine (by the slices' owners in worker processes,
    after a redone update when clipping applies), is bitwise ema_step over the whole published
    vector, starting from the loaded weights."""
    adamw = AdamWConfig(learning_rate=1e-2, warmup_steps=2, ema_decay=0.9, grad_clip=clip, schedule="stable")
    engine = _engine(workers, adamw)
    try:
        params = init_params(GPT(CFG).table, 3)
        engine.load_state(params, np.zeros_like(params), np.zeros_like(params))
        ema = engine.ema()
        assert ema is not None and np.array_equal(ema, params)
        expected, scratch = params.copy(), np.empty_like(params)
        for step in range(6):
            assert engine.step(step, learning_rate(step, adamw)).applied
            ema_step(expected, engine.params(), decay_at(step, 0.9), expected, scratch)
            got = engine.ema()
            assert got is not None and np.array_equal(got, expected), step
        assert not np.array_equal(expected, engine.params())
    finally:
        engine.close()


def test_without_a_decay_there_is_no_average() -> None:
    engine = _engine(0, AdamWConfig())
    params = init_params(GPT(CFG).table, 3)
    engine.load_state(params, np.zeros_like(params), np.zeros_like(params))
    engine.step(0, 1e-3)
    assert engine.ema() is None


# ---- checkpoints and resume -------------------------------------------------------------------------


def test_checkpoints_store_the_average_and_evaluation_serves_it(
    tmp_path: Path, corpus_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = TrainConfig(**TINY, max_steps=12, eval_interval=6, checkpoint_interval=6, ema_decay=0.9,
                      schedule="stable")  # fmt: skip
    trainer = Trainer([corpus_file], tmp_path / "ck", cfg)
    trainer.run()
    ckpt = load_latest(tmp_path / "ck")
    assert ckpt is not None and ckpt.step == 12
    assert ckpt.arrays["ema"].shape == ckpt.arrays["params"].shape
    assert not np.array_equal(ckpt.arrays["ema"], ckpt.arrays["params"])
    from crystalline.workers.trainer import evaluate

    windows = trainer.data.val_windows()
    assert ckpt.state["val_loss"] == evaluate(trainer.model, ckpt.arrays["ema"], windows)
    assert ckpt.state["val_loss_raw"] == evaluate(trainer.model, ckpt.arrays["params"], windows)
    # `crystalline generate` samples from the average too
    from crystalline.daemon.cli import main

    assert main(["generate", "--checkpoint-dir", str(tmp_path / "ck"), "-p", "the", "-n", "12",
                 "--temperature", "0"]) == 0  # fmt: skip
    ids = sample(trainer.model, ckpt.arrays["ema"], trainer.tokenizer.encode("the"), 12, temperature=0)
    assert capsys.readouterr().out == "the" + trainer.tokenizer.decode(ids) + "\n"


@pytest.mark.timeout(300)
def test_resume_after_sigkill_is_bit_exact_with_the_average(
    tmp_path: Path, corpus_file: Path, cli_env: dict[str, str]
) -> None:
    """`crystalline train` with 2 worker processes, killed with SIGKILL once a checkpoint is on
    disk, then resumed: the last checkpoint's weights, moments and average equal an
    uninterrupted run's, bit for bit."""
    options = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    options += ["--max-steps=24", "--eval-interval=4", "--checkpoint-interval=4", "--workers=2",
                "--ema-decay=0.9", "--schedule=stable"]  # fmt: skip

    def train(ckdir: Path, *extra: str) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "crystalline.daemon.cli", "train", str(corpus_file),
               "--checkpoint-dir", str(ckdir), *options, *extra]  # fmt: skip
        return subprocess.Popen(cmd, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    straight = tmp_path / "straight"
    assert train(straight).wait(timeout=240) == 0
    killed = tmp_path / "killed"
    proc = train(killed)
    until(
        lambda: (killed.exists() and list_checkpoints(killed)) or proc.poll() is not None,
        "no checkpoint",
        240,
        0.05,
    )
    proc.kill()
    proc.wait(timeout=30)
    first = load_latest(killed)
    assert first is not None and first.step < 24, "the run ended before it could be killed"
    resumed = train(killed, "--resume")
    assert resumed.wait(timeout=240) == 0, resumed.stderr.read().decode() if resumed.stderr else ""
    a, b = load_latest(straight), load_latest(killed)
    assert a is not None and b is not None and a.step == b.step == 24
    for name in ("params", "adam_m", "adam_v", "ema"):
        assert np.array_equal(a.arrays[name], b.arrays[name]), name
    assert a.state["val_loss"] == b.state["val_loss"]


@pytest.mark.timeout(120)
def test_a_checkpoint_without_an_average_loads_and_starts_it_from_the_weights(
    tmp_path: Path, corpus_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A checkpoint written before the EMA existed (no ``ema`` array, none of the new keys in its
    state) resumes with one: the average starts at its weights and the log says so."""
    old = TrainConfig(**TINY, max_steps=6, eval_interval=6, checkpoint_interval=6, workers=2)
    Trainer([corpus_file], tmp_path / "new", old).run()
    before = load_latest(tmp_path / "new")
    assert before is not None and "ema" not in before.arrays
    for key in ("val_bpb", "val_loss_raw", "val_bpb_raw", "pending_bpb"):
        del before.state[key]
    for key in ("schedule", "ema_decay"):
        del before.state["config"][key]
    before.state["pending_losses"] = [3.25, 3.0]  # written between two evals
    save_checkpoint(tmp_path / "ck", before)  # as the code before this change wrote it
    new = dataclasses.replace(old, max_steps=8, ema_decay=0.99, schedule="stable")
    with caplog.at_level(logging.INFO, logger="crystalline.workers.trainer"):
        trainer = Trainer([corpus_file], tmp_path / "ck", new, resume=True)
    try:
        ema = trainer.engine.ema()
        assert ema is not None and np.array_equal(ema, before.arrays["params"])
        # two batch losses since the last eval, and no bits per byte recorded for them
        assert len(trainer.state.pending_losses) == len(trainer.state.pending_bpb) == 2
        assert any("no moving average" in r.getMessage() for r in caplog.records)
    finally:
        trainer.close()
    trainer = Trainer([corpus_file], tmp_path / "ck", new, resume=True)
    assert trainer.run().steps == 8
    after = load_latest(tmp_path / "ck")
    assert after is not None and "ema" in after.arrays
