"""The health verdict: computed once from the status data (daemon/health.py); the watchdog
goes by its ``watchdog``, and `crystalline status`, run against a real status socket serving
the data with its verdict, exits and explains exactly as the verdict says."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crystalline.daemon.health import judge
from crystalline.daemon.status_server import Command, StatusServer
from crystalline.exit_status import DEGRADED, OK

pytestmark = pytest.mark.timeout(120)


def data(**training: Any) -> dict[str, Any]:
    return {
        "state": "running",
        "training": {
            "state": "training",
            "step": 10,
            "status_age_s": 0.4,
            "workers": [{"id": i, "state": "idle"} for i in range(4)],
            **training,
        },
        "crawler": {"state": "running"},
        "ingest": {"state": "running"},
        "generation": {"cpu_share": 0.0},
    }


def test_ok_degraded_and_stuck() -> None:
    assert judge(data()) == {"verdict": "ok", "watchdog": True, "reasons": []}

    d = data(control_error="control process exited with status -9")
    d["training"]["workers"][1]["state"] = "dead"
    d["crawler"]["error"] = "OSError: disk full"
    d["ingest"]["error"] = "ingest batch failed"
    assert judge(d) == {
        "verdict": "degraded",  # all of it is being retried with backoff: no restart by systemd
        "watchdog": True,
        "reasons": [
            "worker 1 is dead",
            "control: control process exited with status -9",
            "ingest: ingest batch failed",
            "crawl: OSError: disk full",
        ],
    }

    silent = judge(data(status_age_s=61.0))
    assert silent == {"verdict": "stuck", "watchdog": False, "reasons": ["control process silent for 61 s"]}
    # [daemon] control-silent-s sets the limit (60 s by default)
    assert judge(data(status_age_s=20.0))["verdict"] == "ok"
    shorter = judge(data(status_age_s=20.0), control_silent_s=15.0)
    assert shorter == {"verdict": "stuck", "watchdog": False, "reasons": ["control process silent for 20 s"]}
    stalled = judge(data(stalled="no step for 45 s"))
    assert stalled["verdict"] == "stuck" and not stalled["watchdog"]
    # a control process being restarted (no age) or just started is not stuck
    assert judge(data(status_age_s=None, state="restarting"))["verdict"] == "ok"


def test_a_vocabulary_that_cannot_be_learned_is_degraded() -> None:
    d = data(state="waiting for data", workers=[])
    d["vocabulary"] = {"learned": False, "learns_from_bytes": 1 << 25}
    assert judge(d)["verdict"] == "ok"  # waiting for text to learn it from is not a fault
    d["vocabulary"]["error"] = "[Errno 28] No space left on device"
    assert judge(d)["reasons"] == ["vocabulary: [Errno 28] No space left on device"]
    assert judge(d)["verdict"] == "degraded"


def test_a_daemon_that_cannot_use_its_state_directory_is_degraded_not_stuck() -> None:
    d = {"state": "failed", "last_error": "cannot use the state directory /s: Read-only file system"}
    assert judge(d) == {
        "verdict": "degraded",
        "watchdog": True,  # a restart would fail the same way: no crash loop
        "reasons": ["daemon state is failed: cannot use the state directory /s: Read-only file system"],
    }


@pytest.fixture
def served() -> Iterator[tuple[Path, dict[str, Any]]]:
    """A real status socket whose ``status`` replies with ``box["data"]`` and its verdict, as
    the supervisor's does (status data with ``health`` from ``judge``)."""
    box: dict[str, Any] = {}

    async def status(_req: dict[str, Any]) -> Any:
        return {**box["data"], "health": judge(box["data"])}

    loop = asyncio.new_event_loop()
    with tempfile.TemporaryDirectory(prefix="chl-", dir="/tmp") as d:
        path = Path(d) / "crystalline.sock"
        server = StatusServer(path, {"status": Command("status", status, control=False)})
        loop.run_until_complete(server.start())
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        try:
            yield path, box
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.run_until_complete(server.close())
            loop.close()


@pytest.mark.parametrize(
    ("training", "code"),
    [
        ({}, OK),
        ({"control_error": "control process exited with status 1"}, DEGRADED),
        ({"status_age_s": 90.0}, DEGRADED),
    ],
    ids=["ok", "degraded", "stuck"],
)
def test_the_cli_exits_and_explains_as_the_daemons_verdict_says(
    served: tuple[Path, dict[str, Any]], training: dict[str, Any], code: int
) -> None:
    path, box = served
    box["data"] = data(**training)
    health = judge(box["data"])
    cli = [sys.executable, "-m", "crystalline.daemon.cli", "status", "--socket", str(path)]
    out = subprocess.run(cli, capture_output=True, text=True, timeout=60)
    assert out.returncode == code, out.stderr
    printed = [
        line.removeprefix("degraded: ") for line in out.stdout.splitlines() if line.startswith("degraded: ")
    ]
    stuck = ["stuck: the watchdog is no longer fed"] if health["verdict"] == "stuck" else []
    assert printed == stuck + health["reasons"]
    assert (code == OK) == (health["verdict"] == "ok") and health["watchdog"] == (
        health["verdict"] != "stuck"
    )
