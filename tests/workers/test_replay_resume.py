"""A run under the replay policy (fresh share and per-source cap) resumed from a checkpoint ends
with the very parameters of the run that was not interrupted: its batches are a pure function of
(seed, step, documents visible) and the policy's keys (issue 13)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from crystalline.tokens.token_store import PendingDocument, TokenStore
from crystalline.tokens.tokenizer import Tokenizer
from crystalline.tokens.windows import StoreWindows
from crystalline.workers.train_config import TrainConfig
from crystalline.workers.trainer import Trainer

CONFIG = TrainConfig(
    embed_dim=16, num_layers=1, num_heads=2, seq_len=16, batch_size=8, max_steps=12, eval_interval=6,
    checkpoint_interval=6, warmup_steps=2, schedule="stable", ema_decay=0.9, fresh_share=0.25,
    fresh_tokens=300, source_cap=0.5, workers=1, val_fraction=0.0,
)  # fmt: skip


class StoreData:
    """The store's windows as the daemon's ring cuts them, from every document visible."""

    def __init__(self, store: Path, cfg: TrainConfig) -> None:
        self.windows = StoreWindows(
            store, cfg.batch_size, cfg.seq_len, seed=cfg.seed, fresh_fraction=cfg.fresh_share,
            fresh_tokens=cfg.fresh_tokens, source_cap=cfg.source_cap, refresh_s=0.0,
        )  # fmt: skip
        self.windows.refresh()

    def batch(self, step: int) -> np.ndarray:
        return self.windows.batch(step, self.windows.visible())

    def val_windows(self) -> np.ndarray:
        return self.windows.batch(0, self.windows.visible())[:2]

    def describe(self) -> dict[str, Any]:
        return self.windows.describe()


def make_store(path: Path) -> None:
    rng = np.random.default_rng(0)
    store = TokenStore(path, np.uint16)
    for source, docs in (("big", 6), ("small", 2), ("new", 1)):
        store.append(
            [
                PendingDocument(f"{source}{i}", f"e{source}{i}", f"/in/{source}/{i}.txt", "train",
                                rng.integers(0, 256, 400).astype(np.uint16), group=source)
                for i in range(docs)
            ]
        )  # fmt: skip


def test_resume_under_the_replay_policy_is_bit_exact(tmp_path: Path) -> None:
    make_store(tmp_path / "store")

    def data(_tokenizer: Tokenizer) -> StoreData:
        return StoreData(tmp_path / "store", CONFIG)

    whole = Trainer(data, tmp_path / "whole", CONFIG)
    whole.run()
    half = Trainer(data, tmp_path / "half", replace(CONFIG, max_steps=6))
    half.run()
    resumed = Trainer(data, tmp_path / "half", CONFIG, resume=True)
    assert resumed.state.step == 6
    resumed.run()
    for name in ("params", "adam_m", "adam_v", "ema"):
        a = np.load(tmp_path / "whole" / "step-00000012" / f"{name}.npy")
        b = np.load(tmp_path / "half" / "step-00000012" / f"{name}.npy")
        assert np.array_equal(a, b), name
