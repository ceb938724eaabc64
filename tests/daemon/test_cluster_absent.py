"""Without ``--cluster`` a running daemon maps nothing of torch into any of its processes (the
supervisor, control, the workers, the services), and its status has no cluster: the engine is
an optional extra that only ``--cluster`` loads. Checked on a real daemon's /proc/<pid>/maps
while it trains, and again after a checkpoint request, the dashboard's pages and five more steps
(what could import it late); against a process known to have imported torch (so the check can
see it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from _daemon_process import group_survivors, start_small_daemon, wait_daemon
from _wait import until

from crystalline.daemon.status_server import request
from tests.conftest import make_corpus

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def torch_files(pid: int) -> set[str]:
    """The files of torch's package mapped into process ``pid`` (its shared libraries; none
    once it has exited)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except FileNotFoundError:
        return set()
    return {line.split()[-1] for line in maps.splitlines() if "/torch/" in line}


def test_the_check_sees_torch_in_a_process_that_imported_it() -> None:
    pytest.importorskip("torch")
    code = "import sys, torch; print('in', flush=True); sys.stdin.read()"
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"in\n"
        assert any("libtorch" in f for f in torch_files(proc.pid))
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_without_cluster_no_process_of_a_training_daemon_maps_torch() -> None:
    with tempfile.TemporaryDirectory(prefix="ca-", dir="/tmp") as d:  # AF_UNIX path limit
        trains_without_torch(Path(d))


def trains_without_torch(short_dir: Path) -> None:
    inbox = short_dir / "state" / "inbox"
    inbox.mkdir(parents=True)
    for i in range(2):
        (inbox / f"doc{i}.txt").write_text(make_corpus(6_000, seed=i), encoding="utf-8")
    run = short_dir / "run"
    proc, notify = start_small_daemon(short_dir, ["--http", "127.0.0.1:0"])  # the dashboard too
    try:
        data = wait_daemon(run, proc, lambda d: d["training"].get("step", 0) >= 2, "no training", 240)
        assert "cluster" not in data and "params_digest" not in data["training"]
        assert_no_torch(proc.pid)
        # what could import it later: a checkpoint, the dashboard's pages, more steps and statuses
        assert request(run / "crystalline.sock", {"cmd": "checkpoint"}, 120)["ok"]
        until(lambda: (run / "dashboard.json").exists(), "no dashboard.json", 60)
        url = json.loads((run / "dashboard.json").read_text(encoding="utf-8"))["url"]
        for page in ("", "api/status", "api/history", "metrics"):
            with urllib.request.urlopen(url + page, timeout=30) as reply:
                assert reply.status == 200 and reply.read(), page
        later = data["training"]["step"] + 5

        def on(d: dict[str, Any]) -> bool:  # five steps more, the checkpoint written
            return d["training"].get("step", 0) >= later and d["training"]["last_checkpoint_step"] is not None

        data = wait_daemon(run, proc, on, "no more steps or no checkpoint", 240)
        assert "cluster" not in data and "params_digest" not in data["training"]
        assert_no_torch(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:  # hung: its whole group goes, not left running
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        notify.close()


def assert_no_torch(supervisor: int) -> None:
    """No process of the daemon whose supervisor is ``supervisor`` maps a file of torch."""
    pids = [int(x.split()[0]) for x in group_survivors(supervisor)]
    assert len(pids) >= 4, pids  # supervisor, control and two workers at least
    assert {pid: torch_files(pid) for pid in pids} == {pid: set() for pid in pids}
