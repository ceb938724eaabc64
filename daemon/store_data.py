"""Control's view of the daemon's training data: batches from the ring the supervisor fills
(``ring_service``), validation windows and readiness read from the token store itself.

The windows are cut by ``tokens.windows`` in the supervisor; what each batch was cut from comes
back with its slot and is what status and checkpoints report (``data.documents``,
``train_documents``, ...), so a resume on a store that lost documents is noticed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zmq

from ..tokens.learned_vocab import derived_dir, vocab_path
from ..tokens.tokenizer import load_tokenizer
from ..tokens.windows import SourceValidation, StoreValidation, StoreWindows
from ..workers.train_config import TrainConfig
from .ring_service import RingClient

RING_SLOTS = 3
BATCH_TIMEOUT_S = 60.0  # the one-process engine's wait for a slot (the process engine has its own)


def byte_store_dir(state_dir: Path) -> Path:
    """The store ingest writes (byte-level under a learned vocabulary: tokens/learned_vocab.py)."""
    return state_dir / "ingest" / "tokens"


def store_dir(state_dir: Path, config: TrainConfig) -> Path:
    """The store the model trains on: ingest's, or under the learned vocabulary (its tokenizer
    is the state directory's vocabulary file) the one derived from it."""
    learned = config.tokenizer == str(vocab_path(state_dir))
    return derived_dir(state_dir) if learned else byte_store_dir(state_dir)


class StoreTrainingData:
    """``TrainingData`` for control: the lent ring, and two store readers of its own (one to
    know whether a window exists yet, one for the validation windows, overall and per source)."""

    readers = 2  # store readers, each keeping up to max_open_shards maps (one descriptor each)

    def __init__(self, directory: Path, config: TrainConfig, ring_endpoint: str, ring_owner: int) -> None:
        """``ring_owner``: the supervisor's pid, which serves the ring at ``ring_endpoint``."""
        self.config = config
        self.ring_endpoint = ring_endpoint
        self.ring_owner = ring_owner
        self.windows = StoreWindows(
            directory, config.batch_size, config.seq_len, val_fraction=config.val_fraction
        )
        self.validation = StoreValidation(directory, config.seq_len, config.val_fraction, config.eval_windows)
        self.sources = SourceValidation(
            directory, config.seq_len, config.source_eval_windows, reader=self.validation.reader
        )
        self.ring: RingClient | None = None
        self.last_info: dict[str, Any] = {}  # what the last batch taken was cut from

    def open_ring(self, context: zmq.Context | None = None) -> RingClient:
        """Say HELLO to the supervisor's ring (SharedMemoryFull when /dev/shm has no room), on
        ``context``, control's ZeroMQ context."""
        if self.ring is None:
            vocab = load_tokenizer(self.config.tokenizer).vocab_size
            geometry = {
                "batch_size": self.config.batch_size,
                "seq_len": self.config.seq_len,
                "vocab_size": vocab,
                "slots": RING_SLOTS,
            }
            self.ring = RingClient(self.ring_endpoint, geometry, self.ring_owner, context=context)
            self.ring.on_take = self._took
        return self.ring

    def _took(self, info: dict[str, Any]) -> None:
        self.last_info = info

    def close_ring(self) -> None:
        if self.ring is not None:
            self.ring.close()
            self.ring = None

    def limit_open_shards(self, cap: int) -> None:
        """Keep at most ``cap`` shards mapped in each reader (sized from RLIMIT_NOFILE)."""
        self.windows.reader.max_open_shards = cap
        self.validation.reader.max_open_shards = cap  # the per-source validation's too

    def ready(self) -> bool:
        """A training window exists: in the train documents or, failing those, in the part of
        the held-out documents that trains (call before training starts)."""
        return self.windows.has_window()

    def batch(self, step: int) -> np.ndarray:
        """The batch of ``step`` copied out of its slot (the one-process engine)."""
        return self.open_ring().batch(step, BATCH_TIMEOUT_S)

    def _trains_on_held_out(self) -> bool:
        if "trains_on_held_out" in self.last_info:
            return bool(self.last_info["trains_on_held_out"])
        return bool(self.windows.describe()["trains_on_held_out"])

    def val_windows(self) -> np.ndarray:
        return self.validation.windows(self._trains_on_held_out())

    def trained_through(self) -> int | None:
        """The documents the last batch taken was cut from (None before the first): a document
        past them is in no batch trained so far."""
        documents = self.last_info.get("documents")
        return int(documents) if documents is not None else None

    def source_windows(self) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """Each source's validation windows for the next evaluation, and its documents; none
        while training takes the held-out documents' head (they would be scored on what they
        trained on), or with ``source-eval-windows`` 0."""
        if self.config.source_eval_windows == 0 or self._trains_on_held_out():
            return {}, {}
        return self.sources.windows(), self.sources.documents()

    def resumed_from(self, saved: dict[str, Any]) -> str | None:
        """A warning when the checkpoint training resumes from (its ``data``, what
        :meth:`describe` gave then) was trained on more train documents than the store holds:
        the store was lost or restored from an older copy, so the model has seen text that is
        gone. None otherwise, and for checkpoints written before the count was recorded."""
        trained_on = saved.get("train_documents")
        if saved.get("kind") != "store" or not isinstance(trained_on, int):
            return None
        self.windows.refresh()
        now = self.windows.describe()["train_documents"]
        if now >= trained_on:
            return None
        return (
            f"the token store holds {now} train documents, fewer than the {trained_on} the "
            "checkpoint was trained on: it was lost or restored from an older copy"
        )

    def describe(self) -> dict[str, Any]:
        cut = self.last_info or self.windows.describe()
        return {
            "kind": "store",
            "documents": cut.get("documents", 0),
            "train_tokens": cut.get("train_tokens", 0),
            "train_documents": cut.get("train_documents", 0),
            "val_documents": self.validation.documents(),
            "trains_on_held_out": self._trains_on_held_out(),
        }


def store_training_data(spec: dict[str, Any]) -> StoreTrainingData:
    state_dir = Path(spec["state_dir"])
    config = TrainConfig(**spec["train"])
    return StoreTrainingData(store_dir(state_dir, config), config, spec["ring_endpoint"], spec["parent_pid"])
