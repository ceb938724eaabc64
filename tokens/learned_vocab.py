"""The learned vocabulary of the daemon's ``base`` preset: a byte-level BPE learned once from the
first text the daemon ingests, then fixed, and the token store re-tokenized with it.

Ingest always writes the byte-level store (``<state>/ingest/tokens``: the ids are the text's
UTF-8 bytes, so the store is the text itself and needs no vocabulary). When its training
documents, in commit order, hold ``min_bytes``, ``learn_once`` learns the vocabulary from the
first ``min_bytes`` of them and writes it atomically (``tokens.tokenizer.save_tokenizer``:
temporary file, fsync, rename) to ``<state>/vocab/tokenizer.json``; from then on that file is
read, never learned again, whatever arrives later or however often the daemon restarts.
``DerivedStore`` then re-tokenizes each byte-level shard once, in commit order, into the store the
model trains on (``<state>/ingest/tokens-bpe``): one shard per shard, the same documents with
the same ids, sources, splits and groups, so the windows, validation, replay policy and
surprise of ``tokens.windows`` work on it unchanged. A shard is written atomically (its index
last), and how far derivation got is the derived store's document count, so a crash between
shards resumes where it stopped. Training waits until the vocabulary exists and the derived
store holds a window; before that, ingest goes on filling the byte-level store.

Why a derived store and not BPE applied as windows are cut: a window is a fixed number of
tokens, which is a variable number of bytes under BPE, and every reader of the store (the
supervisor's ring, validation per source, surprise, fresh-tokens of the replay policy) counts
tokens; encoding at cut time would make each of them encode, and re-encode a document at every
window boundary. Re-tokenizing once costs one pass of the Rust encoder over each document
(README, "Model presets": its throughput) and the derived shards' disk space (uint16 ids, about
half the bytes).
"""

from __future__ import annotations

import logging
import re
import threading
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .token_store import PendingDocument, StoredDocument, StoreReader, TokenStore
from .tokenizer import Tokenizer, TokenizerError, load_tokenizer, save_tokenizer, train_bpe_texts

log = logging.getLogger("crystalline.tokens.learned_vocab")

VOCAB_SIZE = 8192
MIN_BYTES = 32 * 2**20  # the first 32 MiB of training text the daemon ingests
# what a derived document keeps of its byte-level one (all but its ids)
KEPT = (
    "doc_id",
    "entry",
    "source",
    "split",
    "content_hash",
    "simhash",
    "minhash",
    "minhash_signature",
    "group",
)


LEARNED = "learned"  # [train] tokenizer: the vocabulary learned in the state directory
# learning and deriving look for a stop between pieces of this much text. Small, because the
# tokenizers library pulls the texts it learns from 256 at a time: with 1 MiB pieces it had all
# 32 MiB in 0.14 s and learned on for 27 s without asking again; with 4 KiB it came back at most
# 0.75 s apart and learned in 15 s (32 MiB of 100k distinct words, loaded machine). Encoding 4 KiB
# pieces ran at 1.2 MiB/s against 0.6 for whole 1 MiB texts.
PIECE_CHARS = 4096
# Where a text can be cut so that the learning sees the same words and the encoder gives the same
# ids: where the byte-level pre-tokenizer's split rule (GPT-2's, ``'s|'t|'re|'ve|'m|'ll|'d|
# ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+``, matched left to right, no lookbehind)
# always splits and the text before the cut splits alone as it does in the whole text. A space
# between two word characters starts a pre-token whatever precedes it; and no alternative matches
# across a letter or digit followed by a punctuation mark (Unicode P*: the full stop and commas
# of Chinese, . , ! ? ...): a letter run stops at the mark, and a contraction starts with an
# apostrophe, not after a letter. So texts without spaces (Chinese, Japanese) have cuts too. Both
# characters' categories are checked in Unicode 3.2 as well as in Python's, so that the regex
# library of tokenizers, on whatever Unicode version since, classes them the same.
_SPACE_CUT = re.compile(r"(?<=\w) (?=\w)")
_MARK_CUT = re.compile(r"(?<=[^\W_])(?=[^\w\s])")  # candidates, checked by _splits_before_mark
# a piece with no such cut within HARD_CUT * size characters is cut there anyway: the one
# pre-token across the cut is learned and encoded as two (README, "Model presets": how many ids
# that changes on real text)
HARD_CUT = 4


class Stopped(Exception):
    """Learning or deriving was asked to stop (the daemon is stopping): nothing of the pass in
    hand was written, and the next start takes it up from the beginning."""


def vocab_path(state_dir: Path) -> Path:
    return state_dir / "vocab" / "tokenizer.json"


def derived_dir(state_dir: Path) -> Path:
    """The store the model trains on under a learned vocabulary."""
    return state_dir / "ingest" / "tokens-bpe"


def train_bytes(reader: StoreReader) -> int:
    """Training text in a byte-level store (its refreshed documents), in bytes."""
    return sum(d.length for d in reader.documents if d.split == "train")


def text_of(reader: StoreReader, doc: StoredDocument, limit: int | None = None) -> str:
    """A byte-level document's text (its first ``limit`` bytes)."""
    return reader.tokens(doc)[:limit].astype(np.uint8).tobytes().decode("utf-8", errors="replace")


def _splits_before_mark(text: str, at: int) -> bool:
    """Whether ``text[at - 1]`` is a letter or digit and ``text[at]`` a punctuation mark, in
    Unicode 3.2 and in Python's Unicode."""
    before, mark = text[at - 1], text[at]
    return all(
        db.category(before)[0] in "LN" and db.category(mark)[0] == "P"
        for db in (unicodedata, unicodedata.ucd_3_2_0)
    )


def _safe_cut(text: str, begin: int, end: int) -> int | None:
    """The first position in ``[begin, end)`` where ``text`` can be cut keeping its pre-tokens."""
    space = _SPACE_CUT.search(text, begin, end)
    first = space.start() if space else end
    for mark in _MARK_CUT.finditer(text, begin, first):
        if _splits_before_mark(text, mark.start()):
            return mark.start()
    return space.start() if space else None


def pieces(text: str, size: int) -> Iterator[str]:
    """``text`` in pieces of ``size`` characters or a little more, each cut where the byte-level
    pre-tokenizer splits anyway (before a space between two word characters, or between a letter
    or digit and a punctuation mark): learned from or encoded piece by piece, it gives the
    vocabulary and the ids it gives whole. Where no such cut comes within ``HARD_CUT * size``
    characters, the piece is cut at that length: one pre-token there becomes two."""
    start = 0
    while len(text) - start > size:
        longest = start + HARD_CUT * size
        if len(text) <= longest:
            cut = _safe_cut(text, start + size, len(text))
            if cut is None:
                break
        else:
            cut = _safe_cut(text, start + size, longest + 1) or longest
        yield text[start:cut]
        start = cut
    yield text[start:]


def until_stopped(texts: Iterable[str], stop: threading.Event) -> Iterator[str]:
    """The pieces of ``texts``; Stopped before the next one once ``stop`` is set."""
    for text in texts:
        for piece in pieces(text, PIECE_CHARS):
            if stop.is_set():
                raise Stopped("stopped")
            yield piece


def first_texts(reader: StoreReader, limit: int) -> Iterator[str]:
    """The training documents' text in commit order, up to ``limit`` bytes (the last one cut)."""
    left = limit
    for doc in reader.documents:
        if left <= 0:
            return
        if doc.split == "train" and doc.length:
            yield text_of(reader, doc, left)
            left -= min(left, doc.length)


def learn_once(
    byte_store: Path,
    path: Path,
    vocab_size: int = VOCAB_SIZE,
    min_bytes: int = MIN_BYTES,
    stop: threading.Event | None = None,
) -> Tokenizer | None:
    """The vocabulary at ``path`` if it is there; else, once ``byte_store`` holds ``min_bytes``
    of training text, the vocabulary learned from the first ``min_bytes`` of it, written
    atomically to ``path``; None while there is less. A file that cannot be read is an error
    (TokenizerError naming it), never relearned over. ``stop`` set ends the learning when it next
    asks for text (Stopped, nothing written); the merges over the text pulled before it run to
    their end first (0.3-1.9 s for 8192 tokens from 32 MiB of 20k-300k distinct words; several
    seconds for Chinese, whose pre-tokens are whole clauses: README, "Model presets")."""
    if path.exists():
        return load_tokenizer(str(path))
    reader = StoreReader(byte_store)
    reader.refresh()
    have = train_bytes(reader)
    if have < min_bytes:
        return None
    log.info(
        "learning a %d-token vocabulary from the first %d bytes of %s", vocab_size, min_bytes, byte_store
    )
    texts = until_stopped(first_texts(reader, min_bytes), stop or threading.Event())
    tokenizer = train_bpe_texts(texts, vocab_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tokenizer(tokenizer, path)
    log.info("vocabulary of %d tokens written to %s; it stays fixed", tokenizer.vocab_size, path)
    return tokenizer


class DerivedStore:
    """The store the model trains on, re-tokenized from the byte-level store with the learned
    vocabulary, one shard per shard in commit order (``step`` adds the next ones)."""

    def __init__(self, byte_store: Path, derived: Path, tokenizer: Tokenizer) -> None:
        if tokenizer.kind != "bpe":
            raise TokenizerError(f"a derived store needs a learned vocabulary, not a {tokenizer.kind} one")
        self.tokenizer = tokenizer
        self.source, done = StoreReader(byte_store), StoreReader(derived)
        self.source.refresh()
        done.refresh()
        self.count = len(done.documents)  # the byte-level documents derived so far
        if [d.doc_id for d in done.documents] != [d.doc_id for d in self.source.documents[: self.count]]:
            raise ValueError(f"{derived} does not hold a prefix of {byte_store}'s documents")
        self.store = TokenStore(derived, tokenizer.dtype)

    def step(self, max_shards: int = 16, stop: threading.Event | None = None) -> int:
        """Re-tokenize the next byte-level shards not yet derived (at most ``max_shards``);
        returns how many documents were added. ``stop`` set ends it at the next piece of text
        (Stopped; the shard in hand is not written, the ones before it are)."""
        stop = stop or threading.Event()
        self.source.refresh()
        docs = self.source.documents[self.count :]
        added = 0
        for _ in range(max_shards):
            if not docs:
                break
            shard = [d for d in docs if d.shard == docs[0].shard]
            docs = docs[len(shard) :]
            pending = [
                PendingDocument(
                    ids=self._encode(text_of(self.source, d), stop), **{n: getattr(d, n) for n in KEPT}
                )
                for d in shard
            ]
            self.store.append(pending)
            self.count += len(shard)
            added += len(shard)
        return added

    def _encode(self, text: str, stop: threading.Event) -> np.ndarray[Any, Any]:
        """``text``'s ids, encoded piece by piece (the same ids as whole)."""
        return np.concatenate([self.tokenizer.encode(piece) for piece in until_stopped([text], stop)])
