"""The base preset's learned vocabulary (tokens/learned_vocab.py): learned once from the first
bytes of the byte-level store, stored atomically and never relearned; the derived store holds
the same documents re-tokenized, shard by shard, and resumes where it stopped."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import numpy as np
import pytest
from tokenizers import pre_tokenizers

from crystalline.tokens import learned_vocab
from crystalline.tokens.learned_vocab import DerivedStore, learn_once, vocab_path
from crystalline.tokens.token_store import PendingDocument, StoreReader, TokenStore
from crystalline.tokens.tokenizer import ByteTokenizer, TokenizerError, load_tokenizer
from tests.conftest import make_corpus

BYTES = ByteTokenizer()


def add_shard(store: TokenStore, name: str, texts: list[str], split: str = "train") -> None:
    store.append(
        [
            PendingDocument(
                f"{name}-{i}", f"e-{name}-{i}", f"file:{name}", split, BYTES.encode(t), group=name
            )
            for i, t in enumerate(texts)
        ]
    )


@pytest.fixture
def byte_store(tmp_path: Path) -> Path:
    directory = tmp_path / "state" / "ingest" / "tokens"
    store = TokenStore(directory, BYTES.dtype)
    add_shard(store, "a", [make_corpus(20_000, seed=i) for i in range(3)])
    add_shard(store, "b", [make_corpus(5_000, seed=9)], split="val")
    return directory


def test_the_vocabulary_waits_for_enough_text_then_is_learned_once(byte_store: Path, tmp_path: Path) -> None:
    path = vocab_path(tmp_path / "state")
    assert learn_once(byte_store, path, vocab_size=400, min_bytes=100_000) is None  # 60 kB of train text
    assert not path.exists()
    learned = learn_once(byte_store, path, vocab_size=400, min_bytes=50_000)
    assert learned is not None and learned.kind == "bpe" and 300 < learned.vocab_size <= 400
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.json"]  # no temporary file left
    first = path.read_bytes()
    assert json.loads(first)["kind"] == "bpe"

    # a restart with more (and different) text, or other settings, reads the file: never relearned
    add_shard(TokenStore(byte_store, BYTES.dtype), "c", ["zebra quagga " * 5000])
    again = learn_once(byte_store, path, vocab_size=1000, min_bytes=10_000)
    assert again is not None and again.to_json() == learned.to_json()
    assert path.read_bytes() == first
    text = make_corpus(2_000, seed=77)
    assert again.decode(again.encode(text)) == text
    assert len(again.encode(text)) < len(text) / 2  # it learned the corpus's words


def test_a_damaged_vocabulary_file_is_an_error_not_relearned(byte_store: Path, tmp_path: Path) -> None:
    path = vocab_path(tmp_path / "state")
    path.parent.mkdir(parents=True)
    path.write_text('{"kind": "bpe"', encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"tokenizer\.json: not valid JSON"):
        learn_once(byte_store, path, vocab_size=400, min_bytes=10)
    assert path.read_text(encoding="utf-8") == '{"kind": "bpe"'


def test_the_derived_store_holds_the_same_documents_and_resumes(byte_store: Path, tmp_path: Path) -> None:
    tokenizer = learn_once(byte_store, vocab_path(tmp_path), vocab_size=400, min_bytes=50_000)
    assert tokenizer is not None
    derived = tmp_path / "tokens-bpe"
    store = DerivedStore(byte_store, derived, tokenizer)
    assert store.step(max_shards=1) == 3  # the first shard only
    assert store.step() == 1 and store.step() == 0

    add_shard(TokenStore(byte_store, BYTES.dtype), "c", ["a new document arrives.\n" * 50])
    again = DerivedStore(byte_store, derived, tokenizer)  # a restart: nothing derived twice
    assert again.step() == 1 and again.step() == 0

    source, out = StoreReader(byte_store), StoreReader(derived)
    source.refresh(), out.refresh()
    assert [d.doc_id for d in out.documents] == [d.doc_id for d in source.documents]
    assert out.dtype == np.uint16
    for a, b in zip(source.documents, out.documents, strict=True):
        assert (a.split, a.group, a.source, a.entry) == (b.split, b.group, b.source, b.entry)
        assert tokenizer.decode(out.tokens(b)) == BYTES.decode(source.tokens(a))
    assert sum(d.length for d in out.documents) < sum(d.length for d in source.documents) / 2


def test_a_derived_store_of_other_documents_is_refused(byte_store: Path, tmp_path: Path) -> None:
    tokenizer = learn_once(byte_store, vocab_path(tmp_path), vocab_size=400, min_bytes=50_000)
    assert tokenizer is not None
    other = tmp_path / "other"
    add_shard(TokenStore(other, np.uint16), "x", ["something else entirely"])
    with pytest.raises(ValueError, match="does not hold a prefix"):
        DerivedStore(byte_store, other, tokenizer)
    with pytest.raises(TokenizerError, match="not a bytes one"):
        DerivedStore(byte_store, tmp_path / "d", load_tokenizer("bytes"))


MARKS = "\uff0c\u3002"  # the full-width comma and full stop


def chinese(chars: int, seed: int = 0) -> str:
    """Text like Chinese: clauses of CJK ideographs ended by a full-width comma or full stop, no spaces."""
    rng = random.Random(seed)
    clauses: list[str] = []
    while sum(map(len, clauses)) < chars:
        clause = "".join(chr(0x4E00 + rng.randrange(3000)) for _ in range(rng.randint(4, 14)))
        clauses.append(clause + rng.choice(MARKS))
    return "".join(clauses)


def test_text_cut_into_pieces_learns_and_encodes_as_whole(
    byte_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Learning and deriving read their text in pieces (to look for a stop between them): the
    pieces give the vocabulary and the ids that the whole texts give (in Chinese too, cut at its
    punctuation)."""
    odd = "  Ünïcödé   wörds\t\ttabs\n\n\n  spaces   and-dashes_under 3.14 x\u00a0y\u2003z 漢字かな文。 " * 40
    zh = chinese(6_000)
    add_shard(TokenStore(byte_store, BYTES.dtype), "odd", [odd, zh])
    assert len(list(learned_vocab.pieces(zh, 50))) > 100
    assert "".join(learned_vocab.pieces(odd, 50)) == odd and len(list(learned_vocab.pieces(odd, 50))) > 10
    made, whole, default = {}, 10**9, learned_vocab.PIECE_CHARS  # whole: no text here is that long
    text_bytes = 60_000 + len(odd.encode()) + len(zh.encode())  # all the training text
    for size in (whole, default, 50):
        monkeypatch.setattr(learned_vocab, "PIECE_CHARS", size)
        path = vocab_path(tmp_path / str(size))
        tokenizer = learn_once(byte_store, path, vocab_size=400, min_bytes=text_bytes)
        assert tokenizer is not None
        DerivedStore(byte_store, tmp_path / str(size) / "tokens-bpe", tokenizer).step()
        out = StoreReader(tmp_path / str(size) / "tokens-bpe")
        out.refresh()
        made[size] = (tokenizer.to_json(), [out.tokens(d).tolist() for d in out.documents])
    assert made[50] == made[default] == made[whole]


BYTE_LEVEL = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def pre_tokens(text: str) -> list[str]:
    return [token for token, _ in BYTE_LEVEL.pre_tokenize_str(text)]


def test_pieces_keep_the_pre_tokens_of_the_whole_text_in_any_script(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fuzz: a text cut where pieces cuts it (spaces, and after a letter or digit before a
    punctuation mark) splits into the same pre-tokens of the byte-level BPE as whole, so the
    vocabulary and the ids are the same (a rule that also cut between two marks, as in a full
    stop followed by a full-width comma, fails here)."""
    monkeypatch.setattr(learned_vocab, "HARD_CUT", 10**9)  # only the safe cuts here
    rng = random.Random(1)
    alphabet = [*"ab c_'s 1\t\n.-,!?", "\u00a0", "\u2003", "é", "漢", "字", *MARKS, "、", "「", "」"]
    alphabet += ["\U0001f600", "٣"]
    alphabet += ["ั", "ก", "\u0301", "\u2019", "  ", "\r\n", "ⅷ", "²", "㆒", "\u0378", "'re", "'t"]
    cuts = 0
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(100, 2000)))
        whole = pre_tokens(text)
        for size in (3, 17, 64):
            parts = list(learned_vocab.pieces(text, size))
            assert "".join(parts) == text
            assert [t for part in parts for t in pre_tokens(part)] == whole, (text, size)
            cuts += len(parts) - 1
    assert cuts > 10_000


def test_text_without_spaces_is_cut_at_punctuation_and_as_a_last_resort_hard() -> None:
    text = chinese(50_000)
    parts = list(learned_vocab.pieces(text, 4096))
    assert "".join(parts) == text and len(parts) >= 12
    assert all(4096 <= len(p) < 4096 + 16 for p in parts[:-1])
    assert all(p[0] in MARKS for p in parts[1:])  # cut before a mark, after an ideograph
    assert [t for part in parts for t in pre_tokens(part)] == pre_tokens(text)
    # no space and no punctuation at all: cut at HARD_CUT pieces' length, one pre-token in two
    run = "漢" * 50_000
    assert [len(p) for p in learned_vocab.pieces(run, 4096)] == [4 * 4096] * 3 + [50_000 - 12 * 4096]


class StopOnCheck(threading.Event):
    """A stop that comes while the learning pulls text: set from the ``n``th time it is asked."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.asked, self.n = 0, n

    def is_set(self) -> bool:
        self.asked += 1
        return self.asked >= self.n or super().is_set()


@pytest.mark.timeout(120)
def test_a_stop_ends_learning_from_text_without_spaces(tmp_path: Path) -> None:
    """A Chinese document, one long text without spaces: the stop is seen at its next piece
    (before, the document was one piece: learned to its end and the vocabulary written)."""
    directory = tmp_path / "tokens"
    text = chinese(60_000)
    add_shard(TokenStore(directory, BYTES.dtype), "zh", [text])
    path = vocab_path(tmp_path)
    with pytest.raises(learned_vocab.Stopped):
        learn_once(directory, path, vocab_size=400, min_bytes=len(text.encode()), stop=StopOnCheck(3))
    assert not path.exists()
    assert learn_once(directory, path, vocab_size=400, min_bytes=len(text.encode())) is not None


def test_a_stop_ends_deriving_at_the_next_piece_and_writes_nothing_of_its_shard(
    byte_store: Path, tmp_path: Path
) -> None:
    tokenizer = learn_once(byte_store, vocab_path(tmp_path), vocab_size=400, min_bytes=50_000)
    assert tokenizer is not None
    stop = threading.Event()
    stop.set()
    store = DerivedStore(byte_store, tmp_path / "tokens-bpe", tokenizer)
    with pytest.raises(learned_vocab.Stopped):
        store.step(stop=stop)
    assert store.count == 0 and not any((tmp_path / "tokens-bpe").glob("shard-*"))
    assert DerivedStore(byte_store, tmp_path / "tokens-bpe", tokenizer).step() == 4  # all of it, later
