"""Tests for crystalline.workers.checkpoint: durability, verification and fallback."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from crystalline.workers.checkpoint import (
    Checkpoint,
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    load_latest,
    save_checkpoint,
)

LOGGER = "crystalline.workers.checkpoint"


def make_ckpt(step: int, seed: int = 0) -> Checkpoint:
    rng = np.random.default_rng(seed + step)
    return Checkpoint(
        step=step,
        arrays={
            "params": rng.standard_normal(1000).astype(np.float32),
            "adam_m": rng.standard_normal((7, 13)),
            "adam_v": np.asfortranarray(rng.standard_normal((5, 3)).astype(np.float32)),
            "token_ids": rng.integers(-(2**62), 2**62, size=(4, 9), dtype=np.int64),
            "mask": rng.integers(0, 2, size=17).astype(np.uint8),
            "scalar": np.array(3.5, dtype=np.float64),
            "empty": np.zeros((0, 4), dtype=np.int32),
        },
        state={
            "step": step,
            "tokens_seen": step * 4096,
            "rng": rng.bit_generator.state,
            "model": {"d_model": 64, "n_layers": 2, "vocab": 512},
            "train": {"lr": 3e-4, "betas": [0.9, 0.95]},
            "note": "ünïcödé ✓",
        },
        tokenizer_json=json.dumps({"model": {"type": "BPE", "vocab": {"a": 0, "é": 1}}}),
    )


def assert_same(a: Checkpoint, b: Checkpoint) -> None:
    assert a.step == b.step
    assert a.state == b.state
    assert a.tokenizer_json == b.tokenizer_json
    assert sorted(a.arrays) == sorted(b.arrays)
    for name, arr in a.arrays.items():
        got = b.arrays[name]
        assert got.dtype == arr.dtype, name
        assert got.shape == arr.shape, name
        assert np.array_equal(got, arr), name
        assert got.tobytes() == arr.tobytes(), name  # bit-exact


def step_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("step-"))


def test_round_trip_is_bit_exact(tmp_path: Path) -> None:
    ckpt = make_ckpt(300)
    path = save_checkpoint(tmp_path / "ckpts", ckpt)
    assert path == tmp_path / "ckpts" / "step-00000300"
    assert ckpt.path == path
    assert sorted(p.name for p in path.iterdir()) == sorted(
        [f"{n}.npy" for n in ckpt.arrays] + ["state.json", "tokenizer.json", "manifest.json"]
    )
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == 1 and manifest["step"] == 300
    assert (path / "tokenizer.json").read_text(encoding="utf-8") == ckpt.tokenizer_json

    loaded = load_checkpoint(path)
    assert loaded.path == path
    assert_same(ckpt, loaded)
    latest = load_latest(tmp_path / "ckpts")
    assert latest is not None
    assert_same(ckpt, latest)


def test_keep_last_k_prunes_oldest(tmp_path: Path) -> None:
    for step in (100, 200, 300, 400, 500):
        save_checkpoint(tmp_path, make_ckpt(step), keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000400", "step-00000500"]
    assert step_dirs(tmp_path) == ["step-00000400", "step-00000500"]


def test_keep_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path, make_ckpt(1), keep=0)
    assert not list_checkpoints(tmp_path)


def test_list_is_ordered_by_step_number(tmp_path: Path) -> None:
    for step in (9, 100_000_000, 10, 1):
        save_checkpoint(tmp_path, make_ckpt(step), keep=10)
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "step-00000001",
        "step-00000009",
        "step-00000010",
        "step-100000000",
    ]


def _save_two(root: Path) -> tuple[Checkpoint, Path]:
    older = make_ckpt(100)
    save_checkpoint(root, older)
    newest = save_checkpoint(root, make_ckpt(200))
    return older, newest


def _assert_falls_back(root: Path, older: Checkpoint, newest: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        got = load_latest(root)
    assert got is not None
    assert_same(older, got)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == LOGGER]
    assert len(warnings) == 1
    assert str(newest) in warnings[0].getMessage()


def test_truncated_newest_falls_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    older, newest = _save_two(tmp_path)
    params = newest / "params.npy"
    params.write_bytes(params.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(newest)
    _assert_falls_back(tmp_path, older, newest, caplog)


def test_flipped_byte_same_size_falls_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    older, newest = _save_two(tmp_path)
    params = newest / "params.npy"
    data = bytearray(params.read_bytes())
    data[len(data) // 2] ^= 0x01
    params.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(newest)
    _assert_falls_back(tmp_path, older, newest, caplog)


def test_missing_manifest_falls_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    older, newest = _save_two(tmp_path)
    (newest / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="manifest"):
        load_checkpoint(newest)
    assert list_checkpoints(tmp_path) == [older.path]
    _assert_falls_back(tmp_path, older, newest, caplog)
    assert "manifest.json" in caplog.records[-1].getMessage()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: (p / "state.json").unlink(), "missing state.json"),
        (lambda p: (p / "manifest.json").write_text("{not json"), "not valid JSON"),
        (
            lambda p: (p / "manifest.json").write_text(
                json.dumps({**json.loads((p / "manifest.json").read_text()), "format": 2})
            ),
            "unknown checkpoint format version 2",
        ),
    ],
)
def test_load_checkpoint_errors_name_path_and_reason(tmp_path: Path, damage, reason: str) -> None:
    path = save_checkpoint(tmp_path, make_ckpt(7))
    damage(path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ")
    assert reason in msg
    assert "\n" not in msg


def test_all_corrupt_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for step in (1, 2):
        path = save_checkpoint(tmp_path, make_ckpt(step))
        (path / "tokenizer.json").write_text("tampered")
    with caplog.at_level(logging.WARNING, logger=LOGGER), pytest.raises(CheckpointError):
        load_latest(tmp_path)
    assert len([r for r in caplog.records if r.name == LOGGER]) == 2


def test_missing_or_empty_root_gives_none(tmp_path: Path) -> None:
    assert load_latest(tmp_path / "does-not-exist") is None
    assert list_checkpoints(tmp_path / "does-not-exist") == []
    assert load_latest(tmp_path) is None
    assert list_checkpoints(tmp_path) == []


def test_stale_tmp_dir_ignored_then_removed(tmp_path: Path) -> None:
    older = make_ckpt(100)
    save_checkpoint(tmp_path, older)
    # A crash mid-save of step 200 leaves a temp dir, possibly with a manifest already in it.
    stale = tmp_path / ".tmp-step-00000200-deadbeef"
    stale.mkdir()
    (stale / "params.npy").write_bytes(b"partial")
    (stale / "manifest.json").write_text("{}")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000100"]
    got = load_latest(tmp_path)
    assert got is not None
    assert_same(older, got)

    save_checkpoint(tmp_path, make_ckpt(300))
    assert not stale.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000100", "step-00000300"]


def test_saving_same_step_twice_replaces_it(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, make_ckpt(50, seed=1))
    second = make_ckpt(50, seed=2)
    second.state["redo"] = True
    path = save_checkpoint(tmp_path, second)
    assert step_dirs(tmp_path) == ["step-00000050"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert_same(second, load_checkpoint(path))


@pytest.mark.parametrize("name", ["Params", "adam-m", "", "../evil", "a.b", "x y", "state.json"])
def test_invalid_array_names_rejected(tmp_path: Path, name: str) -> None:
    ckpt = make_ckpt(1)
    ckpt.arrays[name] = np.zeros(3)
    with pytest.raises(ValueError, match="invalid array name"):
        save_checkpoint(tmp_path / "root", ckpt)
    # Validation happens before anything is written.
    assert not (tmp_path / "root").exists()


def test_object_arrays_and_bad_state_rejected(tmp_path: Path) -> None:
    ckpt = make_ckpt(1)
    ckpt.arrays["objs"] = np.array([object()], dtype=object)
    with pytest.raises(ValueError, match="pickle"):
        save_checkpoint(tmp_path, ckpt)
    ckpt = make_ckpt(1)
    ckpt.state["bad"] = {1, 2}
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(tmp_path, ckpt)
    assert list(tmp_path.iterdir()) == []


def test_failed_save_leaves_previous_checkpoint_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    older = make_ckpt(100)
    save_checkpoint(tmp_path, older)

    def boom(src: object, dst: object) -> None:
        raise OSError("simulated crash before rename")

    monkeypatch.setattr("crystalline.workers.checkpoint.os.rename", boom)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(tmp_path, make_ckpt(200))
    monkeypatch.undo()
    assert step_dirs(tmp_path) == ["step-00000100"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    got = load_latest(tmp_path)
    assert got is not None
    assert_same(older, got)
