"""resume: go on training (or crawling) after pause.

Request:  {"cmd": "resume", "what": "training" | "crawl"}   (what: "training" if left out)
Reply:    {"training": "running"} or {"crawl": "running"}.
Only for the daemon's own user and root.
"""

from __future__ import annotations

from typing import Any

from . import Daemon, pause_or_resume

CONTROL = True


async def execute(daemon: Daemon, request: dict[str, Any]) -> Any:
    return await pause_or_resume(daemon, request, pause=False)
