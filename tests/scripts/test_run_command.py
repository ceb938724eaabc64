"""scripts/run.sh, the run command, with stand-ins for its bootstrap (the real one installs) and
for the daemon: what it says before the daemon runs, and that the daemon's own word and exit
status come through."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "run.sh"
BOOTSTRAP = 'ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"\nVENV="$ROOT/.venv"\n'
# the daemon refusing to start, as a second run on the same state directory does
DAEMON = '#!/bin/sh\necho "crystalline: error: $*: another daemon is already listening here" >&2\nexit 1\n'


def test_the_run_command_says_starting_and_the_daemons_refusal_comes_through(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(SCRIPT, root / "scripts" / "run.sh")
    (root / "scripts" / "bootstrap.sh").write_text(BOOTSTRAP, encoding="utf-8")
    daemon = root / ".venv" / "bin" / "crystalline"
    daemon.parent.mkdir(parents=True)
    daemon.write_text(DAEMON, encoding="utf-8")
    daemon.chmod(0o755)
    command = ["bash", str(root / "scripts" / "run.sh"), "--http", "off"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    ask = f"{daemon} status --runtime-dir {root}/state/run"
    assert done.stderr.splitlines() == [
        f"crystalline: starting; ask it with: {ask}",
        f"crystalline: error: run --state-dir {root}/state --http off: another daemon is already"
        " listening here",
    ]
