"""Shared-memory segments: batch ring, parameter and gradient blocks.

:mod:`.segments` names segments (``crystalline-<instance>-<what>``), creates/attaches them
without the resource tracker, and sweeps a killed run's leftovers; :mod:`.blocks` lays out
named numpy arrays in one self-describing segment. Only the stdlib and numpy are used.
"""

from .blocks import ALIGN, HEADER_SIZE, MAGIC, ArrayBlock, ArrayInfo, layout, padded
from .segments import (
    PREFIX,
    SHM_DIR,
    Segment,
    SharedMemoryFull,
    check_space,
    free_bytes,
    list_segments,
    parse_segment_name,
    segment_name,
    sweep,
    unlink_segment,
)

__all__ = [
    "ALIGN",
    "HEADER_SIZE",
    "MAGIC",
    "PREFIX",
    "SHM_DIR",
    "ArrayBlock",
    "ArrayInfo",
    "Segment",
    "SharedMemoryFull",
    "check_space",
    "free_bytes",
    "layout",
    "list_segments",
    "padded",
    "parse_segment_name",
    "segment_name",
    "sweep",
    "unlink_segment",
]
