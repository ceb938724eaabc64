"""Control's end of the supervisor channel: closing it never waits on a socket that a failed
path left open on the process's one ZeroMQ context (the ring's, the engine's)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROGRAM = """
import sys, zmq
from crystalline.daemon.control_process import Channel
channel = Channel(sys.argv[1])
left = channel.ctx.socket(zmq.DEALER)  # as the engine's socket on the channel's context
left.connect(sys.argv[2])
left.send(b"pending", zmq.NOBLOCK)
channel.close()
print("closed")
"""


@pytest.mark.timeout(60)
def test_closing_the_channel_ends_the_context_with_a_socket_left_open(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM, f"ipc://{tmp_path}/control.sock", f"ipc://{tmp_path}/ring.sock"],
        capture_output=True,
        text=True,
        timeout=30,  # ZeroMQ's term() waits for the left socket forever
    )
    assert (out.returncode, out.stdout) == (0, "closed\n"), out.stderr
