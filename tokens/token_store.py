"""The token store: append-only shards of token ids plus a JSON index per shard.

``shard-NNNNNN.bin`` holds the ids of several documents back to back (uint16 when the
vocabulary fits); ``shard-NNNNNN.json`` lists each document (id, entry, source, offset,
length, split, fingerprints, and the source group it is evaluated under; shards written before
the group have none and readers derive it, ``crystalline.documents.source_group``). Both are
written to temporary names, fsynced and renamed, the index last, then the directory is
fsynced: a shard exists for readers exactly when its index does, and shards never change
afterwards, so a reader in another process (the supervisor's ring, control's validation) needs
no lock: it lists ``*.json`` and memory-maps the matching ``.bin``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crystalline.durable import fsync_dir, write_atomic

log = logging.getLogger("crystalline.tokens.token_store")

INDEX_VERSION = 1
_NAME = re.compile(r"^shard-(\d{6,})\.(bin|json)$")


@dataclass(frozen=True)
class StoredDocument:
    """One document's place in the store."""

    doc_id: str
    entry: str  # the registry key of the submission that produced it
    source: str
    shard: int
    offset: int  # in tokens, within the shard
    length: int
    split: str  # "train" or "val"
    content_hash: str = ""
    simhash: int = 0
    minhash: list[int] = field(default_factory=list)  # LSH bands, to rebuild the index after a crash
    minhash_signature: str = ""  # base64 of the packed MinHash signature, likewise ("" before)
    group: str = ""  # the source it is evaluated under ("" in shards before it: source_group derives one)


@dataclass
class PendingDocument:
    """A document on its way into a shard."""

    doc_id: str
    entry: str
    source: str
    split: str
    ids: np.ndarray
    content_hash: str = ""
    simhash: int = 0
    minhash: list[int] = field(default_factory=list)
    minhash_signature: str = ""
    group: str = ""


def shard_seqs(directory: Path) -> list[int]:
    """Sequence numbers of the committed shards (those with an index), ascending."""
    out = []
    for p in directory.iterdir():
        m = _NAME.match(p.name)
        if m and m.group(2) == "json":
            out.append(int(m.group(1)))
    return sorted(out)


def read_index(directory: Path, seq: int) -> tuple[np.dtype[Any], list[StoredDocument]]:
    """The dtype and documents of committed shard ``seq``."""
    meta = json.loads((directory / f"shard-{seq:06d}.json").read_text(encoding="utf-8"))
    if meta.get("version") != INDEX_VERSION:
        raise ValueError(f"shard {seq}: unsupported index version {meta.get('version')!r}")
    docs = [StoredDocument(shard=seq, **d) for d in meta["documents"]]
    return np.dtype(meta["dtype"]), docs


class TokenStore:
    """The writer side: one process (the ingestor) appends shards."""

    def __init__(self, directory: Path, dtype: np.dtype[Any] | type[np.unsignedinteger[Any]]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.dtype = np.dtype(dtype)
        self._sweep_uncommitted()
        seqs = [int(m.group(1)) for p in self.directory.iterdir() if (m := _NAME.match(p.name))]
        self._next = max(seqs, default=0) + 1

    def _sweep_uncommitted(self) -> None:
        """Remove data files whose index never landed (a crash inside :meth:`append`): their
        documents were never marked done, so they are still in the spool or drop folder."""
        for p in self.directory.iterdir():
            m = _NAME.match(p.name)
            if m and m.group(2) == "bin" and not p.with_suffix(".json").exists():
                log.warning("removing uncommitted shard data %s (its documents will be redone)", p.name)
                p.unlink()
            elif p.name.startswith(".") and p.name.endswith(".tmp"):
                p.unlink()

    def append(self, docs: list[PendingDocument]) -> list[StoredDocument]:
        """Write ``docs`` as one new shard, durably; returns their places. Empty input: no shard."""
        if not docs:
            return []
        seq = self._next
        self._next += 1
        parts = [np.ascontiguousarray(d.ids, dtype=self.dtype) for d in docs]
        stored: list[StoredDocument] = []
        offset = 0
        for d, ids in zip(docs, parts, strict=True):
            stored.append(
                StoredDocument(
                    d.doc_id,
                    d.entry,
                    d.source,
                    seq,
                    offset,
                    len(ids),
                    d.split,
                    d.content_hash,
                    d.simhash,
                    d.minhash,
                    d.minhash_signature,
                    d.group,
                )
            )
            offset += len(ids)
        base = self.directory / f"shard-{seq:06d}"
        index = {
            "version": INDEX_VERSION,
            "dtype": self.dtype.str,
            "tokens": offset,
            "documents": [{k: v for k, v in s.__dict__.items() if k != "shard"} for s in stored],
        }
        try:
            _write_parts(base.with_suffix(".bin"), parts)
            write_atomic(base.with_suffix(".json"), json.dumps(index).encode("utf-8"))
        except BaseException:
            # not committed (no index): remove the data file and reuse the number, so a retry
            # after a full disk writes the same shard again and nothing is left behind
            base.with_suffix(".bin").unlink(missing_ok=True)
            self._next = seq
            raise
        fsync_dir(self.directory)
        return stored


# The default for a reader on its own; the daemon's control process sizes its readers' caps
# from RLIMIT_NOFILE instead (crystalline.descriptors), one descriptor per map.
def _write_parts(path: Path, parts: list[np.ndarray]) -> None:
    """Write the arrays back to back and fsync, without joining them first (a join copied a
    batch's ids twice: the ingest thread peaked at 4x them). No temp file: the data file is not
    committed until its index is renamed into place, and a partial one is swept at start."""
    with open(path, "wb") as f:
        for part in parts:
            f.write(part.data.cast("B"))
        f.flush()
        os.fsync(f.fileno())


MAX_OPEN_SHARDS = 64


class StoreReader:
    """The reader side, usable from any process: sees committed shards only, in commit order."""

    def __init__(self, directory: Path, max_open_shards: int = MAX_OPEN_SHARDS) -> None:
        self.directory = Path(directory)
        self.documents: list[StoredDocument] = []
        self._sizes: dict[int, int] = {}  # committed shard -> token count
        # Each memory map holds a file descriptor: a long-running reader over a store of
        # thousands of small shards (one per ingest batch) must not keep one per shard.
        self._open: OrderedDict[int, np.ndarray] = OrderedDict()
        self.max_open_shards = max_open_shards
        self.dtype: np.dtype[Any] | None = None

    def refresh(self) -> int:
        """Pick up shards committed since the last call; returns how many documents were added."""
        if not self.directory.exists():
            return 0
        added = 0
        for seq in shard_seqs(self.directory):
            if seq in self._sizes:
                continue
            dtype, docs = read_index(self.directory, seq)
            if self.dtype is None:
                self.dtype = dtype
            elif dtype != self.dtype:
                raise ValueError(f"shard {seq} holds {dtype} ids, the store {self.dtype}")
            self._sizes[seq] = sum(d.length for d in docs)
            self.documents.extend(docs)
            added += len(docs)
        return added

    def shard(self, seq: int) -> np.ndarray:
        """All ids of committed shard ``seq`` (read-only, memory-mapped; the least recently used
        maps beyond ``max_open_shards`` are dropped and reopened on demand)."""
        arr = self._open.get(seq)
        if arr is not None:
            self._open.move_to_end(seq)
            return arr
        # room first, then the new map: never more than the cap open (it may have been lowered)
        while self._open and len(self._open) >= max(1, self.max_open_shards):
            self._open.popitem(last=False)
        count = self._sizes[seq]
        dtype = self.dtype or np.dtype(np.uint16)
        path = self.directory / f"shard-{seq:06d}.bin"
        arr = np.memmap(path, dtype=dtype, mode="r", shape=(count,)) if count else np.zeros(0, dtype=dtype)
        self._open[seq] = arr
        return arr

    def tokens(self, doc: StoredDocument) -> np.ndarray:
        """The ids of one document (a read-only view of the memory-mapped shard)."""
        return self.shard(doc.shard)[doc.offset : doc.offset + doc.length]

    def validation_tokens(self) -> np.ndarray:
        """All held-out tokens, concatenated in commit order (for the validation loss). Copied
        one document at a time: a list of views would keep every shard's map (and descriptor)
        open at once, whatever ``max_open_shards`` says."""
        docs = [d for d in self.documents if d.split == "val"]
        out = np.empty(sum(d.length for d in docs), dtype=self.dtype or np.uint16)
        pos = 0
        for d in docs:
            out[pos : pos + d.length] = self.tokens(d)
            pos += d.length
        return out
