"""One way to run a part of the daemon that may fail: crawl, ingest and the control process.

A :class:`ComponentRunner` runs its component's ``run_once`` until it returns (the component
stopped because it was asked to) or the runner is stopped. When ``run_once`` raises, the error
is kept for status, logged as one line, and the component is started again after a delay that
doubles with each failure up to a cap, with jitter so that restarts do not fall into step. A
component that ran for ``healthy_after_s`` before it failed starts the count again from the
first delay: a crash an hour after the last one is not the tenth of a loop.

The component tells the runner that it works (``progress()``: a batch ingested, a crawl pass
finished, a training step made) and the runner forgets the last error then. Its state follows
``crystalline.states.COMPONENT``: idle -> starting -> running -> (backoff -> starting ...) ->
stopped.

The clock, the random source and the wait are injectable, so the backoff is tested without
waiting (tests/daemon/test_component_runner.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..exit_status import one_line
from ..states import COMPONENT, transition

log = logging.getLogger("crystalline.supervisor")


@dataclass(frozen=True)
class Backoff:
    """Delays before restarts: ``first_s`` doubling (``factor``) up to ``max_s``, each scaled by
    a random factor in [1 - jitter, 1 + jitter]; the count restarts after ``healthy_after_s``
    of running without a failure."""

    first_s: float
    max_s: float
    factor: float = 2.0
    jitter: float = 0.1
    healthy_after_s: float = 300.0

    def __post_init__(self) -> None:
        if not (0 < self.first_s <= self.max_s and self.factor >= 1 and 0 <= self.jitter < 1):
            raise ValueError(f"bad backoff {self}: need 0 < first_s <= max_s, factor >= 1, 0 <= jitter < 1")

    def delay(self, failures: int, uniform: float) -> float:
        """The wait after the ``failures``-th failure in a row (1-based); ``uniform`` in [0, 1)."""
        base = min(self.first_s * self.factor ** max(failures - 1, 0), self.max_s)
        return base * (1.0 + self.jitter * (2.0 * uniform - 1.0))


class ComponentFailed(Exception):
    """A component ended on its own when it should have gone on (a control process that
    exited); its message is the whole error line."""


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` or until ``stop`` is set; True when stopped."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max(seconds, 0.0))
    return stop.is_set()


def describe(exc: BaseException) -> str:
    """One line for a component's failure."""
    text = str(exc) if isinstance(exc, ComponentFailed) else f"{type(exc).__name__}: {exc}"
    return one_line(text)


class ComponentRunner:
    """Runs one component with retry and exponential backoff (see the module's docstring)."""

    ERROR_AFTER = 5  # failures in a row logged as warnings before they become errors

    def __init__(
        self,
        name: str,
        run_once: Callable[[], Awaitable[None]],
        backoff: Backoff,
        stop: asyncio.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        uniform: Callable[[], float] = random.random,
        wait: Callable[[asyncio.Event, float], Awaitable[bool]] = wait_or_stop,
    ) -> None:
        self.name = name
        self.run_once = run_once
        self.backoff = backoff
        self.stop_event = asyncio.Event() if stop is None else stop
        self.clock = clock
        self.uniform = uniform
        self.wait = wait
        self.state = COMPONENT.initial
        self.error: str | None = None  # why it last failed; None once it made progress again
        self.failures = 0  # in a row, since the last healthy period
        self.restarts = 0
        self.started_at: float | None = None  # when the current incarnation started
        self.next_start: float | None = None  # during a backoff: when it starts again
        self.delays: list[float] = []  # the last few backoff delays, newest last (for status)

    def _to(self, state: str) -> None:
        self.state = transition(COMPONENT, self.state, state)

    def progress(self) -> None:
        """The component works: forget its last error."""
        if self.error is not None:
            log.info("%s works again (earlier: %s)", self.name, self.error)
            self.error = None

    def stop(self) -> None:
        """Ask the runner to end: no more restarts, a backoff wait ends at once. The component
        itself is stopped by its own means (its stop event, control's STOP)."""
        self.stop_event.set()

    async def run(self) -> None:
        """Run, restart after failures, until the component returns or the runner is stopped."""
        try:
            while not self.stop_event.is_set():
                self._to("starting")
                self.started_at = self.clock()
                self._to("running")
                try:
                    await self.run_once()
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the daemon stays up: status and the log say why
                    self._failed(exc)
                assert self.next_start is not None
                if await self.wait(self.stop_event, self.next_start - self.clock()):
                    return
                self.next_start = None
                self.restarts += 1
        finally:
            self._to("stopped")

    def _failed(self, exc: Exception) -> None:
        now = self.clock()
        ran = now - self.started_at if self.started_at is not None else 0.0
        if ran >= self.backoff.healthy_after_s:
            self.failures = 0  # it was healthy for a while: not part of a loop
        self.failures += 1
        self.error = describe(exc)
        delay = self.backoff.delay(self.failures, self.uniform())
        self.delays = [*self.delays[-9:], round(delay, 3)]
        self.next_start = now + delay
        self._to("backoff")
        level = logging.ERROR if self.failures >= self.ERROR_AFTER else logging.WARNING
        log.log(
            level,
            "%s failed (%s; %d in a row); restarting in %.1f s",
            self.name,
            self.error,
            self.failures,
            delay,
        )

    def stats(self) -> dict[str, object]:
        """What status shows of the runner: its state, restarts, and the last error."""
        out: dict[str, object] = {"state": self.state, "restarts": self.restarts}
        if self.next_start is not None:
            out["restart_in_s"] = round(max(self.next_start - self.clock(), 0.0), 1)
        if self.error is not None:
            out["error"] = self.error
        return out
