"""crystalline.shm.blocks: layout, alignment, attach by name across processes, closing."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import struct

import _shm_children
import numpy as np
import pytest

from crystalline.shm.blocks import ALIGN, HEADER_SIZE, MAGIC, ArrayBlock, layout, padded
from crystalline.shm.segments import Segment, segment_name

SPAWN = multiprocessing.get_context("spawn")

W, P = 3, 1001  # a gradient block: row i = worker i, P not a multiple of 16
SPEC = {
    "ids": ((5, 7), "<u2"),
    "params": ((P,), np.float32),
    "grads": ((W, padded(P, np.float32)), np.dtype(np.float32)),
    "flag": ((), np.bool_),
    "step": ((1,), np.int64),
    "empty": ((0,), np.float64),
    "z": ((3,), np.complex128),
}


def test_every_array_offset_and_address_is_64_byte_aligned(instance: str) -> None:
    table, size = layout(SPEC)
    assert [info.name for info in table] == list(SPEC)
    assert table[0].offset == HEADER_SIZE
    for info, following in itertools.pairwise(table):
        assert info.offset % ALIGN == 0
        assert info.offset + info.nbytes <= following.offset  # no overlap
    assert size % ALIGN == 0 and size >= table[-1].offset + table[-1].nbytes
    with ArrayBlock.create(segment_name(instance, "params"), SPEC) as block:
        assert block.size == size
        for info in table:
            array = block.arrays[info.name]
            assert array.ctypes.data % ALIGN == 0
            assert (array.shape, array.dtype) == (info.shape, info.dtype)
        del array  # a view the caller holds would make close() fail
        block.unlink()


@pytest.mark.parametrize("dtype", [np.bool_, np.uint8, np.uint16, np.float32, np.float64, np.complex128])
def test_padded_rounds_rows_to_whole_cache_lines(dtype: type) -> None:
    itemsize = np.dtype(dtype).itemsize
    step = ALIGN // itemsize
    for n in (0, 1, step - 1, step, step + 1, 1001):
        p = padded(n, dtype)
        assert p >= n and p - n < step and (p * itemsize) % ALIGN == 0
    assert padded(3, "S3") % 64 == 0  # itemsize 3: 64 elements
    with pytest.raises(ValueError):
        padded(-1, np.float32)


def test_padded_rows_of_a_block_start_on_their_own_cache_line(instance: str) -> None:
    with ArrayBlock.create(segment_name(instance, "grads"), SPEC) as block:
        grads = block.arrays["grads"]
        assert [grads[i].ctypes.data % ALIGN for i in range(W)] == [0] * W
        del grads
        block.unlink()


def test_create_zero_filled_attach_same_geometry_shared_writes(instance: str) -> None:
    name = segment_name(instance, "blk")
    with ArrayBlock.create(name, SPEC) as owner:
        assert all(not array.any() for array in owner.arrays.values())
        with pytest.raises(FileExistsError):
            ArrayBlock.create(name, SPEC)
        with ArrayBlock.attach(name) as other:
            assert other.table == owner.table
            assert {k: (v.shape, v.dtype) for k, v in other.arrays.items()} == {
                k: (v.shape, v.dtype) for k, v in owner.arrays.items()
            }
            other.arrays["params"][:] = np.arange(P, dtype=np.float32)
            other["flag"][()] = True
        np.testing.assert_array_equal(owner.arrays["params"], np.arange(P, dtype=np.float32))
        assert bool(owner.arrays["flag"])
        owner.unlink()


@pytest.mark.timeout(60)
def test_spawned_children_write_their_rows_parent_reads(instance: str) -> None:
    with ArrayBlock.create(segment_name(instance, "grads"), SPEC) as block:
        children = [
            SPAWN.Process(target=_shm_children.write_row, args=(block.name, "grads", i, i + 0.5))
            for i in range(W)
        ]
        for child in children:
            child.start()
        for child in children:
            child.join(30)
        assert [child.exitcode for child in children] == [0] * W
        np.testing.assert_array_equal(
            block.arrays["grads"][:, :P], np.repeat([[0.5], [1.5], [2.5]], P, axis=1)
        )
        block.unlink()


def _foreign(instance: str, what: str, content: bytes, size: int = 8192) -> Segment:
    segment = Segment.create(segment_name(instance, what), size)
    segment.buf[: len(content)] = content
    return segment


def _header(table: object, length: int | None = None) -> bytes:
    payload = json.dumps(table).encode()
    return MAGIC + struct.pack("<I", len(payload) if length is None else length) + payload


@pytest.mark.parametrize(
    ("content", "size", "match"),
    [
        (b"", 8192, "bad magic"),
        (b"CRYSHM99" + bytes(100), 8192, "bad magic"),
        (MAGIC, 100, "smaller than"),
        (_header([], 0), 8192, "table length"),
        (_header([], 5000), 8192, "table length"),
        (MAGIC + struct.pack("<I", 5) + b"{not}", 8192, "not JSON"),
        (_header({"a": 1}), 8192, "non-empty list"),
        (_header([{"name": "a", "dtype": "<f4", "shape": [4]}]), 8192, "malformed"),
        (_header([{"name": "a", "dtype": "|O", "shape": [4], "offset": 4096}]), 8192, "numeric"),
        (_header([{"name": "a", "dtype": "<f4", "shape": [4], "offset": 4100}]), 8192, "offset"),
        (
            _header([{"name": "a", "dtype": "<f4", "shape": [2000], "offset": 4096}]),
            8192,
            "past the segment end",
        ),
        (_header([{"name": "a", "dtype": "<f4", "shape": [-1], "offset": 4096}]), 8192, "shape"),
    ],
)
def test_attach_rejects_a_segment_that_is_not_an_array_block(
    instance: str, content: bytes, size: int, match: str
) -> None:
    with _foreign(instance, "foreign", content, size) as segment:
        with pytest.raises(ValueError, match=rf"{segment.name}.*not a valid ArrayBlock.*{match}"):
            ArrayBlock.attach(segment.name)
        segment.unlink()


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"a": ((3,), object)},
        {"a": ((3,), np.dtype([("x", "<f4"), ("y", "<i4")]))},
        {"a": ((3,), "U4")},
        {"a": ((-1,), np.float32)},
        {"a": ((2.5,), np.float32)},
        {"": ((3,), np.float32)},
        {f"array_{i:04d}_{'x' * 40}": ((1,), np.float32) for i in range(60)},  # table overflows the header
    ],
)
def test_create_rejects_bad_specs_without_leaving_a_segment(instance: str, spec: dict) -> None:
    with pytest.raises(ValueError):
        ArrayBlock.create(segment_name(instance, "bad"), spec)


def test_close_with_own_views_is_fine_and_idempotent(instance: str) -> None:
    block = ArrayBlock.create(segment_name(instance, "c"), SPEC)
    block.arrays["params"][0] = 1.0  # the block's own views exist
    block.close()
    block.close()
    assert block.closed and block.segment.closed
    with pytest.raises(ValueError, match="closed"):
        _ = block.arrays
    block.unlink()
    block.unlink()


def test_close_while_caller_holds_a_view_raises_clear_error_then_succeeds(instance: str) -> None:
    block = ArrayBlock.create(segment_name(instance, "held"), SPEC)
    block.unlink()
    row = block.arrays["grads"][1]  # a view of a view still pins the buffer
    with pytest.raises(BufferError, match=rf"{block.name}.*views of its buffer are still alive.*delete"):
        block.close()
    assert not block.closed
    block.arrays["grads"][1, 0] = 3.0  # the block stays usable
    assert row[0] == 3.0
    del row
    block.close()
    assert block.closed
