"""Tests for crystalline.tokens.tokenizer: byte and BPE round trips, serialisation, file handling."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from crystalline.tokens.tokenizer import (
    BpeTokenizer,
    ByteTokenizer,
    TokenizerError,
    iter_text_files,
    load_tokenizer,
    read_text_file,
    save_tokenizer,
    tokenizer_from_json,
    train_bpe,
)

SAMPLES = [
    "",
    "hello world",
    " leading space and trailing space ",
    "  two leading spaces\n\nnew lines\r\nand\ttabs",
    "café naïve résumé Ångström",
    "emoji 🎉👩‍👩‍👧 and flags 🇫🇷",
    "日本語のテキスト、中文文本\uff0c한국어",
    "mixed: ascii, é, 日本, 🎉, \x00 nul, \u200b zero width",
    "\n",
    " ",
]

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "the",
    "lazy",
    "dog",
    "while",
    "a",
    "small",
    "cat",
    "sleeps",
    "near",
    "the",
    "warm",
    "fire",
]


def _write_corpus(root: Path, n_files: int = 3, lines: int = 300) -> list[Path]:
    """Write a few deterministic English-like text files and return their paths."""
    rng = random.Random(1234)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_files):
        text = "\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(lines))
        p = root / f"part{i}.txt"
        p.write_text(text + "\nCafé 日本語 🎉\n", encoding="utf-8")
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def bpe(tmp_path_factory: pytest.TempPathFactory) -> BpeTokenizer:
    root = tmp_path_factory.mktemp("corpus")
    _write_corpus(root)
    return train_bpe([root], vocab_size=400)


# --- ByteTokenizer ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", SAMPLES)
def test_byte_round_trip(text: str) -> None:
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert ids.tolist() == list(text.encode("utf-8"))


def test_byte_encode_dtype_and_shape() -> None:
    tok = ByteTokenizer()
    ids = tok.encode("héllo")
    assert tok.kind == "bytes"
    assert tok.vocab_size == 256
    assert ids.dtype == np.uint16
    assert ids.ndim == 1 and len(ids) == 6
    assert tok.encode("").dtype == np.uint16


def test_byte_decode_replaces_invalid_utf8() -> None:
    tok = ByteTokenizer()
    assert tok.decode([0xFF, 0x41]) == "\ufffdA"
    assert tok.decode(list("é".encode())[:1]) == "\ufffd"
    assert tok.decode(np.array([104, 105], dtype=np.int64)) == "hi"
    assert tok.decode([]) == ""


def test_byte_decode_rejects_out_of_range_ids() -> None:
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ByteTokenizer().decode([65, 256])


def test_encode_replaces_lone_surrogates() -> None:
    assert ByteTokenizer().decode(ByteTokenizer().encode("a\ud800b")) == "a\ufffdb"


# --- BpeTokenizer ----------------------------------------------------------------------------


def test_bpe_properties(bpe: BpeTokenizer) -> None:
    assert bpe.kind == "bpe"
    assert 257 <= bpe.vocab_size <= 400
    assert bpe.encode("the quick brown fox").dtype == np.uint16


@pytest.mark.parametrize("text", SAMPLES)
def test_bpe_round_trip(bpe: BpeTokenizer, text: str) -> None:
    ids = bpe.encode(text)
    assert ids.ndim == 1
    assert bpe.decode(ids) == text
    assert bpe.decode(ids.tolist()) == text


def test_bpe_round_trip_random_unicode(bpe: BpeTokenizer) -> None:
    rng = random.Random(7)
    pools = [(0x20, 0x7E), (0xA0, 0x2FF), (0x3040, 0x30FF), (0x4E00, 0x4FFF), (0x1F300, 0x1F64F)]
    for _ in range(50):
        chars = []
        for _ in range(rng.randint(0, 40)):
            lo, hi = rng.choice(pools)
            chars.append(chr(rng.randint(lo, hi)))
        chars.insert(rng.randint(0, len(chars)), rng.choice([" ", "  ", "\n", "\t", "\r\n"]))
        text = "".join(chars)
        assert bpe.decode(bpe.encode(text)) == text


def test_bpe_compresses_in_distribution_text(bpe: BpeTokenizer) -> None:
    text = "the lazy dog jumps over the quick brown fox while the small cat sleeps near the warm fire"
    ids = bpe.encode(text)
    assert len(ids) < len(text.encode("utf-8")) / 2


def test_bpe_decode_partial_utf8_is_replaced(bpe: BpeTokenizer) -> None:
    ids = bpe.encode("🎉")
    assert len(ids) >= 1
    partial = bpe.decode(ids[:-1]) if len(ids) > 1 else ""
    assert "🎉" not in partial
    assert bpe.decode(ids) == "🎉"


def test_bpe_decode_rejects_out_of_range_ids(bpe: BpeTokenizer) -> None:
    with pytest.raises(ValueError, match="outside the vocabulary"):
        bpe.decode([bpe.vocab_size])


# --- serialisation ---------------------------------------------------------------------------


def test_bpe_json_round_trip_identical(bpe: BpeTokenizer) -> None:
    doc = bpe.to_json()
    obj = json.loads(doc)
    assert obj["kind"] == "bpe"
    assert "tokenizer" in obj
    clone = tokenizer_from_json(doc)
    assert isinstance(clone, BpeTokenizer)
    assert clone.vocab_size == bpe.vocab_size
    assert clone.to_json() == doc
    for text in [*SAMPLES, "the quick brown fox jumps"]:
        assert np.array_equal(clone.encode(text), bpe.encode(text))


def test_bpe_json_accepts_library_string_form(bpe: BpeTokenizer) -> None:
    doc = json.dumps({"kind": "bpe", "tokenizer": bpe.hf_tokenizer.to_str()})
    clone = tokenizer_from_json(doc)
    assert np.array_equal(clone.encode("the lazy cat"), bpe.encode("the lazy cat"))


def test_byte_json_round_trip() -> None:
    doc = ByteTokenizer().to_json()
    assert json.loads(doc)["kind"] == "bytes"
    assert isinstance(tokenizer_from_json(doc), ByteTokenizer)


@pytest.mark.parametrize(
    "doc",
    [
        "not json",
        "[]",
        '{"no_kind": 1}',
        '{"kind": "wordpiece"}',
        '{"kind": "bpe"}',
        '{"kind": "bpe", "tokenizer": {}}',
    ],
)
def test_tokenizer_from_json_rejects_bad_documents(doc: str) -> None:
    with pytest.raises(TokenizerError):
        tokenizer_from_json(doc)


def test_save_and_load(tmp_path: Path, bpe: BpeTokenizer) -> None:
    path = tmp_path / "tok.json"
    save_tokenizer(bpe, path)
    loaded = load_tokenizer(str(path))
    assert isinstance(loaded, BpeTokenizer)
    assert np.array_equal(loaded.encode("the warm fire 🎉"), bpe.encode("the warm fire 🎉"))
    assert [p.name for p in tmp_path.iterdir()] == ["tok.json"]  # no temp file left behind

    save_tokenizer(ByteTokenizer(), path)  # overwriting works too
    assert isinstance(load_tokenizer(str(path)), ByteTokenizer)


def test_load_tokenizer_bytes_spec() -> None:
    assert isinstance(load_tokenizer("bytes"), ByteTokenizer)


def test_load_tokenizer_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    with pytest.raises(TokenizerError, match=r"absent\.json"):
        load_tokenizer(str(path))


@pytest.mark.parametrize("content", [b"{not json", b'{"kind": "mystery"}', b"\xff\xfe\x00garbage"])
def test_load_tokenizer_garbage_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.json"
    path.write_bytes(content)
    with pytest.raises(TokenizerError, match=r"garbage\.json") as exc:
        load_tokenizer(str(path))
    assert "\n" not in str(exc.value)
    assert isinstance(exc.value, ValueError)


# --- training input validation ---------------------------------------------------------------


@pytest.mark.parametrize("vocab", [0, 256, 65537])
def test_train_bpe_rejects_bad_vocab(tmp_path: Path, vocab: int) -> None:
    paths = _write_corpus(tmp_path, n_files=1, lines=5)
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(paths, vocab_size=vocab)


def test_train_bpe_rejects_binary_file(tmp_path: Path) -> None:
    paths = _write_corpus(tmp_path, n_files=1, lines=5)
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"ELF\x00\x01\x02" * 100)
    with pytest.raises(ValueError, match=r"blob\.bin: not a UTF-8 text file"):
        train_bpe([*paths, binary], vocab_size=300)


def test_train_bpe_rejects_invalid_utf8(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt: not a UTF-8 text file"):
        train_bpe([bad], vocab_size=300)


def test_train_bpe_rejects_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.txt: empty file"):
        train_bpe([empty], vocab_size=300)


def test_train_bpe_rejects_no_input(tmp_path: Path) -> None:
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="no training text"):
        train_bpe([tmp_path / "empty_dir"], vocab_size=300)


def test_read_text_file(tmp_path: Path) -> None:
    p = tmp_path / "a.txt"
    p.write_bytes("\ufeffhé 🎉\n".encode())
    assert read_text_file(p) == "hé 🎉\n"


# --- iter_text_files -------------------------------------------------------------------------


def test_iter_text_files_order_and_hidden(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("z")
    (tmp_path / "b" / "a.txt").write_text("a")
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "c.txt").write_text("c")
    (tmp_path / ".hidden.txt").write_text("h")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("x")
    (tmp_path / "b" / ".cache").mkdir()
    (tmp_path / "b" / ".cache" / "x.txt").write_text("x")
    extra = tmp_path / ".explicit.txt"
    extra.write_text("e")

    files = iter_text_files([tmp_path, extra, tmp_path / "c.txt"])
    rel = [p.relative_to(tmp_path).as_posix() for p in files]
    assert rel == ["a.txt", "b/a.txt", "b/z.txt", "c.txt", ".explicit.txt"]


def test_iter_text_files_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nope: no such file or directory"):
        iter_text_files([tmp_path / "nope"])
