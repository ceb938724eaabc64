"""A local aiohttp site for tests outside tests/crawler (whose ``_loopback`` kit has its own):
start it on an ephemeral loopback port, get its base URL, clean it up; and prose for its pages
that ingest's filters keep."""

from __future__ import annotations

import random

from aiohttp import web

WORDS = ["harbour", "lantern", "meadow", "copper", "orchard", "thunder", "glacier", "velvet", "market",
         "island", "ladder", "window", "garden", "kettle", "the", "of", "and", "to", "in", "was"]  # fmt: skip


def prose(seed: int) -> str:
    """200 words of plain prose, the same for the same seed."""
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(200)) + "."


async def start_site(routes: list[web.RouteDef], host: str = "127.0.0.1") -> tuple[web.AppRunner, str]:
    """Serve ``routes`` on ``host`` and an ephemeral port; the runner (``await runner.cleanup()``)
    and the base URL."""
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, 0).start()
    return runner, f"http://{host}:{runner.addresses[0][1]}"
