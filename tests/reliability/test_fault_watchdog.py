"""One health verdict for the watchdog, the status reply and `crystalline status`, on a real
`crystalline run` under a watchdog: a control process stopped with SIGSTOP goes silent, the
reply says ``stuck``, the CLI exits 2 with the same reasons and the watchdog pings stop; once it
runs again all three say healthy and the pings resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from _wait import until
from fault_harness import Daemon, drop, short_tmp

from crystalline.exit_status import DEGRADED, OK

PING_S = 1.0  # WATCHDOG_USEC=2 s: the daemon pings every second while it may
# [daemon] control-silent-s: shorter than its 60 s default, long enough for a step (or an
# evaluation) of the small model with 2 workers on a loaded machine, a fraction of a second; what
# the test checks does not depend on the length
CONTROL_SILENT_S = 8.0


def cli(d: Daemon) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crystalline.daemon.cli", "status", "--runtime-dir", str(d.run_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def pings_during(d: Daemon, seconds: float) -> int:
    assert d.notify is not None
    before = d.notify.seen("WATCHDOG=1")
    time.sleep(seconds)
    return d.notify.seen("WATCHDOG=1") - before


def two_pings_within(d: Daemon, seconds: float) -> None:
    """Two watchdog pings come within ``seconds`` (awaited, not slept through)."""
    notify = d.notify
    assert notify is not None
    before = notify.seen("WATCHDOG=1")
    until(lambda: notify.seen("WATCHDOG=1") - before >= 2, "fewer than two watchdog pings", seconds, 0.05)


@pytest.mark.slow
@pytest.mark.timeout(500)
def test_a_silent_control_process_is_stuck_for_the_watchdog_the_reply_and_the_cli() -> None:
    with short_tmp() as root:
        d = Daemon(root, workers=2, extra=["--control-silent-s", str(CONTROL_SILENT_S)])
        drop(d.inbox, [f"a{i}.txt" for i in range(4)])
        d.start(wrap=["env", "WATCHDOG_USEC=2000000"])  # the daemon is env's exec: WATCHDOG_PID unset
        try:
            data = d.wait_step(2)
            assert data["health"]["verdict"] == "ok", data["health"]
            two_pings_within(d, 4 * PING_S)

            control = d.control_pid()
            os.kill(control, signal.SIGSTOP)
            try:
                stuck = d.wait_for(
                    "the silent control process judged stuck",
                    lambda s: s["health"]["verdict"] == "stuck",
                    timeout_s=CONTROL_SILENT_S + 120,
                )
                health = stuck["health"]
                assert health["watchdog"] is False
                assert any(r.startswith("control process silent for") for r in health["reasons"]), health
                assert pings_during(d, 4 * PING_S) == 0  # the watchdog goes by the same verdict
                out = cli(d)
                assert out.returncode == DEGRADED, out.stdout
                printed = [
                    x.removeprefix("degraded: ")
                    for x in out.stdout.splitlines()
                    if x.startswith("degraded: ")
                ]
                assert printed[0] == "stuck: the watchdog is no longer fed"
                assert any(r.startswith("control process silent for") for r in printed[1:]), printed
            finally:
                os.kill(control, signal.SIGCONT)

            step = stuck["training"]["step"]
            d.wait_for(  # the workers that missed their deadline meanwhile are replaced
                "healthy and stepping again",
                lambda s: s["health"]["verdict"] == "ok" and s["training"]["step"] > step + 2,
            )
            two_pings_within(d, 4 * PING_S)
            out = cli(d)
            assert out.returncode == OK and "degraded" not in out.stdout, out.stdout
            assert d.stop() == 0
        finally:
            d.close()
