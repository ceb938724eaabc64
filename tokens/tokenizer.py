"""Tokenizers: a fixed byte-level one and a trainable byte-level BPE one.

Both map text to a 1-D array of unsigned integer ids and back, and both serialise to a small
self-describing JSON document (no pickle) so a tokenizer can be stored beside each checkpoint and
rebuilt exactly. This module is also the one place that reads training text from disk
(:func:`read_text_file`, :func:`iter_text_files`) so every caller applies the same rules.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer as HfTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from crystalline.durable import write_atomic

__all__ = [
    "MAX_BPE_VOCAB",
    "MIN_BPE_VOCAB",
    "BpeTokenizer",
    "ByteTokenizer",
    "TokenIds",
    "Tokenizer",
    "TokenizerError",
    "ids_dtype",
    "iter_text_files",
    "load_tokenizer",
    "read_text_file",
    "save_tokenizer",
    "tokenizer_from_json",
    "train_bpe",
    "train_bpe_texts",
]

#: Smallest BPE vocabulary: the 256 byte symbols plus at least one merge.
MIN_BPE_VOCAB = 257
#: Largest trainable BPE vocabulary, so that ids always fit in uint16.
MAX_BPE_VOCAB = 65536
#: Version of the JSON document written by :meth:`Tokenizer.to_json`.
_FORMAT_VERSION = 1

#: Anything :meth:`Tokenizer.decode` accepts: a sequence of ints or an integer array.
TokenIds = Sequence[int] | npt.NDArray[np.integer[Any]]

_SURROGATES = re.compile("[\ud800-\udfff]")


class TokenizerError(ValueError):
    """A tokenizer file or JSON document could not be loaded (missing, malformed or of unknown kind)."""


def ids_dtype(vocab_size: int) -> type[np.unsignedinteger[Any]]:
    """Return the smallest id dtype for a vocabulary: uint16 up to 65536 ids, else uint32.

    Keeping ids in uint16 halves the memory of token buffers shared between processes.
    """
    return np.uint16 if vocab_size <= 65536 else np.uint32


def _replace_surrogates(text: str) -> str:
    """Replace lone surrogates (which are not encodable as UTF-8) with U+FFFD."""
    return _SURROGATES.sub("\ufffd", text)


def _check_ids(ids: TokenIds, vocab_size: int) -> npt.NDArray[np.int64]:
    """Convert ``ids`` to a 1-D int64 array, raising ValueError if any id is outside the vocabulary."""
    arr = np.asarray(ids)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"token ids must be integers, got dtype {arr.dtype}")
    flat = arr.reshape(-1).astype(np.int64, copy=False)
    lo, hi = int(flat.min()), int(flat.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"token id {bad} is outside the vocabulary [0, {vocab_size})")
    return flat


class Tokenizer(ABC):
    """Common interface of all tokenizers: text <-> 1-D unsigned id arrays, plus JSON serialisation."""

    #: "bytes" or "bpe"; stored in the JSON document so it can be rebuilt.
    kind: ClassVar[str]

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of distinct ids; every id is in ``range(vocab_size)``."""

    @property
    def dtype(self) -> type[np.unsignedinteger[Any]]:
        """The dtype of arrays returned by :meth:`encode` (uint16 unless the vocabulary is larger)."""
        return ids_dtype(self.vocab_size)

    @abstractmethod
    def encode(self, text: str) -> npt.NDArray[np.unsignedinteger[Any]]:
        """Encode ``text`` to a 1-D id array; lone surrogates are encoded as U+FFFD."""

    @abstractmethod
    def decode(self, ids: TokenIds) -> str:
        """Decode ids to text; invalid UTF-8 is replaced with U+FFFD, out-of-range ids raise ValueError."""

    @abstractmethod
    def to_json(self) -> str:
        """Serialise to a JSON document with a ``"kind"`` key, readable by :func:`tokenizer_from_json`."""


class ByteTokenizer(Tokenizer):
    """Byte-level tokenizer: ids are the UTF-8 bytes of the text, vocabulary 256, nothing to train."""

    kind: ClassVar[str] = "bytes"

    @property
    def vocab_size(self) -> int:
        """Always 256, one id per byte value."""
        return 256

    def encode(self, text: str) -> npt.NDArray[np.unsignedinteger[Any]]:
        """Return the UTF-8 bytes of ``text`` as uint16 ids (one vectorised copy, no Python loop)."""
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            data = _replace_surrogates(text).encode("utf-8")
        return np.frombuffer(data, dtype=np.uint8).astype(np.uint16)

    def decode(self, ids: TokenIds) -> str:
        """Join the byte ids and decode them as UTF-8, replacing invalid sequences."""
        arr = _check_ids(ids, 256)
        return arr.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def to_json(self) -> str:
        """Serialise as ``{"kind": "bytes", ...}``; there is no state beyond the kind."""
        return json.dumps({"kind": self.kind, "version": _FORMAT_VERSION, "vocab_size": 256})

    def __repr__(self) -> str:
        return "ByteTokenizer()"


class BpeTokenizer(Tokenizer):
    """Byte-level BPE tokenizer wrapping a HuggingFace ``tokenizers.Tokenizer``.

    The byte-level pre-tokenizer maps every byte to a symbol, so any text is encodable and
    ``decode(encode(s)) == s`` holds exactly; the Rust implementation keeps encoding and training fast.
    """

    kind: ClassVar[str] = "bpe"

    def __init__(self, tokenizer: HfTokenizer) -> None:
        """Wrap an existing library tokenizer, which must use a BPE model."""
        if not isinstance(tokenizer.model, models.BPE):
            raise TokenizerError(f"expected a BPE model, got {type(tokenizer.model).__name__}")
        self._tok = tokenizer
        self._vocab_size = int(tokenizer.get_vocab_size(with_added_tokens=True))

    @property
    def hf_tokenizer(self) -> HfTokenizer:
        """The wrapped library tokenizer (for callers needing features beyond this interface)."""
        return self._tok

    @property
    def vocab_size(self) -> int:
        """Number of ids actually in the vocabulary (may be below the size requested at training)."""
        return self._vocab_size

    def encode(self, text: str) -> npt.NDArray[np.unsignedinteger[Any]]:
        """Encode ``text`` without special tokens into a 1-D id array."""
        try:
            ids = self._tok.encode(text, add_special_tokens=False).ids
        except TypeError:
            # The library rejects strings holding lone surrogates; encode them as U+FFFD instead.
            ids = self._tok.encode(_replace_surrogates(text), add_special_tokens=False).ids
        return np.asarray(ids, dtype=self.dtype)

    def decode(self, ids: TokenIds) -> str:
        """Decode ids back to text; partial UTF-8 sequences come out as U+FFFD."""
        arr = _check_ids(ids, self._vocab_size)
        return str(self._tok.decode(arr.tolist(), skip_special_tokens=False))

    def to_json(self) -> str:
        """Serialise as ``{"kind": "bpe", "tokenizer": <the library's tokenizer.json object>}``."""
        inner = json.loads(self._tok.to_str())
        return json.dumps({"kind": self.kind, "version": _FORMAT_VERSION, "tokenizer": inner})

    def __repr__(self) -> str:
        return f"BpeTokenizer(vocab_size={self._vocab_size})"


def _new_bpe() -> HfTokenizer:
    """Build an untrained byte-level BPE tokenizer configured for an exact round trip."""
    tok = HfTokenizer(models.BPE())
    # No prefix space: a leading space would be added on encode and survive decode.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def tokenizer_from_json(text: str) -> Tokenizer:
    """Rebuild a tokenizer from :meth:`Tokenizer.to_json` output; raises TokenizerError if invalid."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise TokenizerError(f"not valid JSON ({e.msg} at line {e.lineno})") from e
    if not isinstance(obj, dict) or "kind" not in obj:
        raise TokenizerError('not a tokenizer document (no "kind" key)')
    version = obj.get("version", _FORMAT_VERSION)
    if version != _FORMAT_VERSION:
        raise TokenizerError(f"unsupported tokenizer format version {version!r}")
    kind = obj["kind"]
    if kind == ByteTokenizer.kind:
        if obj.get("vocab_size", 256) != 256:
            raise TokenizerError(f"byte tokenizer with vocab_size {obj['vocab_size']!r} (expected 256)")
        return ByteTokenizer()
    if kind == BpeTokenizer.kind:
        inner = obj.get("tokenizer")
        if isinstance(inner, dict):
            inner = json.dumps(inner)
        if not isinstance(inner, str):
            raise TokenizerError('bpe tokenizer document has no "tokenizer" object')
        try:
            hf = HfTokenizer.from_str(inner)
        except Exception as e:  # the library raises a bare Exception on malformed input
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise TokenizerError(f"invalid bpe tokenizer: {reason}") from e
        return BpeTokenizer(hf)
    raise TokenizerError(f"unknown tokenizer kind {kind!r}")


def load_tokenizer(spec: str) -> Tokenizer:
    """Return a tokenizer from ``spec``: ``"bytes"``, or the path of a file written by save_tokenizer.

    Any failure (missing file, bad JSON, unknown kind) raises TokenizerError naming the path.
    """
    if spec == ByteTokenizer.kind:
        return ByteTokenizer()
    path = Path(spec)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise TokenizerError(f"{path}: tokenizer file not found") from e
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else "not a UTF-8 text file"
        raise TokenizerError(f"{path}: cannot read tokenizer file ({reason})") from e
    try:
        return tokenizer_from_json(text)
    except TokenizerError as e:
        raise TokenizerError(f"{path}: {e}") from e


def save_tokenizer(tok: Tokenizer, path: Path) -> None:
    """Write ``tok.to_json()`` to ``path`` atomically, so a crash never leaves a truncated file.

    The data goes to a temporary file in the same directory, is fsynced, renamed over ``path``,
    and the directory is fsynced so the rename itself is durable.
    """
    write_atomic(Path(path), tok.to_json().encode("utf-8"), sync_dir=True)


def read_text_file(path: Path) -> str:
    """Read ``path`` as UTF-8 text (a leading BOM is dropped); the one way training text is read.

    Raises ValueError("<path>: empty file") for an empty file and ValueError("<path>: not a UTF-8
    text file") if it holds NUL bytes or bytes that are not valid UTF-8, so binaries are never trained on.
    """
    data = Path(path).read_bytes()
    if not data:
        raise ValueError(f"{path}: empty file")
    if b"\x00" in data:
        raise ValueError(f"{path}: not a UTF-8 text file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file") from e
    if not text:
        raise ValueError(f"{path}: empty file")
    return text


def _walk(directory: Path, out: list[Path]) -> None:
    """Append the regular files under ``directory`` depth-first in name order, skipping hidden entries.

    Symlinked directories are not followed, to avoid cycles.
    """
    for entry in sorted(directory.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and not entry.is_symlink():
            _walk(entry, out)
        elif entry.is_file():
            out.append(entry)


def iter_text_files(paths: Sequence[Path]) -> list[Path]:
    """Expand files and folders into a list of regular files, in argument order then name order.

    Folders are walked recursively (hidden files and folders skipped); files named explicitly are kept
    even if hidden. Duplicates are dropped. A missing path raises ValueError("<path>: no such file or
    directory").
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            _walk(path, found)
        elif path.is_file():
            found.append(path)
        elif path.exists() or path.is_symlink():
            raise ValueError(f"{path}: not a regular file or directory")
        else:
            raise ValueError(f"{path}: no such file or directory")
    seen: set[Path] = set()
    unique: list[Path] = []
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def _check_vocab(vocab_size: int) -> None:
    if not MIN_BPE_VOCAB <= vocab_size <= MAX_BPE_VOCAB:
        raise ValueError(
            f"BPE vocab_size must be between {MIN_BPE_VOCAB} and {MAX_BPE_VOCAB}, got {vocab_size}"
        )


def train_bpe(paths: Sequence[Path], vocab_size: int) -> BpeTokenizer:
    """Train a byte-level BPE tokenizer with at most ``vocab_size`` ids on the given files and folders.

    ``vocab_size`` must be in [257, 65536] so ids fit in uint16. Every input file must be non-empty
    UTF-8 text (see :func:`read_text_file`), else ValueError naming it. Pairs seen only once are not
    merged, so a small corpus can yield a smaller vocabulary than requested.
    """
    _check_vocab(vocab_size)
    files = iter_text_files(paths)
    if not files:
        raise ValueError("no training text: the given paths contain no files")
    # One file at a time keeps memory bounded; a ValueError raised here propagates out of training.
    return train_bpe_texts((read_text_file(f) for f in files), vocab_size, len(files))


def train_bpe_texts(texts: Iterator[str], vocab_size: int, length: int | None = None) -> BpeTokenizer:
    """Train a byte-level BPE tokenizer with at most ``vocab_size`` ids on ``texts`` (``length``:
    how many, for the library's progress accounting)."""
    _check_vocab(vocab_size)
    tok = _new_bpe()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    return BpeTokenizer(tok)
