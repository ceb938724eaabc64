"""checkpoint: write a checkpoint now, between two steps.

Request:  {"cmd": "checkpoint"}
Reply:    {"path": "<state>/checkpoints/step-NNNNNNNN"}   (an error before training started,
          or when the disk refuses it: the previous checkpoints are kept)
Only for the daemon's own user and root.
"""

from __future__ import annotations

from typing import Any

from . import Daemon

CONTROL = True
TIMEOUT_S = 60.0


async def execute(daemon: Daemon, _request: dict[str, Any]) -> Any:
    return await daemon.control.request("checkpoint", timeout_s=TIMEOUT_S)
