"""scripts/bootstrap.sh names what OCR needs and lacks: tesseract, and setpriv with --pdeathsig
(util-linux >= 2.33; ingest/ocr.py runs tesseract under it). The real script runs on a copy of
the repository's layout whose virtual environment is already installed (its stamp current), so
nothing is installed; PATH holds the tools it uses and the setpriv of each case."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bootstrap.sh"
TOOLS = ("bash", "cat", "cut", "dirname", "id", "sha256sum")
OLD_HELP = "Usage:\n setpriv [options] <program> [<argument>...]\n --nnp, --no-new-privs\n"
NEW_HELP = OLD_HELP + " --pdeathsig keep|clear|<signame>\n"


def _fake(path: Path, stdout: str) -> None:
    path.write_text(f"#!/bin/sh\ncat <<'EOF'\n{stdout}EOF\n", encoding="utf-8")
    path.chmod(0o755)


def run_bootstrap(tmp_path: Path, setpriv_help: str | None) -> subprocess.CompletedProcess[str]:
    root = tmp_path / "root"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(SCRIPT, root / "scripts" / "bootstrap.sh")
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n", encoding="utf-8")
    venv_bin = root / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").symlink_to(sys.executable)
    digest = hashlib.sha256((root / "pyproject.toml").read_bytes()).hexdigest()
    (root / ".venv" / ".crystalline-installed").write_text(f"{digest} dev\n", encoding="utf-8")
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found is not None, tool
        (tools / tool).symlink_to(found)
    (tools / "python3").symlink_to(sys.executable)
    _fake(tools / "tesseract", "tesseract 5\n")
    if setpriv_help is not None:
        _fake(tools / "setpriv", setpriv_help)
    env = {"PATH": str(tools), "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    cmd = [str(tools / "bash"), str(root / "scripts" / "bootstrap.sh")]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("setpriv_help", "said"),
    [
        (None, "bootstrap: setpriv is missing"),
        (OLD_HELP, "bootstrap: setpriv has no --pdeathsig"),
        (NEW_HELP, ""),
    ],
)
def test_bootstrap_names_a_missing_or_old_setpriv(
    tmp_path: Path, setpriv_help: str | None, said: str
) -> None:
    proc = run_bootstrap(tmp_path, setpriv_help)
    assert proc.returncode == 0, proc.stderr  # OCR's tools are named, the install goes on
    if said:
        lines = [line for line in proc.stderr.splitlines() if "setpriv" in line]
        assert len(lines) == 1 and lines[0].startswith(said), proc.stderr
        assert "util-linux >= 2.33" in lines[0] and "OCR" in lines[0], lines
    else:
        assert proc.stderr == "", proc.stderr
