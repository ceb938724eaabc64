"""The supervisor's end of the control channel (a ZeroMQ ROUTER) and the control process
itself: starting it, restarting it with backoff after a crash, asking it to do things between
steps, and stopping it (STOP, then SIGTERM, then SIGKILL)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from typing import Any

import msgpack
import zmq
import zmq.asyncio

from .config import Settings
from .status_server import CommandError

log = logging.getLogger("crystalline.supervisor")

RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
CRASH_WINDOW_S = 600.0
CRASHES_BEFORE_ERROR = 5


class ControlLink:
    """The supervisor's end of the control channel (ROUTER), and the control child itself."""

    def __init__(self, settings: Settings, endpoint: str) -> None:
        self.settings = settings
        self.endpoint = endpoint
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.sock.bind(endpoint)
        self.proc: asyncio.subprocess.Process | None = None
        self.identity: bytes | None = None
        self.status: dict[str, Any] = {}
        self.status_at = 0.0
        self.crashes: list[float] = []
        self.restarts = 0
        self.next_start = 0.0
        self.error: str | None = None  # why control last exited; cleared once it trains again
        self._first_step: int | None = None  # the step this incarnation first reported
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._reader: asyncio.Task[None] | None = None

    def spec(self) -> dict[str, Any]:
        s = self.settings
        return {
            "endpoint": self.endpoint,
            "parent_pid": os.getpid(),
            "state_dir": str(s.state_dir),
            "train": s.train.to_dict(),
            "checkpoint_interval_s": s.daemon.checkpoint_interval_s,
        }

    async def start(self) -> None:
        env = dict(os.environ)
        env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.identity = None
        self.status = {}
        self._first_step = None
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "crystalline.daemon.control_process",
            json.dumps(self.spec()),
            stdin=asyncio.subprocess.DEVNULL,
            env=env,
        )
        log.info("control process started (pid %d)", self.proc.pid)
        if self._reader is None:
            self._reader = asyncio.create_task(self._read(), name="control-channel")

    async def _read(self) -> None:
        while True:
            try:
                ident, data = await self.sock.recv_multipart()
                msg = msgpack.unpackb(data, raw=False)
            except (ValueError, msgpack.UnpackException):
                continue
            if not isinstance(msg, dict):
                continue
            kind = msg.get("type")
            if kind == "HELLO":
                self.identity = ident
            elif kind == "STATUS" and isinstance(msg.get("data"), dict):
                self.identity = ident
                self.status = msg["data"]
                self.status_at = time.monotonic()
                self._clear_error_on_progress(self.status.get("step"))
            elif kind == "REPLY":
                fut = self._pending.pop(msg.get("id", -1), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)

    async def request(self, cmd: str, timeout_s: float = 30.0, **fields: Any) -> Any:
        """Ask control to do something between steps; CommandError when it cannot."""
        if self.identity is None or self.proc is None or self.proc.returncode is not None:
            raise CommandError("the control process is not running (starting or restarting)")
        self._next_id += 1
        rid = self._next_id
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        await self.sock.send_multipart(
            [self.identity, msgpack.packb({"type": "REQUEST", "id": rid, "cmd": cmd, **fields})]
        )
        try:
            reply = await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            raise CommandError(f"control did not answer {cmd} within {timeout_s:.0f} s") from None
        finally:
            self._pending.pop(rid, None)
        if not reply.get("ok"):
            raise CommandError(str(reply.get("error")))
        return reply.get("data")

    def _clear_error_on_progress(self, step: Any) -> None:
        """Forget why control last exited once this incarnation has made a step: status must
        not keep showing a crash (or a SIGBUS) after the cause has gone."""
        if self.error is None or not isinstance(step, int):
            return
        if self._first_step is None:
            self._first_step = step
        elif step > self._first_step:
            log.info("control process is training again (step %d); earlier: %s", step, self.error)
            self.error = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def check(self) -> None:
        """Restart a dead control process with backoff; after repeated crashes, report an error."""
        now = time.monotonic()
        if self.proc is not None and self.proc.returncode is not None:
            code = self.proc.returncode
            self.proc = None
            self.crashes = [t for t in self.crashes if now - t < CRASH_WINDOW_S] + [now]
            delay = RESTART_BACKOFF_S[min(len(self.crashes) - 1, len(RESTART_BACKOFF_S) - 1)]
            self.next_start = now + delay
            self.error = f"control process exited with status {code} ({len(self.crashes)} in 10 min)"
            level = logging.ERROR if len(self.crashes) >= CRASHES_BEFORE_ERROR else logging.WARNING
            log.log(level, "%s; restarting in %.0f s", self.error, delay)
        if self.proc is None and now >= self.next_start:
            self.restarts += 1
            await self.start()

    async def stop(self, grace_s: float) -> None:
        """Ask control to checkpoint and exit; SIGTERM, then SIGKILL when it does not."""
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(CommandError):
                await self.request("stop", timeout_s=min(5.0, grace_s))
            try:
                await asyncio.wait_for(proc.wait(), grace_s)
            except TimeoutError:
                log.warning("control did not stop within %.0f s: SIGTERM", grace_s)
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 5.0)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self.sock.close(0)
        self.ctx.term()
