"""The real daemon fed the hostile corpus through its drop folder: every file ends in done/ or
failed/ (with a reason), and the daemon stays up, answering and training."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from _daemon_process import SMALL_MODEL, daemon_status, wait_daemon
from _hostile_corpus import drop_corpus
from _wait import until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

HERE = Path(__file__).resolve().parent
SMALL = [*SMALL_MODEL, "--batch-size", "8", "--eval-interval", "50", "--eval-windows", "8", "--workers", "3"]


def test_daemon_stays_up_on_the_hostile_corpus() -> None:
    with tempfile.TemporaryDirectory(prefix="ch-", dir="/tmp") as d:
        root = Path(d)
        state, run, inbox = root / "state", root / "run", root / "state" / "inbox"
        inbox.mkdir(parents=True)
        corpus = drop_corpus()
        for name, body in corpus.items():
            (inbox / name).write_bytes(body)
        cmd = [
            sys.executable,
            "-m",
            "crystalline.daemon.cli",
            "run",
            "--state-dir",
            str(state),
            "--runtime-dir",
            str(run),
            "--no-crawl",
            *SMALL,
        ]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        try:
            left: list[Path] = []

            def finished() -> bool:
                nonlocal left
                assert proc.poll() is None, f"the daemon died ({proc.returncode}) on hostile input"
                left = [p for p in inbox.iterdir() if p.name not in ("done", "failed", ".ingesting")]
                left += list((inbox / ".ingesting").glob("*"))  # claimed, not finished yet
                return not left and (run / "crystalline.sock").exists()

            until(finished, lambda: f"never finished: {[p.name for p in left]}", 480, 0.25)
            done = {p.name for p in (inbox / "done").iterdir()}
            failed = {p.name for p in (inbox / "failed").iterdir() if not p.name.endswith(".reason.txt")}
            reasons = {
                p.name[: -len(".reason.txt")]
                for p in (inbox / "failed").iterdir()
                if p.name.endswith(".reason.txt")
            }
            assert failed == reasons  # every failure says why
            # nothing is left in the inbox, and every file (the corpus and the bundled samples,
            # long names shortened) ended in one of the two places
            assert len(done) + len(failed) >= len(corpus)
            first = daemon_status(run)["training"]["step"]
            wait_daemon(
                run, proc, lambda d: d["training"]["step"] > first, "training stopped stepping", 120, 0.5
            )
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
