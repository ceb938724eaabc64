"""add-url: queue a URL for the crawler (and start crawling if it was idle).

Request:  {"cmd": "add-url", "url": "http(s)://..."}
Reply:    {"url": "...", "queued": true | false}   (false: the frontier knows it already)
An error when crawling is off (--no-crawl), the crawler refuses the URL (scheme, private
address, length) or cannot take it now (the daemon is still starting, or its database is
away: try again).
Only for the daemon's own user and root.
"""

from __future__ import annotations

from typing import Any

from . import CommandError, Daemon

CONTROL = True


async def execute(daemon: Daemon, request: dict[str, Any]) -> Any:
    url = request.get("url")
    if not isinstance(url, str) or not url:
        raise CommandError('add-url needs {"url": "http(s)://..."}')
    try:
        queued = await daemon.crawl.add_url(url)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    return {"url": url, "queued": queued}
