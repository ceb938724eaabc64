"""The shared-memory batch ring: slots of ``batch_size x (seq_len + 1)`` token ids, filled by a
thread with the batches of upcoming steps.

Whoever creates a :class:`BatchRing` owns its segment (and unlinks it at ``close``): the
supervisor in the daemon (``daemon/ring_service.py`` lends its slots to control over a
socket), the engine itself for `crystalline train`. Control takes the slot of step s
(``take``), names it in the workers' COMPUTE request, and gives it back after the step
(``release``): slot readiness is a queue item or a message, never a flag in shared memory that
another process spins on. Every wait has a deadline; a ``take`` that runs out raises
:class:`RingTimeout` saying why no batch came (for a store: how many tokens it holds).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from crystalline.shm.blocks import ArrayBlock, Spec
from crystalline.thread_join import acquire_within, join_within, within
from crystalline.tokens.windows import NotEnoughTokens

log = logging.getLogger("crystalline.ring")

BatchSource = Callable[[int], np.ndarray]  # step -> windows (batch, seq_len + 1)
# step, the slot's array -> what the batch was cut from (reported with the slot: documents, ...)
Filler = Callable[[int, np.ndarray], dict[str, Any]]
RETRY_S = 0.2  # how often a filler short of tokens looks again
FILLER_JOIN_S = 10.0  # close(): how long the filler has to end, unless the caller says
RESTART_JOIN_S = 60.0  # a take that refills: how long the old filler has to end (close cuts it)


class RingTimeout(TimeoutError):
    """No batch arrived for a step within the deadline."""


@dataclass(frozen=True)
class Taken:
    """The slot that holds the batch of ``step``, and what it was cut from."""

    step: int
    slot: int
    info: dict[str, Any] = field(default_factory=dict)


class Ring(Protocol):
    """What control needs of a ring, local or lent by the supervisor."""

    @property
    def name(self) -> str: ...  # the segment, for the workers to attach
    @property
    def slots(self) -> np.ndarray: ...  # (slots, batch_size, seq_len + 1), for control to read
    def take(self, step: int, timeout: float) -> Taken: ...
    def release(self, slot: int) -> None: ...
    def ready(self) -> int: ...
    def close(self) -> None: ...


def ring_spec(slots: int, batch_size: int, seq_len: int, vocab_size: int) -> Spec:
    token_dtype = np.uint16 if vocab_size <= 65536 else np.uint32
    return {"slots": ((slots, batch_size, seq_len + 1), token_dtype)}


class BatchRing:
    """The ring segment and the thread that fills its free slots, from ``first`` on, in order.

    A ``take`` for another step than the next one (a restarted control resuming from its
    checkpoint) drops what was filled and refills from that step: every slot is free again.
    """

    def __init__(self, name: str, spec: Spec, fill: Filler) -> None:
        self.block = ArrayBlock.create(name, spec)
        self._slots: np.ndarray = self.block.arrays["slots"]
        self.fill = fill
        self._lock = threading.Lock()  # take/release/close may come from two threads
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._closing = threading.Event()  # set by close before it takes the lock: ends a refill's join
        self._free: queue.Queue[int] = queue.Queue()
        self._ready: queue.Queue[Taken | BaseException] = queue.Queue()
        self._next: int | None = None  # the step the next take should ask for
        self._lent: set[int] = set()  # slots taken and not yet released
        self.short = ""  # why the filler waits, when it waits for tokens

    @property
    def name(self) -> str:
        return self.block.name

    @property
    def slots(self) -> np.ndarray:
        return self._slots

    def _run(
        self, first: int, stop: threading.Event, free: queue.Queue[int], ready: queue.Queue[Any]
    ) -> None:
        step = first
        while not stop.is_set():
            try:
                slot = free.get(timeout=0.1)
            except queue.Empty:
                continue
            while not stop.is_set():
                try:
                    info = self.fill(step, self._slots[slot])
                    self.short = ""
                    break
                except NotEnoughTokens as exc:  # the store is still filling: look again
                    self.short = str(exc)
                    stop.wait(RETRY_S)
                except BaseException as exc:  # handed to take(), which raises it
                    ready.put(exc)
                    return
            else:
                return
            ready.put(Taken(step, slot, info))
            step += 1

    def _restart(self, first: int) -> None:
        """Stop the filler (its slot writes end before the join returns), then start a new one
        from ``first`` with every slot free. Called under the lock; its join ends as soon as a
        :meth:`close` begins (RingTimeout), so that close never waits for it."""
        self._stop.set()
        cap = within(RESTART_JOIN_S)
        if not join_within(self._thread, lambda: 0.0 if self._closing.is_set() else cap()):
            raise RingTimeout(f"the ring's filler did not stop within {RESTART_JOIN_S:g} s")
        if self._closing.is_set():
            raise RingTimeout("the ring is closing")
        self._stop = threading.Event()
        self._free, self._ready = queue.Queue(), queue.Queue()
        self._lent = set()
        for i in range(len(self._slots)):
            self._free.put(i)
        self._thread = threading.Thread(
            target=self._run,
            args=(first, self._stop, self._free, self._ready),
            name="batch-ring",
            daemon=True,
        )
        self._thread.start()
        self._next = first

    def forget(self) -> None:
        """A new control took over: the next take refills from its step, every slot free."""
        with self._lock:
            self._next = None

    def take(self, step: int, timeout: float, cancel: threading.Event | None = None) -> Taken:
        """The slot of ``step``; RingTimeout after ``timeout`` seconds or once ``cancel`` is set."""
        with self._lock:
            if step != self._next:
                if self._next is not None:
                    log.info("ring: step %d asked, %s expected: refilling from %d", step, self._next, step)
                self._restart(step)
            ready = self._ready
        deadline = time.monotonic() + timeout
        item: Taken | BaseException | None = None
        while item is None and (left := deadline - time.monotonic()) > 0:
            if cancel is not None and cancel.is_set():
                break
            try:
                item = ready.get(timeout=min(left, 0.1))
            except queue.Empty:
                continue
        if item is None:
            why = f": {self.short}" if self.short else ""
            self._next = None  # the filler may be behind: start afresh at the next take
            raise RingTimeout(f"no batch for step {step} within {timeout:.0f} s{why}")
        if isinstance(item, BaseException):
            self._next = None
            raise item
        if item.step != step:
            raise RuntimeError(f"the ring filled step {item.step}, control wanted {step}")
        self._next = step + 1
        self._lent.add(item.slot)
        return item

    def release(self, slot: int) -> None:
        """Give a taken slot back for refilling; a slot not lent (released twice, a stale or
        bad number) is ignored, so it can never be filled while a step reads it."""
        with self._lock:
            if slot not in self._lent:
                log.warning("ring: release of slot %r, which is not lent; ignored", slot)
                return
            self._lent.discard(slot)
            self._free.put(slot)

    def ready(self) -> int:
        """Slots filled and waiting for their step."""
        return self._ready.qsize()

    def close(self, left: Callable[[], float] | None = None) -> None:
        """Stop the filler, drop the views and unlink the segment (idempotent). ``left``: the
        time the lock and the filler have (the daemon's stop budget's clock, which a second signal
        cuts; 10 s by default). A take refilling under the lock is told to give up at once; a
        filler still filling keeps the segment mapped here (its view); the name goes anyway,
        even when the lock could not be had in time (shm_unlink needs no view)."""
        left = left or within(FILLER_JOIN_S)
        self._closing.set()
        self._stop.set()  # the filler now, before the lock: a refill's join then ends at once
        if not acquire_within(self._lock, left):
            log.warning("ring: close could not take the ring's lock in its time; unlinking its name")
            self.block.unlink()
            return
        try:
            self._stop.set()
            join_within(self._thread, left)
            if self.block.closed:
                return
            self._slots = np.zeros((0,), dtype=self._slots.dtype)
            try:
                self.block.close()
            except BufferError as exc:  # a stray view keeps it mapped here; the name goes anyway
                log.warning("%s", exc)
            self.block.unlink()
        finally:
            self._lock.release()
