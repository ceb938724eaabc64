"""The control <-> worker wire protocol: msgpack maps over ZeroMQ ROUTER/DEALER.

Every message is a map with ``v`` (protocol version), ``type`` and, for step traffic,
``step``. Control binds a ROUTER; each worker connects a DEALER whose identity is
``worker-NN``. Each step runs three barriers (see ARCHITECTURE.md, "The training step"):

    COMPUTE(step, slot, rows, src, scale)  ->  DONE(step, loss_sum, tokens, finite, compute_s)
    REDUCE(step, lo, hi[, update])         ->  REDUCED(step, sq)
    UPDATE(step, lo, hi, src, dst, lr, coef, t) -> UPDATED(step)

REDUCE may carry the update with coef 1 (speculation that no clipping is needed); control
sends UPDATE only when the global norm calls for clipping.

and HELLO(worker, pid) once per worker incarnation, STOP to end. Workers also reply
ERROR(reason) when a request cannot be served; control treats that like a dead worker.
"""

from __future__ import annotations

from typing import Any

import msgpack

from ..exit_status import one_line

PROTOCOL_VERSION = 1

HELLO = "HELLO"
COMPUTE = "COMPUTE"
DONE = "DONE"
REDUCE = "REDUCE"
REDUCED = "REDUCED"
UPDATE = "UPDATE"
UPDATED = "UPDATED"
STOP = "STOP"
ERROR = "ERROR"

REPLY_TO = {COMPUTE: DONE, REDUCE: REDUCED, UPDATE: UPDATED}

MAX_MESSAGE_BYTES = 64 * 1024  # control messages are tiny; anything larger is garbage


class ProtocolError(ValueError):
    """A message that is not ours (wrong version, type, or not a msgpack map)."""


def identity(worker: int) -> bytes:
    return f"worker-{worker:02d}".encode()


def worker_of(ident: bytes) -> int:
    """Inverse of ``identity``; ProtocolError for anything else."""
    text = ident.decode("ascii", "replace")
    if not text.startswith("worker-") or not text[7:].isdigit():
        raise ProtocolError(f"unknown peer identity {text!r}")
    return int(text[7:])


def encode(kind: str, **fields: Any) -> bytes:
    return msgpack.packb({"v": PROTOCOL_VERSION, "type": kind, **fields}, use_bin_type=True)


def unpack_map(data: bytes, max_bytes: int) -> dict[str, Any]:
    """The msgpack map in ``data``, at most ``max_bytes`` long; ProtocolError (one line)
    otherwise. Shared with the supervisor <-> control channel (daemon/control_protocol.py)."""
    if len(data) > max_bytes:
        raise ProtocolError(f"message of {len(data)} bytes is over the {max_bytes}-byte cap")
    try:
        msg = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"not msgpack: {one_line(exc)}") from None
    if not isinstance(msg, dict):
        raise ProtocolError(f"not a map but {type(msg).__name__}")
    return msg


def decode(data: bytes) -> dict[str, Any]:
    msg = unpack_map(data, MAX_MESSAGE_BYTES)
    if not isinstance(msg.get("type"), str):
        raise ProtocolError("message is not a map with a type")
    if msg.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {msg.get('v')!r}, expected {PROTOCOL_VERSION}")
    return msg
