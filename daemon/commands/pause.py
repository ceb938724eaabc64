"""pause: stop training (or the crawl) until resume.

Request:  {"cmd": "pause", "what": "training" | "crawl"}   (what: "training" if left out)
Reply:    {"training": "paused"} once control is between steps, or {"crawl": "paused"} (the
          crawl's pass in hand ends; no new one starts).
Only for the daemon's own user and root.
"""

from __future__ import annotations

from typing import Any

from . import Daemon, pause_or_resume

CONTROL = True


async def execute(daemon: Daemon, request: dict[str, Any]) -> Any:
    return await pause_or_resume(daemon, request, pause=True)
