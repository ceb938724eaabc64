"""A real `crystalline run` for fault tests: its own process group (so a test can kill all of it),
its own notify socket, a log file, and helpers to find its processes and count its documents.

Deadlines here are generous (other test sessions share this 2-core machine); tests assert on
what the daemon reports and leaves on disk, never on how long it took.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _daemon_process import SMALL_MODEL, NotifyListener
from _wait import until_status

from crystalline.daemon.status_server import request

SMALL = [
    *SMALL_MODEL,
    "--batch-size",
    "12",
    "--eval-interval",
    "25",
    "--eval-windows",
    "16",
    "--checkpoint-interval-s",
    "3",
]

WORDS = [
    *[
        "the",
        "cat",
        "sat",
        "on",
        "the",
        "mat",
        "and",
        "the",
        "dog",
        "ran",
        "to",
        "the",
        "park",
        "while",
        "a",
        "bird",
        "sang",
        "in",
        "the",
        "tree",
    ],
    *[
        "near",
        "old",
        "red",
        "house",
        "by",
        "river",
        "under",
        "bright",
        "moon",
        "over",
        "green",
        "hill",
        "with",
        "small",
        "boat",
    ],
]


def document(seed: int, words: int = 400) -> str:
    """A distinct, learnable text document (distinct enough not to be a near-duplicate)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(words // 8):
        lines.append(
            " ".join(rng.choice(WORDS) for _ in range(8)).capitalize() + f" {seed}-{rng.random():.6f}."
        )
    return "\n".join(lines) + "\n"


def drop(inbox: Path, names: list[str], seed0: int = 0) -> None:
    """Write each document beside the inbox and rename it in (how a complete file arrives)."""
    inbox.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        tmp = inbox / f".{name}.part"
        tmp.write_text(document(seed0 + i), encoding="utf-8")
        os.replace(tmp, inbox / name)


@contextlib.contextmanager
def short_tmp() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="cr-", dir="/tmp") as d:  # AF_UNIX path limit
        yield Path(d)


def children(pid: int) -> list[int]:
    """Child processes of ``pid``, whichever of its threads started them."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


class Daemon:
    """One daemon (and its restarts) on one state directory."""

    def __init__(self, root: Path, workers: int = 2, extra: list[str] | None = None) -> None:
        self.root = root
        self.state = root / "s"
        self.run_dir = root / "r"
        self.inbox = self.state / "inbox"
        self.socket = self.run_dir / "crystalline.sock"
        self.workers = workers
        self.extra = list(extra or [])
        self.proc: subprocess.Popen[bytes] | None = None
        self.notify: NotifyListener | None = None
        self.starts = 0
        self.log_path = root / "daemon.log"

    # ---- life cycle -------------------------------------------------------------------------
    def start(
        self,
        extra: list[str] | None = None,
        wrap: list[str] | None = None,
        preexec: Callable[[], None] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start the daemon; ``wrap`` is a command line that execs the daemon's (given as its
        last arguments, e.g. ``unshare``), ``preexec`` runs in the child before it (a limit)."""
        assert self.proc is None or self.proc.poll() is not None
        self.starts += 1
        if self.notify is not None:
            self.notify.close()
        self.notify = NotifyListener(self.root / f"n{self.starts}")
        env = dict(
            os.environ,
            NOTIFY_SOCKET=str(self.notify.path),
            OMP_NUM_THREADS="1",
            OPENBLAS_NUM_THREADS="1",
            PYTHONUNBUFFERED="1",
        )
        for key in ("WATCHDOG_USEC", "WATCHDOG_PID", "STATE_DIRECTORY", "RUNTIME_DIRECTORY"):
            env.pop(key, None)
        cmd = [
            sys.executable,
            "-m",
            "crystalline.daemon.cli",
            "run",
            "--state-dir",
            str(self.state),
            "--runtime-dir",
            str(self.run_dir),
            "--no-crawl",
            "--no-samples",
            "--workers",
            str(self.workers),
            *SMALL,
            *self.extra,
            *(extra or []),
        ]
        cmd = [*(wrap or []), *cmd]
        with self.log_path.open("ab") as log:
            log.write(f"---- start {self.starts}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=preexec,
            )
        return self.proc

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill_all(self) -> None:
        """SIGKILL every process of the daemon (its whole process group), as a power cut would."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._wait_group_gone()

    def _wait_group_gone(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def stop(self) -> int:
        """SIGTERM and wait: the daemon checkpoints and exits."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=120)
        self._wait_group_gone()
        return code

    def close(self) -> None:
        """Whatever happened in the test: nothing of the daemon left running (a clean stop
        first, so that a failing test does not also leak shared memory)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=60)
            self.kill_all()
        elif self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self._wait_group_gone()
        if self.notify is not None:
            self.notify.close()

    # ---- asking it --------------------------------------------------------------------------
    def status(self, timeout_s: float = 30.0) -> dict[str, Any]:
        reply = request(self.socket, {"cmd": "status"}, timeout_s)
        assert reply["ok"], reply
        data: dict[str, Any] = reply["data"]
        return data

    def wait_for(
        self, what: str, pred: Callable[[dict[str, Any]], bool], timeout_s: float = 240.0
    ) -> dict[str, Any]:
        """Poll status until ``pred`` holds; fail with the last status and the log tail."""

        def alive_status(timeout_s: float) -> dict[str, Any]:
            assert self.alive(), (
                f"daemon exited ({self.proc and self.proc.returncode}) waiting for {what}\n{self.tail()}"
            )
            return self.status(timeout_s)

        return until_status(alive_status, pred, f"no {what}", timeout_s, show=lambda d: f"{d}\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_step(self, above: int, timeout_s: float = 240.0) -> dict[str, Any]:
        return self.wait_for(f"step > {above}", lambda s: s["training"]["step"] > above, timeout_s)

    # ---- its processes ----------------------------------------------------------------------
    def control_pid(self) -> int:
        assert self.proc is not None
        pids = [p for p in children(self.proc.pid) if "crystalline.daemon.control_process" in cmdline(p)]
        assert len(pids) == 1, pids
        return pids[0]

    def pool_pids(self) -> list[int]:
        assert self.proc is not None
        return [
            p
            for p in children(self.proc.pid)
            if "multiprocessing" in cmdline(p) and "resource_tracker" not in cmdline(p)
        ]

    # ---- its documents ----------------------------------------------------------------------
    def registry_rows(self, origin: str = "drop") -> dict[str, int]:
        """Registry rows of ``origin`` per state, read through a separate connection."""
        db = sqlite3.connect(
            f"file:{self.state / 'ingest' / 'registry.sqlite3'}?mode=ro", uri=True, timeout=30
        )
        try:
            rows = db.execute(
                "SELECT state, COUNT(*) FROM documents WHERE origin = ? GROUP BY state", (origin,)
            )
            return {str(s): int(n) for s, n in rows}
        finally:
            db.close()

    def moved_files(self) -> tuple[list[str], list[str]]:
        """Names in inbox/done and inbox/failed (reason files not counted)."""
        done = sorted(p.name for p in (self.inbox / "done").iterdir())
        failed = sorted(
            p.name for p in (self.inbox / "failed").iterdir() if not p.name.endswith(".reason.txt")
        )
        return done, failed


def accounted(d: Daemon, dropped: list[str]) -> None:
    """Every dropped file is in done/ or failed/ exactly once, nothing is left in the inbox, and
    the registry holds exactly one row per dropped file."""
    done, failed = d.moved_files()
    assert sorted(done + failed) == sorted(dropped), (done, failed)
    left = [p.name for p in d.inbox.iterdir() if p.is_file()]
    assert left == [], left
    rows = d.registry_rows()
    assert sum(rows.values()) == len(dropped), rows
    assert rows.get("failed", 0) == len(failed), (rows, failed)
