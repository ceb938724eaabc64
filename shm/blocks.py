"""Self-describing blocks of named numpy arrays in one shared-memory segment.

Layout of an :class:`ArrayBlock` segment::

    offset 0     8 bytes   magic b"CRYSHM01"
    offset 8     uint32    little-endian length L of the table
    offset 12    L bytes   UTF-8 JSON table: [{"name", "dtype", "shape", "offset"}, ...]
    ...          zeros up to HEADER_SIZE (4096)
    offset 4096  the arrays, in table order, each at an offset that is a multiple of 64

``dtype`` is numpy's ``dtype.str`` (``"<f4"``, ``"<u2"``, ...); only plain numeric and
bool dtypes are allowed. A process attaching by name rebuilds the views from the table:
no geometry travels out of band, and nothing is pickled.

Cache lines: every array starts on a 64-byte boundary, so arrays written by different
processes never share a cache line. Within a 2-D array written row by row by different
processes (e.g. ``grads``, row i = worker i), make the row length a multiple of 64 bytes
with :func:`padded` -- ``(W, padded(P, np.float32))`` -- and use only the first ``P``
columns; then each row starts on its own cache line as well.

The creator writes the header before :meth:`ArrayBlock.create` returns; send the name to
other processes only after that.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from .segments import Segment

__all__ = ["ALIGN", "HEADER_SIZE", "MAGIC", "ArrayBlock", "ArrayInfo", "decode_table", "layout", "padded"]

MAGIC = b"CRYSHM01"
HEADER_SIZE = 4096
ALIGN = 64
_LENGTH = struct.Struct("<I")
_TABLE_START = len(MAGIC) + _LENGTH.size
_MAX_TABLE = HEADER_SIZE - _TABLE_START
_ALLOWED_KINDS = "biufc"  # bool, signed, unsigned, float, complex

Spec = Mapping[str, tuple[tuple[int, ...], DTypeLike]]


def _align(n: int, to: int = ALIGN) -> int:
    return -(-n // to) * to


def padded(n: int, dtype: DTypeLike) -> int:
    """``n`` rounded up so that ``padded(n, dtype) * itemsize`` is a multiple of 64 bytes.

    Use it for the row length of a 2-D array whose rows are written by different processes
    (per-worker rows): each row then starts on its own 64-byte cache line.
    """
    if n < 0:
        raise ValueError(f"element count must be >= 0, got {n}")
    itemsize = np.dtype(dtype).itemsize
    if itemsize == 0:
        raise ValueError(f"dtype {dtype!r} has no size")
    step = ALIGN // math.gcd(ALIGN, itemsize)
    return -(-n // step) * step


@dataclass(frozen=True)
class ArrayInfo:
    """One row of the header table."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    offset: int

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype.str, "shape": list(self.shape), "offset": self.offset}


def _check_dtype(dtype: Any, where: str) -> np.dtype[Any]:
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise ValueError(f"{where}: not a numpy dtype: {dtype!r}") from exc
    if dt.kind not in _ALLOWED_KINDS or dt.fields is not None or dt.subdtype is not None:
        raise ValueError(f"{where}: only plain numeric/bool dtypes are allowed, got {dt!r}")
    return dt


def _check_shape(shape: Any, where: str) -> tuple[int, ...]:
    if isinstance(shape, int | np.integer) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, tuple | list) or not all(
        isinstance(d, int | np.integer) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ValueError(f"{where}: shape must be a tuple of ints >= 0, got {shape!r}")
    return tuple(int(d) for d in shape)


def layout(spec: Spec) -> tuple[list[ArrayInfo], int]:
    """The table for ``spec`` (in its order) and the total segment size in bytes."""
    if not spec:
        raise ValueError("an ArrayBlock needs at least one array")
    table = []
    offset = HEADER_SIZE
    for name, entry in spec.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"array names must be non-empty strings, got {name!r}")
        try:
            shape, dtype = entry
        except (TypeError, ValueError) as exc:
            raise ValueError(f"array {name!r}: spec must be (shape, dtype), got {entry!r}") from exc
        info = ArrayInfo(
            name, _check_dtype(dtype, f"array {name!r}"), _check_shape(shape, f"array {name!r}"), offset
        )
        table.append(info)
        offset = _align(offset + info.nbytes)
    return table, offset


def _encode(table: list[ArrayInfo]) -> bytes:
    payload = json.dumps([info.to_json() for info in table], separators=(",", ":")).encode()
    if len(payload) > _MAX_TABLE:
        raise ValueError(f"array table is {len(payload)} bytes of JSON; at most {_MAX_TABLE} fit the header")
    return MAGIC + _LENGTH.pack(len(payload)) + payload


def _decode(header: bytes, size: int, name: str) -> list[ArrayInfo]:
    """Parse and validate a header; ValueError naming the segment when it is not ours."""

    def bad(why: str) -> ValueError:
        return ValueError(f"shared memory segment {name!r} is not a valid ArrayBlock: {why}")

    if len(header) < HEADER_SIZE:
        raise bad(f"{size} bytes, smaller than the {HEADER_SIZE}-byte header")
    if header[: len(MAGIC)] != MAGIC:
        raise bad(f"bad magic {header[: len(MAGIC)]!r} (expected {MAGIC!r})")
    (length,) = _LENGTH.unpack_from(header, len(MAGIC))
    if not 0 < length <= _MAX_TABLE:
        raise bad(f"table length {length} out of range")
    try:
        raw = json.loads(header[_TABLE_START : _TABLE_START + length].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"table is not JSON ({exc})") from exc
    if not isinstance(raw, list) or not raw:
        raise bad("table is not a non-empty list")
    table = []
    seen: set[str] = set()
    for item in raw:
        if not isinstance(item, dict) or set(item) != {"name", "dtype", "shape", "offset"}:
            raise bad(f"malformed table entry {item!r}")
        entry_name, offset = item["name"], item["offset"]
        if not isinstance(entry_name, str) or not entry_name or entry_name in seen:
            raise bad(f"bad or duplicate array name {entry_name!r}")
        seen.add(entry_name)
        if not isinstance(item["dtype"], str):
            raise bad(f"array {entry_name!r}: dtype is not a string")
        try:
            dtype = _check_dtype(item["dtype"], f"array {entry_name!r}")
            shape = _check_shape(item["shape"], f"array {entry_name!r}")
        except ValueError as exc:
            raise bad(str(exc)) from exc
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < HEADER_SIZE or offset % ALIGN:
            raise bad(f"array {entry_name!r}: bad offset {offset!r}")
        info = ArrayInfo(entry_name, dtype, shape, offset)
        if offset + info.nbytes > size:
            raise bad(f"array {entry_name!r} ends at {offset + info.nbytes}, past the segment end {size}")
        table.append(info)
    return table


def decode_table(header: bytes, size: int, name: str) -> list[ArrayInfo]:
    """The array table of a block's header (for a reader that maps the segment itself, e.g.
    read-only); ValueError naming the segment when it is not an ArrayBlock."""
    return _decode(header, size, name)


class ArrayBlock:
    """Named numpy arrays in one shared-memory segment; see the module docstring for the layout.

    ``create`` in the owning process (which later calls :meth:`unlink`), ``attach`` elsewhere.
    :attr:`arrays` are writable views of the shared memory. :meth:`close` drops the block's
    own views before unmapping; views the caller took from :attr:`arrays` must be deleted
    first, or close raises BufferError (and the block stays open and usable).
    """

    def __init__(self, segment: Segment, table: list[ArrayInfo]) -> None:
        self._segment = segment
        self._table = table
        self._arrays: dict[str, np.ndarray] | None = self._views()

    def _views(self) -> dict[str, np.ndarray]:
        buf = self._segment.buf
        return {
            info.name: np.frombuffer(
                buf, dtype=info.dtype, count=math.prod(info.shape), offset=info.offset
            ).reshape(info.shape)
            for info in self._table
        }

    @classmethod
    def create(cls, name: str, spec: Spec) -> ArrayBlock:
        """A new zero-filled block; FileExistsError if segment ``name`` exists."""
        table, size = layout(spec)
        header = _encode(table)
        segment = Segment.create(name, size)
        try:
            segment.buf[: len(header)] = header
        except BaseException:
            segment.close()
            segment.unlink()
            raise
        return cls(segment, table)

    @classmethod
    def attach(cls, name: str) -> ArrayBlock:
        """Map an existing block by name; ValueError if the segment is not an ArrayBlock."""
        segment = Segment.attach(name)
        try:
            table = _decode(bytes(segment.buf[:HEADER_SIZE]), segment.size, name)
            return cls(segment, table)
        except BaseException:
            segment.close()
            raise

    @property
    def name(self) -> str:
        return self._segment.name

    @property
    def size(self) -> int:
        """Segment size in bytes, header included."""
        return self._segment.size

    @property
    def segment(self) -> Segment:
        return self._segment

    @property
    def table(self) -> list[ArrayInfo]:
        """Name, dtype, shape and offset of every array, in layout order."""
        return list(self._table)

    @property
    def closed(self) -> bool:
        return self._arrays is None

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """Writable views by name. Delete any you keep before :meth:`close`."""
        if self._arrays is None:
            raise ValueError(f"ArrayBlock {self.name!r} is closed")
        return self._arrays

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]

    def close(self) -> None:
        """Drop the block's views, then unmap (idempotent).

        BufferError naming the segment if the caller still holds a view; the block then
        stays open (its views are rebuilt) and close can be retried after ``del view``.
        """
        if self._arrays is None:
            return
        self._arrays = None
        try:
            self._segment.close()
        except BufferError:
            self._arrays = self._views()
            raise

    def unlink(self) -> None:
        """Remove the segment's name (idempotent); the owner calls it on a clean stop."""
        self._segment.unlink()

    def __enter__(self) -> ArrayBlock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._arrays is None:
            return f"<ArrayBlock {self.name!r} closed>"
        parts = ", ".join(f"{i.name}{list(i.shape)}:{i.dtype.str}" for i in self._table)
        return f"<ArrayBlock {self.name!r} {parts}>"
