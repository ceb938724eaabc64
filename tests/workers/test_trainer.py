"""Tests for crystalline.workers.trainer: learning, exact resume, metrics and checkpoints."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crystalline.tokens.tokenizer import ByteTokenizer, load_tokenizer, tokenizer_from_json
from crystalline.workers.checkpoint import load_checkpoint, load_latest
from crystalline.workers.model import GPT
from crystalline.workers.model_config import ModelConfig
from crystalline.workers.train_config import TrainConfig
from crystalline.workers.trainer import Trainer, TrainingError

# A ~34k-parameter model: a few hundred steps take well under a second.
TINY = {
    "embed_dim": 32,
    "num_layers": 2,
    "num_heads": 2,
    "seq_len": 16,
    "batch_size": 4,
    "learning_rate": 1e-2,
    "min_lr": 1e-3,
    "warmup_steps": 20,
    "eval_windows": 32,
}


def tiny_config(**overrides: Any) -> TrainConfig:
    return TrainConfig(**{**TINY, **overrides})


def read_metrics(checkpoint_dir: Path) -> list[dict[str, Any]]:
    lines = (checkpoint_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def evals(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["event"] == "eval"]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes), to prove a directory was not touched."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


class StopAtStep(Trainer):
    """Sets ``stop_requested`` once ``stop_at`` steps are done, as the CLI's signal handler would."""

    stop_at = 0

    def train_step(self) -> float:
        loss = super().train_step()
        if self.state.step >= self.stop_at:
            self.stop_requested = True
        return loss


@pytest.fixture(scope="module")
def trained_run(corpus_file: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """One 300-step run shared by the read-only tests below: (checkpoint dir, TrainResult)."""
    ckdir = tmp_path_factory.mktemp("trained") / "ck"
    cfg = tiny_config(max_steps=300, eval_interval=50, checkpoint_interval=100)
    result = Trainer([corpus_file], ckdir, cfg).run()
    return ckdir, result


# ---- learning ---------------------------------------------------------------------------------


def test_initial_val_loss_is_ln_vocab(trained_run: tuple[Path, Any]) -> None:
    ckdir, _ = trained_run
    first = evals(read_metrics(ckdir))[0]
    assert first["step"] == 0
    assert first["val_loss"] == pytest.approx(math.log(256), abs=0.1)


def test_training_drives_validation_loss_down(trained_run: tuple[Path, Any]) -> None:
    ckdir, result = trained_run
    records = evals(read_metrics(ckdir))
    first, last = records[0]["val_loss"], records[-1]["val_loss"]
    assert result.steps == 300
    assert last < 0.5 * first
    assert last < math.log(256) - 2.0
    assert result.val_loss == pytest.approx(last)


# ---- metrics.jsonl ----------------------------------------------------------------------------


def test_start_record_has_param_count_and_config(trained_run: tuple[Path, Any]) -> None:
    ckdir, _ = trained_run
    start = read_metrics(ckdir)[0]
    cfg = tiny_config(max_steps=300, eval_interval=50, checkpoint_interval=100)
    expected_params = GPT(cfg.model_config(256)).num_params
    # independent count: per layer 12 d^2 + 13 d, plus wte, wpe and the final LayerNorm
    d, layers = 32, 2
    assert expected_params == layers * (12 * d * d + 13 * d) + 256 * d + 16 * d + 2 * d
    assert start["event"] == "start"
    assert start["params"] == expected_params
    assert start["config"] == cfg.to_dict()
    assert start["resumed_from"] == 0


def test_eval_records_have_fields_and_token_count(trained_run: tuple[Path, Any]) -> None:
    ckdir, _ = trained_run
    records = evals(read_metrics(ckdir))
    assert [r["step"] for r in records] == [0, 50, 100, 150, 200, 250, 300]
    for r in records:
        assert {"step", "tokens", "elapsed_s", "train_loss", "val_loss", "lr"} <= r.keys()
        assert r["tokens"] == r["step"] * 4 * 16
        assert r["elapsed_s"] >= 0
        assert math.isfinite(r["val_loss"])
        assert 0 < r["lr"] <= 1e-2
    assert records[0]["train_loss"] is None  # nothing trained yet at step 0
    assert all(math.isfinite(r["train_loss"]) for r in records[1:])


def test_every_metrics_line_is_strict_json(trained_run: tuple[Path, Any]) -> None:
    ckdir, _ = trained_run
    for line in (ckdir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


# ---- checkpoints ------------------------------------------------------------------------------


def test_checkpoints_written_at_interval_and_pruned(tmp_path: Path, corpus_file: Path) -> None:
    ckdir = tmp_path / "ck"
    cfg = tiny_config(max_steps=50, eval_interval=10, checkpoint_interval=10, keep_checkpoints=2)
    Trainer([corpus_file], ckdir, cfg).run()
    assert sorted(p.name for p in ckdir.glob("step-*")) == ["step-00000040", "step-00000050"]


def test_checkpoint_contents(trained_run: tuple[Path, Any]) -> None:
    _, result = trained_run
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt.step == 300
    n = GPT(ModelConfig(**ckpt.state["model"])).num_params
    for name in ("params", "adam_m", "adam_v"):
        assert ckpt.arrays[name].shape == (n,)
        assert ckpt.arrays[name].dtype == np.float32
    assert np.all(ckpt.arrays["adam_v"] >= 0)
    state = ckpt.state
    assert state["step"] == 300
    assert state["tokens"] == 300 * 4 * 16
    assert state["rng"]["batch_seed"] == TrainConfig().seed
    assert state["rng"]["next_step"] == 300
    assert state["model"] == {
        "vocab_size": 256,
        "seq_len": 16,
        "embed_dim": 32,
        "num_layers": 2,
        "num_heads": 2,
        "mlp_ratio": 4,
        "mlp": "gelu",
        "head": "tied",
    }
    # a checkpoint from before the options (no such keys) describes the same model
    older = {k: v for k, v in state["model"].items() if k not in ("mlp", "head")}
    assert ModelConfig(**older) == ModelConfig(**state["model"])
    assert state["config"]["embed_dim"] == 32
    assert state["config"]["max_steps"] == 300
    assert tokenizer_from_json(ckpt.tokenizer_json).to_json() == ByteTokenizer().to_json()


def test_checkpoint_stores_bpe_tokenizer(tmp_path: Path, corpus_file: Path, bpe_tokenizer_file: Path) -> None:
    ckdir = tmp_path / "ck"
    cfg = tiny_config(tokenizer=str(bpe_tokenizer_file), max_steps=2, eval_interval=2)
    Trainer([corpus_file], ckdir, cfg).run()
    ckpt = load_latest(ckdir)
    assert ckpt is not None
    original = load_tokenizer(str(bpe_tokenizer_file))
    restored = tokenizer_from_json(ckpt.tokenizer_json)
    assert restored.to_json() == original.to_json()
    assert ckpt.state["model"]["vocab_size"] == original.vocab_size
    text = "The cat sat on the mat."
    assert np.array_equal(restored.encode(text), original.encode(text))


# ---- resume -----------------------------------------------------------------------------------


def _split_run(tmp_path: Path, corpus: Path, cfg: TrainConfig, stop_at: int) -> tuple[Path, Path, Trainer]:
    """The same config run uninterrupted (dir a) and stopped at ``stop_at`` then resumed (dir b)."""
    a, b = tmp_path / "a", tmp_path / "b"
    Trainer([corpus], a, cfg).run()
    first = StopAtStep([corpus], b, cfg)
    first.stop_at = stop_at
    assert first.run().steps == stop_at
    second = Trainer([corpus], b, cfg, resume=True)
    assert second.state.step == stop_at
    second.run()
    return a, b, second


RESUME_CFG = {"max_steps": 80, "eval_interval": 10, "checkpoint_interval": 25}


@pytest.mark.parametrize("stop_at", [40, 37], ids=["on-eval-step", "between-evals"])
def test_resume_gives_bit_identical_state(tmp_path: Path, corpus_file: Path, stop_at: int) -> None:
    a, b, _ = _split_run(tmp_path, corpus_file, tiny_config(**RESUME_CFG), stop_at)
    ca, cb = load_latest(a), load_latest(b)
    assert ca is not None and cb is not None
    assert ca.step == cb.step == 80
    assert ca.state["tokens"] == cb.state["tokens"] == 80 * 4 * 16
    for name in ("params", "adam_m", "adam_v"):
        assert np.array_equal(ca.arrays[name], cb.arrays[name]), name


SPEEDRUN = {"mlp": "relu2", "head": "untied", "optimizer": "muon", "muon_lr": 0.02}


@pytest.mark.parametrize("workers", [1, 3])
def test_resume_with_the_speedrun_recipe_is_bit_exact(
    tmp_path: Path, corpus_file: Path, workers: int
) -> None:
    """Muon's momentum lives in adam_m (its adam_v stays zero): the checkpoint format is unchanged."""
    cfg = tiny_config(**{**RESUME_CFG, "max_steps": 30, **SPEEDRUN, "workers": workers})
    a, b, _ = _split_run(tmp_path, corpus_file, cfg, 17)
    ca, cb = load_latest(a), load_latest(b)
    assert ca is not None and cb is not None and ca.step == cb.step == 30
    for name in ("params", "adam_m", "adam_v"):
        assert np.array_equal(ca.arrays[name], cb.arrays[name]), name
    assert ca.state["model"]["head"] == "untied" and ca.state["config"]["optimizer"] == "muon"
    first = evals(read_metrics(a))
    assert first[-1]["val_loss"] < first[0]["val_loss"] - 0.5


def test_resume_metrics_equal_at_shared_steps(tmp_path: Path, corpus_file: Path) -> None:
    a, b, _ = _split_run(tmp_path, corpus_file, tiny_config(**RESUME_CFG), 40)
    ea = {r["step"]: r for r in evals(read_metrics(a))}
    eb = {r["step"]: r for r in evals(read_metrics(b))}
    assert sorted(ea) == sorted(eb) == list(range(0, 81, 10))
    for step in ea:
        for key in ("tokens", "train_loss", "val_loss", "lr"):
            assert ea[step][key] == eb[step][key], (step, key)


def test_resume_between_evals_reports_same_train_loss(tmp_path: Path, corpus_file: Path) -> None:
    a, b, _ = _split_run(tmp_path, corpus_file, tiny_config(**RESUME_CFG), 37)
    ea = {r["step"]: r for r in evals(read_metrics(a))}
    eb = {r["step"]: r for r in evals(read_metrics(b))}
    assert eb[40]["val_loss"] == ea[40]["val_loss"]  # the model is the same...
    assert eb[40]["train_loss"] == ea[40]["train_loss"]  # ...and so should the interval's mean be


def test_resume_appends_start_record_with_resumed_from(tmp_path: Path, corpus_file: Path) -> None:
    _, b, _ = _split_run(tmp_path, corpus_file, tiny_config(**RESUME_CFG), 40)
    records = read_metrics(b)
    starts = [r for r in records if r["event"] == "start"]
    assert [s["resumed_from"] for s in starts] == [0, 40]
    steps = [r["step"] for r in evals(records)]
    assert steps == sorted(set(steps))  # no eval repeated by the resumed run


def test_existing_checkpoints_without_resume_raise_and_leave_dir_untouched(
    tmp_path: Path, corpus_file: Path
) -> None:
    ckdir = tmp_path / "ck"
    cfg = tiny_config(max_steps=5, eval_interval=5)
    Trainer([corpus_file], ckdir, cfg).run()
    before = snapshot(ckdir)
    with pytest.raises(TrainingError, match="--resume"):
        Trainer([corpus_file], ckdir, cfg)
    assert snapshot(ckdir) == before


@pytest.mark.parametrize("make_dir", [True, False], ids=["empty-dir", "missing-dir"])
def test_resume_without_checkpoint_raises(tmp_path: Path, corpus_file: Path, make_dir: bool) -> None:
    ckdir = tmp_path / "ck"
    if make_dir:
        ckdir.mkdir()
    with pytest.raises(TrainingError, match="no checkpoint"):
        Trainer([corpus_file], ckdir, tiny_config(max_steps=5), resume=True)


@pytest.mark.parametrize(
    ("field", "value", "option"),
    [
        ("embed_dim", 16, "embed-dim"),
        ("seed", 7, "seed"),
        ("num_layers", 1, "num-layers"),
        ("seq_len", 8, "seq-len"),
        ("batch_size", 3, "batch-size"),
        ("mlp", "relu2", "mlp"),
        ("head", "untied", "head"),
        ("optimizer", "muon", "optimizer"),
    ],
)
def test_resume_with_different_run_option_raises_naming_it(
    tmp_path: Path, corpus_file: Path, field: str, value: int | str, option: str
) -> None:
    ckdir = tmp_path / "ck"
    cfg = tiny_config(max_steps=3, eval_interval=3)
    Trainer([corpus_file], ckdir, cfg).run()
    before = snapshot(ckdir)
    with pytest.raises(TrainingError, match=option):
        Trainer([corpus_file], ckdir, dataclasses.replace(cfg, **{field: value}), resume=True)
    assert snapshot(ckdir) == before


def test_resume_with_different_tokenizer_raises(
    tmp_path: Path, corpus_file: Path, bpe_tokenizer_file: Path
) -> None:
    ckdir = tmp_path / "ck"
    cfg = tiny_config(max_steps=3, eval_interval=3)
    Trainer([corpus_file], ckdir, cfg).run()
    with pytest.raises(TrainingError, match="tokenizer"):
        Trainer(
            [corpus_file], ckdir, dataclasses.replace(cfg, tokenizer=str(bpe_tokenizer_file)), resume=True
        )


def test_resume_falls_back_past_corrupt_newest_checkpoint(
    tmp_path: Path, corpus_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ckdir = tmp_path / "ck"
    cfg = tiny_config(max_steps=20, eval_interval=10, checkpoint_interval=10)
    Trainer([corpus_file], ckdir, cfg).run()
    previous = load_checkpoint(ckdir / "step-00000010")
    newest = ckdir / "step-00000020" / "params.npy"
    newest.write_bytes(newest.read_bytes()[:-100])  # truncated
    with caplog.at_level(logging.WARNING):
        trainer = Trainer([corpus_file], ckdir, cfg, resume=True)
    assert trainer.state.step == 10
    assert np.array_equal(trainer.engine.params(), previous.arrays["params"])
    trainer.close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("step-00000020" in r.getMessage() for r in warnings)


def rewrite_state(ckpt: Path, **changes: Any) -> None:
    """Change entries of a checkpoint's state.json and enter its new size and sha256 in the
    manifest, as a hand edit or another version would leave it: the checkpoint stays intact."""
    state = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    data = json.dumps({**state, **changes}).encode()
    (ckpt / "state.json").write_bytes(data)
    manifest = json.loads((ckpt / "manifest.json").read_text(encoding="utf-8"))
    manifest["files"]["state.json"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ckpt / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cluster", [["lineage", 5], "lineage", 7, None])
def test_resume_with_a_cluster_entry_that_is_not_an_object_raises_naming_the_checkpoint(
    tmp_path: Path, corpus_file: Path, cluster: Any
) -> None:
    """A ``cluster`` entry in state.json that is no object (a list, a string, a number, null)
    fails the start of a --cluster trainer in one line naming the checkpoint, not in a
    traceback; the checkpoint dir is left as it was."""
    pytest.importorskip("torch")
    from test_cluster_member import hosted_members, on_loopback

    ckdir = tmp_path / "ck"
    cfg = tiny_config(max_steps=3, eval_interval=3, workers=1)
    Trainer([corpus_file], ckdir, cfg).run()
    rewrite_state(ckdir / "step-00000003", cluster=cluster)
    latest = load_latest(ckdir)
    assert latest is not None and latest.state["cluster"] == cluster
    before = snapshot(ckdir)
    member = hosted_members(on_loopback(1, 1, 1, 2.0))[0]
    try:
        with pytest.raises(TrainingError, match="step-00000003: the checkpoint's cluster history") as caught:
            Trainer([corpus_file], ckdir, cfg, resume=True, exchange=member)
    finally:
        member.close()
    assert "\n" not in str(caught.value)
    assert snapshot(ckdir) == before


# ---- stopping ---------------------------------------------------------------------------------


def test_target_val_loss_stops_early(tmp_path: Path, corpus_file: Path) -> None:
    ckdir = tmp_path / "ck"
    cfg = tiny_config(max_steps=300, eval_interval=10, target_val_loss=3.0)
    result = Trainer([corpus_file], ckdir, cfg).run()
    assert result.reached_target is True
    assert result.steps < 300
    last = evals(read_metrics(ckdir))[-1]
    assert last["step"] == result.steps
    assert last["val_loss"] <= 3.0
    ckpt = load_latest(ckdir)
    assert ckpt is not None and ckpt.step == result.steps


def test_no_target_runs_to_max_steps(tmp_path: Path, corpus_file: Path) -> None:
    result = Trainer([corpus_file], tmp_path / "ck", tiny_config(max_steps=12, eval_interval=5)).run()
    assert result.steps == 12
    assert result.reached_target is False


def test_stop_requested_before_run_returns_with_checkpoint(tmp_path: Path, corpus_file: Path) -> None:
    ckdir = tmp_path / "ck"
    trainer = Trainer([corpus_file], ckdir, tiny_config(max_steps=1000))
    trainer.stop_requested = True
    result = trainer.run()
    assert result.steps <= 1
    assert result.checkpoint is not None and result.checkpoint.is_dir()
    ckpt = load_latest(ckdir)
    assert ckpt is not None and ckpt.step == result.steps
    assert ckpt.state["tokens"] == result.tokens


def test_stop_requested_mid_run_checkpoints_last_completed_step(tmp_path: Path, corpus_file: Path) -> None:
    ckdir = tmp_path / "ck"
    trainer = StopAtStep([corpus_file], ckdir, tiny_config(max_steps=1000, checkpoint_interval=10))
    trainer.stop_at = 13
    result = trainer.run()
    assert result.steps == 13
    ckpt = load_latest(ckdir)
    assert ckpt is not None and ckpt.step == 13
    assert ckpt.state["tokens"] == 13 * 4 * 16


def test_too_little_text_for_seq_len_raises(tmp_path: Path) -> None:
    small = tmp_path / "small.txt"
    small.write_text("tiny text\n", encoding="utf-8")
    with pytest.raises(TrainingError, match="seq-len"):
        Trainer([small], tmp_path / "ck", tiny_config(max_steps=5))
    assert not (tmp_path / "ck").exists()


@pytest.mark.timeout(120)
def test_resume_with_worker_processes_is_exact(tmp_path: Path, corpus_file: Path) -> None:
    """Checkpoints from the engine have the one-process format and resume bit-exactly."""
    cfg = tiny_config(max_steps=12, eval_interval=4, checkpoint_interval=4, workers=3)
    straight = tmp_path / "straight"
    Trainer([corpus_file], straight, cfg).run()
    split = tmp_path / "split"
    first = StopAtStep([corpus_file], split, cfg)
    first.stop_at = 6
    first.run()
    Trainer([corpus_file], split, cfg, resume=True).run()
    a, b = load_latest(straight), load_latest(split)
    assert a is not None and b is not None and a.step == b.step == 12
    for name in ("params", "adam_m", "adam_v"):
        assert np.array_equal(a.arrays[name], b.arrays[name]), name
    # and the one-process trainer can resume an engine checkpoint
    one = Trainer([corpus_file], split, dataclasses.replace(cfg, workers=1, max_steps=14), resume=True)
    assert one.run().steps == 14


@pytest.mark.timeout(120)
def test_a_run_that_cannot_open_its_metrics_file_still_stops_its_workers(
    tmp_path: Path, corpus_file: Path
) -> None:
    """The checkpoint directory removed under a trainer (a state directory deleted, a disk
    gone): run() fails, and its worker processes are stopped all the same; their ZeroMQ sockets
    closed, so the caller's context can end."""
    cfg = tiny_config(max_steps=4, workers=2)
    ckdir = tmp_path / "ck"
    trainer = Trainer([corpus_file], ckdir, cfg)
    procs = [h.proc for h in trainer.engine.workers]
    assert procs and all(p is not None and p.poll() is None for p in procs)
    shutil.rmtree(ckdir)
    with pytest.raises(OSError):
        trainer.run()
    assert all(p is not None and p.poll() is not None for p in procs)
