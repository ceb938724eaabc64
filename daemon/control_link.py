"""The supervisor's end of the control channel (:class:`SupervisorChannel`, a ZeroMQ ROUTER
speaking ``daemon/control_protocol.py``) and the control process itself (:class:`ControlLink`):
starting it, asking it to do things between steps, and stopping it (STOP, then SIGTERM, then
SIGKILL). Restarts after a crash, with backoff, are the ``ComponentRunner``'s, which runs
:meth:`ControlLink.run_once` as it runs crawl and ingest."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio

from . import control_protocol as CP
from .component_runner import ComponentFailed
from .config import Settings
from .ring_service import ring_endpoint
from .status_server import CommandError
from .stop_budget import StopBudget

log = logging.getLogger("crystalline.supervisor")

SPAWN_TIMEOUT_S = 30.0  # starting the interpreter; a stop waits this long for a start in progress
# control's time to checkpoint and exit after STOP, then after SIGTERM (then SIGKILL); taken from
# the stop's budget (daemon/stop_budget.py)
STOP_GRACE_S = 30.0
TERM_S = 5.0


class SupervisorChannel:
    """The ROUTER end of the control channel: the latest STATUS, and requests with replies.
    A message that is not the protocol's is logged in one line, counted, and skipped."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.sock.bind(endpoint)
        self.identity: bytes | None = None
        self.status: dict[str, Any] = {}
        self.status_at = 0.0
        self.refused = 0  # messages that were not the protocol's
        self.on_status: Callable[[dict[str, Any]], None] = lambda _data: None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._reader: asyncio.Task[None] | None = None
        self._dispatch: dict[str, Callable[[bytes, dict[str, Any]], None]] = {
            CP.HELLO: self._on_hello,
            CP.STATUS: self._on_status,
            CP.REPLY: self._on_answer,
            CP.ERROR: self._on_answer,
        }

    def start(self) -> None:
        if self._reader is None:
            self._reader = asyncio.create_task(self._read(), name="control-channel")

    def forget(self) -> None:
        """A new control incarnation: no identity or status until it says HELLO."""
        self.identity = None
        self.status = {}

    async def _read(self) -> None:
        while True:
            frames = await self.sock.recv_multipart()
            if len(frames) != 2:
                self._refuse(f"{len(frames)} frames, expected 2")
                continue
            try:
                msg = CP.decode(frames[1], CP.TO_SUPERVISOR, CP.MAX_TO_SUPERVISOR)
            except CP.ProtocolError as exc:
                self._refuse(str(exc), exc.request_id)
                continue
            self._dispatch[msg["type"]](frames[0], msg)

    def _refuse(self, error: str, rid: int | None = None) -> None:
        self.refused += 1
        log.warning("refused a message from control: %s", error)
        if rid is not None:  # the request it answered gets the error rather than a timeout
            self._on_answer(b"", {"type": CP.ERROR, "id": rid, "error": f"bad reply from control: {error}"})

    def _on_hello(self, ident: bytes, _msg: dict[str, Any]) -> None:
        self.identity = ident

    def _on_status(self, ident: bytes, msg: dict[str, Any]) -> None:
        self.identity = ident
        self.status = msg["data"]
        self.status_at = time.monotonic()
        self.on_status(self.status)

    def _on_answer(self, _ident: bytes, msg: dict[str, Any]) -> None:
        """A REPLY, or an ERROR: control could not take a request (its one line)."""
        if msg["type"] == CP.ERROR:
            log.warning("control refused a message: %s", msg["error"])
        fut = self._pending.pop(msg.get("id", -1), None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    async def request(self, cmd: str, timeout_s: float = 30.0) -> Any:
        """Ask control to do something between steps; CommandError when it cannot."""
        if self.identity is None:
            raise CommandError("the control process is not running (starting or restarting)")
        self._next_id += 1
        rid = self._next_id
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        await self.sock.send_multipart([self.identity, CP.encode(CP.REQUEST, id=rid, cmd=cmd)])
        try:
            reply = await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            raise CommandError(f"control did not answer {cmd} within {timeout_s:.0f} s") from None
        finally:
            self._pending.pop(rid, None)
        if not reply.get("ok"):
            raise CommandError(str(reply.get("error")))
        return reply.get("data")

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self.sock.close(0)
        self.ctx.term()


class ControlLink:
    """The control child: its channel, its start, its stop."""

    def __init__(self, settings: Settings, endpoint: str) -> None:
        self.settings = settings
        self.endpoint = endpoint
        self.channel = SupervisorChannel(endpoint)
        self.channel.on_status = self._on_status
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self.stopping = False
        self.on_progress: Callable[[], None] = lambda: None  # this incarnation made a step
        self._spawn_lock = asyncio.Lock()
        self._first_step: int | None = None  # the step this incarnation first reported
        # the state directory's lock (daemon.lock), which control inherits: see state_dir_lock
        self.lock_fd: int | None = None

    @property
    def status(self) -> dict[str, Any]:
        """The running control process's latest STATUS data ({} until it sent one)."""
        return self.channel.status

    def spec(self) -> dict[str, Any]:
        s = self.settings
        return {
            "endpoint": self.endpoint,
            "parent_pid": os.getpid(),
            "lock_fd": self.lock_fd,
            "state_dir": str(s.state_dir),
            "ring_endpoint": ring_endpoint(s.runtime_dir),
            "train": s.train.to_dict(),
            "database": s.ingest.database,  # the registry control records surprise in
            "database_timeout_s": s.ingest.database_timeout_s,
            "checkpoint_interval_s": s.daemon.checkpoint_interval_s,
            "resource_retry_s": s.daemon.resource_retry_s,
            **({"cluster": cluster.to_dict()} if (cluster := s.daemon.cluster_settings()) else {}),
        }

    async def run_once(self) -> None:
        """Start the control process and wait until it exits: ComponentFailed (the runner
        restarts it) unless it was asked to stop."""
        async with self._spawn_lock:
            if self.stopping:
                return
            proc = await self._spawn()
            if self.stopping:
                # the stop gave up waiting for this start (a second signal, or its budget) and
                # will not end it; it was started just now and has done nothing yet: SIGKILL
                log.warning("control (pid %d) started after the stop gave up waiting for it: SIGKILL",
                            proc.pid)  # fmt: skip
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()  # SIGKILL cannot be refused
                return
        code = await proc.wait()
        if not self.stopping:
            raise ComponentFailed(f"control process exited with status {code}")

    async def _spawn(self) -> asyncio.subprocess.Process:
        env = dict(os.environ)
        env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.channel.forget()
        self._first_step = None
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "crystalline.daemon.control_process",
            json.dumps(self.spec()),
            stdin=asyncio.subprocess.DEVNULL,
            env=env,
            pass_fds=() if self.lock_fd is None else (self.lock_fd,),
        )
        self.started_at = time.monotonic()
        log.info("control process started (pid %d)", self.proc.pid)
        self.channel.start()
        return self.proc

    async def request(self, cmd: str, timeout_s: float = 30.0) -> Any:
        """Ask the running control process to do something between steps (CommandError when
        it cannot, or none runs)."""
        if not self.alive():
            raise CommandError("the control process is not running (starting or restarting)")
        return await self.channel.request(cmd, timeout_s)

    def _on_status(self, data: dict[str, Any]) -> None:
        self._clear_error_on_progress(data.get("step"))

    def _clear_error_on_progress(self, step: Any) -> None:
        """Tell the runner once this incarnation has made a step, so that status stops showing
        a crash (or a SIGBUS) after the cause has gone."""
        if not isinstance(step, int):
            return
        if self._first_step is None:
            self._first_step = step
        elif step > self._first_step:
            self.on_progress()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def status_age(self) -> float | None:
        """Seconds since the running control process last reported (or started, when it has
        not reported yet); None while none runs."""
        if not self.alive():
            return None
        return time.monotonic() - max(self.channel.status_at, self.started_at)

    async def stop(self, budget: StopBudget, grace_s: float = STOP_GRACE_S) -> None:
        """Ask control to checkpoint and exit within ``grace_s``; SIGTERM, then SIGKILL when it
        does not: every wait taken from ``budget`` and raced against a second signal (which ends
        the wait in progress at once), keeping ``TERM_S`` for SIGTERM's. No control process
        starts after this (a start in progress finishes first, waited for at most
        SPAWN_TIMEOUT_S; one whose wait was cut is SIGKILLed by :meth:`run_once` as soon as its
        spawn returns)."""
        if not await self._end_starts(budget):
            cut = "was cut short by a second signal" if budget.hurried.is_set() else "did not end in time"
            log.warning("a control start in progress %s: stopping without it", cut)
        proc = self.proc
        if proc is not None and proc.returncode is None:
            started = time.monotonic()
            log.info("asking control (pid %d) for its final checkpoint", proc.pid)
            ask_s = min(5.0, budget.left(grace_s, reserve_s=TERM_S))
            ask = asyncio.ensure_future(self.request("stop", timeout_s=ask_s))
            try:
                with contextlib.suppress(CommandError):
                    await budget.wait(ask, ask_s + 1.0)  # the request's own timeout ends it first
            finally:
                ask.cancel()  # cut short by a second signal (a no-op once it ended)
            if not await budget.wait(proc.wait(), budget.left(grace_s, reserve_s=TERM_S)):
                cut = " (cut short by a second signal)" if budget.hurried.is_set() else ""
                log.warning("control did not stop within %.1f s%s: SIGTERM", time.monotonic() - started, cut)
                with contextlib.suppress(ProcessLookupError):  # it exited just now
                    proc.terminate()
                if not await budget.wait(proc.wait(), budget.left(TERM_S)):
                    log.warning("control did not stop after SIGTERM: SIGKILL")
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()  # SIGKILL cannot be refused
            log.info("control exited (status %s) %.1f s after the stop began", proc.returncode,
                     time.monotonic() - started)  # fmt: skip
        await self.channel.close()

    async def _end_starts(self, budget: StopBudget) -> bool:
        """No control process starts from now on: True once a start in progress has ended (the
        spawn lock taken), False when the budget ran out or a second signal came first."""
        acquire = asyncio.ensure_future(self._spawn_lock.acquire())
        try:
            return await budget.wait(acquire, budget.left(SPAWN_TIMEOUT_S, reserve_s=TERM_S))
        finally:
            self.stopping = True
            acquire.cancel()  # a lock acquire cancelled before it returned holds nothing
            if acquire.done() and not acquire.cancelled():
                self._spawn_lock.release()
