"""Train/validation split, batches as a function of (seed, step), eval windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crystalline.tokens.held_out import held_out
from crystalline.tokens.tokenizer import ByteTokenizer
from crystalline.tokens.windows import batch_for_step, eval_windows, load_split


def test_single_file_keeps_its_last_fraction_for_validation(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("x" * 900 + "y" * 100)
    split = load_split([f], ByteTokenizer(), 0.1)
    assert len(split.train) == 900 and len(split.val) == 100
    assert set(split.val.tolist()) == {ord("y")}


def test_many_files_hold_out_whole_documents_by_path_hash(tmp_path: Path) -> None:
    for i in range(40):
        (tmp_path / f"doc{i:02d}.txt").write_text(f"document {i}\n" * 10)
    split = load_split([tmp_path], ByteTokenizer(), 0.25)
    held = [i for i in range(40) if held_out(str(tmp_path / f"doc{i:02d}.txt"), 0.25)]
    assert split.documents == 40 and split.val_documents == len(held)
    assert 0 < len(held) < 40
    val_text = bytes(split.val.tolist()).decode()
    for i in held:
        assert f"document {i}\n" in val_text


def test_batch_depends_only_on_seed_and_step() -> None:
    tokens = np.arange(1000, dtype=np.uint16)
    a = batch_for_step(tokens, seed=7, step=3, batch_size=4, seq_len=8)
    b = batch_for_step(tokens, seed=7, step=3, batch_size=4, seq_len=8)
    c = batch_for_step(tokens, seed=7, step=4, batch_size=4, seq_len=8)
    assert a.shape == (4, 9) and a.dtype == np.uint16
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # windows are contiguous runs of the corpus
    assert np.all(np.diff(a.astype(np.int64), axis=1) == 1)


def test_batch_needs_enough_tokens() -> None:
    with pytest.raises(ValueError, match="at least 9 training tokens"):
        batch_for_step(np.arange(5, dtype=np.uint16), 0, 0, 2, 8)


def test_eval_windows_cover_the_split_without_overlap() -> None:
    tokens = np.arange(100, dtype=np.uint16)
    w = eval_windows(tokens, seq_len=8)
    assert w.shape == (12, 9)
    # targets of consecutive windows tile the split: each token is predicted once
    np.testing.assert_array_equal(w[:, 1:].reshape(-1), np.arange(1, 97))
    limited = eval_windows(tokens, seq_len=8, limit=3)
    assert limited.shape == (3, 9)
    np.testing.assert_array_equal(limited[0], w[0])
    np.testing.assert_array_equal(limited[-1], w[-1])
    assert eval_windows(np.arange(5, dtype=np.uint16), seq_len=8).shape == (0, 9)
