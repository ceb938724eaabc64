"""Training data for the daemon: windows from ingest's token store (the batcher) and the
validation windows of its held-out documents."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..ingest.batcher import Batcher
from ..ingest.token_store import StoreReader
from ..workers.dataset import eval_windows
from ..workers.train_config import TrainConfig

DEFAULT_EVAL_WINDOWS = 256  # when the config says "all": the held-out set grows without bound


def store_dir(state_dir: Path) -> Path:
    return state_dir / "ingest" / "tokens"


class StoreTrainingData:
    """``TrainingData`` over the store: the batcher runs in the engine's ring thread, the
    validation reader in control's main thread (two readers, no shared mutable state)."""

    def __init__(self, directory: Path, config: TrainConfig) -> None:
        self.config = config
        self.batcher = Batcher(directory, config.batch_size, config.seq_len, seed=config.seed, wait_s=60.0)
        self.val_reader = StoreReader(directory)
        self._val = np.zeros((0, config.seq_len + 1), dtype=np.uint16)
        self._val_docs = -1

    readers = 2  # store readers, each keeping up to max_open_shards maps (one descriptor each)

    def limit_open_shards(self, cap: int) -> None:
        """Keep at most ``cap`` shards mapped in each reader (sized from RLIMIT_NOFILE)."""
        self.batcher.reader.max_open_shards = cap
        self.val_reader.max_open_shards = cap

    def ready(self) -> bool:
        """One window's worth of training tokens is in the store (call before training starts)."""
        self.batcher.refresh()
        return self.batcher.tokens() >= self.config.seq_len + 1

    def batch(self, step: int) -> np.ndarray:
        return self.batcher.batch(step)

    def val_windows(self) -> np.ndarray:
        """Windows over the held-out documents, recut when new ones arrive (a fixed, evenly
        spread subset, so consecutive evals on the same documents are comparable)."""
        self.val_reader.refresh()
        docs = sum(1 for d in self.val_reader.documents if d.split == "val")
        if docs != self._val_docs:
            self._val_docs = docs
            limit = self.config.eval_windows or DEFAULT_EVAL_WINDOWS
            self._val = eval_windows(self.val_reader.validation_tokens(), self.config.seq_len, limit)
        return self._val

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "store",
            "train_tokens": self.batcher.tokens(),
            "train_documents": self.batcher.position(),
            "val_documents": max(self._val_docs, 0),
        }


def store_training_data(spec: dict[str, Any]) -> StoreTrainingData:
    return StoreTrainingData(store_dir(Path(spec["state_dir"])), TrainConfig(**spec["train"]))
