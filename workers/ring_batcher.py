"""The batcher thread of the engine: fills free ring slots with the batches of upcoming steps."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import numpy as np

BatchSource = Callable[[int], np.ndarray]  # step -> windows (batch, seq_len + 1)


class RingTimeout(TimeoutError):
    """No batch arrived for a step within the deadline."""


class RingBatcher:
    """Fills free ring slots with the batches of upcoming steps, in a thread.

    Control takes the slot of step s (``take``), hands it to the workers by message, and gives
    it back after the step (``release``): slot readiness is a queue item, never a flag in
    shared memory that another process spins on.
    """

    def __init__(self, slots: np.ndarray, source: BatchSource) -> None:
        self.slots = slots
        self.source = source
        self._free: queue.Queue[int] = queue.Queue()
        for i in range(len(slots)):
            self._free.put(i)
        self._ready: queue.Queue[tuple[int, int] | BaseException] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next: int | None = None

    def _run(self, first: int) -> None:
        step = first
        while not self._stop.is_set():
            try:
                slot = self._free.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                self.slots[slot] = self.source(step)
            except BaseException as exc:  # handed to the control thread, which raises it
                self._ready.put(exc)
                return
            self._ready.put((step, slot))
            step += 1

    def take(self, step: int, timeout: float) -> int:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, args=(step,), name="batcher", daemon=True)
            self._thread.start()
        try:
            item = self._ready.get(timeout=timeout)
        except queue.Empty:
            raise RingTimeout(f"no batch for step {step} within {timeout:.0f} s") from None
        if isinstance(item, BaseException):
            raise item
        got, slot = item
        if got != step:
            raise RuntimeError(f"batcher produced step {got}, control wanted {step}")
        return slot

    def release(self, slot: int) -> None:
        self._free.put(slot)

    def ready(self) -> int:
        """Slots filled and waiting for their step."""
        return self._ready.qsize()

    def close(self) -> None:
        """Stop the thread and drop the view of the ring, so the segment can be closed."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self.slots = np.zeros((0,), dtype=self.slots.dtype)
