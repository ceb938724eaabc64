"""Bits per byte beside every loss: the formula, the bytes of byte and BPE tokens, and the
figures `crystalline train` records for both tokenizers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from crystalline.tokens.tokenizer import ByteTokenizer, load_tokenizer
from crystalline.workers.bits_per_byte import beside, bits_per_byte, perplexity, token_byte_lengths
from crystalline.workers.engine import batch_bytes
from crystalline.workers.train_config import TrainConfig
from crystalline.workers.trainer import Trainer, evaluate

TEXT = "Crème brûlée for the ninth time — ½ price; naïve ROMEO: 'tis 東京 🌸\n" * 3
TINY = {"embed_dim": 32, "num_layers": 2, "num_heads": 2, "seq_len": 16, "batch_size": 4,
        "learning_rate": 1e-2, "min_lr": 1e-3, "warmup_steps": 5, "eval_windows": 16,
        "max_steps": 10, "eval_interval": 5, "checkpoint_interval": 10}  # fmt: skip


def test_formula() -> None:
    assert bits_per_byte(math.log(2), 100, 100) == pytest.approx(1.0)
    assert bits_per_byte(2.0, 10, 40) == pytest.approx(2.0 / math.log(2) / 4)
    assert math.isnan(bits_per_byte(1.0, 0, 0)) and math.isnan(bits_per_byte(math.nan, 3, 3))
    assert perplexity(math.log(256)) == pytest.approx(256)
    assert beside("val_loss", 2.0, 0.5) == {"val_loss": 2.0, "val_bpb": 0.5, "val_perplexity": math.exp(2.0)}
    assert beside("loss", math.nan, math.nan) == {"loss": None, "bpb": None, "perplexity": None}


def test_a_byte_token_is_one_byte() -> None:
    lengths = token_byte_lengths(ByteTokenizer())
    assert lengths.shape == (256,) and (lengths == 1).all()


def test_bpe_token_lengths_add_up_to_the_utf8_bytes(bpe_tokenizer_file: Path) -> None:
    tok = load_tokenizer(str(bpe_tokenizer_file))
    lengths = token_byte_lengths(tok)
    ids = tok.encode(TEXT)
    assert len(ids) < len(TEXT.encode("utf-8"))  # merges happened: tokens are not bytes
    assert int(lengths[ids].sum()) == len(TEXT.encode("utf-8"))
    window = np.concatenate([ids[:1], ids])[None, :]  # its targets: the whole text
    assert batch_bytes(window, lengths) == len(TEXT.encode("utf-8"))
    assert batch_bytes(window, None) == len(ids)


@pytest.mark.parametrize("tokenizer", ["bytes", "bpe"])
def test_train_records_bits_per_byte_beside_each_loss(
    tmp_path: Path, corpus_file: Path, bpe_tokenizer_file: Path, tokenizer: str
) -> None:
    spec = "bytes" if tokenizer == "bytes" else str(bpe_tokenizer_file)
    trainer = Trainer([corpus_file], tmp_path / "ck", TrainConfig(**TINY, tokenizer=spec))
    windows = trainer.data.val_windows()
    lengths = token_byte_lengths(trainer.tokenizer)
    nbytes = int(lengths[windows[:, 1:]].sum())
    result = trainer.run()
    records = [json.loads(line) for line in (tmp_path / "ck" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if r["event"] == "eval"][-1]
    val = evaluate(trainer.model, trainer.engine.params(), windows)
    assert last["val_loss"] == val
    assert last["val_bpb"] == pytest.approx(val / math.log(2) * windows[:, 1:].size / nbytes, rel=1e-12)
    assert last["val_perplexity"] == pytest.approx(math.exp(val))
    assert last["train_bpb"] is not None and last["train_perplexity"] == pytest.approx(
        math.exp(last["train_loss"])
    )
    if tokenizer == "bytes":
        assert last["val_bpb"] == pytest.approx(val / math.log(2))
        assert last["train_bpb"] == pytest.approx(last["train_loss"] / math.log(2))
    else:  # a BPE token spans more than a byte: fewer bits per byte than bits per token
        assert nbytes > windows[:, 1:].size
        assert last["val_bpb"] < val / math.log(2)
    assert result.val_bpb == last["val_bpb"] and result.train_bpb == last["train_bpb"]
