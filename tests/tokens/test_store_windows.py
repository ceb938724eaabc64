"""Windows cut from the token store: shapes, determinism by (seed, step, documents visible),
freshness, replay, the held-out fallback, and the validation windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crystalline.tokens.held_out import held_out_cut
from crystalline.tokens.token_store import PendingDocument, TokenStore
from crystalline.tokens.windows import NotEnoughTokens, StoreBehind, StoreValidation, StoreWindows


def add(store: TokenStore, name: str, ids: np.ndarray, split: str = "train") -> None:
    store.append([PendingDocument(name, f"e:{name}", f"/s/{name}", split, ids.astype(np.uint16))])


def test_windows_are_contiguous_stream_slices_across_documents(tmp_path: Path) -> None:
    store = TokenStore(tmp_path, np.uint16)
    add(store, "a", np.arange(0, 50))
    add(store, "v", np.full(100, 999), split="val")
    add(store, "b", np.arange(50, 120))
    batch = StoreWindows(tmp_path, batch_size=16, seq_len=30, refresh_s=0.0).batch(0)
    assert batch.shape == (16, 31) and batch.dtype == np.uint16
    assert (np.diff(batch.astype(np.int64), axis=1) == 1).all()  # no held-out token, no gaps
    assert not (batch == 999).any()


def test_same_step_same_documents_same_batch(tmp_path: Path) -> None:
    store = TokenStore(tmp_path, np.uint16)
    add(store, "a", np.arange(500))
    w1 = StoreWindows(tmp_path, 4, 16, seed=3, refresh_s=0.0)
    first = w1.batch(7)
    seen = w1.visible()
    add(store, "v", np.full(300, 999), split="val")
    add(store, "b", np.arange(500, 1000))
    w2 = StoreWindows(tmp_path, 4, 16, seed=3, refresh_s=0.0)
    out = np.zeros((4, 17), dtype=np.uint16)
    assert w2.fill(7, out, documents=seen) == seen  # reads the store itself when it must
    assert np.array_equal(out, first)
    assert w2.visible() == 3 and w2.describe(seen)["train_documents"] == 1
    assert not np.array_equal(w1.batch(8), w1.batch(9))


def test_a_store_behind_the_record_is_named(tmp_path: Path) -> None:
    store = TokenStore(tmp_path, np.uint16)
    add(store, "a", np.arange(500))
    out = np.zeros((2, 9), dtype=np.uint16)
    with pytest.raises(StoreBehind, match="cut from 4 documents, the token store shows 1"):
        StoreWindows(tmp_path, 2, 8).fill(0, out, documents=4)


def test_new_document_reaches_the_next_batch(tmp_path: Path) -> None:
    store = TokenStore(tmp_path, np.uint16)
    add(store, "old", np.arange(1000) % 100)
    windows = StoreWindows(tmp_path, 8, 16, fresh_fraction=0.5, fresh_tokens=64, refresh_s=0.0)
    windows.batch(0)
    add(store, "new", np.full(200, 7000))
    rows = windows.batch(1)
    assert (rows[:4] == 7000).all()  # the fresh half of the rows comes from the newest tokens
    assert (rows[4:] < 100).any()  # the rest replays the whole stream


def test_too_few_tokens_is_a_clear_error(tmp_path: Path) -> None:
    store = TokenStore(tmp_path, np.uint16)
    add(store, "tiny", np.arange(5))
    windows = StoreWindows(tmp_path, 2, 16)
    assert not windows.has_window()
    with pytest.raises(NotEnoughTokens, match="5 training tokens in 1 documents; a window needs 17"):
        windows.batch(0)


def test_counts_read_from_another_thread_while_refreshing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Status may read the counts while the ring's thread refreshes: whatever instant the reader
    hits, it must see no more documents than offsets. The refresh is interrupted at its offsets
    update (where a thread switch can happen) to read then."""
    store = TokenStore(tmp_path, np.uint16)
    windows = StoreWindows(tmp_path, batch_size=2, seq_len=4, refresh_s=0.0)
    store.append([PendingDocument("a", "ea", "sa", "train", np.arange(3, dtype=np.uint16))])
    windows.refresh()
    store.append([PendingDocument("b", "eb", "sb", "train", np.arange(5, dtype=np.uint16))])
    stream = windows._train
    seen: list[tuple[int, int]] = []
    real = np.concatenate

    def concatenate_then_read(*args, **kwargs):  # type: ignore[no-untyped-def]
        out = real(*args, **kwargs)
        seen.append((len(stream.docs), stream.tokens(len(stream.docs))))  # another thread's view
        return out

    monkeypatch.setattr("crystalline.tokens.windows.np.concatenate", concatenate_then_read)
    windows.refresh()
    monkeypatch.undo()
    assert seen == [(1, 3)]
    assert windows.describe()["train_documents"] == 2 and windows.describe()["train_tokens"] == 8


def test_held_out_documents_alone_train_on_their_head_and_validate_on_their_tail(tmp_path: Path) -> None:
    store = TokenStore(tmp_path, np.uint16)
    add(store, "only", np.arange(200), split="val")
    windows = StoreWindows(tmp_path, 4, 8, seed=3, val_fraction=0.1)
    assert windows.has_window()
    cut = held_out_cut(200, 0.1)
    assert cut == 180
    batch = windows.batch(5)
    assert batch.shape == (4, 9)
    assert int(batch.max()) < cut  # windows end before the validation tail
    # a pure function of (seed, step, documents): a fresh reader gives the same batch
    assert np.array_equal(StoreWindows(tmp_path, 4, 8, seed=3, val_fraction=0.1).batch(5), batch)
    assert windows.describe()["trains_on_held_out"] is True
    val = StoreValidation(tmp_path, 8, 0.1, eval_windows=0).windows(trains_on_held_out=True)
    assert len(val) == 2 and int(val.min()) >= cut


def test_train_documents_take_over_once_they_hold_a_window(tmp_path: Path) -> None:
    store = TokenStore(tmp_path, np.uint16)
    add(store, "held", np.arange(200), split="val")
    windows = StoreWindows(tmp_path, 4, 8, val_fraction=0.1, refresh_s=0.0)
    assert windows.has_window()
    add(store, "train", np.full(50, 1000))
    assert np.all(windows.batch(0) == 1000)
    assert windows.describe()["trains_on_held_out"] is False
    val = StoreValidation(tmp_path, 8, 0.1, eval_windows=0).windows(trains_on_held_out=False)
    assert int(val.min()) == 0 and len(val) == (200 - 1) // 8  # all held-out tokens again


def test_too_few_held_out_tokens_is_not_ready(tmp_path: Path) -> None:
    store = TokenStore(tmp_path, np.uint16)
    add(store, "short", np.arange(9), split="val")  # its head is under one window
    assert not StoreWindows(tmp_path, 4, 8, val_fraction=0.1).has_window()
