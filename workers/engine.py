"""Step engines: how one optimizer step is computed.

``LocalEngine`` runs forward, backward and AdamW in this process. ``ProcessEngine`` is node
zero of the data-parallel engine: it drives W worker processes through three barriers per
step over ZeroMQ (compute, reduce-scatter, sharded AdamW update), with parameters, optimizer
moments, gradient rows and the batch ring in shared memory. Both have the same contract, so
the trainer, the CLI, the daemon and the tests share one training path.

Failure model of ``ProcessEngine``: every wait is a poll with a deadline. A worker that exits,
sends garbage, or misses its deadline (e.g. stopped with SIGSTOP) is killed, restarted, says
HELLO again and gets the same request. Nothing of the published version is written during a
step (parameters and moments are double-buffered: a step reads buffer ``src`` and writes
``dst``), so every phase can be redone until control publishes the new version by flipping
``src``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import zmq

from crystalline.shm.blocks import ArrayBlock, Spec, layout, padded
from crystalline.shm.segments import check_space, segment_name, sweep
from crystalline.states import WORKER, transition

from . import protocol as P
from .batch_ring import BatchRing, BatchSource, Ring, ring_spec
from .ema import decay_at, ema_step
from .micro_batch import accumulated_grad
from .model import GPT
from .optimizer import AdamW, clip_coefficient, global_norm, owner_shares, update_plan
from .optimizer_config import AdamWConfig

log = logging.getLogger("crystalline.control")


@dataclass
class StepOutcome:
    """What one optimizer step did; ``applied`` is False when a non-finite gradient skipped it."""

    loss_sum: float
    tokens: int
    grad_norm: float
    applied: bool
    bytes: int = 0  # UTF-8 bytes of the text the batch's targets spell (bits per byte)


class EngineError(Exception):
    """The engine cannot go on (a worker crash loop, no workers at start)."""


class EngineStopped(Exception):
    """A stop was requested during a step; the step was abandoned, nothing was published."""


class StepAbandoned(Exception):
    """The step could not finish (the machines' allreduce failed); nothing was published."""


class GradientExchange(Protocol):
    """The one hook of training across machines (workers/cluster_member.py): after this machine's
    reduce and before the optimizer, ``grad`` (this machine's mean gradient over its ``tokens``)
    becomes the mean over every machine's tokens; returns the global loss sum, tokens and text
    bytes, or raises StepAbandoned."""

    def exchange(
        self, grad: np.ndarray, loss_sum: float, tokens: int, nbytes: int
    ) -> tuple[float, int, int]: ...

    def history(self) -> dict[str, int | None]:
        """What a checkpoint keeps of the cluster (its ``state.json`` ``cluster``)."""
        ...

    def restore_history(self, saved: dict[str, Any]) -> None:
        """The state came from a checkpoint that kept ``saved``; ValueError when it is malformed."""
        ...


class StepEngine(Protocol):
    def load_state(
        self, params: np.ndarray, m: np.ndarray, v: np.ndarray, ema: np.ndarray | None = None
    ) -> None: ...
    def params(self) -> np.ndarray: ...
    def ema(self) -> np.ndarray | None: ...
    def moments(self) -> tuple[np.ndarray, np.ndarray]: ...
    def step(self, step: int, lr: float) -> StepOutcome: ...
    def stats(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


def batch_bytes(windows: np.ndarray, token_bytes: np.ndarray | None) -> int:
    """UTF-8 bytes of the targets of ``windows`` (all but each window's first token), from the
    tokenizer's byte length per token id (None: one byte per token, the byte tokenizer)."""
    targets = windows[:, 1:]
    return targets.size if token_bytes is None else int(token_bytes[targets].sum())


class LocalEngine:
    """Forward, backward and AdamW in the calling process."""

    def __init__(
        self,
        model: GPT,
        adamw: AdamWConfig,
        batch_source: BatchSource,
        token_bytes: np.ndarray | None = None,
        exchange: GradientExchange | None = None,
        micro_batch: int = 0,
    ) -> None:
        self.model = model
        self.batch_source = batch_source
        self.micro_batch = micro_batch  # windows per forward/backward (0: the whole batch)
        self.token_bytes = token_bytes
        self.exchange = exchange
        self.optimizer = AdamW(adamw, model.table.decay_mask(), update_plan(model.table.specs, adamw))
        self._params = np.zeros(model.num_params, dtype=np.float32)
        self._grad = np.zeros_like(self._params)
        # a later micro-batch's gradient
        self._scratch = np.empty_like(self._params) if micro_batch > 0 else None
        self._ema = np.zeros_like(self._params) if adamw.ema_decay > 0 else None

    def load_state(
        self, params: np.ndarray, m: np.ndarray, v: np.ndarray, ema: np.ndarray | None = None
    ) -> None:
        """The weights, the moments and (with an EMA) its average; None starts it at ``params``."""
        self._params[...] = params
        self.optimizer.m[...] = m
        self.optimizer.v[...] = v
        if self._ema is not None:
            self._ema[...] = params if ema is None else ema

    def params(self) -> np.ndarray:
        return self._params

    def ema(self) -> np.ndarray | None:
        return self._ema

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        return self.optimizer.m, self.optimizer.v

    def step(self, step: int, lr: float) -> StepOutcome:
        windows = self.batch_source(step)
        loss_sum, tokens = accumulated_grad(
            self.model, self._params, windows, self._grad, self._scratch, self.micro_batch
        )
        nbytes = batch_bytes(windows, self.token_bytes)
        if self.exchange is not None:
            loss_sum, tokens, nbytes = self.exchange.exchange(self._grad, loss_sum, tokens, nbytes)
        norm = global_norm(self._grad)
        if not (math.isfinite(norm) and math.isfinite(loss_sum)):
            return StepOutcome(loss_sum, tokens, norm, False, nbytes)
        coef = clip_coefficient(norm, self.optimizer.cfg.grad_clip)
        self.optimizer.update(self._params, self._grad, step, lr, coef)
        if self._ema is not None:  # the gradient is spent: its buffer is the scratch
            ema_step(
                self._ema, self._params, decay_at(step, self.optimizer.cfg.ema_decay), self._ema, self._grad
            )
        return StepOutcome(loss_sum, tokens, norm, True, nbytes)

    def stats(self) -> dict[str, Any]:
        return {"workers": [], "ring": {"slots": 0, "ready": 0}}

    def close(self) -> None:
        pass


# ---- the process engine ---------------------------------------------------------------------

IDLE, COMPUTING, REDUCING, UPDATING, DEAD, RESTARTING = (
    "idle",
    "computing",
    "reducing",
    "updating",
    "dead",
    "restarting",
)
PHASE_STATE = {P.COMPUTE: COMPUTING, P.REDUCE: REDUCING, P.UPDATE: UPDATING}
TICK_S = 0.05  # poll granularity: how fast a dead worker or a stop request is noticed


@dataclass
class EngineSettings:
    """Knobs of the process engine; deadlines adapt to the measured phase times."""

    workers: int
    instance: str  # names the shared-memory segments: crystalline-<instance>-*
    ring_slots: int = 3
    first_deadline_s: float = 120.0  # the first phases include imports and buffer allocation
    min_deadline_s: float = 5.0
    deadline_factor: float = 20.0  # x the recent duration of the same phase
    hello_timeout_s: float = 60.0
    max_restarts: int = 8  # within restart_window_s, for one worker, before giving up
    restart_window_s: float = 120.0
    batch_timeout_s: float = 60.0
    reduce_in_control: bool = False  # sum the gradient rows in control (for benchmarks)
    micro_batch: int = 0  # most windows a worker runs forward/backward on at once (0: all its rows)


@dataclass
class WorkerHandle:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    incarnation: int = 0
    ready: bool = False
    state: str = RESTARTING
    steps: int = 0
    restarts: int = 0
    restart_times: list[float] = field(default_factory=list)
    started: float = 0.0
    last_seen: float = 0.0
    compute_s: float = 0.0
    wait_s: float = 0.0


def _shares(total: int, parts: int, align: int = 1) -> list[tuple[int, int]]:
    """Split range(total) into ``parts`` contiguous [lo, hi) shares, boundaries on ``align``."""
    bounds = [min(total, (total * i // parts) // align * align) for i in range(parts)] + [total]
    return [(bounds[i], bounds[i + 1]) for i in range(parts)]


def _filler(source: BatchSource | None) -> Callable[[int, np.ndarray], dict[str, Any]]:
    """A ring filler that copies the batches of ``source`` into the slot."""
    if source is None:
        raise ValueError("a process engine needs a batch source or a ring")

    def fill(step: int, out: np.ndarray) -> dict[str, Any]:
        out[...] = source(step)
        return {}

    return fill


def segment_specs(
    num_params: int,
    workers: int,
    batch_size: int,
    seq_len: int,
    vocab_size: int,
    ring_slots: int,
    ema: bool = False,
) -> dict[str, Spec]:
    """The arrays of the engine's three segments (``state``, ``grads``, ``ring``); ``ema`` adds
    the double-buffered moving average of the weights, which is then what readers serve."""
    return {
        "state": {
            "params": ((2, num_params), np.float32),
            "adam_m": ((2, num_params), np.float32),
            "adam_v": ((2, num_params), np.float32),
            **({"ema": ((2, num_params), np.float32)} if ema else {}),
            "gsum": ((num_params,), np.float32),
            # [sequence, src, version]: a reader outside the step (the generation process) copies
            # params[src] and keeps the copy only if the sequence did not move meanwhile (odd:
            # being loaded); the sequence moves at every publish and load
            "published": ((3,), np.int64),
        },
        "grads": {"rows": ((workers, padded(num_params, np.float32)), np.float32)},
        "ring": ring_spec(ring_slots, batch_size, seq_len, vocab_size),
    }


class ProcessEngine:
    """Node zero: W worker processes, three barriers per step, shared-memory state."""

    def __init__(
        self,
        model: GPT,
        adamw: AdamWConfig,
        batch_source: BatchSource | None,
        batch_size: int,
        settings: EngineSettings,
        should_stop: Callable[[], bool] = lambda: False,
        token_bytes: np.ndarray | None = None,
        ring: Ring | None = None,
        exchange: GradientExchange | None = None,
        zmq_context: zmq.Context[Any] | None = None,
    ) -> None:
        """``ring``: a ring lent by its owner (the daemon's supervisor); without one the engine
        creates its own, filled from ``batch_source``. ``exchange``: the machines' allreduce
        between the reduce and the update (no speculative update then). ``zmq_context``: the
        process's ZeroMQ context (one per process: each holds its own poller and mailboxes);
        the engine opens its socket on it and never terminates it, else it creates its own."""
        if settings.workers < 1:
            raise ValueError(f"workers must be at least 1, got {settings.workers}")
        self.model = model
        self.adamw = adamw
        self.settings = settings
        self.should_stop = should_stop
        self.token_bytes = token_bytes
        self.exchange = exchange
        self.batch_size = batch_size
        cfg = model.config
        size = model.num_params
        w = settings.workers
        self.rows = _shares(batch_size, w)
        # 64-byte boundaries between owners; a Muon matrix has one owner (Newton-Schulz needs it whole)
        self.slices = owner_shares(update_plan(model.table.specs, adamw), size, w, align=16)
        self.tokens_per_step = batch_size * cfg.seq_len
        self.src = 0
        self.version = 0
        self._seq = 0
        self._ewma: dict[str, float] = {}
        self._closed = False
        self.workers = [WorkerHandle(i) for i in range(w)]
        self.skipped_steps = 0
        self.speculation_hits = 0  # steps whose update rode on the reduce barrier
        self.last_step: dict[str, Any] = {}

        leftovers = sweep(settings.instance)
        if leftovers:
            log.warning(
                "removed %d shared-memory segments left by a killed run: %s",
                len(leftovers),
                ", ".join(leftovers),
            )
        specs = segment_specs(
            size, w, batch_size, cfg.seq_len, cfg.vocab_size, settings.ring_slots, ema=adamw.ema_decay > 0
        )
        # before anything is mapped: a tmpfs too small for these is a clear error naming /dev/shm
        # and the size, not a SIGBUS on the first untouched page (Segment.create reserves too)
        if ring is not None:  # lent, and mapped already
            del specs["ring"]
        check_space({segment_name(settings.instance, what): layout(spec)[1] for what, spec in specs.items()})
        self._blocks: list[ArrayBlock] = []
        self._run_dir = Path(tempfile.mkdtemp(prefix="crystalline-"))
        self._owns_ctx = zmq_context is None
        self._ctx = zmq.Context() if zmq_context is None else zmq_context
        self._sock = self._ctx.socket(zmq.ROUTER)
        try:
            self.state = self._block("state", specs["state"])
            self.grads = self._block("grads", specs["grads"])
            self._owns_ring = ring is None
            if ring is None:
                name = segment_name(settings.instance, "ring")
                ring = BatchRing(name, specs["ring"], _filler(batch_source))
            self.ring: Ring = ring
            self._sock.setsockopt(zmq.LINGER, 0)
            self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # sending to a vanished worker raises
            self._sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted worker takes over its identity
            self.endpoint = f"ipc://{self._run_dir / 'engine.sock'}"
            self._sock.bind(self.endpoint)
            for h in self.workers:
                self._spawn(h)
            self._await_hellos()
        except BaseException:
            self.close()
            raise

    # ---- set-up ---------------------------------------------------------------------------
    def _block(self, what: str, spec: Spec) -> ArrayBlock:
        block = ArrayBlock.create(segment_name(self.settings.instance, what), spec)
        self._blocks.append(block)
        return block

    def _spec(self, h: WorkerHandle) -> dict[str, Any]:
        return {
            "worker": h.index,
            "incarnation": h.incarnation,
            "parent_pid": os.getpid(),
            "endpoint": self.endpoint,
            "model": vars(self.model.config),
            "adamw": vars(self.adamw),
            "state_block": self.state.name,
            "grads_block": self.grads.name,
            "ring_block": self.ring.name,
            "micro_batch": self.settings.micro_batch,
        }

    def _spawn(self, h: WorkerHandle) -> None:
        h.incarnation += 1
        env = dict(os.environ)
        env.update(
            OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false"
        )
        cmd = [sys.executable, "-m", "crystalline.workers.worker", json.dumps(self._spec(h))]
        h.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
        h.ready = False
        h.state = transition(WORKER, h.state, RESTARTING)
        h.started = time.monotonic()

    def _kill(self, h: WorkerHandle) -> None:
        if h.proc is not None and h.proc.poll() is None:
            h.proc.kill()  # SIGKILL also ends a stopped (SIGSTOP) process
            try:
                h.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log.error("worker %d (pid %d) did not die after SIGKILL", h.index, h.proc.pid)
        h.state = transition(WORKER, h.state, DEAD)
        h.ready = False

    def _restart(self, h: WorkerHandle, reason: str) -> None:
        now = time.monotonic()
        h.restart_times = [t for t in h.restart_times if now - t < self.settings.restart_window_s] + [now]
        log.warning("worker %d (pid %s) %s: restarting", h.index, h.proc.pid if h.proc else "-", reason)
        self._kill(h)
        if len(h.restart_times) > self.settings.max_restarts:
            raise EngineError(
                f"worker {h.index} failed {len(h.restart_times)} times in "
                f"{self.settings.restart_window_s:.0f} s (last: {reason}); giving up"
            )
        h.restarts += 1
        self._spawn(h)

    def _await_hellos(self) -> None:
        deadline = time.monotonic() + self.settings.hello_timeout_s
        while not all(h.ready for h in self.workers):
            if self.should_stop():
                raise EngineStopped
            self._pump(None, {})
            for h in self.workers:
                if not h.ready and h.proc is not None and h.proc.poll() is not None:
                    self._restart(h, f"exited with status {h.proc.returncode} before saying hello")
            if time.monotonic() > deadline:
                missing = [h.index for h in self.workers if not h.ready]
                raise EngineError(
                    f"workers {missing} did not say hello within {self.settings.hello_timeout_s:.0f} s"
                )

    # ---- messaging ------------------------------------------------------------------------
    def _send(self, h: WorkerHandle, kind: str, fields: dict[str, Any]) -> int:
        self._seq += 1
        try:
            self._sock.send_multipart([P.identity(h.index), P.encode(kind, seq=self._seq, **fields)])
        except zmq.ZMQError as exc:  # not connected (yet): the HELLO handler resends
            log.debug("send to worker %d failed: %s", h.index, exc)
        return self._seq

    def _pump(self, kind: str | None, waiting: dict[int, int]) -> list[tuple[int, dict[str, Any]]]:
        """Receive for up to one tick; handle HELLOs; return replies to ``kind`` whose seq is
        the one ``waiting`` expects from that worker (stale replies of dead incarnations drop)."""
        out: list[tuple[int, dict[str, Any]]] = []
        if not self._sock.poll(int(TICK_S * 1000)):
            return out
        while True:
            try:
                ident, data = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return out
            except ValueError:  # not two frames
                continue
            try:
                w = P.worker_of(ident)
                msg = P.decode(data)
                h = self.workers[w]
            except (P.ProtocolError, IndexError) as exc:
                log.warning("dropping message from %r: %s", ident, exc)
                continue
            h.last_seen = time.monotonic()
            if msg["type"] == P.HELLO:
                if msg.get("incarnation") == h.incarnation:
                    h.ready = True
                    h.state = transition(WORKER, h.state, IDLE)
                    log.debug("worker %d hello (pid %s)", w, msg.get("pid"))
                    out.append((w, msg))
            elif kind is not None and msg.get("seq") == waiting.get(w):
                out.append((w, msg))

    def _deadline(self, kind: str) -> float:
        recent = self._ewma.get(kind)
        if recent is None:
            return self.settings.first_deadline_s
        return max(self.settings.min_deadline_s, self.settings.deadline_factor * recent)

    def _barrier(self, kind: str, requests: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
        """Send each worker its request and wait for all replies, replacing failed workers."""
        reply_type = P.REPLY_TO[kind]
        started = time.monotonic()
        limit = self._deadline(kind)
        waiting: dict[int, int] = {}
        deadline: dict[int, float] = {}
        replies: dict[int, dict[str, Any]] = {}
        for w, fields in requests.items():
            h = self.workers[w]
            if h.ready:
                waiting[w] = self._send(h, kind, fields)
                deadline[w] = started + limit
                h.state = transition(WORKER, h.state, PHASE_STATE[kind])
        while len(replies) < len(requests):
            if self.should_stop():
                raise EngineStopped
            for w, msg in self._pump(kind, waiting):
                h = self.workers[w]
                if msg["type"] == P.HELLO:
                    if w in requests and w not in replies:  # a fresh incarnation: hand it the work
                        waiting[w] = self._send(h, kind, requests[w])
                        deadline[w] = time.monotonic() + limit
                        h.state = transition(WORKER, h.state, PHASE_STATE[kind])
                elif msg["type"] == reply_type:
                    replies[w] = msg
                    waiting.pop(w, None)
                    h.state = transition(WORKER, h.state, IDLE)
                else:  # ERROR or a reply of the wrong kind: this incarnation is not sane
                    self._restart(h, f"answered {kind} with {msg['type']} {msg.get('reason', '')}".strip())
            now = time.monotonic()
            for w in requests:
                if w in replies:
                    continue
                h = self.workers[w]
                assert h.proc is not None
                if h.proc.poll() is not None:
                    self._restart(h, f"exited with status {h.proc.returncode}")
                elif h.ready and w in deadline and now > deadline[w]:
                    self._restart(h, f"missed its {kind} deadline ({limit:.1f} s)")
                elif not h.ready and now - h.started > self.settings.hello_timeout_s:
                    self._restart(h, "did not say hello")
        elapsed = time.monotonic() - started
        self._ewma[kind] = elapsed if kind not in self._ewma else 0.8 * self._ewma[kind] + 0.2 * elapsed
        return replies

    # ---- the step contract --------------------------------------------------------------------
    def load_state(
        self, params: np.ndarray, m: np.ndarray, v: np.ndarray, ema: np.ndarray | None = None
    ) -> None:
        s = self.state.arrays
        s["published"][0] += 1  # odd: params[src] is being written
        s["params"][self.src] = params
        s["adam_m"][self.src] = m
        s["adam_v"][self.src] = v
        if "ema" in s:  # None: the average starts at the weights
            s["ema"][self.src] = params if ema is None else ema
        self._announce()

    def _announce(self) -> None:
        """Say which buffer holds the parameters, for readers outside the step (see ``published``)."""
        published = self.state.arrays["published"]
        published[1] = self.src
        published[2] = self.version
        published[0] += 2 - published[0] % 2  # even again, and different from any read before

    def params(self) -> np.ndarray:
        """A copy of the published parameters (no view of shared memory escapes the engine,
        so close() can always unmap it)."""
        return self.state.arrays["params"][self.src].copy()

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        return self.state.arrays["adam_m"][self.src].copy(), self.state.arrays["adam_v"][self.src].copy()

    def ema(self) -> np.ndarray | None:
        """A copy of the published moving average of the weights (None without one)."""
        s = self.state.arrays
        return s["ema"][self.src].copy() if "ema" in s else None

    def step(self, step: int, lr: float) -> StepOutcome:
        slot = self.ring.take(step, self.settings.batch_timeout_s).slot
        try:
            return self._step(step, lr, slot)
        finally:
            self.ring.release(slot)

    def _step(self, step: int, lr: float, slot: int) -> StepOutcome:
        t0 = time.monotonic()
        src, dst = self.src, 1 - self.src
        scale = 1.0 / self.tokens_per_step
        done = self._barrier(
            P.COMPUTE,
            {
                w: {"step": step, "slot": slot, "rows": list(self.rows[w]), "src": src, "scale": scale}
                for w in range(len(self.workers))
            },
        )
        t_compute = time.monotonic()
        slowest = max(done.values(), key=lambda r: r["compute_s"])["compute_s"]
        for w, r in done.items():
            h = self.workers[w]
            h.compute_s = r["compute_s"]
            h.wait_s = max(0.0, slowest - r["compute_s"])
        loss_sum = math.fsum(r["loss_sum"] for r in done.values())
        tokens = sum(r["tokens"] for r in done.values())
        nbytes = batch_bytes(self.ring.slots[slot], self.token_bytes)
        update = {"src": src, "dst": dst, "lr": lr, "t": step}
        if self.exchange is not None:
            # every machine joins the allreduce, a non-finite one too (its NaNs make all skip)
            loss_sum, tokens, nbytes = self._exchange(step, loss_sum, tokens, nbytes, done)
            norm = global_norm(self.state.arrays["gsum"])
            speculated = False
        elif not all(r["finite"] for r in done.values()):
            return self._skip(step, loss_sum, tokens, math.nan, "non-finite loss", nbytes)
        elif self.settings.reduce_in_control:
            norm = self._reduce_here()
            speculated = False
        else:
            # Each worker reduces its slice and at once applies the update as if no clipping
            # were needed (coef 1): a step then takes two barriers instead of three. When the
            # global norm says otherwise, the UPDATE barrier redoes it from the untouched src.
            reduced = self._barrier(
                P.REDUCE,
                {
                    w: {"step": step, "lo": lo, "hi": hi, "update": {**update, "coef": 1.0}}
                    for w, (lo, hi) in enumerate(self.slices)
                },
            )
            norm = math.sqrt(math.fsum(r["sq"] for r in reduced.values()))
            speculated = True
        if not math.isfinite(norm):
            return self._skip(step, loss_sum, tokens, norm, "non-finite gradient", nbytes)
        coef = clip_coefficient(norm, self.adamw.grad_clip)
        t_reduce = time.monotonic()
        if speculated and coef == 1.0:
            self.speculation_hits += 1
        else:
            self._barrier(
                P.UPDATE,
                {
                    w: {"step": step, "lo": lo, "hi": hi, **update, "coef": coef}
                    for w, (lo, hi) in enumerate(self.slices)
                },
            )
        # publish: from here on the new buffers are the parameters
        self.src = dst
        self.version += 1
        self._announce()
        for h in self.workers:
            h.steps += 1
        t_end = time.monotonic()
        self.last_step = {
            "step": step,
            "loss": loss_sum / max(tokens, 1),
            "grad_norm": norm,
            "version": self.version,
            "compute_s": t_compute - t0,
            "reduce_s": t_reduce - t_compute,
            "update_s": t_end - t_reduce,
            "slowest_worker_compute_s": slowest,
        }
        return StepOutcome(loss_sum, tokens, norm, True, nbytes)

    def _exchange(
        self, step: int, loss_sum: float, tokens: int, nbytes: int, done: dict[int, dict[str, Any]]
    ) -> tuple[float, int, int]:
        """This machine's reduce (no update rides on it), then the machines' allreduce."""
        assert self.exchange is not None
        gsum = self.state.arrays["gsum"]
        if all(r["finite"] for r in done.values()):
            reduce = {w: {"step": step, "lo": lo, "hi": hi} for w, (lo, hi) in enumerate(self.slices)}
            self._barrier(P.REDUCE, reduce)
        else:
            gsum.fill(np.nan)
        return self.exchange.exchange(gsum, loss_sum, tokens, nbytes)

    def _reduce_here(self) -> float:
        """The reduction on control's one core instead of every worker's (for comparison)."""
        rows = self.grads.arrays["rows"][:, : self.model.num_params]
        gsum = self.state.arrays["gsum"]
        np.copyto(gsum, rows[0])
        for r in range(1, rows.shape[0]):
            gsum += rows[r]
        return global_norm(gsum)

    def _skip(
        self, step: int, loss_sum: float, tokens: int, norm: float, why: str, nbytes: int
    ) -> StepOutcome:
        self.skipped_steps += 1
        log.warning("step %d: %s, update skipped", step, why)
        return StepOutcome(loss_sum, tokens, norm, False, nbytes)

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "params_version": self.version,
            "skipped_steps": self.skipped_steps,
            "speculative_updates": self.speculation_hits,
            "last_step": self.last_step,
            "ring": {"slots": self.settings.ring_slots, "ready": self.ring.ready()},
            "workers": [
                {
                    "id": h.index,
                    "pid": h.proc.pid if h.proc else None,
                    "state": h.state,
                    "steps": h.steps,
                    "restarts": h.restarts,
                    "last_seen_s": round(now - h.last_seen, 3) if h.last_seen else None,
                    "compute_s": round(h.compute_s, 6),
                    "barrier_wait_s": round(h.wait_s, 6),
                }
                for h in self.workers
            ],
        }

    # ---- shutdown -------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the workers (STOP, then SIGKILL after a grace period), unlink all segments."""
        if self._closed:
            return
        self._closed = True
        if hasattr(self, "ring") and self._owns_ring:  # a lent ring goes back to its owner whole
            self.ring.close()
        for h in self.workers:
            if h.proc is not None and h.proc.poll() is None and h.ready:
                self._send(h, P.STOP, {})
        grace = time.monotonic() + 3.0
        for h in self.workers:
            if h.proc is None:
                continue
            try:
                h.proc.wait(timeout=max(0.0, grace - time.monotonic()))
            except subprocess.TimeoutExpired:
                h.proc.send_signal(signal.SIGKILL)
                h.proc.wait(timeout=10)
            h.state = transition(WORKER, h.state, DEAD)
        self._sock.close(0)
        if self._owns_ctx:  # a context passed in belongs to its creator
            self._ctx.term()
        for block in self._blocks:
            try:
                block.close()
            except BufferError as exc:  # a stray view keeps it mapped here; the name goes anyway
                log.warning("%s", exc)
            block.unlink()
        shutil.rmtree(self._run_dir, ignore_errors=True)
