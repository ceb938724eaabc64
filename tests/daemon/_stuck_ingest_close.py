"""`crystalline run` whose ingest close never returns (as a batch's store that hangs on its
database would not) and whose stop gives up on its threads at 10 s instead of 57 s (after
ingest's close is cut, 7 s into the cleanup): one fault injected in a real daemon
(tests/daemon/test_daemon_stop.py), everything else as in production."""

from __future__ import annotations

import sys
import threading

from crystalline.daemon import cli, stop_budget
from crystalline.daemon.ingest_service import IngestService

never = threading.Event()


def stuck_close(self: IngestService) -> None:
    never.wait(3600)


IngestService.close = stuck_close  # type: ignore[method-assign]
stop_budget.EXIT_S = 10.0
if __name__ == "__main__":  # not in the extraction processes, which spawn imports this into
    sys.exit(cli.main(sys.argv[1:]))
