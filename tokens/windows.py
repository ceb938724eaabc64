"""Training windows: the one place that cuts token streams into ``seq_len + 1`` windows, for the
daemon (from the token store) and for `crystalline train` (from text files).

For step ``s`` a generator seeded by ``(seed, s)`` draws ``batch_size`` window starts
(:func:`window_starts`): a share of the rows from the newest tokens of the stream (the store's
fresh documents), the rest uniformly from all of it (replay), or, under a per-source cap,
from each source in proportion to its tokens with none over the cap (:func:`capped_counts`).
Files have no "newest", so their share is 0 and every start is uniform. A batch is therefore
a pure function of (seed, step, the stream), and the stream of a store is fixed by how many of
its documents are visible: the store's commit order never changes, so the visible documents
are always a prefix of it
(:meth:`StoreWindows.visible`), and ``fill(step, out, documents=n)`` cuts a batch again
bit for bit.

Held-out documents (``tokens.held_out``) never train, so a store fed one document, or a few,
can find every one of them held out. Rather than wait for data that may never come, it then
trains as a single file does: on the earlier part of the held-out stream, validating on its
last ``val_fraction`` of tokens (:func:`~tokens.held_out.held_out_cut`). Once the train
documents hold a window, training uses them and validation all held-out documents again.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crystalline.documents import source_group

from .held_out import held_out, held_out_cut
from .token_store import StoredDocument, StoreReader
from .tokenizer import Tokenizer, iter_text_files, read_text_file

DEFAULT_EVAL_WINDOWS = 256  # a store's held-out set grows without bound: "all" means this many


class NotEnoughTokens(ValueError):
    """No training window's worth of tokens (yet: a store may still be filling)."""


class StoreBehind(ValueError):
    """A batch was cut from more documents than the store holds now (lost, or an older copy)."""


Replay = Callable[[np.random.Generator, int, np.ndarray], np.ndarray]


def window_starts(
    seed: int,
    step: int,
    total: int,
    span: int,
    batch_size: int,
    fresh_rows: int = 0,
    fresh_tokens: int = 0,
    replay: Replay | None = None,
) -> np.ndarray:
    """The window starts of step ``step`` in a stream of ``total`` tokens: ``fresh_rows`` of them
    among the newest ``fresh_tokens`` tokens, the rest anywhere, uniformly or as ``replay``
    draws them (``replay(rng, rows, fresh_starts)``: the per-source cap)."""
    if total < span:
        raise NotEnoughTokens(f"{total} training tokens; a window needs {span}")
    rng = np.random.default_rng([seed, step])
    last = total - span  # the last valid window start
    fresh_lo = max(0, total - max(fresh_tokens, span))
    fresh = rng.integers(fresh_lo, last + 1, size=fresh_rows)
    rows = batch_size - fresh_rows
    rest = rng.integers(0, last + 1, size=rows) if replay is None else replay(rng, rows, fresh)
    return np.concatenate([fresh, rest])


def capped_counts(rows: int, weights: np.ndarray, caps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``rows`` split among sources in proportion to ``weights`` with no source over its cap:
    what a capped source cannot take goes to the others in proportion (water-filling), and
    the fractional rows are drawn with ``rng`` so each source gets its share on average. When
    the caps cannot hold ``rows`` (too few sources), the rest is spread by weight."""
    share = np.zeros(len(weights))
    free = weights > 0
    left = float(rows)
    while left > 1e-9 and free.any():
        part = left * weights * free / weights[free].sum()
        over = free & (share + part > caps)
        if not over.any():
            share += part
            left = 0.0
            break
        left -= float((caps[over] - share[over]).sum())
        share[over] = caps[over]
        free &= ~over
    if left > 1e-9:  # every source at its cap: the cap cannot hold, spread the rest by weight
        share += left * weights / weights.sum()
    counts = np.floor(share + 1e-9).astype(np.int64)
    extra = rows - int(counts.sum())
    if extra > 0:
        frac = np.maximum(share - counts, 0.0)
        pick = rng.choice(len(share), size=extra, replace=False, p=frac / frac.sum())
        counts[pick] += 1
    return counts


def batch_for_step(tokens: np.ndarray, seed: int, step: int, batch_size: int, seq_len: int) -> np.ndarray:
    """The batch of ``step`` from one contiguous stream: ``batch_size`` windows, uniform starts."""
    span = seq_len + 1
    if len(tokens) < span:
        raise ValueError(f"need at least {span} training tokens for seq-len {seq_len}, have {len(tokens)}")
    starts = window_starts(seed, step, len(tokens), span, batch_size)
    return tokens[starts[:, None] + np.arange(span)]


def eval_windows(tokens: np.ndarray, seq_len: int, limit: int = 0) -> np.ndarray:
    """Validation windows of ``seq_len + 1`` tokens: all non-overlapping ones, or ``limit``
    of them spread evenly over the split (fixed, so evals are comparable across steps)."""
    span = seq_len + 1
    count = (len(tokens) - 1) // seq_len if len(tokens) >= span else 0
    if count == 0:
        return np.zeros((0, span), dtype=tokens.dtype)
    starts = np.arange(count) * seq_len
    if 0 < limit < count:
        starts = starts[np.linspace(0, count - 1, limit).round().astype(np.int64)]
    return tokens[starts[:, None] + np.arange(span)]


# ---- files (`crystalline train`) -----------------------------------------------------------
@dataclass
class TokenSplit:
    """Training and validation tokens, each one contiguous id array."""

    train: np.ndarray
    val: np.ndarray
    documents: int
    val_documents: int


def load_split(paths: Sequence[Path], tokenizer: Tokenizer, val_fraction: float) -> TokenSplit:
    """Tokenize text files; a single file splits by its last ``val_fraction`` of tokens (as
    nanoGPT does), many files split whole documents by ``held_out`` of their path."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val-fraction must be in [0, 1), got {val_fraction}")
    files = iter_text_files(paths)
    if not files:
        raise ValueError("no training files found in " + ", ".join(str(p) for p in paths))
    dtype = tokenizer.encode("").dtype
    empty = np.zeros(0, dtype=dtype)
    if len(files) == 1:
        ids = tokenizer.encode(read_text_file(files[0]))
        cut = held_out_cut(len(ids), val_fraction)
        return TokenSplit(ids[:cut], ids[cut:], 1, 0)
    train_parts: list[np.ndarray] = []
    val_parts: list[np.ndarray] = []
    for f in files:
        ids = tokenizer.encode(read_text_file(f))
        (val_parts if held_out(str(f), val_fraction) else train_parts).append(ids)
    train = np.concatenate(train_parts) if train_parts else empty
    val = np.concatenate(val_parts) if val_parts else empty
    return TokenSplit(train, val, len(files), len(val_parts))


class FileWindows:
    """`crystalline train`'s data: text files tokenized once, batches by (seed, step)."""

    def __init__(
        self, paths: Sequence[Path], tokenizer: Tokenizer, *, batch_size: int, seq_len: int, seed: int,
        val_fraction: float, eval_limit: int,
    ) -> None:  # fmt: skip
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.split = load_split(paths, tokenizer, val_fraction)
        if len(self.split.train) < seq_len + 1:
            raise NotEnoughTokens(
                f"only {len(self.split.train)} training tokens; seq-len {seq_len} needs at least "
                f"{seq_len + 1} (give more text or a smaller --seq-len)"
            )
        self._val = eval_windows(self.split.val, seq_len, eval_limit)
        digest = hashlib.sha256(self.split.train.tobytes())
        digest.update(self.split.val.tobytes())
        self._sha = digest.hexdigest()

    def batch(self, step: int) -> np.ndarray:
        return batch_for_step(self.split.train, self.seed, step, self.batch_size, self.seq_len)

    def val_windows(self) -> np.ndarray:
        return self._val

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "files",
            "train_tokens": len(self.split.train),
            "val_tokens": len(self.split.val),
            "sha256": self._sha,
        }


# ---- the token store (the daemon) ----------------------------------------------------------
class _Stream:
    """Documents of one split laid end to end: where each starts, and the total; and per
    source, where its documents are and their running token count (for the per-source cap)."""

    def __init__(self) -> None:
        self.docs: list[StoredDocument] = []
        self.starts = np.zeros(1, dtype=np.int64)  # stream offset of each document, then the total
        self.owner = np.zeros(0, dtype=np.int64)  # each document's source, an index of names
        self.names: list[str] = []
        self._index: dict[str, int] = {}
        self.places: list[np.ndarray] = []  # per source: its documents' places, ascending
        self.ends: list[np.ndarray] = []  # per source: its tokens up to and with each document

    def extend(self, docs: list[StoredDocument]) -> None:
        if docs:
            lengths = np.fromiter((d.length for d in docs), dtype=np.int64, count=len(docs))
            owner = np.empty(len(docs), dtype=np.int64)
            for i, d in enumerate(docs):
                name = source_group(d.source, d.group)
                if name not in self._index:
                    self._index[name] = len(self.names)
                    self.names.append(name)
                    self.places.append(np.zeros(0, dtype=np.int64))
                    self.ends.append(np.zeros(0, dtype=np.int64))
                owner[i] = self._index[name]
            first = len(self.docs)
            for j in np.unique(owner):
                mine = np.flatnonzero(owner == j)
                before = int(self.ends[j][-1]) if len(self.ends[j]) else 0
                self.places[j] = np.append(self.places[j], first + mine)
                self.ends[j] = np.append(self.ends[j], before + np.cumsum(lengths[mine]))
            self.owner = np.append(self.owner, owner)
            # offsets first, then the documents: a reader in another thread must never see
            # more documents than offsets; each assignment is atomic
            self.starts = np.concatenate([self.starts, self.starts[-1] + np.cumsum(lengths)])
            self.docs.extend(docs)

    def tokens(self, documents: int) -> int:
        return int(self.starts[documents])

    def capped_starts(
        self, rng: np.random.Generator, rows: int, documents: int, span: int, cap_rows: int, fresh: np.ndarray
    ) -> np.ndarray:
        """``rows`` replay window starts over the first ``documents`` documents: each source's
        rows in proportion to its tokens, but at most ``cap_rows`` together with the fresh
        rows (starts ``fresh``) it has; each start uniform within its source's tokens."""
        last = int(self.starts[documents]) - span
        count = [int(np.searchsorted(p, documents)) for p in self.places]
        weights = np.array([float(e[k - 1]) if k else 0.0 for e, k in zip(self.ends, count, strict=True)])
        doc_of = np.searchsorted(self.starts, fresh, side="right") - 1
        had = np.bincount(self.owner[doc_of], minlength=len(self.names))
        caps = np.maximum(cap_rows - had, 0).astype(np.float64)
        out = [np.zeros(0, dtype=np.int64)]
        for j, n in enumerate(capped_counts(rows, weights, caps, rng)):
            if n:
                ends = self.ends[j][: count[j]]
                u = rng.integers(0, int(ends[-1]), size=int(n))
                k = np.searchsorted(ends, u, side="right")
                doc = self.places[j][k]
                into = u - (ends[k] - (self.starts[doc + 1] - self.starts[doc]))
                out.append(np.minimum(self.starts[doc] + into, last))
        return np.concatenate(out)

    def gather(self, reader: StoreReader, start: int, row: np.ndarray) -> None:
        """Copy the stream's tokens [start, start + len(row)) into ``row``, across documents."""
        i = int(np.searchsorted(self.starts, start, side="right")) - 1
        filled = 0
        while filled < len(row):
            doc = self.docs[i]
            skip = start + filled - int(self.starts[i])
            take = min(doc.length - skip, len(row) - filled)
            row[filled : filled + take] = reader.shard(doc.shard)[
                doc.offset + skip : doc.offset + skip + take
            ]
            filled += take
            i += 1


class StoreWindows:
    """Training windows cut from the token store in ``store_dir`` into a caller's array (a ring
    slot), by (seed, step, documents visible)."""

    def __init__(
        self,
        store_dir: Path,
        batch_size: int,
        seq_len: int,
        seed: int = 0,
        val_fraction: float = 0.0,
        fresh_fraction: float = 0.25,
        fresh_tokens: int = 1 << 16,
        refresh_s: float = 1.0,
        source_cap: float = 1.0,
    ) -> None:
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch size and seq len must be positive, got {batch_size} and {seq_len}")
        if not 0.0 <= fresh_fraction <= 1.0:
            raise ValueError(f"fresh fraction must be in [0, 1], got {fresh_fraction}")
        self.reader = StoreReader(Path(store_dir))
        self.batch_size = batch_size
        self.span = seq_len + 1
        self.seed = seed
        self.val_fraction = val_fraction
        self.fresh_rows = round(batch_size * fresh_fraction)
        self.fresh_tokens = fresh_tokens
        self.refresh_s = refresh_s
        if not 0.0 < source_cap <= 1.0:
            raise ValueError(f"source cap must be in (0, 1], got {source_cap}")
        self.cap_rows = max(1, int(batch_size * source_cap)) if source_cap < 1.0 else 0  # 0: no cap
        self._train = _Stream()
        self._held = _Stream()
        self._train_prefix = [0]  # train documents among the first n visible documents
        self._last_refresh = -float("inf")

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.reader.dtype or np.dtype(np.uint16)

    def refresh(self) -> int:
        """Re-read the store's committed shards; returns how many documents became visible."""
        self._last_refresh = time.monotonic()
        before = len(self.reader.documents)
        self.reader.refresh()
        added = self.reader.documents[before:]
        prefix = self._train_prefix[-1]
        counts = []
        for d in added:
            prefix += d.split == "train"
            counts.append(prefix)
        self._train.extend([d for d in added if d.split == "train"])
        self._held.extend([d for d in added if d.split != "train"])
        self._train_prefix.extend(counts)
        return len(added)

    def visible(self) -> int:
        """Documents visible now (a prefix of the store's commit order, both splits)."""
        return len(self._train_prefix) - 1

    def describe(self, documents: int | None = None) -> dict[str, Any]:
        """What the first ``documents`` visible documents train on (all visible by default)."""
        n = self.visible() if documents is None else documents
        train = self._train_prefix[n]
        return {
            "kind": "store",
            "documents": n,
            "train_documents": train,
            "train_tokens": self._train.tokens(train),
            "trains_on_held_out": self._train.tokens(train) < self.span,
        }

    def has_window(self) -> bool:
        """A training window exists now: in the train documents or, failing those, in the part
        of the held-out documents that trains."""
        self.refresh()
        return self._window(self.visible()) is not None

    def _window(self, documents: int) -> tuple[_Stream, int, int] | None:
        """(stream, tokens, fresh rows) that the first ``documents`` documents train on."""
        train = self._train_prefix[documents]
        total = self._train.tokens(train)
        if total >= self.span:
            return self._train, total, self.fresh_rows
        cut = held_out_cut(self._held.tokens(documents - train), self.val_fraction)
        return (self._held, cut, 0) if cut >= self.span else None

    def fill(self, step: int, out: np.ndarray, documents: int | None = None) -> int:
        """Write the batch of ``step`` into ``out`` (``batch_size`` x ``seq_len + 1``) and return
        the documents it was cut from: ``documents`` when given (a batch cut again), otherwise
        all visible now (re-read at most every ``refresh_s``). NotEnoughTokens when they hold
        no window: the caller decides how long to look again."""
        if documents is None:
            if time.monotonic() - self._last_refresh >= self.refresh_s:
                self.refresh()
            documents = self.visible()
        elif documents > self.visible():
            self.refresh()
            if documents > self.visible():
                raise StoreBehind(
                    f"it was cut from {documents} documents, the token store shows {self.visible()}"
                )
        stream, starts = self._cut(step, documents)
        for row, start in enumerate(starts):
            stream.gather(self.reader, int(start), out[row])
        return documents

    def starts(self, step: int, documents: int) -> np.ndarray:
        """Where the rows of ``step``'s batch start in the stream the first ``documents``
        documents train on (the train documents end to end, in commit order)."""
        return self._cut(step, documents)[1]

    def _cut(self, step: int, documents: int) -> tuple[_Stream, np.ndarray]:
        found = self._window(documents)
        if found is None:
            raise NotEnoughTokens(
                f"the token store has {self.describe(documents)['train_tokens']} training tokens in "
                f"{documents} documents; a window needs {self.span}"
            )
        stream, total, fresh_rows = found
        replay: Replay | None = None
        if self.cap_rows and stream is self._train:
            train, cap, span = self._train_prefix[documents], self.cap_rows, self.span

            def replay(rng: np.random.Generator, rows: int, fresh: np.ndarray) -> np.ndarray:
                return stream.capped_starts(rng, rows, train, span, cap, fresh)

        starts = window_starts(
            self.seed, step, total, self.span, self.batch_size, fresh_rows, self.fresh_tokens, replay
        )
        return stream, starts

    def batch(self, step: int, documents: int | None = None) -> np.ndarray:
        """The batch of ``step`` as a new array (see :meth:`fill`)."""
        out = np.empty((self.batch_size, self.span), dtype=self.dtype)
        self.fill(step, out, documents)
        return out


class StoreValidation:
    """The validation windows of the store's held-out documents, recut when new ones arrive: a
    fixed, evenly spread subset, so consecutive evals on the same documents are comparable.
    While training takes the held-out stream's head, validation takes its tail."""

    def __init__(self, store_dir: Path, seq_len: int, val_fraction: float, eval_windows: int) -> None:
        self.reader = StoreReader(Path(store_dir))
        self.seq_len = seq_len
        self.val_fraction = val_fraction
        self.limit = eval_windows or DEFAULT_EVAL_WINDOWS
        self._key: tuple[int, bool] | None = None
        self._val = np.zeros((0, seq_len + 1), dtype=np.uint16)

    def documents(self) -> int:
        return sum(1 for d in self.reader.documents if d.split != "train")

    def windows(self, trains_on_held_out: bool) -> np.ndarray:
        self.reader.refresh()
        key = (self.documents(), trains_on_held_out)
        if key != self._key:
            self._key = key
            tokens = self.reader.validation_tokens()
            if trains_on_held_out:
                tokens = tokens[held_out_cut(len(tokens), self.val_fraction) :]
            self._val = eval_windows(tokens, self.seq_len, self.limit)
        return self._val


class SourceValidation:
    """Validation windows per source (issue 13): each source's held-out documents laid end to
    end and cut into non-overlapping windows, of which each evaluation takes ``per_source``,
    the next ones in turn (a source with fewer is measured on all of them every time), for at
    most ``max_sources`` sources, those with the most held-out documents. The cost of an
    evaluation is bounded by ``per_source x max_sources`` windows however large the store."""

    def __init__(
        self,
        store_dir: Path,
        seq_len: int,
        per_source: int,
        max_sources: int = 16,
        reader: StoreReader | None = None,
    ) -> None:
        self.reader = reader or StoreReader(Path(store_dir))  # it may share another's (its maps)
        self.seq_len = seq_len
        self.per_source = per_source
        self.max_sources = max_sources
        self._held: dict[str, _Stream] = {}  # source -> its held-out documents
        self._documents: dict[str, int] = {}  # source -> its documents, both splits
        self._seen = 0
        self._round = 0

    def refresh(self) -> None:
        """Take in the documents committed since the last call."""
        self.reader.refresh()
        added = self.reader.documents[self._seen :]
        self._seen = len(self.reader.documents)
        held: dict[str, list[StoredDocument]] = {}
        for d in added:
            group = source_group(d.source, d.group)
            self._documents[group] = self._documents.get(group, 0) + 1
            if d.split != "train":
                held.setdefault(group, []).append(d)
        for group, docs in held.items():
            self._held.setdefault(group, _Stream()).extend(docs)

    def documents(self) -> dict[str, int]:
        """Documents per source (both splits), as of the last :meth:`refresh`."""
        return dict(self._documents)

    def windows(self) -> dict[str, np.ndarray]:
        """The windows of the next evaluation, by source."""
        self.refresh()
        round_, self._round = self._round, self._round + 1
        span = self.seq_len + 1
        ranked = sorted(self._held.items(), key=lambda kv: (-len(kv[1].docs), kv[0]))
        out: dict[str, np.ndarray] = {}
        for group, stream in ranked[: self.max_sources]:
            total = stream.tokens(len(stream.docs))
            count = (total - 1) // self.seq_len if total >= span else 0
            take = min(self.per_source, count)
            if take == 0:
                continue
            rows = np.empty((take, span), dtype=self.reader.dtype or np.uint16)
            for row, j in enumerate((round_ * take + np.arange(take)) % count):
                stream.gather(self.reader, int(j) * self.seq_len, rows[row])
            out[group] = rows
        return out
