"""The daemon's training data when every stored document is held out for validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from crystalline.daemon.store_data import StoreTrainingData, held_out_cut
from crystalline.ingest.token_store import PendingDocument, TokenStore
from crystalline.workers.train_config import TrainConfig

CONFIG = TrainConfig(batch_size=4, seq_len=8, val_fraction=0.1, eval_windows=0, seed=3)


def add(store: TokenStore, name: str, split: str, ids: np.ndarray) -> None:
    store.append([PendingDocument(name, name, f"/inbox/{name}", split, ids)])


def test_held_out_documents_alone_train_on_their_head_and_validate_on_their_tail(tmp_path: Path) -> None:
    store = TokenStore(tmp_path, np.uint16)
    ids = np.arange(200, dtype=np.uint16)
    add(store, "only", "val", ids)
    data = StoreTrainingData(tmp_path, CONFIG)
    assert data.ready()
    cut = held_out_cut(200, CONFIG.val_fraction)
    assert cut == 180
    batch = data.batch(5)
    assert batch.shape == (4, 9)
    assert int(batch.max()) < cut  # windows end before the validation tail
    # a pure function of (seed, step, documents): a fresh reader gives the same batch
    assert np.array_equal(StoreTrainingData(tmp_path, CONFIG).batch(5), batch)
    val = data.val_windows()
    assert len(val) == 2 and int(val.min()) >= cut
    assert data.describe()["trains_on_held_out"] is True


def test_train_documents_take_over_once_they_hold_a_window(tmp_path: Path) -> None:
    store = TokenStore(tmp_path, np.uint16)
    add(store, "held", "val", np.arange(200, dtype=np.uint16))
    data = StoreTrainingData(tmp_path, CONFIG)
    assert data.ready()
    add(store, "train", "train", np.full(50, 1000, dtype=np.uint16))
    batch = data.batch(0)
    assert np.all(batch == 1000)
    val = data.val_windows()  # all held-out tokens again
    assert int(val.min()) == 0 and len(val) == (200 - 1) // 8
    assert data.describe()["trains_on_held_out"] is False


def test_too_few_held_out_tokens_is_not_ready(tmp_path: Path) -> None:
    store = TokenStore(tmp_path, np.uint16)
    add(store, "short", "val", np.arange(9, dtype=np.uint16))  # its head is under one window
    assert not StoreTrainingData(tmp_path, CONFIG).ready()


def test_resuming_on_a_store_with_fewer_train_documents_than_the_checkpoint_warns(tmp_path: Path) -> None:
    from crystalline.daemon.control_process import _checkpoint_state
    from crystalline.workers.checkpoint import Checkpoint, save_checkpoint

    store = TokenStore(tmp_path / "store", np.uint16)
    for i in range(3):
        add(store, f"t{i}", "train", np.arange(40, dtype=np.uint16))
    data = StoreTrainingData(tmp_path / "store", CONFIG)
    assert data.ready()
    # the checkpoint records describe() as it was: read back from a real checkpoint directory
    saved = {"step": 7, "data": {**data.describe(), "train_documents": 5}}
    arrays = {"params": np.zeros(4, dtype=np.float32)}
    save_checkpoint(tmp_path / "ck", Checkpoint(6, arrays, {"step": 6, "data": data.describe()}, "{}"))
    save_checkpoint(tmp_path / "ck", Checkpoint(7, arrays, saved, "{}"))
    assert _checkpoint_state(tmp_path / "ck", 6)["data"]["train_documents"] == 3
    warning = data.resumed_from(_checkpoint_state(tmp_path / "ck", 7)["data"])
    assert warning is not None and "holds 3 train documents, fewer than the 5" in warning
    assert data.resumed_from(_checkpoint_state(tmp_path / "ck", 6)["data"]) is None  # as many: fine
    assert _checkpoint_state(tmp_path / "ck", 8) == {}
    # a checkpoint written before the count was recorded, or of file data, says nothing
    assert data.resumed_from({"kind": "store", "train_tokens": 120}) is None
    assert data.resumed_from({"kind": "files", "sha256": "ab"}) is None
