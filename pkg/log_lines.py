"""Logging on stderr, one line per message: each process of the daemon (supervisor, control,
workers, the ingest pool, the generation process) and every command sets it up here.

A message's own line breaks and other control characters are escaped (``\\n``, ``\\x1b``,
``\\x85``, ``\\u2028``, bidi controls such as ``\\u202e``): a dropped file named
``a.txt\\nERROR crystalline.supervisor: ...`` is logged as one line and cannot forge another, nor
move the terminal's cursor, nor reorder what it shows. A traceback (or a stack) keeps its lines,
each indented by two spaces and escaped likewise: an exception whose text holds ``\\nERROR ...``
cannot start a line that reads as a log record. Standard library only, as
``crystalline status`` imports it."""

from __future__ import annotations

import logging
import sys
from typing import Any

# every C0 control character but tab, DEL, every C1 control character (NEL, the 8-bit CSI), the
# Unicode line and paragraph separators (str.splitlines() splits on NEL and these) and the bidi
# controls (marks, embeddings, overrides, isolates: they reorder what a terminal shows)
_ESCAPES = (
    {c: f"\\x{c:02x}" for c in (*range(32), *range(127, 160)) if c != 9}
    | {10: "\\n", 13: "\\r"}
    | {
        c: f"\\u{c:04x}"
        for c in (0x2028, 0x2029, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
    }
)
_IN_A_LINE = {c: text for c, text in _ESCAPES.items() if c != 10}


class OneLineFormatter(logging.Formatter):
    """A :class:`logging.Formatter` whose message part is always one line."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = record.message
        record.message = escaped(message)
        try:
            return super().formatMessage(record)
        finally:
            record.message = message

    def formatException(self, ei: Any) -> str:
        return indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return indented(super().formatStack(stack_info))


def escaped(text: str) -> str:
    """``text`` on one line: its line breaks and other control characters escaped."""
    return text.translate(_ESCAPES)


def indented(text: str) -> str:
    """A traceback's or a stack's lines, each indented by two spaces with its controls escaped."""
    return "\n".join("  " + line.translate(_IN_A_LINE) for line in text.split("\n"))


def log_to_stderr(fmt: str, level: int = logging.INFO) -> None:
    """The process's root logger: ``fmt`` lines on stderr at ``level`` (``logging.basicConfig``
    with :class:`OneLineFormatter`; like it, a no-op when the root already has a handler).
    Warnings go through it too (``logging.captureWarnings``: logger ``py.warnings``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(fmt))
    logging.basicConfig(level=level, handlers=[handler])
    logging.captureWarnings(True)
