"""bench/cluster_scaling.py's arguments: a link rate that is not 0 (loopback) or a positive
finite number is an argparse error, not a loopback run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "cluster_scaling.py"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("rate", ["-5", "nan", "inf", "fast"])
def test_a_bad_link_rate_is_one_argparse_error(rate: str) -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH), "--members", "1", f"--link-mbit={rate}"],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines()[-1].endswith(
        f"argument --link-mbit: {rate!r} is not 0 (loopback) or a positive finite rate in Mbit/s"
    )
