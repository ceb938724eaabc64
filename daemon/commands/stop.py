"""stop: checkpoint and exit, as on SIGTERM.

Request:  {"cmd": "stop"}
Reply:    {"daemon": "stopping"}   (sent before the daemon stops: crawl, then ingest, then
          the vocabulary service, then control with a final checkpoint)
Only for the daemon's own user and root.
"""

from __future__ import annotations

from typing import Any

from . import Daemon

CONTROL = True


async def execute(daemon: Daemon, _request: dict[str, Any]) -> Any:
    daemon.request_stop()
    return {"daemon": "stopping"}
