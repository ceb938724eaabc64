"""The batch ring as the supervisor lends it to control: the supervisor owns the segment and the
thread that cuts the store's windows into its slots; control asks for the slot of step s over
a socket, hands it to the workers, and gives it back.

Wire format (msgpack maps over a ZeroMQ ROUTER in the supervisor, ``ipc://<runtime>/ring.sock``,
and a DEALER in control; every message carries ``v``; at most ``MAX_MESSAGE`` bytes):

    control -> supervisor                         supervisor -> control
    HELLO(id, batch_size, seq_len, vocab_size,    RING(id, name)  the segment, created or kept
          slots)                                  ERROR(id, error, shm_full)
    TAKE(id, step, timeout_s)                     SLOT(id, step, slot, info, ready)
                                                  ERROR(id, error)  (no batch within timeout_s)
    RELEASE(slot)                                 -

``info`` says what the batch was cut from (``documents`` visible, ``train_documents``,
``train_tokens``, ``trains_on_held_out``): control records it in status and checkpoints. A
HELLO from a new control drops whatever the previous one held. The server is a thread of the
supervisor, not a process of its own: cutting a batch is a gather of memory-mapped tokens that
holds the GIL for well under a millisecond per batch (README, "How data flows"), and a thread
dies with the supervisor, so nothing is left to supervise.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq

from crystalline.descriptors import MIN_SHARD_MAPS, DescriptorLimitTooLow, shard_map_cap
from crystalline.shm.blocks import ArrayBlock, layout
from crystalline.shm.segments import SharedMemoryFull, check_space, segment_name, sweep
from crystalline.thread_join import join_within, within
from crystalline.tokens.windows import StoreBehind, StoreWindows

from ..workers.batch_ring import BatchRing, RingTimeout, Taken, ring_spec
from ..workers.checkpoint import list_checkpoints
from ..workers.engine import EngineStopped
from ..workers.train_config import TrainConfig
from ..workers.trainer import engine_instance
from .visible_steps import VisibleSteps

log = logging.getLogger("crystalline.ring")

VERSION = 1
MAX_MESSAGE = 1 << 16
TICK_S = 0.1  # how fast the server notices a stop
JOIN_S = 10.0  # close(): how long its threads have to end, unless the caller says
ANSWER_MARGIN_S = 5.0  # control waits this much longer than the supervisor's own deadline
OWNER_CHECK_S = 0.5  # how often control, waiting for an answer, looks whether its supervisor lives


def ring_endpoint(runtime_dir: Path) -> str:
    return f"ipc://{runtime_dir / 'ring.sock'}"


def ring_instance(checkpoint_dir: Path) -> str:
    """The supervisor's segment instance: the engine's with another letter, so the engine's
    sweep of its own leftovers never takes the supervisor's ring."""
    return "s" + engine_instance(checkpoint_dir)[1:]


def remove_orphaned_ring(state_dir: Path) -> list[str]:
    """Control's last act when its supervisor was killed alone: unlink the ring the supervisor
    left (nothing else would before the next start). Control holds the state directory's lock,
    inherited from that supervisor, so no new supervisor has started (and taken a ring of that
    name). The names removed."""
    removed = sweep(ring_instance(state_dir / "checkpoints"))
    if removed:
        log.warning("removed the batch ring of a killed supervisor: %s", ", ".join(removed))
    return removed


def _pack(msg: dict[str, Any]) -> bytes:
    return msgpack.packb({"v": VERSION, **msg}, use_bin_type=True)


def _unpack(data: bytes) -> dict[str, Any] | None:
    if len(data) > MAX_MESSAGE:
        return None
    try:
        msg = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.UnpackException):
        return None
    return msg if isinstance(msg, dict) and msg.get("v") == VERSION else None


class RingServer:
    """The supervisor's side: the segment, the filler (``BatchRing``) and the socket thread."""

    def __init__(self, state_dir: Path, store_dir: Path, config: TrainConfig, endpoint: str) -> None:
        self.config = config
        self.checkpoint_dir = state_dir / "checkpoints"
        self.instance = ring_instance(self.checkpoint_dir)
        self.store_dir = store_dir
        self.visible = VisibleSteps(state_dir / "visible-steps.json")
        self.ring: BatchRing | None = None
        self.windows: StoreWindows | None = None
        self.endpoint = endpoint
        leftovers = sweep(self.instance)
        if leftovers:
            log.warning("removed a batch ring left by a killed supervisor: %s", ", ".join(leftovers))
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(endpoint)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="ring-server", daemon=True)
        self._thread.start()

    # ---- the filler -----------------------------------------------------------------------
    def _floor(self) -> int:
        kept = list_checkpoints(self.checkpoint_dir) if self.checkpoint_dir.exists() else []
        return int(kept[0].name.removeprefix("step-")) if kept else 0

    def _fill(self, step: int, out: np.ndarray) -> dict[str, Any]:
        """Cut step ``step`` into ``out`` from the documents its record names, or from all
        visible now for a step past the record (then recorded before the batch is lent)."""
        assert self.windows is not None
        recorded = self.visible.documents_at(step)
        if recorded is None and step <= self.visible.through:
            # older than every change kept (control resumes from a checkpoint older than the
            # oldest kept when they were dropped): its documents are unknown, so this step and
            # the ones after it are cut anew and recorded, and a later restart cuts the same
            log.warning(
                "step %d is older than the visible-steps record keeps; cutting it and the steps "
                "after it from the documents there now",
                step,
            )
            self.visible.forget_from(step)
        if recorded is not None:
            try:
                return self.windows.describe(self.windows.fill(step, out, recorded))
            except StoreBehind as exc:
                log.warning("step %d: %s; cutting it from the documents there now", step, exc)
                self.visible.forget_from(step)
        documents = self.windows.fill(step, out)
        self.visible.record(step, documents, self._floor())
        return self.windows.describe(documents)

    def _open(self, msg: dict[str, Any]) -> str:
        """The ring for control's geometry: kept when it matches, else (re)created."""
        spec = ring_spec(
            int(msg["slots"]), int(msg["batch_size"]), int(msg["seq_len"]), int(msg["vocab_size"])
        )
        if self.ring is not None and self.ring.slots.shape == spec["slots"][0]:
            self.ring.forget()
            return self.ring.name
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        name = segment_name(self.instance, "ring")
        check_space({name: layout(spec)[1]})
        cfg = self.config
        self.windows = StoreWindows(
            self.store_dir,
            int(msg["batch_size"]),
            int(msg["seq_len"]),
            seed=cfg.seed,
            val_fraction=cfg.val_fraction,
            fresh_fraction=cfg.fresh_share,
            fresh_tokens=cfg.fresh_tokens,
            source_cap=cfg.source_cap,
        )
        try:  # the ring's reader takes a quarter of the descriptors the supervisor has left
            self.windows.reader.max_open_shards = shard_map_cap(4)
        except DescriptorLimitTooLow:
            self.windows.reader.max_open_shards = MIN_SHARD_MAPS
        self.ring = BatchRing(name, spec, self._fill)
        log.info("batch ring %s: %d slots of %s", name, spec["slots"][0][0], spec["slots"][0][1:])
        return name

    # ---- the socket -----------------------------------------------------------------------
    def _answer(self, msg: dict[str, Any]) -> dict[str, Any] | None:
        kind, rid = msg.get("type"), msg.get("id")
        if kind == "HELLO":
            try:
                return {"type": "RING", "id": rid, "name": self._open(msg)}
            except SharedMemoryFull as exc:
                return {"type": "ERROR", "id": rid, "error": str(exc), "shm_full": True}
            except (KeyError, TypeError, ValueError) as exc:
                return {"type": "ERROR", "id": rid, "error": f"bad HELLO: {exc}"}
        if self.ring is None:
            return {"type": "ERROR", "id": rid, "error": "no ring yet: say HELLO first"}
        if kind == "RELEASE":
            self.ring.release(int(msg.get("slot", -1)))
            return None
        if kind == "TAKE":
            try:
                taken = self.ring.take(int(msg["step"]), float(msg["timeout_s"]), cancel=self._stop)
            except (RingTimeout, ValueError, KeyError, TypeError, OSError) as exc:
                return {"type": "ERROR", "id": rid, "error": str(exc)}
            ready = self.ring.ready()
            return {
                "type": "SLOT",
                "id": rid,
                "step": taken.step,
                "slot": taken.slot,
                "info": taken.info,
                "ready": ready,
            }
        return {"type": "ERROR", "id": rid, "error": f"unknown message {kind!r}"}

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not self._sock.poll(int(TICK_S * 1000)):
                continue
            frames = self._sock.recv_multipart()
            msg = _unpack(frames[-1]) if len(frames) == 2 else None
            if msg is None:
                log.warning("ring: dropped a malformed message")
                continue
            try:
                reply = self._answer(msg)
            except Exception as exc:  # the filler failed (an unreadable shard): control is told
                log.exception("ring: %s failed", msg.get("type"))
                reply = {"type": "ERROR", "id": msg.get("id"), "error": f"{type(exc).__name__}: {exc}"}
            if reply is not None:
                self._sock.send_multipart([frames[0], _pack(reply)])

    def close(self, left: Callable[[], float] | None = None) -> None:
        """Stop serving, stop the filler, unlink the segment (idempotent). ``left``: the time
        both threads have to end, together (the daemon's stop budget's clock, which a second
        signal cuts; ``JOIN_S`` by default): the segment's name goes whatever they do."""
        left = left or within(JOIN_S)
        self._stop.set()
        join_within(self._thread, left)
        if self.ring is not None:
            self.ring.close(left)
        if self._thread.is_alive():  # its socket stays open: zmq sockets are not thread-safe
            log.error("ring server thread did not stop in the time the stop gave it")
        elif not self._sock.closed:
            self._sock.close(0)
            self._ctx.term()


class RingClient:
    """Control's side: a ``Ring`` whose slots the supervisor fills; control maps it to read."""

    def __init__(
        self,
        endpoint: str,
        geometry: dict[str, int],
        owner: int,
        timeout_s: float = 30.0,
        context: zmq.Context | None = None,
    ) -> None:
        """``owner``: the pid of the supervisor, whose thread serves the ring (control's spec
        names it): once it is no longer this process's parent, every ask, HELLO included, ends
        in EngineStopped. ``context``: control's own ZeroMQ context, shared (one more context
        costs five descriptors, and control's are counted against RLIMIT_NOFILE)."""
        self._own_ctx = context is None
        self._owner = owner
        self._ctx = zmq.Context() if context is None else context
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)
        self._id = 0
        self._ready = 0
        self.on_take: Callable[[dict[str, Any]], None] | None = None  # told what each batch was cut from
        self.block: ArrayBlock | None = None
        try:
            reply = self._ask({"type": "HELLO", **geometry}, timeout_s)
            if reply["type"] != "RING":
                err = str(reply.get("error"))
                raise SharedMemoryFull(err) if reply.get("shm_full") else RuntimeError(f"batch ring: {err}")
            self.block = ArrayBlock.attach(str(reply["name"]))
        except BaseException:
            self.close()
            raise

    def _ask(self, msg: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        self._id += 1
        rid = self._id
        self._sock.send(_pack({**msg, "id": rid}))
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if not self._sock.poll(int(min(left, OWNER_CHECK_S) * 1000) + 1):
                if os.getppid() != self._owner:  # killed: control stops, no batch will come
                    raise EngineStopped(f"the supervisor is gone: {msg['type']} not answered")
                continue
            reply = _unpack(self._sock.recv())
            if reply is not None and reply.get("id") == rid:  # a late answer to an abandoned ask: dropped
                return reply
        raise RingTimeout(
            f"the supervisor's batch ring did not answer {msg['type']} within {timeout_s:.0f} s"
        )

    @property
    def name(self) -> str:
        assert self.block is not None
        return self.block.name

    @property
    def slots(self) -> np.ndarray:
        assert self.block is not None
        return self.block.arrays["slots"]

    def take(self, step: int, timeout: float) -> Taken:
        reply = self._ask({"type": "TAKE", "step": step, "timeout_s": timeout}, timeout + ANSWER_MARGIN_S)
        if reply["type"] != "SLOT":
            raise RingTimeout(f"batch ring, step {step}: {reply.get('error')}")
        self._ready = int(reply.get("ready", 0))
        taken = Taken(int(reply["step"]), int(reply["slot"]), dict(reply.get("info") or {}))
        if self.on_take is not None:
            self.on_take(taken.info)
        return taken

    def release(self, slot: int) -> None:
        self._sock.send(_pack({"type": "RELEASE", "slot": slot}))

    def batch(self, step: int, timeout: float) -> np.ndarray:
        """A copy of the batch of ``step`` (the one-process engine computes it in control)."""
        taken = self.take(step, timeout)
        try:
            return self.slots[taken.slot].copy()
        finally:
            self.release(taken.slot)

    def ready(self) -> int:
        return self._ready

    def close(self) -> None:
        if self.block is not None and not self.block.closed:
            self.block.close()
        if not self._sock.closed:
            self._sock.close(0)
            if self._own_ctx:
                self._ctx.term()
