"""The state directory's lock: one holder at a time, free again when the holder closes it or
dies (a SIGKILLed process included), which is how a killed supervisor's control knows that no
supervisor holds the state directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from crystalline.daemon.state_dir_lock import take_lock

pytestmark = pytest.mark.timeout(60)


def test_one_holder_at_a_time_and_free_when_the_holder_is_killed(tmp_path: Path) -> None:
    first = take_lock(tmp_path)
    assert first is not None
    assert take_lock(tmp_path) is None  # held (another open of the file: flock refuses it too)
    first.close()
    again = take_lock(tmp_path)
    assert again is not None
    again.close()

    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from crystalline.daemon.state_dir_lock import take_lock\n"
        "lock = take_lock(Path(sys.argv[1]))\n"
        "print('held' if lock is not None else 'refused', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        assert take_lock(tmp_path) is None
    finally:
        child.kill()
        child.wait(timeout=30)
    after = take_lock(tmp_path)
    assert after is not None
    after.close()


def test_a_lock_released_within_the_wait_is_taken_one_held_past_it_is_not(tmp_path: Path) -> None:
    """A starting supervisor waits a moment for the lock (a killed supervisor's control holds it
    while it sweeps the ring left behind): taken once the holder lets go, None past ``wait_s``."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from crystalline.daemon.state_dir_lock import take_lock\n"
        "lock = take_lock(Path(sys.argv[1]))\n"
        "print('held', flush=True)\n"
        "time.sleep(float(sys.argv[2]))\n"
        "lock.close()\n"
        "time.sleep(60)\n"
    )
    for hold_s, taken in ((0.5, True), (60.0, False)):
        command = [sys.executable, "-c", script, str(tmp_path), str(hold_s)]
        child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "held"
            assert take_lock(tmp_path) is None  # one try: refused
            lock = take_lock(tmp_path, wait_s=10.0 if taken else 1.0)
            assert (lock is not None) == taken
            if lock is not None:
                lock.close()
        finally:
            child.kill()
            child.wait(timeout=30)
