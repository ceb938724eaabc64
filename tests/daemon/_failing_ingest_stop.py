"""`crystalline run` whose ingest stop fails once it has stopped ingest: one fault injected in a
real daemon (tests/daemon/test_daemon_stop.py), everything else as in production."""

from __future__ import annotations

import sys

from crystalline.daemon import cli
from crystalline.daemon.ingest_service import IngestService

real_stop = IngestService.stop


async def failing_stop(self: IngestService, timeout_s: float) -> None:
    await real_stop(self, timeout_s)
    raise RuntimeError("injected: ingest's stop failed")


IngestService.stop = failing_stop  # type: ignore[method-assign]
if __name__ == "__main__":  # not in the extraction processes, which spawn imports this into
    sys.exit(cli.main(sys.argv[1:]))
