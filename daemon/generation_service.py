"""The supervisor's end of the generation process (``generation_process``): started on the first
request, one request at a time over its pipes (JSON lines), restarted when it died, stopped
with the daemon. The loop only reads lines: the sampling runs in the other process.

Every client generates here (the socket's ``generate``, the dashboard's chat), so control never
stops for it; what generation costs training is the CPU time it takes from the workers, which
status reports as ``cpu_share``: the process's CPU seconds over the last ``CPU_WINDOW_S`` per
second and per core the daemon may use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections import deque
from collections.abc import AsyncGenerator
from typing import Any

from ..states import SERVICE, transition
from .config import Settings
from .status_server import CommandError
from .stop_budget import StopBudget

log = logging.getLogger("crystalline.generate")

LINE_LIMIT = 4 * 1024 * 1024  # a reply line: a piece of text, or the vocabulary (65,536 labels)
FIRST_REPLY_S = 60.0  # the first line may wait for the process to import numpy and copy weights
NEXT_REPLY_S = 30.0  # between pieces
STOP_GRACE_S = 3.0
CPU_WINDOW_S = 60.0
CPU_FLAG_SHARE = 0.2  # from here status calls the daemon degraded: training is losing a fifth
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a live process (``/proc/PID/stat``), None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14, 15)


class CpuWindow:
    """CPU seconds of a series of processes (one at a time: a restart replaces the last)
    sampled over time; :meth:`share` is their rate over the last ``window_s`` per core."""

    def __init__(self, window_s: float = CPU_WINDOW_S, cores: int | None = None) -> None:
        self.window_s = window_s
        self.cores = cores or len(os.sched_getaffinity(0))
        self.samples: deque[tuple[float, float]] = deque()  # (monotonic, cumulative CPU seconds)
        self._base = 0.0  # CPU seconds of the processes before the current one
        self._pid: int | None = None
        self._last = 0.0  # the current process's CPU seconds at the last sample

    def sample(self, pid: int | None, now: float) -> None:
        if pid != self._pid:  # a new process (or none): the old one's last reading is kept
            self._base += self._last
            self._pid, self._last = pid, 0.0
        if pid is not None:
            cpu = process_cpu_s(pid)
            if cpu is not None:
                self._last = cpu
        self.samples.append((now, self._base + self._last))
        while len(self.samples) > 2 and self.samples[1][0] <= now - self.window_s:
            self.samples.popleft()

    def share(self) -> float:
        """CPU seconds per wall second per core between the oldest kept sample and the newest."""
        if len(self.samples) < 2:
            return 0.0
        (t0, c0), (t1, c1) = self.samples[0], self.samples[-1]
        if t1 - t0 <= 0:
            return 0.0
        return min((c1 - c0) / (t1 - t0) / self.cores, 1.0)


class GenerationService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.proc: asyncio.subprocess.Process | None = None
        self.state = SERVICE.initial  # off until the first generate, and after a stop or a failure
        self.starts = 0
        self.requests = 0
        self._lock = asyncio.Lock()
        self._next_id = 0
        self.cpu = CpuWindow()

    def _pid(self) -> int | None:
        running = self.proc is not None and self.proc.returncode is None
        return self.proc.pid if running and self.proc else None

    def sample_cpu(self, now: float | None = None) -> None:
        """Read the process's CPU time (the supervisor's tick, once a second)."""
        self.cpu.sample(self._pid(), time.monotonic() if now is None else now)

    def stats(self) -> dict[str, Any]:
        share = round(self.cpu.share(), 3)  # the flag is judged on the share status reports
        if self.state == "running" and self._pid() is None:  # it exited: the next request starts one
            self.state = transition(SERVICE, self.state, "off")
        out: dict[str, Any] = {
            "state": self.state,
            "pid": self._pid(),
            "starts": self.starts,
            "requests": self.requests,
            "cpu_share": share,
        }
        if share >= CPU_FLAG_SHARE:
            out["slowing_training"] = (
                f"generation took {share:.0%} of {self.cpu.cores} cores' time in the last "
                f"{CPU_WINDOW_S:.0f} s"
            )
        return out

    async def _ensure(self) -> asyncio.subprocess.Process:
        if self.proc is not None and self.proc.returncode is None:
            return self.proc
        if self.state == "running":  # it exited on its own
            self.state = transition(SERVICE, self.state, "off")
        self.state = transition(SERVICE, self.state, "starting")
        s = self.settings
        spec = {"train": s.train.to_dict(), "state_dir": str(s.state_dir)}
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "crystalline.daemon.generation_process",
                json.dumps(spec),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=env,
                limit=LINE_LIMIT,
            )
        except OSError:
            self.state = transition(SERVICE, self.state, "failed")
            raise
        self.state = transition(SERVICE, self.state, "running")
        self.starts += 1
        log.info("generation process started (pid %d)", self.proc.pid)
        return self.proc

    async def stream(self, fields: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        """The pieces of one generation, then its ``done`` line; CommandError on failure."""
        async with self._lock:
            proc = await self._ensure()
            assert proc.stdin is not None and proc.stdout is not None
            self._next_id += 1
            rid = self._next_id
            self.requests += 1
            try:
                proc.stdin.write((json.dumps({**fields, "id": rid}) + "\n").encode())
                await proc.stdin.drain()
                timeout = FIRST_REPLY_S
                while True:
                    line = await asyncio.wait_for(proc.stdout.readline(), timeout)
                    timeout = NEXT_REPLY_S
                    if not line:
                        raise CommandError("the generation process exited; it restarts at the next request")
                    reply = json.loads(line)
                    if reply.get("id") != rid:
                        continue  # an answer to an abandoned request
                    if "error" in reply:
                        raise CommandError(str(reply["error"]))
                    yield reply
                    if reply.get("done"):
                        return
            except (TimeoutError, ValueError, ConnectionError, asyncio.LimitOverrunError) as exc:
                # a stuck or garbled process: replace it rather than read its leftovers later
                await self.stop()
                raise CommandError(f"generation failed: {type(exc).__name__}: {exc}") from None
            except (GeneratorExit, asyncio.CancelledError):
                await self.stop()  # the reader went away mid-stream: its leftovers are discarded
                raise

    async def generate(self, fields: dict[str, Any]) -> dict[str, Any]:
        """The whole text at once (the socket's reply: prompt, text, and the step of the
        parameters it came from)."""
        pieces: list[str] = []
        done: dict[str, Any] = {}
        async for reply in self.stream(fields):
            if "text" in reply:
                pieces.append(reply["text"])
            if reply.get("done"):
                done = reply
        return {
            "prompt": fields.get("prompt") or "\n",
            "text": "".join(pieces),
            "step": done.get("version"),
            "tokens_per_s": done.get("tokens_per_s"),
        }

    async def vocabulary(self) -> dict[str, Any]:
        """Labels and embedding colours of the whole vocabulary (the dashboard's spiral)."""
        async for reply in self.stream({"cmd": "vocabulary"}):
            if reply.get("done"):
                return reply
        raise CommandError("the generation process sent no vocabulary")

    async def stop(self, budget: StopBudget | None = None) -> None:
        """End the generation process: EOF on its input, then at most STOP_GRACE_S of the
        daemon's stop budget (a fresh one outside the stop) to exit (a second signal cuts it: it
        holds nothing to lose), then SIGKILL and at most STOP_GRACE_S more to reap it (else
        asyncio's child watcher reaps it later)."""
        budget = budget or StopBudget()
        proc, self.proc = self.proc, None
        if self.state != "off":
            self.state = transition(SERVICE, self.state, "off")
        if proc is None or proc.returncode is not None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # EOF: the process finishes its loop and exits
        exited = asyncio.ensure_future(proc.wait())  # one wait, to exit and then to be reaped
        if await budget.wait(exited, budget.left(STOP_GRACE_S, cleanup=True)):
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        if not await budget.wait(exited, budget.left(STOP_GRACE_S, cleanup=True)):
            log.warning("generation process %d killed and not reaped in the stop's time", proc.pid)
