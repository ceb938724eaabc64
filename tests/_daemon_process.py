"""What the tests that start `crystalline run` as a real process share: a small model (so a step
is milliseconds), a datagram socket standing in for systemd's notify socket, and a look for
processes a stopped daemon left behind."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from _wait import PROBE_S, until, until_status

from crystalline.daemon.status_server import request

# embed 32, 2 layers, 2 heads, context 32: a step takes milliseconds even with 12 workers
SMALL_MODEL = ["--embed-dim", "32", "--num-layers", "2", "--num-heads", "2", "--seq-len", "32"]


def start_small_daemon(
    root: Path,
    extra: list[str],
    crawl: bool = False,
    stderr: Any = None,
    program: tuple[str, ...] = ("-m", "crystalline.daemon.cli"),
) -> tuple[subprocess.Popen[bytes], NotifyListener]:
    """`crystalline run` on ``root/state`` and ``root/run`` with the small model, 2 workers, batch
    4, no crawl (unless ``crawl``), no samples and no dashboard, plus ``extra``; its notify
    socket's listener. ``stderr``: where its log goes (Popen's; the test's own by default);
    ``program``: what the interpreter runs (a script that injects a fault, then runs the CLI)."""
    notify = NotifyListener(root / "notify")
    env = dict(os.environ, NOTIFY_SOCKET=str(notify.path), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env.pop("WATCHDOG_USEC", None)
    cmd = [sys.executable, *program, "run", "--state-dir", str(root / "state")]
    cmd += [
        "--runtime-dir",
        str(root / "run"),
        *([] if crawl else ["--no-crawl"]),
        "--no-samples",
        "--http",
        "off",
        "--workers",
        "2",
    ]
    cmd += [*SMALL_MODEL, "--batch-size", "4", *extra]
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    return proc, notify


def daemon_status(
    run: Path, proc: subprocess.Popen[bytes] | None = None, timeout_s: float = PROBE_S
) -> dict[str, Any]:
    """The status (its ``data``) of the daemon whose runtime directory is ``run`` (``timeout_s``
    at most: a loaded daemon answers late); fails at once when ``proc`` has exited."""
    if proc is not None:
        assert proc.poll() is None, f"daemon exited with {proc.returncode}"
    reply = request(run / "crystalline.sock", {"cmd": "status"}, timeout_s)
    assert reply["ok"], reply
    data: dict[str, Any] = reply["data"]
    return data


def wait_daemon(run: Path, proc: subprocess.Popen[bytes] | None, *ok_what_timeout: Any, **more: Any) -> Any:
    """The daemon's status once ``ok`` holds of it: tests/_wait.until_status(ok, what, timeout_s,
    interval_s, show) on ``daemon_status(run, proc)``."""
    return until_status(lambda left: daemon_status(run, proc, left), *ok_what_timeout, **more)


class NotifyListener:
    """Binds ``path`` as a notify socket and records every message, in a thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            if self._stop.is_set():  # close's wake-up (or a message at close: not recorded)
                return
            self.messages.append(data.decode())

    def seen(self, line: str) -> int:
        """How many messages carried ``line`` (e.g. ``READY=1``)."""
        return sum(1 for m in self.messages if line in m.split("\n"))

    def wait_for(self, line: str, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
        def seen() -> bool:
            if self.seen(line):
                return True
            assert proc.poll() is None, f"daemon exited with {proc.returncode} before {line}"
            return False

        until(seen, lambda: f"no {line}: {self.messages}", timeout_s, 0.1)

    def close(self) -> None:
        self._stop.set()
        # a datagram ends the thread's recv now rather than at its timeout (unsent: at the timeout)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as wake, contextlib.suppress(OSError):
            wake.sendto(b"", str(self.path))
        self._thread.join(2)
        self.sock.close()
        self.path.unlink(missing_ok=True)


def group_survivors(pgid: int) -> list[str]:
    """Processes (not zombies) still in process group ``pgid``, as ``"pid name"``. A daemon
    started with ``start_new_session=True`` leads its own group; its children stay in it (none
    of them calls setsid), so after it exits the group should be empty: whatever is left is a
    child it did not stop (multiprocessing's resource tracker was one)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # exited while we looked
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        state, group = fields[0], int(fields[2])
        if group == pgid and state != "Z" and int(stat.parent.name) != os.getpid():
            found.append(f"{stat.parent.name} {name}")
    return found
