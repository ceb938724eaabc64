"""The supervisor <-> control wire protocol: msgpack maps over ZeroMQ, the supervisor's ROUTER
(``daemon/control_link.py``) and control's DEALER (``daemon/control_process.py``).

Every message is a map with ``v`` (the protocol version), ``type`` and the type's fields:

    control -> supervisor
        HELLO(pid)                       once per control incarnation
        STATUS(data)                     a snapshot, at most every STATUS_EVERY_S
        REPLY(id, ok, data | error)      the answer to REQUEST id
        ERROR(error[, id])               a message control could not take, in one line
    supervisor -> control
        REQUEST(id, cmd)                 cmd: one of COMMANDS, answered by one REPLY

Caps: a message to control is at most ``MAX_TO_CONTROL`` bytes (requests are tiny); one to the
supervisor at most ``MAX_TO_SUPERVISOR`` (a status snapshot). A message of the wrong version,
over its cap, of an unknown type, or missing a field is refused with a one-line
:class:`ProtocolError`; the receiver says so (control answers ERROR, the supervisor logs it)
and the channel goes on.
"""

from __future__ import annotations

from typing import Any

import msgpack

from ..workers.protocol import ProtocolError as WireError
from ..workers.protocol import unpack_map

VERSION = 1

HELLO = "HELLO"
STATUS = "STATUS"
REPLY = "REPLY"
ERROR = "ERROR"
REQUEST = "REQUEST"

# the fields each type must carry, with their types
FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    HELLO: {"pid": int},
    STATUS: {"data": dict},
    REPLY: {"id": int, "ok": bool},
    ERROR: {"error": str},
    REQUEST: {"id": int, "cmd": str},
}
TO_SUPERVISOR = frozenset({HELLO, STATUS, REPLY, ERROR})
TO_CONTROL = frozenset({REQUEST})
COMMANDS = ("pause", "resume", "checkpoint", "stop")  # what control does between steps

MAX_TO_CONTROL = 64 * 1024
MAX_TO_SUPERVISOR = 1 << 20


class ProtocolError(WireError):
    """A message that is not ours; ``request_id`` is its id when one could be read."""

    def __init__(self, message: str, request_id: int | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


def encode(kind: str, **fields: Any) -> bytes:
    return msgpack.packb({"v": VERSION, "type": kind, **fields}, use_bin_type=True)


def decode(data: bytes, accepted: frozenset[str], max_bytes: int) -> dict[str, Any]:
    """The message in ``data``, or ProtocolError (one line) when it is over ``max_bytes``, not
    a msgpack map, of another version, of a type not in ``accepted``, or missing a field."""
    try:
        msg = unpack_map(data, max_bytes)
    except WireError as exc:
        raise ProtocolError(str(exc)) from None
    rid = msg.get("id") if isinstance(msg.get("id"), int) else None
    if msg.get("v") != VERSION:
        raise ProtocolError(f"protocol version {msg.get('v')!r}, expected {VERSION}", rid)
    kind = msg.get("type")
    if kind not in accepted:
        expected = ", ".join(sorted(accepted))
        raise ProtocolError(f"unknown message type {kind!r} (expected one of {expected})", rid)
    for name, kinds in FIELDS[kind].items():
        if not isinstance(msg.get(name), kinds) or (kinds is int and isinstance(msg.get(name), bool)):
            raise ProtocolError(f"{kind} without a valid {name!r}", rid)
    return msg
