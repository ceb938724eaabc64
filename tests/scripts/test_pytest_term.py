"""A TERM to a pytest run with the suite's TERM hook (tests/_sigterm.py, which tests/conftest.py
imports) runs the fixtures' teardown: a child the fixture started in a session of its own (as the
tests' daemons are) is ended, not left to init, and the run ends with pytest's status 2."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_test_command import _runs

from tests._wait import until

TESTS = Path(__file__).resolve().parents[1]
PROBE = """
import os, subprocess, sys, time
from pathlib import Path
import pytest

OUT = Path(os.environ["PROBE_OUT"])


@pytest.fixture
def child():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
    (OUT / "child").write_text(str(proc.pid))
    yield proc
    proc.terminate()
    proc.wait(timeout=30)
    (OUT / "teardown").write_text("ran")


def test_sleeps(child):
    (OUT / "started").write_text("")
    time.sleep(300)
"""


@pytest.mark.timeout(120)
def test_a_term_to_the_run_runs_the_teardown_and_ends_the_fixtures_child(tmp_path: Path) -> None:
    probe, out = tmp_path / "probe", tmp_path / "out"
    probe.mkdir()
    out.mkdir()
    (probe / "test_probe.py").write_text(PROBE, encoding="utf-8")
    env = {**os.environ, "PROBE_OUT": str(out), "PYTHONPATH": str(TESTS)}
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "_sigterm", "-p", "no:cacheprovider", str(probe)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    child = 0
    try:
        until(lambda: (out / "started").is_file(), "the probe's test started", 60)
        child = int((out / "child").read_text(encoding="ascii"))
        run.send_signal(signal.SIGTERM)
        output, _ = run.communicate(timeout=60)
        assert (out / "teardown").is_file(), output
        assert not _runs(child), output
        assert run.returncode == 2, output
    finally:
        if child and _runs(child):
            os.kill(child, signal.SIGKILL)
        if run.poll() is None:
            run.kill()
            run.communicate(timeout=60)
