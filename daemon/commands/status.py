"""status: what the daemon is doing, and its health verdict.

Request:  {"cmd": "status"}
Reply:    the status object (README, "The command line": state, training, crawler, ingest,
          ring, socket, http, generation, health, last_error). ``health`` is
          {"verdict": "ok" | "degraded" | "stuck", "watchdog": bool, "reasons": [...]}, the
          verdict the watchdog goes by and `crystalline status` exits by.
Open to every user of the socket.
"""

from __future__ import annotations

from typing import Any

from . import Daemon

CONTROL = False


async def execute(daemon: Daemon, _request: dict[str, Any]) -> Any:
    return daemon.status()
