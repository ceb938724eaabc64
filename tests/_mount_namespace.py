"""For tests that mount a small tmpfs where only their child sees it: a private mount
namespace (``unshare --mount``), which needs root; the test is skipped with the reason if not."""

from __future__ import annotations

import shutil
import subprocess

import pytest

UNSHARE = ["unshare", "--mount", "--propagation", "private"]


def require_mount_namespace() -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    probe = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a mount namespace here (needs root): {probe.stderr.strip()}")
