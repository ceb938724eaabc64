"""`crystalline status` imports only what it needs: the socket client, not numpy, ZeroMQ,
aiohttp, the trainer, the crawler or ingest (issue 19: importing them made the command take
2-11 s on a busy machine). Checked on the real command in a subprocess, against a real status
socket; the times are measured in bench/status_socket.py, never asserted here."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crystalline.daemon.status_server import Command, StatusServer

pytestmark = pytest.mark.timeout(120)

HEAVY = ("numpy", "zmq", "msgpack", "aiohttp", "asyncio", "tokenizers", "PIL", "bs4", "lxml")
HEAVY_OURS = ("crystalline.workers", "crystalline.crawler", "crystalline.ingest", "crystalline.shm")

# runs the real entry point, then reports which modules the status path imported
PROBE = """
import json, sys
from crystalline.daemon import cli
code = cli.main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""

DATA = {
    "state": "running",
    "uptime_s": 3.0,
    "training": {"step": 7, "workers": [{"id": 0, "state": "idle", "restarts": 0}]},
    "crawler": {},
    "ingest": {},
    "ring": {"slots": 3, "ready": 1},
    "health": {"verdict": "ok", "watchdog": True, "reasons": []},  # the daemon's verdict
}


@pytest.fixture
def live_socket() -> Iterator[Path]:
    """A real StatusServer answering ``status`` in a thread of this process."""
    with tempfile.TemporaryDirectory(prefix="csf-", dir="/tmp") as d:
        path = Path(d) / "s.sock"
        loop = asyncio.new_event_loop()
        started = threading.Event()

        async def status(_req: dict[str, Any]) -> Any:
            return DATA

        server = StatusServer(path, {"status": Command("status", status, control=False)})

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(server.start())
            started.set()
            loop.run_forever()
            loop.run_until_complete(server.close())

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        assert started.wait(10)
        try:
            yield path
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()


def probe(*args: str) -> tuple[int, list[str], str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60, check=False
    )
    report = json.loads(out.stderr.strip().splitlines()[-1])
    return report["code"], report["modules"], out.stdout


def heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if m.split(".")[0] in HEAVY or any(m.startswith(p) for p in HEAVY_OURS)]


def test_status_answers_without_importing_the_daemons_machinery(live_socket: Path) -> None:
    code, modules, stdout = probe("status", "--socket", str(live_socket), "--json")
    assert code == 0
    assert json.loads(stdout)["training"]["step"] == 7
    assert heavy(modules) == []


def test_ctl_is_as_light(live_socket: Path) -> None:
    code, modules, stdout = probe("ctl", "--socket", str(live_socket), "status")
    assert code == 0
    assert json.loads(stdout)["training"]["step"] == 7
    assert heavy(modules) == []


def test_unreachable_status_is_as_light(live_socket: Path) -> None:
    code, modules, _ = probe("--debug", "status", "--socket", str(live_socket.with_name("none.sock")))
    assert code == 1
    assert heavy(modules) == []


def test_the_full_command_line_still_lists_every_subcommand() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "crystalline.daemon.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for name in ("train", "generate", "run", "status", "crawl", "ingest"):
        assert f"    {name}" in out.stdout
