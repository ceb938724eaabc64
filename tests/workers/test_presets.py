"""Model presets (workers/presets.py): resolved through the settings tree under explicit keys,
trained through the engine, and a state directory that keeps what it was trained with."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from crystalline.daemon import config as daemon_config
from crystalline.exit_status import UsageError
from crystalline.settings_tree import Resolved
from crystalline.workers.checkpoint import load_checkpoint, save_checkpoint
from crystalline.workers.model import GPT
from crystalline.workers.presets import PRESETS
from crystalline.workers.train_config import TrainConfig
from crystalline.workers.trainer import Trainer, TrainingError


def parse_run(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    daemon_config.add_arguments(parser)
    return parser.parse_args(argv)


def run_tree(argv: list[str], env: dict[str, str] | None = None) -> Resolved:
    """`crystalline run`'s settings as `crystalline config` resolves them."""
    return daemon_config.resolve_tree(parse_run(argv), env or {})


def source(resolved: Resolved, name: str) -> str:
    return str(resolved.sources[("train", name)])


def test_the_daemon_resolves_small_with_muon(tmp_path: Path) -> None:
    resolved = run_tree(["--state-dir", str(tmp_path)])
    train = resolved.tables["train"]
    assert (train.preset, train.embed_dim, train.num_layers, train.seq_len) == ("small", 128, 4, 64)
    assert (train.optimizer, train.muon_lr, train.tokenizer) == ("muon", 0.02, "bytes")
    assert source(resolved, "preset") == "command"
    assert source(resolved, "embed_dim") == source(resolved, "optimizer") == "preset small"
    assert source(resolved, "learning_rate") == "default"
    report = resolved.report()["train"]
    assert report["num-layers"] == {"value": 4, "source": "preset", "where": "small"}


def test_explicit_keys_override_the_preset(tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text('[train]\npreset = "base"\nnum-layers = 3\n', encoding="utf-8")
    resolved = run_tree(
        ["--state-dir", str(tmp_path), "--config", str(config), "--seq-len", "128"],
        {"CRYSTALLINE_TRAIN_OPTIMIZER": "adamw"},
    )
    train = resolved.tables["train"]
    assert (train.preset, train.embed_dim, train.num_heads) == ("base", 384, 6)
    assert (train.num_layers, train.seq_len, train.optimizer) == (3, 128, "adamw")
    assert source(resolved, "embed_dim") == "preset base"
    assert source(resolved, "num_layers") == f"file {config}"
    assert source(resolved, "seq_len") == "flag --seq-len"
    assert source(resolved, "optimizer") == "env CRYSTALLINE_TRAIN_OPTIMIZER"


def test_an_unknown_preset_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"--preset: \[train\] preset must be one of none, small, base"):
        run_tree(["--state-dir", str(tmp_path), "--preset", "huge"])


def test_crystalline_train_has_no_preset_unless_asked() -> None:
    from crystalline.workers.train_config import settings_tree

    resolved = settings_tree().resolve(argparse.Namespace(), {})
    assert resolved.tables["train"] == TrainConfig()
    asked = settings_tree().resolve(argparse.Namespace(), {"CRYSTALLINE_TRAIN_PRESET": "small"})
    assert asked.tables["train"].optimizer == "muon"


def test_crystalline_train_refuses_the_daemons_learned_vocabulary(tmp_path: Path, corpus_file: Path) -> None:
    with pytest.raises(TrainingError, match="tokenizer 'learned' is the daemon's"):
        Trainer([corpus_file], tmp_path / "ckpt", TrainConfig(preset="base", tokenizer="learned"))
    assert not (tmp_path / "ckpt").exists()


def test_the_base_preset_is_about_ten_million_parameters(tmp_path: Path) -> None:
    train = run_tree(["--state-dir", str(tmp_path), "--preset", "base"]).tables["train"]
    assert (train.tokenizer, train.learned_vocab) == ("learned", 8192)
    settings = daemon_config.resolve(parse_run(["--state-dir", str(tmp_path), "--preset", "base"]), {})
    assert settings.train.tokenizer == str(tmp_path.absolute() / "vocab" / "tokenizer.json")
    model = GPT(train.model_config(train.learned_vocab))
    non_embedding = model.num_params - 8192 * 384 - 256 * 384
    assert 10_000_000 < non_embedding < 11_000_000
    assert 13_000_000 < model.num_params < 14_500_000
    small = run_tree(["--state-dir", str(tmp_path)]).tables["train"]
    assert GPT(small.model_config(256)).num_params < 850_000


def preset_config(tmp_path: Path, argv: list[str], **overrides: Any) -> TrainConfig:
    train = run_tree(["--state-dir", str(tmp_path / "state"), *argv]).tables["train"]
    quick = {"batch_size": 4, "max_steps": 3, "eval_interval": 3, "eval_windows": 8, "workers": 1}
    return dataclasses.replace(train, **{**quick, **overrides})


@pytest.mark.parametrize(
    "argv",
    # base's vocabulary is the daemon's, learned in its state directory (test_learned_vocab.py)
    [
        ["--preset", "small"],
        ["--preset", "base", "--seq-len", "32", "--embed-dim", "96", "--tokenizer", "bytes"],
    ],
    ids=["small", "base-narrow"],
)
def test_presets_train_a_few_steps_through_the_engine(
    tmp_path: Path, corpus_file: Path, argv: list[str]
) -> None:
    config = preset_config(tmp_path, argv)
    trainer = Trainer([corpus_file], tmp_path / "ckpt", config)
    assert trainer.model.config.num_layers == PRESETS[config.preset]["num_layers"]
    result = trainer.run()
    assert result.steps == 3 and result.val_loss < 5.6  # below ln(256): it learned something
    saved = load_checkpoint(result.checkpoint or Path()).state["config"]
    assert (saved["preset"], saved["optimizer"]) == (config.preset, "muon")


def test_a_state_dir_from_before_presets_resumes_as_small_with_adamw(
    tmp_path: Path, corpus_file: Path
) -> None:
    # a checkpoint as the daemon wrote it before presets: its config has no preset, AdamW
    old = preset_config(tmp_path, [], optimizer="adamw", max_steps=2)
    Trainer([corpus_file], tmp_path / "old", old).run()
    ckpt = load_checkpoint(sorted((tmp_path / "old").glob("step-*"))[-1])
    del ckpt.state["config"]["preset"]
    save_checkpoint(tmp_path / "state" / "checkpoints", ckpt)

    resolved = run_tree(["--state-dir", str(tmp_path / "state")])
    train = resolved.tables["train"]
    assert (train.preset, train.optimizer, train.embed_dim) == ("small", "adamw", 128)
    assert source(resolved, "optimizer").startswith("checkpoint ")
    checkpoints = tmp_path / "state" / "checkpoints"
    resumed = dataclasses.replace(train, max_steps=4, eval_interval=4, eval_windows=8, workers=1)
    result = Trainer([corpus_file], checkpoints, resumed, resume=True).run()
    assert result.steps == 4

    # asked for explicitly, another optimizer is refused in one line, the directory untouched
    explicit = run_tree(["--state-dir", str(tmp_path / "state"), "--optimizer", "muon"]).tables["train"]
    with pytest.raises(TrainingError, match="optimizer=adamw, this run asks for muon"):
        Trainer([corpus_file], checkpoints, explicit, resume=True)


def test_a_base_state_dir_stays_base(tmp_path: Path, corpus_file: Path) -> None:
    narrow = ["--preset", "base", "--seq-len", "32", "--embed-dim", "96", "--tokenizer", "bytes"]
    config = preset_config(tmp_path, narrow, max_steps=1)
    Trainer([corpus_file], tmp_path / "state" / "checkpoints", config).run()
    resolved = run_tree(["--state-dir", str(tmp_path / "state")])  # the daemon's default is small
    train = resolved.tables["train"]
    assert (train.preset, train.num_layers, train.embed_dim, train.seq_len) == ("base", 6, 96, 32)
    assert source(resolved, "num_layers").startswith("checkpoint ")


def test_a_moved_base_state_dir_uses_its_own_learned_vocabulary(tmp_path: Path, corpus_file: Path) -> None:
    config = preset_config(tmp_path, ["--tokenizer", "bytes"], max_steps=1)
    Trainer([corpus_file], tmp_path / "scratch", config).run()
    ckpt = load_checkpoint(sorted((tmp_path / "scratch").glob("step-*"))[-1])
    # as a base run saves it: the learned vocabulary as the absolute path it resolved to
    old_vocab = tmp_path / "old" / "state" / "vocab" / "tokenizer.json"
    ckpt.state["config"].update(preset="base", tokenizer=str(old_vocab))
    moved = tmp_path / "moved" / "state"
    save_checkpoint(moved / "checkpoints", ckpt)

    resolved = run_tree(["--state-dir", str(moved)])
    assert resolved.tables["train"].tokenizer == "learned"
    assert source(resolved, "tokenizer").startswith("checkpoint ")
    settings = daemon_config.resolve(parse_run(["--state-dir", str(moved)]))
    assert settings.train.tokenizer == str(moved / "vocab" / "tokenizer.json")  # not the old path
    # a tokenizer file of the user's own is kept as it was saved
    ckpt.state["config"]["tokenizer"] = str(tmp_path / "mine.json")
    save_checkpoint(tmp_path / "other" / "checkpoints", ckpt)
    other = run_tree(["--state-dir", str(tmp_path / "other")])
    assert other.tables["train"].tokenizer == str(tmp_path / "mine.json")
