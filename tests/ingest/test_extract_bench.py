"""bench/extract_quality.py refuses arguments it cannot honour with argparse's one error line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "extract_quality.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=120)


def test_zero_generated_pages_is_a_usage_error() -> None:
    # it divided by zero averaging the generated tables' scores
    out = _run("--pages", "0")
    assert out.returncode == 2
    assert out.stdout == ""
    error = "extract_quality.py: error: argument --pages: 0 is not a positive number of pages"
    assert out.stderr.splitlines()[-1] == error
    assert "Traceback" not in out.stderr


def test_negative_runs_is_a_usage_error() -> None:
    out = _run("--runs", "-1")
    assert out.returncode == 2
    error = "extract_quality.py: error: argument --runs: -1 is negative (0: no end-to-end runs)"
    assert out.stderr.splitlines()[-1] == error
