"""The supervisor's end of the generation process (``generation_process``): started on the first
request, one request at a time over its pipes (JSON lines), restarted when it died, stopped
with the daemon. The loop only reads lines: the sampling runs in the other process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import AsyncGenerator
from typing import Any

from .config import Settings
from .status_server import CommandError

log = logging.getLogger("crystalline.generate")

LINE_LIMIT = 4 * 1024 * 1024  # a reply line: a piece of text, or the vocabulary (65,536 labels)
FIRST_REPLY_S = 60.0  # the first line may wait for the process to import numpy and copy weights
NEXT_REPLY_S = 30.0  # between pieces
STOP_GRACE_S = 3.0


class GenerationService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self.requests = 0
        self._lock = asyncio.Lock()
        self._next_id = 0

    def stats(self) -> dict[str, Any]:
        running = self.proc is not None and self.proc.returncode is None
        return {
            "pid": self.proc.pid if running and self.proc else None,
            "starts": self.starts,
            "requests": self.requests,
        }

    async def _ensure(self) -> asyncio.subprocess.Process:
        if self.proc is not None and self.proc.returncode is None:
            return self.proc
        s = self.settings
        spec = {"train": s.train.to_dict(), "state_dir": str(s.state_dir)}
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
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
        """The whole text at once (the socket's shape: prompt, text, version)."""
        pieces: list[str] = []
        done: dict[str, Any] = {}
        async for reply in self.stream(fields):
            if "text" in reply:
                pieces.append(reply["text"])
            if reply.get("done"):
                done = reply
        return {"prompt": fields.get("prompt", "\n"), "text": "".join(pieces), "version": done.get("version")}

    async def vocabulary(self) -> dict[str, Any]:
        """Labels and embedding colours of the whole vocabulary (the dashboard's spiral)."""
        async for reply in self.stream({"cmd": "vocabulary"}):
            if reply.get("done"):
                return reply
        raise CommandError("the generation process sent no vocabulary")

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # EOF: the process finishes its loop and exits
        try:
            await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
