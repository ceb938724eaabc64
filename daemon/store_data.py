"""Training data for the daemon: windows from ingest's token store (the batcher) and the
validation windows of its held-out documents.

Held-out documents are chosen by a hash of their source, so a daemon fed one document (or a
few) can find every one of them held out and no training window in the store. Rather than
wait for data that may never come, it then trains as `crystalline train` does on a single
file (nanoGPT's split): on the earlier part of the held-out stream, validating on its last
``val_fraction`` of tokens. Once the train documents hold a window, training uses them and
validation all held-out documents again (those few documents were trained on for a while,
which flatters the validation loss slightly until others arrive).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..ingest.batcher import Batcher
from ..ingest.token_store import StoreReader
from ..workers.dataset import batch_for_step, eval_windows
from ..workers.train_config import TrainConfig

DEFAULT_EVAL_WINDOWS = 256  # when the config says "all": the held-out set grows without bound


def store_dir(state_dir: Path) -> Path:
    return state_dir / "ingest" / "tokens"


def held_out_cut(tokens: int, val_fraction: float) -> int:
    """Where the held-out stream splits when it is all there is: its last ``val_fraction`` of
    tokens validates, what comes before trains (as ``workers.dataset.load_split`` cuts a file)."""
    return tokens - round(tokens * val_fraction)


class StoreTrainingData:
    """``TrainingData`` over the store: the batcher runs in the engine's ring thread, the
    validation reader in control's main thread (two readers, no shared mutable state)."""

    def __init__(self, directory: Path, config: TrainConfig) -> None:
        self.config = config
        self.span = config.seq_len + 1
        self.batcher = Batcher(directory, config.batch_size, config.seq_len, seed=config.seed, wait_s=60.0)
        self.val_reader = StoreReader(directory)
        self._val = np.zeros((0, self.span), dtype=np.uint16)
        self._val_key: tuple[int, bool] | None = None
        # the ring thread's copy of the held-out stream while it trains on it, by document count
        self._held: tuple[int, np.ndarray] = (-1, np.zeros(0, dtype=np.uint16))

    readers = 2  # store readers, each keeping up to max_open_shards maps (one descriptor each)

    def limit_open_shards(self, cap: int) -> None:
        """Keep at most ``cap`` shards mapped in each reader (sized from RLIMIT_NOFILE)."""
        self.batcher.reader.max_open_shards = cap
        self.val_reader.max_open_shards = cap

    def _train_windows(self) -> bool:
        return self.batcher.tokens() >= self.span

    def ready(self) -> bool:
        """A training window exists: in the train documents or, failing those, in the part of
        the held-out documents that trains (call before training starts)."""
        self.batcher.refresh()
        if self._train_windows():
            return True
        reader = self.batcher.reader
        return held_out_cut(reader.split_tokens("val"), self.config.val_fraction) >= self.span

    def batch(self, step: int) -> np.ndarray:
        """The batch of ``step``: from the train documents once they hold a window, until then
        from the held-out stream's training part. Either way a pure function of (seed, step,
        documents visible)."""
        if not self._train_windows():
            self.batcher.refresh()
        if self._train_windows():
            return self.batcher.batch(step)
        reader = self.batcher.reader
        docs = sum(1 for d in reader.documents if d.split == "val")
        if docs != self._held[0]:
            self._held = (docs, reader.validation_tokens())
        held = self._held[1]
        cut = held_out_cut(len(held), self.config.val_fraction)
        if cut < self.span:  # not ready(): the batcher waits for train tokens, then fails the step
            return self.batcher.batch(step)
        return batch_for_step(held[:cut], self.config.seed, step, self.config.batch_size, self.config.seq_len)

    def val_windows(self) -> np.ndarray:
        """Windows over the held-out documents (their last ``val_fraction`` of tokens while
        training takes the rest), recut when new ones arrive: a fixed, evenly spread subset,
        so consecutive evals on the same documents are comparable."""
        self.val_reader.refresh()
        docs = sum(1 for d in self.val_reader.documents if d.split == "val")
        key = (docs, not self._train_windows())
        if key != self._val_key:
            self._val_key = key
            tokens = self.val_reader.validation_tokens()
            if key[1]:
                tokens = tokens[held_out_cut(len(tokens), self.config.val_fraction) :]
            limit = self.config.eval_windows or DEFAULT_EVAL_WINDOWS
            self._val = eval_windows(tokens, self.config.seq_len, limit)
        return self._val

    def resumed_from(self, saved: dict[str, Any]) -> str | None:
        """A warning when the checkpoint training resumes from (its ``data``, what
        :meth:`describe` gave then) was trained on more train documents than the store holds:
        the store was lost or restored from an older copy, so the model has seen text that is
        gone. None otherwise, and for checkpoints written before the count was recorded."""
        trained_on = saved.get("train_documents")
        if saved.get("kind") != "store" or not isinstance(trained_on, int):
            return None
        self.batcher.refresh()
        now = self.batcher.position()
        if now >= trained_on:
            return None
        return (
            f"the token store holds {now} train documents, fewer than the {trained_on} the "
            "checkpoint was trained on: it was lost or restored from an older copy"
        )

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "store",
            "train_tokens": self.batcher.tokens(),
            "train_documents": self.batcher.position(),
            "val_documents": max(self._val_key[0] if self._val_key else 0, 0),
            "trains_on_held_out": not self._train_windows(),
        }


def store_training_data(spec: dict[str, Any]) -> StoreTrainingData:
    return StoreTrainingData(store_dir(Path(spec["state_dir"])), TrainConfig(**spec["train"]))
