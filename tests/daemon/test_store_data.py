"""Control's view of the store: a resume on a store that lost documents is noticed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from crystalline.daemon.store_data import StoreTrainingData
from crystalline.tokens.token_store import PendingDocument, TokenStore
from crystalline.workers.train_config import TrainConfig

CONFIG = TrainConfig(batch_size=4, seq_len=8, val_fraction=0.1, eval_windows=0, seed=3)


def add(store: TokenStore, name: str, split: str, ids: np.ndarray) -> None:
    store.append([PendingDocument(name, name, f"/inbox/{name}", split, ids)])


def test_resuming_on_a_store_with_fewer_train_documents_than_the_checkpoint_warns(tmp_path: Path) -> None:
    from crystalline.daemon.control_process import _checkpoint_state
    from crystalline.workers.checkpoint import Checkpoint, save_checkpoint

    store = TokenStore(tmp_path / "store", np.uint16)
    for i in range(3):
        add(store, f"t{i}", "train", np.arange(40, dtype=np.uint16))
    data = StoreTrainingData(tmp_path / "store", CONFIG, "ipc:///nonexistent", os.getppid())  # no ring asked
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
