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
