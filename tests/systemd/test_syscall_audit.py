"""scripts/syscall_audit.py's analysis: a trace held against the unit's filter (issue 18)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest
from _nspawn import REPO

from crystalline.ingest import ocr

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is missing (apt-get install systemd)"
)


def audit() -> ModuleType:
    spec = importlib.util.spec_from_file_location("syscall_audit", REPO / "scripts" / "syscall_audit.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CLEAN = """\
100  execve("/opt/crystalline/.venv/bin/crystalline", ["crystalline", "run"], 0x7ffd /* 9 vars */) = 0
100  socket(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC, 0) = 3
101  sched_setscheduler(0, SCHED_OTHER, [0]) = 0
101  mbind(0x7f3eeb800000, 33554432, MPOL_PREFERRED, NULL, 0, 0) = 0
100  mmap(NULL, 8192, PROT_READ|PROT_EXEC, MAP_PRIVATE|MAP_DENYWRITE, 3, 0) = 0x7f00
100  pipe2( <unfinished ...>
100  <... pipe2 resumed>[4, 5], O_CLOEXEC) = 0
"""


def test_a_trace_of_allowed_calls_passes(tmp_path: Path) -> None:
    (tmp_path / "trace").write_text(CLEAN)
    assert audit().analyse(tmp_path / "trace", as_root=False) == 0


@pytest.mark.parametrize(
    "line",
    [
        '102  mount("none", "/mnt", "tmpfs", 0, NULL) = -1 EPERM',  # @mount
        "102  timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC) = 7",  # @timer, denied by this unit
        "102  mmap(NULL, 4096, PROT_READ|PROT_WRITE|PROT_EXEC, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7f",
        "102  mprotect(0x7f3eeda3a000, 4096, PROT_READ|PROT_EXEC) = 0",
        "102  fchown(23, 0, 0) = 0",  # excused only when the audit ran the daemon as root
    ],
)
def test_a_refused_call_or_a_writable_executable_mapping_fails(tmp_path: Path, line: str) -> None:
    (tmp_path / "trace").write_text(CLEAN + line + "\n")
    assert audit().analyse(tmp_path / "trace", as_root=False) == 1


def test_ocr_makes_only_calls_the_unit_allows(tmp_path: Path) -> None:
    """OCR's child, as ingest/ocr.py starts it (setpriv setting the parent-death signal, then
    tesseract reading the bundled scan), traced with strace: every call it makes is one the unit's
    filter allows. setpriv calls capset even for --pdeathsig alone; refused (EPERM) under the unit,
    it exited 127 and every image failed (review R14 D1)."""
    if shutil.which("strace") is None or shutil.which("tesseract") is None:
        pytest.skip("strace or tesseract is missing (apt-get install strace tesseract-ocr)")
    if subprocess.run(["strace", "-o", os.devnull, "true"], capture_output=True).returncode != 0:
        pytest.skip("strace cannot trace here (ptrace is not permitted)")
    trace = tmp_path / "trace"
    scan = (REPO / "daemon" / "samples" / "sonnet-18-scan.png").read_bytes()
    run = subprocess.run(
        ["strace", "-f", "-qq", "-o", str(trace), *ocr._command("eng")],
        input=scan,
        capture_output=True,
        env=dict(os.environ, OMP_THREAD_LIMIT="1"),
        timeout=120,
    )
    assert run.returncode == 0 and b"compare thee" in run.stdout, run.stderr
    assert audit().analyse(trace, as_root=False) == 0
