"""scripts/test.sh, the test command, with stand-ins for what it runs: its own bootstrap (the
real one installs), ruff and compileall that pass, a mypy that ends with a given status, and a
pytest that runs until signalled (or ends with a given status). mypy runs first and its failure
ends the run; pytest is exec'd, so a signal to the command a runner started (the script's
process alone), or a Ctrl-C typed on its terminal, reaches pytest once, and the run ends with
pytest's status (2 after a TERM too: the suite's hook turns it into an interrupt)."""

from __future__ import annotations

import os
import pty
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests._wait import until

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "test.sh"
BOOTSTRAP = 'ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"\nVENV="$ROOT/.venv"\n'
RUFF = "#!/bin/sh\nexit 0\n"
MYPY = '#!/bin/sh\necho mypy-said\nexit "${STANDIN_MYPY_EXIT:-0}"\n'
# pytest's stand-in ends as pytest with the suite's TERM hook (tests/_sigterm.py) does: on an INT
# or a TERM (KeyboardInterrupt) its teardown, which a second signal would cut short, then 2
PYTEST = (
    "import os, signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.default_int_handler)\n"
    "open(os.path.join(os.environ['STANDIN_PIDS'], 'pytest'), 'w').write(str(os.getpid()))\n"
    "try:\n    time.sleep(120)\nexcept KeyboardInterrupt:\n    time.sleep(1)\n    sys.exit(2)\n"
)
PYTHON = '#!/bin/sh\n[ "$2" = compileall ] && exit 0\n[ "$2" = pytest ] || exit 99\n'
PYTHON += '[ -z "$STANDIN_PYTEST_EXIT" ] || exit "$STANDIN_PYTEST_EXIT"\n'
PYTHON += 'exec "$STANDIN_PYTHON" -c "$STANDIN_PYTEST"\n'


def _runs(pid: int) -> bool:
    """Whether ``pid`` is a process that has not ended (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(SCRIPT, root / "scripts" / "test.sh")
    (root / "scripts" / "bootstrap.sh").write_text(BOOTSTRAP, encoding="utf-8")
    venv_bin = root / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    for name, text in (("ruff", RUFF), ("mypy", MYPY), ("python", PYTHON)):
        (venv_bin / name).write_text(text, encoding="utf-8")
        (venv_bin / name).chmod(0o755)
    (tmp_path / "pids").mkdir()
    return root


def _start(tmp_path: Path, terminal: int | None = None, **env: str) -> subprocess.Popen[str]:
    """The script in a session of its own; with ``terminal`` (a pty's other end) as its stdin and
    controlling terminal, whose foreground process group it is, as in a shell."""
    root = _tree(tmp_path)
    env = {
        "PATH": os.environ["PATH"],
        "STANDIN_PIDS": str(tmp_path / "pids"),
        "STANDIN_PYTHON": sys.executable,
        "STANDIN_PYTEST": PYTEST,
        **env,
    }
    setsid = ["setsid", "--ctty"] if terminal is not None else []
    return subprocess.Popen(
        [*setsid, "bash", str(root / "scripts" / "test.sh")],
        env=env,
        stdin=terminal,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=terminal is None,
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("send", "status"), [("TERM", 2), ("INT", 2), ("ctrl-c", 2)])
def test_a_signal_to_the_test_command_reaches_pytest_once(tmp_path: Path, send: str, status: int) -> None:
    controller, terminal = pty.openpty() if send == "ctrl-c" else (None, None)
    script = _start(tmp_path, terminal)
    pids = tmp_path / "pids"
    standins: list[int] = []
    try:
        until(lambda: (pids / "pytest").is_file(), "pytest's stand-in started", 60)
        standins = [int((pids / "pytest").read_text(encoding="ascii"))]
        assert standins == [script.pid] or controller is not None  # exec'd: the script's process
        if controller is not None:
            os.write(controller, b"\x03")  # the terminal's INT to its foreground process group
        else:
            os.kill(script.pid, signal.Signals[f"SIG{send}"])
        script.wait(timeout=60)
        until(lambda: not any(_runs(pid) for pid in standins), lambda: f"stand-ins end: {standins}", 30)
        assert script.returncode == status
    finally:
        for pid in standins:  # what the script left running (it holds the output pipe open)
            if _runs(pid):
                os.kill(pid, signal.SIGKILL)
        script.kill()
        script.communicate(timeout=60)
        for fd in (controller, terminal):
            if fd is not None:
                os.close(fd)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("pytest_exit", "mypy_exit", "status"), [("0", "0", 0), ("3", "0", 3), ("0", "1", 1)]
)
def test_the_test_command_fails_when_pytest_or_mypy_fails(
    tmp_path: Path, pytest_exit: str, mypy_exit: str, status: int
) -> None:
    script = _start(tmp_path, STANDIN_PYTEST_EXIT=pytest_exit, STANDIN_MYPY_EXIT=mypy_exit)
    out, _ = script.communicate(timeout=60)
    assert script.returncode == status, out
    assert out.index("== mypy\n") < out.index("mypy-said"), out
    assert ("== pytest" in out) == (mypy_exit == "0"), out  # a type error ends the run first
