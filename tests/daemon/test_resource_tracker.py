"""The supervisor stops multiprocessing's resource tracker at exit, within a deadline even
when a stray process still holds the tracker's pipe (the tracker would never see EOF)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

STRAY_HOLDER = """
import json, os, subprocess
from multiprocessing import resource_tracker
from crystalline.daemon.resource_tracker import stop_resource_tracker
resource_tracker.ensure_running()
tracker = resource_tracker._resource_tracker
pid = tracker._pid
holder = subprocess.Popen(  # keeps the pipe open
    ["sleep", "60"], pass_fds=[tracker._fd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
)
stop_resource_tracker()  # the default deadline
try:
    os.kill(pid, 0)
    gone = False
except ProcessLookupError:
    gone = True
holder.kill()
holder.wait()
print(json.dumps({"tracker_gone": gone, "pid": tracker._pid, "fd": tracker._fd}))
"""


@pytest.mark.timeout(90)
def test_the_resource_tracker_is_stopped_even_while_a_stray_process_holds_its_pipe() -> None:
    out = subprocess.run([sys.executable, "-c", STRAY_HOLDER], capture_output=True, text=True, timeout=40)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"tracker_gone": True, "pid": None, "fd": None}
    assert "killed" in out.stderr  # logged: it did not exit on its own


WITHOUT_PRIVATE_API = """
import logging, os, sys
from multiprocessing import resource_tracker
from crystalline.daemon.resource_tracker import stop_resource_tracker
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
resource_tracker.ensure_running()
tracker = resource_tracker._resource_tracker
pid = tracker._pid
if sys.argv[1] == "module":
    del resource_tracker._resource_tracker  # a Python whose module keeps it under another name
else:
    del tracker._pid  # a Python whose tracker keeps its process under another name
stop_resource_tracker()
os.kill(pid, 0)  # not stopped: it ends when this process does (its pipe closes with it)
print("returned")
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize("missing", ["module", "attribute"])
def test_without_the_trackers_private_api_the_stop_warns_once_and_goes_on(missing: str) -> None:
    """The tracker's ``_resource_tracker``, ``_lock``, ``_fd`` and ``_pid`` are CPython's private
    API (3.11-3.13): on a Python without them the stop leaves the tracker to end with the process,
    says so in one warning, and raises nothing into the stop."""
    cmd = [sys.executable, "-c", WITHOUT_PRIVATE_API, missing]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=40)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "returned\n"
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("WARNING resource tracker not stopped: "), out.stderr
