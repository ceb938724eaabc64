"""The batcher: shapes, determinism, freshness, replay, and its deadline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crystalline.ingest.batcher import Batcher, NotEnoughTokens
from crystalline.ingest.token_store import PendingDocument, TokenStore


def add(store: TokenStore, name: str, ids: np.ndarray, split: str = "train") -> None:
    store.append([PendingDocument(name, f"e:{name}", f"/s/{name}", split, ids.astype(np.uint16))])


def test_windows_are_contiguous_stream_slices_across_documents(tmp_path: Path) -> None:
    store = TokenStore(tmp_path, np.uint16)
    add(store, "a", np.arange(0, 50))
    add(store, "v", np.full(100, 999), split="val")
    add(store, "b", np.arange(50, 120))
    batch = Batcher(tmp_path, batch_size=16, seq_len=30, refresh_s=0.0).batch(0)
    assert batch.shape == (16, 31) and batch.dtype == np.uint16
    assert (np.diff(batch.astype(np.int64), axis=1) == 1).all()  # no held-out token, no gaps
    assert not (batch == 999).any()


def test_same_step_same_documents_same_batch(tmp_path: Path) -> None:
    store = TokenStore(tmp_path, np.uint16)
    add(store, "a", np.arange(500))
    b1 = Batcher(tmp_path, 4, 16, seed=3, refresh_s=0.0)
    first = b1.batch(7)
    seen = b1.position()
    add(store, "b", np.arange(500, 1000))
    b2 = Batcher(tmp_path, 4, 16, seed=3, refresh_s=0.0)
    b2.refresh()
    assert np.array_equal(b2.batch(7, documents=seen), first)
    assert not np.array_equal(b1.batch(8), b1.batch(9))


def test_new_document_reaches_the_next_batch(tmp_path: Path) -> None:
    store = TokenStore(tmp_path, np.uint16)
    add(store, "old", np.arange(1000) % 100)
    batcher = Batcher(tmp_path, 8, 16, fresh_fraction=0.5, fresh_tokens=64, refresh_s=0.0)
    batcher.batch(0)
    add(store, "new", np.full(200, 7000))
    rows = batcher.batch(1)
    assert (rows[:4] == 7000).all()  # the fresh half of the rows comes from the newest tokens
    assert (rows[4:] < 100).any()  # the rest replays the whole stream


def test_too_few_tokens_raises_after_the_deadline(tmp_path: Path) -> None:
    store = TokenStore(tmp_path, np.uint16)
    add(store, "tiny", np.arange(5))
    with pytest.raises(NotEnoughTokens, match="training tokens"):
        Batcher(tmp_path, 2, 16, wait_s=0.3).batch(0)


def test_counts_read_from_another_thread_while_refreshing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon's status asks tokens()/position() while the engine's ring thread refreshes:
    whatever instant the reader hits, it must see no more documents than offsets. The refresh
    is interrupted at its offsets update (where a thread switch can happen) to read then."""
    store = TokenStore(tmp_path, np.uint16)
    batcher = Batcher(tmp_path, batch_size=2, seq_len=4, refresh_s=0.0)
    store.append([PendingDocument("a", "ea", "sa", "train", np.arange(3, dtype=np.uint16))])
    batcher.refresh()
    store.append([PendingDocument("b", "eb", "sb", "train", np.arange(5, dtype=np.uint16))])
    seen: list[tuple[int, int]] = []
    real = np.concatenate

    def concatenate_then_read(*args, **kwargs):  # type: ignore[no-untyped-def]
        out = real(*args, **kwargs)
        seen.append((batcher.position(), batcher.tokens()))  # what another thread would read
        return out

    monkeypatch.setattr("crystalline.ingest.batcher.np.concatenate", concatenate_then_read)
    batcher.refresh()
    monkeypatch.undo()
    assert seen == [(1, 3)]
    assert (batcher.position(), batcher.tokens()) == (2, 8)
