"""Logging on stderr, one line per message: each process of the daemon (supervisor, control,
workers, the ingest pool, the generation process) and every command sets it up here.

A message's own line breaks and other control characters are escaped (``\\n``, ``\\x1b``): a
dropped file named ``a.txt\\nERROR crystalline.supervisor: ...`` is logged as one line and
cannot forge another, nor move the terminal's cursor. A traceback keeps its lines. Standard
library only, as ``crystalline status`` imports it."""

from __future__ import annotations

import logging
import sys

# every C0 control character but tab, and DEL
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(32), 127) if c != 9} | {10: "\\n", 13: "\\r"}


class OneLineFormatter(logging.Formatter):
    """A :class:`logging.Formatter` whose message part is always one line."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = record.message
        record.message = message.translate(_ESCAPES)
        try:
            return super().formatMessage(record)
        finally:
            record.message = message


def log_to_stderr(fmt: str, level: int = logging.INFO) -> None:
    """The process's root logger: ``fmt`` lines on stderr at ``level`` (``logging.basicConfig``
    with :class:`OneLineFormatter`; like it, a no-op when the root already has a handler)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(fmt))
    logging.basicConfig(level=level, handlers=[handler])
