"""The replay policy (issue 13 item 4): a fresh share of each batch from the newest tokens, the
rest over the whole store with no source above its cap, and batches still a pure function of
(seed, step, documents visible), so a resume cuts them again bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from crystalline.tokens.token_store import PendingDocument, TokenStore
from crystalline.tokens.windows import StoreWindows, capped_counts

BATCH, SEQ = 20, 15


def add(store: TokenStore, source: int, docs: int, length: int) -> None:
    """``docs`` documents of source ``s<source>`` (a drop sub-folder), every token its number."""
    store.append(
        [
            PendingDocument(f"d{source}-{i}-{length}", f"e{source}-{i}-{length}", f"/in/s{source}/{i}.txt",
                            "train", np.full(length, source, dtype=np.uint16), group=f"s{source}")
            for i in range(docs)
        ]
    )  # fmt: skip


def row_sources(windows: StoreWindows, step: int, documents: int | None = None) -> np.ndarray:
    return windows.batch(step, documents)[:, 0]  # a row's source: the token at its start


def test_capped_counts_hold_every_cap_and_keep_the_total() -> None:
    rng = np.random.default_rng(0)
    weights = np.array([90.0, 5.0, 3.0, 2.0])
    for _ in range(200):
        counts = capped_counts(20, weights, np.full(4, 8.0), rng)
        assert counts.sum() == 20 and counts.max() <= 8
    # one source alone: the cap cannot hold, every row is its
    assert capped_counts(20, np.array([5.0, 0.0]), np.full(2, 8.0), rng).tolist() == [20, 0]


def test_no_source_takes_more_than_its_cap_and_the_rest_share_by_tokens(tmp_path: Path) -> None:
    store = TokenStore(tmp_path, np.uint16)
    add(store, 1, 9, 1000)  # 90% of the tokens
    add(store, 2, 1, 600)
    add(store, 3, 1, 400)
    windows = StoreWindows(tmp_path, BATCH, SEQ, seed=5, fresh_fraction=0.0, refresh_s=0.0, source_cap=0.4)
    counts = np.zeros(4, dtype=np.int64)
    for step in range(400):
        per_batch = np.bincount(row_sources(windows, step), minlength=4)
        assert per_batch[1] <= 8  # 40% of 20 rows, in every batch
        counts += per_batch
    share = counts / counts.sum()
    assert abs(share[1] - 0.4) < 0.01  # capped
    assert abs(share[2] - 0.36) < 0.03 and abs(share[3] - 0.24) < 0.03  # the rest 600:400


def test_the_fresh_share_comes_from_the_newest_documents(tmp_path: Path) -> None:
    store = TokenStore(tmp_path, np.uint16)
    add(store, 1, 20, 1000)
    add(store, 2, 1, 500)  # the newest 500 tokens
    opts = {"seed": 5, "fresh_fraction": 0.25, "fresh_tokens": 500, "refresh_s": 0.0}
    loose = StoreWindows(tmp_path, BATCH, SEQ, source_cap=0.8, **opts)  # type: ignore[arg-type]
    fresh = 0
    for step in range(400):
        rows = row_sources(loose, step)
        assert (rows[:5] == 2).all()  # a quarter of the rows, from the newest tokens
        fresh += int((rows == 2).sum())
    # 5 fresh rows, and of the other 15 the newest source's share by tokens (500 of 20,500)
    assert abs(fresh / 400 - (5 + 15 * 500 / 20500)) < 0.15
    # a cap of half the rows: the old source keeps 10, the 5 it cannot take go to the other
    tight = StoreWindows(tmp_path, BATCH, SEQ, source_cap=0.5, **opts)  # type: ignore[arg-type]
    for step in range(100):
        assert np.bincount(row_sources(tight, step), minlength=3).tolist() == [0, 10, 10]


def test_batches_are_cut_again_bit_for_bit_after_more_documents_arrive(tmp_path: Path) -> None:
    store = TokenStore(tmp_path, np.uint16)
    add(store, 1, 5, 700)
    add(store, 2, 2, 300)
    opts = {"seed": 9, "fresh_fraction": 0.25, "fresh_tokens": 400, "refresh_s": 0.0, "source_cap": 0.3}
    first = StoreWindows(tmp_path, BATCH, SEQ, **opts)  # type: ignore[arg-type]
    before = [first.batch(step) for step in range(20)]
    visible = first.visible()
    add(store, 3, 4, 900)  # then a new source arrives
    again = StoreWindows(tmp_path, BATCH, SEQ, **opts)  # type: ignore[arg-type]  # a restart
    for step, batch in enumerate(before):
        assert np.array_equal(again.batch(step, visible), batch)
    assert again.visible() > visible
    assert not all(np.array_equal(again.batch(s), b) for s, b in enumerate(before))
