"""`crystalline run` whose crawl loop has a thread of its executor held when the stop comes (as a
WARC append or a spool put whose fsync hangs on a hung disk would), and whose stop gives up on
its threads at 6 s instead of 57 s (4 s after crawl-stop-s 2 gave the crawl up): one fault
injected in a real daemon (tests/daemon/test_daemon_stop.py), everything else as in production."""

from __future__ import annotations

import asyncio
import sys
import threading

from crystalline.daemon import cli, stop_budget
from crystalline.daemon.crawl_service import CrawlService

never = threading.Event()
held: list[asyncio.Future[bool]] = []
_stop_in_loop = CrawlService._stop_in_loop


def stop_in_loop_with_a_held_thread(self: CrawlService) -> None:
    """Runs on the crawl loop (the stop's request): one of its executor's threads held, then
    the stop as it is."""
    held.append(asyncio.get_running_loop().run_in_executor(None, never.wait, 3600))
    _stop_in_loop(self)


CrawlService._stop_in_loop = stop_in_loop_with_a_held_thread  # type: ignore[method-assign]
stop_budget.EXIT_S = 6.0
if __name__ == "__main__":  # not in the extraction processes, which spawn imports this into
    sys.exit(cli.main(sys.argv[1:]))
