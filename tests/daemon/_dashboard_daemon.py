"""A real `crystalline run` for the dashboard tests: a small model, its stderr in a file, started
in its own process group and stopped with SIGTERM (nothing may outlive it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _daemon_process import SMALL_MODEL, group_survivors
from _wait import until_status

from crystalline.daemon.status_client import request


def corpus_parts(text: str, parts: int = 4) -> dict[str, str]:
    """``text`` as ``parts`` documents: a document is held out for validation by a hash of its
    path (10 %), so one file alone leaves nothing to train on in one run out of ten."""
    lines = text.splitlines(keepends=True)
    size = -(-len(lines) // parts)
    return {f"corpus-{i}.txt": "".join(lines[i * size : (i + 1) * size]) for i in range(parts)}


START_S = 180.0  # a shared 2-core CI machine can be slow to start 13 processes


def trained(status: dict[str, Any]) -> bool:
    """The daemon trained a step."""
    step: int = status.get("training", {}).get("step", 0)
    return step > 0


@contextmanager
def running_daemon(
    root: Path,
    inbox: dict[str, str],
    *args: str,
    crawl: bool = False,
    ready: Callable[[dict[str, Any]], bool] = trained,
) -> Iterator[dict[str, Any]]:
    """Start the daemon on ``inbox`` (name -> text; ``folder/name`` in a drop sub-folder),
    crawling only when ``crawl`` (give it a ``--crawl-start-url``), and yield once ``ready``
    holds of its status (by default: it trained a step): ``{"proc", "run", "log", "status"}``."""
    state, run = root / "s", root / "r"
    (state / "inbox").mkdir(parents=True)
    for name, text in inbox.items():  # "<folder>/<file>": a drop sub-folder, its own source
        (state / "inbox" / name).parent.mkdir(exist_ok=True)
        (state / "inbox" / name).write_text(text, encoding="utf-8")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env.pop("NOTIFY_SOCKET", None)
    cmd = [
        sys.executable, "-m", "crystalline.daemon.cli", "run",
        "--state-dir", str(state), "--runtime-dir", str(run), "--no-samples",
        *([] if crawl else ["--no-crawl"]),
        "--workers", "12", *SMALL_MODEL, "--batch-size", "12", "--eval-interval", "25",
        "--eval-windows", "16", "--checkpoint-interval-s", "5", *args,
    ]  # fmt: skip
    log = root / "daemon.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stderr=err, start_new_session=True)

    def alive_status(timeout_s: float) -> dict[str, Any]:
        assert proc.poll() is None, f"daemon exited with {proc.returncode}: {log.read_text()[-2000:]}"
        return status(run, timeout_s)

    try:
        data = until_status(
            alive_status, ready, f"the daemon was not ready ({ready.__name__})", START_S,
            show=lambda d: f"{d}\n{log.read_text()[-3000:]}",
        )  # fmt: skip
        yield {"proc": proc, "run": run, "log": log, "status": data}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        assert group_survivors(proc.pid) == [], "the daemon left processes behind"


def status(run: Path, timeout_s: float = 10.0) -> dict[str, Any]:
    data: dict[str, Any] = request(run / "crystalline.sock", {"cmd": "status"}, timeout_s)["data"]
    return data
