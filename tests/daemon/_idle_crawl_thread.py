"""`crystalline run` whose crawl ignores the stop's request (so the stop gives it up after
crawl-stop-s) after its loop has used its executor once, as every page's parse does, and whose
stop gives up on threads at 12 s instead of 57 s: one fault injected in a real daemon
(tests/daemon/test_daemon_stop.py), everything else as in production."""

from __future__ import annotations

import asyncio
import sys

from crystalline.daemon import cli, stop_budget
from crystalline.daemon.crawl_service import CrawlService


def stop_in_loop_ignored(self: CrawlService) -> None:
    """Runs on the crawl loop (the stop's request): one instant job on its executor, whose
    thread is then idle, and the request otherwise ignored."""
    asyncio.get_running_loop().run_in_executor(None, lambda: None)


CrawlService._stop_in_loop = stop_in_loop_ignored  # type: ignore[method-assign]
stop_budget.EXIT_S = 12.0
if __name__ == "__main__":  # not in the extraction processes, which spawn imports this into
    sys.exit(cli.main(sys.argv[1:]))
