"""The supervisor: systemd's main process. One asyncio loop runs ingest (drop folder and spool,
CPU work in a process pool), the status socket and sd_notify, and starts and restarts the
control process, which starts the workers; the crawler runs in a thread with a loop of its own
(``crawl_service.py``), so that its database's waits never stall this loop.

Signal handlers only record the signal; the loop asks control to stop with a final checkpoint
and ingest to take no further document, then, beside control's stop, stops the crawler, then
ingest, then the vocabulary; it unlinks what it created
and exits 0. The components' stops (by STOP_S) and every wait of the cleanup after them (by
END_S, each within its cap) take from one budget (``stop_budget.py``) inside the unit's
TimeoutStopSec=60: its steps end by 54 s at worst, and the threads they leave working (ingest's
batch storing; any thread the interpreter's exit would join, the crawl loop's too) are given up
on at EXIT_S, 57 s, the process exiting without them (README
"Stopping"). A second signal (the first after the
``stop`` command is not one) ends the budget's wait in progress at once and leaves every later
wait at most ``HURRIED_S``; a step that fails is logged in one line and the stop goes on.
Crawl, ingest and the control process each run under a ``ComponentRunner``: a crash is reported
in status and in the log and retried with backoff, never looped on silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import random
import shutil
import signal
import sqlite3
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

from ..descriptors import raise_soft_limit
from ..ingest.pool import CLOSE_GRACE_S, KILLED_GRACE_S
from ..ingest.registry import Registry
from ..ingest.registry_pg import open_registry
from ..postgres import DatabaseUnavailable
from ..states import DAEMON, RESTARTING, TRAINING, transition
from . import commands
from .component_runner import Backoff, ComponentRunner, describe
from .config import Settings
from .control_link import ControlLink
from .crawl_service import CrawlService
from .dashboard import CUT_S, READ_CLOSE_WAIT_S, Dashboard, parse_bind
from .generation_service import GenerationService
from .health import judge
from .ingest_service import IngestService
from .metrics_history import MetricsHistory, point_from_status
from .notify import Notifier
from .resource_tracker import TIMEOUT_S as TRACKER_TIMEOUT_S
from .resource_tracker import stop_resource_tracker
from .ring_service import JOIN_S as RING_JOIN_S
from .ring_service import RingServer, ring_endpoint
from .state_dir_lock import take_lock
from .status_server import STOP_TIMEOUT_S as SOCKET_STOP_S
from .status_server import StatusServer
from .stop_budget import StopBudget, wait_for_threads
from .store_data import byte_store_dir, store_dir
from .vocab_service import VocabService

log = logging.getLogger("crystalline.supervisor")

SAMPLES = Path(__file__).resolve().parent / "samples"
TICK_S = 1.0
INGEST_STOP_S = 15.0  # at stop, the batch in hand's time to finish (durably)
VOCAB_STOP_S = 15.0  # at stop, the vocabulary's pass in hand's time to end
START_RETRY_S = 10.0  # how often an unusable state directory is tried again
# a database (--database) that does not answer at start is tried again after these waits
DATABASE_BACKOFF = Backoff(first_s=0.5, max_s=30.0)
PROGRESS_EVERY_S = 30.0  # a progress line in the log, so that a quiet daemon is not silent
# restarts after a failure: first delay, cap, and how long a run must last to count as healthy
CONTROL_BACKOFF = Backoff(first_s=1.0, max_s=60.0, healthy_after_s=600.0)
LOCK_WAIT_S = 3.0  # how long a starting supervisor tries to take the state directory's lock
# the cleanup's waits, each at most this much of the stop's budget (README "Stopping")
RUNNER_S = 1.0  # control's runner, once control has exited
RING_CLOSE_S = RING_JOIN_S  # the batch ring's server and filler threads, together
INGEST_CLOSE_S = CLOSE_GRACE_S + KILLED_GRACE_S  # ingest's pool: its processes' end, then the killed ones'
DASHBOARD_CLOSE_S = READ_CLOSE_WAIT_S + CUT_S  # a read in flight, then aiohttp's close (cut at CUT_S)
TRACKER_S = TRACKER_TIMEOUT_S  # multiprocessing's resource tracker
SOCKET_CLOSE_S = SOCKET_STOP_S  # the status socket's connections
HISTORY_SAVE_S = 2.0  # the dashboard's history, written (atomically) at the stop
THREAD_PREFIX = "crystalline-loop-thread"  # the loop's executor's threads, named in the exit's line


def _writable(directory: Path) -> bool:
    """Whether this process may write in ``directory`` now (False on a read-only mount too)."""
    return os.access(directory, os.W_OK)


class StateDirInUse(OSError):
    """Another daemon holds the state directory: this one must not start at all."""


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.notifier = Notifier()
        self.started = time.monotonic()
        self.should_exit = asyncio.Event()
        self.budget = StopBudget()  # the stop's waits (daemon/stop_budget.py)
        self._signalled = False  # a signal came: a second one hurries the stop (not the stop command)
        self.state = DAEMON.initial
        self.crawl = CrawlService(
            settings.crawl,
            settings.state_dir,
            enabled=not settings.daemon.no_crawl,
            registry_database=settings.ingest.database,  # ingest's verdicts come back from its registry
        )
        # under a learned vocabulary ingest writes bytes; the vocabulary service learns it from
        # them once and derives the store the model trains on (daemon/vocab_service.py)
        learned = store_dir(settings.state_dir, settings.train) != byte_store_dir(settings.state_dir)
        self.vocab = VocabService(settings.state_dir, settings.train) if learned else None
        self.ingest = IngestService(
            settings.ingest,
            settings.state_dir,
            settings.inbox,
            "bytes" if learned else settings.train.tokenizer,
        )
        self.ring: RingServer | None = None  # the batch ring, lent to control (ring_service.py)
        self._lock: TextIO | None = None
        self.ready_sent = False
        self._surprise_written: Any = None  # control's count of surprise values written
        self._last_progress = time.monotonic()
        self._progress_since_training = False  # the first step gets a line at once
        self.start_error: str | None = None  # the state dir cannot be used (read-only, ...)
        self.database_error: str | None = None  # at start: why the database does not answer
        self.status_server: StatusServer | None = None
        self.dashboard: Dashboard | None = None
        self.generation = GenerationService(settings)  # every generate, beside training
        self.history = MetricsHistory(settings.state_dir / "dashboard" / "history.json")

    def dashboard_registry(self) -> Callable[[], Registry]:
        """Opens the dashboard's reader of the registry, for its latest documents (SQLite or
        --database's): it never creates, migrates nor writes it. On PostgreSQL its statements
        get ``[ingest] database-timeout-s`` but at most 2 s (``postgres.READER_STATEMENT_TIMEOUT_S``):
        a few indexed rows, read off the loop, so that a slow server leaves the page's documents
        stale rather than a read the stop waits 5 s for and then leaves (``READ_CLOSE_WAIT_S``)."""
        s = self.settings
        registry = s.state_dir / "ingest" / "registry.sqlite3"
        timeout_s = s.ingest.database_timeout_s
        return functools.partial(
            open_registry, s.ingest.database, registry, read_only=True, statement_timeout_s=timeout_s
        )

    # ---- set-up ---------------------------------------------------------------------------
    def _prepare_dirs(self) -> None:
        s = self.settings
        for d in (s.state_dir, s.runtime_dir, s.inbox):
            d.mkdir(parents=True, exist_ok=True)
        if self._lock is None:
            # waited for a moment: a killed supervisor's control holds it (inherited) until it has
            # written its final checkpoint and swept the ring left behind (remove_orphaned_ring),
            # so a restart right after the kill is no second daemon
            self._lock = take_lock(s.state_dir, wait_s=LOCK_WAIT_S)
            if self._lock is None:
                raise StateDirInUse(
                    f"{s.state_dir} is in use by another crystalline daemon (or a killed one's control, "
                    "still finishing)"
                )
            self.control.lock_fd = self._lock.fileno()
        marker = s.state_dir / ".samples-copied"
        if not s.daemon.no_samples and not marker.exists():
            for src in sorted(SAMPLES.iterdir()):
                if src.is_file():
                    tmp = s.inbox / f".{src.name}.part"
                    shutil.copyfile(src, tmp)
                    os.replace(tmp, s.inbox / src.name)  # appears complete: renamed into place
            marker.write_text("bundled samples copied into the inbox\n", encoding="utf-8")

    def request_stop(self) -> None:
        """Stop as on SIGTERM (the ``stop`` command)."""
        self.should_exit.set()

    # ---- status ---------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        c = self.control.status
        workers = [
            {
                **{k: w.get(k) for k in ("id", "pid", "state", "restarts", "last_seen_s", "steps")},
                # the last step's compute and barrier wait, as the engine measured them
                "compute_ms": _ms(w.get("compute_s")),
                "wait_ms": _ms(w.get("barrier_wait_s")),
            }
            for w in c.get("workers", [])
        ]
        training = {
            "state": c.get("state", "starting") if self.control.alive() else self._control_down_state(),
            "step": c.get("step", 0),
            "tokens": c.get("tokens", 0),
            "loss": c.get("loss"),
            "val_loss": c.get("val_loss"),
            # bits per byte and perplexity beside each loss (workers/bits_per_byte.py)
            **{k: c.get(k) for k in ("bpb", "perplexity", "val_bpb", "val_perplexity")},
            "loss_trend": c.get("loss_trend", []),
            "tokens_per_s": c.get("tokens_per_s", 0.0),
            "params_version": c.get("params_version", 0),
            "last_checkpoint_step": c.get("last_checkpoint_step"),
            "skipped_steps": c.get("skipped_steps", 0),
            "control_pid": c.get("pid"),
            "control_restarts": self.control_runner.restarts,
            "status_age_s": _round(self.control.status_age()),  # health: a silent control is stuck
            "workers": workers,
            "sources": c.get("sources", []),  # validation loss per source (issue 13)
            "surprise": c.get("surprise", {}),  # documents scored before training (daemon/surprise.py)
        }
        if self.control_runner.error:
            training["control_error"] = self.control_runner.error
        optional = ("lr", "schedule", "ema_decay", "val_loss_raw", "val_bpb_raw", "val_perplexity_raw",
                    "params_digest")  # fmt: skip
        for key in (*optional, "last_checkpoint_s", "data"):
            if c.get(key) is not None:
                training[key] = c[key]
        if c.get("stalled"):
            training["stalled"] = c["stalled"]
        for key in ("error", "checkpoint_error", "checkpoint_warnings"):
            if c.get(key):
                training[key] = c[key]
        crawler = self.crawl.stats()
        data: dict[str, Any] = {
            "state": self.state,
            "uptime_s": round(time.monotonic() - self.started, 1),
            "pid": os.getpid(),
            "training": training,
            "crawler": crawler,
            "ingest": self.ingest.stats(),
            "ring": c.get("ring", {"slots": 0, "ready": 0}),
        }
        if self.vocab is not None:  # the learned vocabulary (the base preset)
            data["vocabulary"] = self.vocab.stats()
        if c.get("cluster"):  # --cluster: the members, their steps and allreduces
            data["cluster"] = c["cluster"]
        if self.status_server is not None:
            data["socket"] = self.status_server.stats()
        data["http"] = self.dashboard.info() if self.dashboard is not None else {"url": None, "state": "off"}
        data["generation"] = self.generation.stats()
        if self.database_error:  # at start, waiting for the database (health: degraded)
            data["database"] = {"state": "unreachable", "error": self.database_error}
        ingest = data["ingest"]
        last_error = (
            self.start_error
            or (f"database unreachable ({self.database_error})" if self.database_error else None)
            or c.get("error")
            or c.get("checkpoint_error")
            or (ingest.get("error") if isinstance(ingest, dict) else None)
            or self.crawl.runner.error
            or self.control_runner.error
        )
        if last_error:
            data["last_error"] = last_error
        data["health"] = judge(data, self.settings.daemon.control_silent_s)
        return data

    def _control_down_state(self) -> str:
        """training.state while no control process runs: starting (its first start), restarting
        (after a failure), stopped (after the daemon's stop)."""
        runner = self.control_runner
        if runner.state == "stopped":
            return "stopped"
        return RESTARTING if runner.restarts or runner.state == "backoff" else TRAINING.initial

    # ---- parts ----------------------------------------------------------------------------
    def _status_line(self) -> str:
        t = self.control.status
        return (
            f"{self.state}: step {t.get('step', 0)} loss {t.get('loss') or float('nan'):.3f} "
            f"{t.get('tokens_per_s', 0.0):,.0f} tok/s, workers {len(t.get('workers', []))}"
        )

    def _progress(self, now: float) -> None:
        """One point of the dashboard's history, and a progress line every PROGRESS_EVERY_S."""
        step = self.control.status.get("step") or 0
        first_step = not self._progress_since_training and step > 0
        if not (first_step or self.history.due() or now - self._last_progress >= PROGRESS_EVERY_S):
            return  # status() reads the crawler's and ingest's counters: only when needed
        data = self.status()
        self.history.add(point_from_status(data, time.time()))
        t, c, i = data["training"], data["crawler"], data["ingest"]
        if first_step or now - self._last_progress >= PROGRESS_EVERY_S:
            self._last_progress = now
            self._progress_since_training |= first_step
            loss = t.get("loss")
            log.info(
                "progress: step %d, loss %s, %.0f tok/s, %s documents (%s pending), %s pages fetched",
                t.get("step", 0),
                f"{loss:.3f}" if isinstance(loss, float) else "-",
                t.get("tokens_per_s") or 0.0,
                i.get("documents", 0),
                i.get("pending", 0),
                c.get("fetched", 0),
            )

    def _note_surprise_written(self) -> None:
        """Control wrote surprise values to the registry (its count changed): ingest reads its
        counts again, so status shows them within a tick rather than at its 30 s refresh."""
        written = (self.control.status.get("surprise") or {}).get("written")
        if written != self._surprise_written:
            self._surprise_written = written
            self.ingest.surprise_recorded()

    def health(self) -> dict[str, Any]:
        """The health verdict (``daemon/health.py``) of the status as it is now: what the
        watchdog, the status reply and ``crystalline status`` go by."""
        return self.status()["health"]

    async def _close_dashboard(self) -> None:
        """The dashboard, then the generation process, each within what the budget has left."""
        if self.dashboard is not None:
            await self.dashboard.close(self.budget.left(DASHBOARD_CLOSE_S, cleanup=True))
        await self.generation.stop(self.budget)

    # ---- the stop -------------------------------------------------------------------------
    async def _stop(self, control_task: asyncio.Task[None], server: StatusServer) -> None:
        """Control is asked for its final checkpoint at once, beside the other stops: it needs
        only the ring (closed after it), so a crawl that does not stop never costs the checkpoint.
        The crawl, then ingest, then the vocabulary stop; control's stop is awaited whatever they
        do. Their waits take from ``self.budget`` (``stop_budget.py``), ending by STOP_S; the
        cleanup's waits then take what is left of it, until END_S (README, "Stopping"); a step
        that fails is logged in one line and the next steps still run."""
        s, budget = self.settings, self.budget
        budget.start()
        self.state = transition(DAEMON, self.state, "stopping")
        self.notifier.stopping("stopping: checkpointing")
        self.control_runner.stop()  # no restart from here on
        control_stop = asyncio.create_task(self.control.stop(budget), name="control-stop")
        self.ingest.stop_taking()  # at once: its batch would take more during the crawl's wait
        log.info("stopping: control checkpoints beside the crawl's stop (%g s)", s.daemon.crawl_stop_s)
        try:
            # the fetches in hand end, then the crawler closes ([daemon] crawl-stop-s)
            await self._stop_step("the crawl", self.crawl.stop(budget.left(s.daemon.crawl_stop_s)))
            await self._stop_step("ingest", self.ingest.stop(budget.left(INGEST_STOP_S)))
            if self.vocab is not None:
                await self._stop_step("the vocabulary", self.vocab.stop(budget.left(VOCAB_STOP_S)))
        finally:
            # bounded by the budget itself (SIGKILL at STOP_S at the latest); never cancelled
            await _logged("control's stop", control_stop)
        # the cleanup: each wait takes from the budget (within its cap, all by END_S; a second
        # signal ends the one in progress at once and leaves the later ones HURRIED_S); none of
        # them is a wait whose end loses a document or the checkpoint (README "Stopping")
        # control has exited (or was killed): its runner ends at once, its failure retrieved
        await self._cleanup_wait("control's runner", control_task, RUNNER_S, control_task.cancel)
        assert self.ring is not None
        ring_close = asyncio.to_thread(self.ring.close, budget.clock(RING_CLOSE_S))
        await _logged("unlinking the batch ring", ring_close)
        # out of time, its extraction processes are killed and the close ends at once (its thread
        # left to end: waited for until EXIT_S by _wait_for_threads); a batch running still
        # stores what has results
        ingest_close = asyncio.ensure_future(asyncio.to_thread(self.ingest.close))
        await self._cleanup_wait("closing ingest", ingest_close, INGEST_CLOSE_S, self.ingest.cut)
        await _logged("closing the dashboard", self._close_dashboard())
        tracker = asyncio.to_thread(stop_resource_tracker, budget.clock(TRACKER_S))
        await _logged("stopping the resource tracker", tracker)
        history = asyncio.ensure_future(asyncio.to_thread(self.history.maybe_save, True))
        await self._cleanup_wait("saving the dashboard's history", history, HISTORY_SAVE_S, lambda: None)
        await _logged("closing the status socket", server.close(budget.left(SOCKET_CLOSE_S, cleanup=True)))
        self.notifier.close()
        await self._wait_for_threads()
        # the state-dir lock is released by run_daemon once asyncio.run has returned: every
        # thread that writes the registry or the store has ended by now

    async def _wait_for_threads(self) -> None:
        """What the stop left running in threads the interpreter's exit would join with no
        deadline (this loop's: ingest's batch storing what it has, then closing; its close; a
        vocabulary pass; the crawl loop's: a WARC append, a spool put) gets until EXIT_S; past
        it the process exits without it (exit status 0, one log line): that loses nothing, as a
        SIGKILL would not (``stop_budget.py``), and keeps the stop inside TimeoutStopSec. A
        crawl given up on exits the same way, its threads ended or not: its loop still runs and
        could start a thread after this wait, which the interpreter's exit would join."""
        self.executor.shutdown(wait=False)  # idle threads end at once, busy ones after their work
        crawl = self.crawl.thread
        if crawl is not None and crawl.is_alive():
            self.crawl.give_up_threads()  # its loop's too: the crawl was given up on
        running = await wait_for_threads(self.budget.exit_left)
        if not running and (crawl is None or not crawl.is_alive()):
            return
        if running:
            log.warning(
                "stop: %d thread(s) still working %.0f s after the signal (%s): exiting without them; "
                "the next start recovers what they were storing",
                len(running), time.monotonic() - self.budget.started, ", ".join(running),
            )  # fmt: skip
        self.state = transition(DAEMON, self.state, "stopped")
        log.info("stopped")
        logging.shutdown()
        os._exit(0)

    def release_lock(self) -> None:
        """Let another daemon take the state dir: only once no thread of this one writes there."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    async def _cleanup_wait(
        self,
        what: str,
        step: asyncio.Future[Any],
        cap_s: float,
        cut: Callable[[], object],
        *,
        cleanup: bool = True,
        late: str | None = None,
    ) -> None:
        """Wait for a step of the stop within the budget (a cleanup's: at most ``cap_s``, not
        past END_S; a component's stop, ``cleanup=False``: until STOP_S; a second signal ends
        the wait at once); a step that does not end by then is ``cut`` (said in the log as
        ``late``, ``what`` unless given), and one that fails is logged in one line: the stop
        goes on."""
        try:
            if await self.budget.wait(step, self.budget.left(cap_s, cleanup=cleanup)):
                return
        except asyncio.CancelledError:  # a runner cancelled: nothing to retrieve
            if not cleanup:  # a component's stop is never cancelled but by the cut below
                raise
            return
        except Exception as exc:
            log.error("stop: %s failed: %s", what, describe(exc))
            return
        why = "cut short by a second signal" if self.budget.hurried.is_set() else "out of the stop's time"
        log.warning("stop: %s was %s", late or what, why)
        cut()

    async def _stop_step(self, what: str, stop: Coroutine[Any, Any, None]) -> None:
        """One component's stop (bounded by the timeout it was given, and by STOP_S): a failure is
        logged in one line; a second signal, or STOP_S, ends the wait for it at once (the stop is
        cancelled, and says so), so that the cleanup keeps its share."""
        task = asyncio.ensure_future(stop)
        late = f"the wait for {what}"
        await self._cleanup_wait(f"{what}'s stop", task, math.inf, task.cancel, cleanup=False, late=late)
        if not task.done():  # cut: its cancellation is seen through
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # ---- the loop -------------------------------------------------------------------------
    def _on_signal(self, signum: int) -> None:
        """A signal starts the stop; a second signal (not the ``stop`` command before the first:
        ``crystalline stop``, then ``systemctl stop``, keeps control's final checkpoint) hurries it."""
        if self._signalled:
            self.budget.hurry()
            log.warning("second signal %d: exiting faster", signum)
        else:
            log.info("signal %d: stopping", signum)
        self._signalled = True
        self.should_exit.set()

    async def _prepare(self) -> bool:
        """Make the directories, take the state dir's lock and open ingest (its recovery may
        touch the disk). When the state dir cannot be used (read-only, full, wrong owner), say so
        in the log, in status (``last_error``) and to systemd, keep answering status and feeding
        the watchdog (a restart would fail the same way: no crash loop), and retry every
        ``START_RETRY_S`` (at once when a state dir that was not writable becomes so, looked at
        every tick) until it works or the daemon is stopped (False). A database that does
        not answer, the registry's or the crawl's (``--database``, ``[ingest]``/``[crawl]
        database``), is waited for the same way, with a jittered backoff (``DATABASE_BACKOFF``),
        status and health saying "database unreachable (why)"."""
        s = self.settings
        interval = self.notifier.watchdog_interval()
        database_failures = 0
        while True:
            retry_s = START_RETRY_S
            was_writable = True  # the state dir, when it last failed
            try:
                await asyncio.to_thread(self._prepare_dirs)
                await asyncio.to_thread(self.ingest.open)
                await asyncio.to_thread(self.crawl.check_database)
                if self.start_error:
                    log.info("state directory %s is usable again: starting", s.state_dir)
                if self.database_error:
                    log.info("the database answers: starting")
                self.start_error = self.database_error = None
                return True
            except StateDirInUse:
                raise
            except DatabaseUnavailable as exc:
                database_failures += 1
                retry_s = DATABASE_BACKOFF.delay(database_failures, random.random())
                self.database_error = describe(exc).removeprefix("DatabaseUnavailable: ")
                line = f"degraded: database unreachable ({self.database_error})"
                log.warning("%s; not training, trying again in %.1f s", line, retry_s)
                self.notifier.status(line)
            except (OSError, sqlite3.Error) as exc:
                error = f"cannot use the state directory {s.state_dir}: {exc}"
                if error != self.start_error:
                    log.error("%s; not training, retrying every %.0f s", error, START_RETRY_S)
                    self.notifier.ready(f"failed: {error}")
                    self.notifier.status(f"failed: {error}")
                self.start_error = error
                self.state = transition(DAEMON, self.state, "failed")
                was_writable = _writable(s.state_dir)
            deadline = time.monotonic() + retry_s
            while time.monotonic() < deadline and not self.should_exit.is_set():
                if not was_writable and _writable(s.state_dir):
                    break  # remounted read-write, its mode or owner fixed: try now, not in 10 s
                if interval and self.health()["watchdog"]:  # degraded, not stuck: a restart would not help
                    self.notifier.watchdog()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.should_exit.wait(), min(TICK_S, interval or TICK_S))
            if self.should_exit.is_set():
                return False

    async def run(self) -> int:
        s = self.settings
        try:
            s.runtime_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a read-only file system, a path through a file, ...
            why = exc.strerror or exc
            raise OSError(f"cannot create the runtime directory {s.runtime_dir}: {why}") from None
        loop = asyncio.get_running_loop()
        # asyncio.to_thread's threads, named, so that the stop can tell what it leaves running
        self.executor = ThreadPoolExecutor(thread_name_prefix=THREAD_PREFIX)
        loop.set_default_executor(self.executor)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        self.control = ControlLink(s, f"ipc://{s.runtime_dir / 'control.sock'}")
        self.control_runner = ComponentRunner("control", self.control.run_once, CONTROL_BACKOFF)
        self.control.on_progress = self.control_runner.progress
        handlers = commands.bind(self)  # one set for the socket and the dashboard: one generate limit
        server = StatusServer(s.socket_path, handlers, mode=int(s.daemon.socket_mode, 8))
        self.status_server = server
        try:
            await server.start()
            bind = parse_bind(s.daemon.http)
            if bind is not None:
                self.dashboard = Dashboard(
                    bind,
                    s.runtime_dir,
                    self.status,
                    handlers,
                    self.history,
                    s.state_dir / "checkpoints",
                    self.dashboard_registry(),
                    generator=self.generation,
                )
                await self.dashboard.start()
            started = await self._prepare()
            if started:
                await asyncio.to_thread(self.history.load)
        except BaseException:
            self.budget.start()
            await self.control.stop(self.budget)
            await self._close_dashboard()
            await server.close()
            raise
        if not started:
            self.state = transition(DAEMON, self.state, "stopping")
            self.budget.start()
            await self.control.stop(self.budget)
            await self._close_dashboard()
            await server.close()
            self.notifier.close()
            self.state = transition(DAEMON, self.state, "stopped")
            log.info("stopped")
            return 0
        # the batch ring is the supervisor's: created at control's HELLO, kept across its restarts
        self.ring = RingServer(
            s.state_dir, store_dir(s.state_dir, s.train), s.train, ring_endpoint(s.runtime_dir)
        )
        control_task = asyncio.create_task(self.control_runner.run(), name="control")
        ingest_task = self.ingest.start()
        runner_tasks = [control_task, ingest_task]
        if self.vocab is not None:  # control waits for its vocabulary: an end is logged too
            runner_tasks.append(self.vocab.start())
        for task in runner_tasks:
            task.add_done_callback(_log_failure)
        self.crawl.start()  # add-url is taken from now on; start URLs are crawled at once
        self.state = transition(DAEMON, self.state, "running")
        last_ping = last_status = 0.0
        interval = self.notifier.watchdog_interval()
        try:
            while not self.should_exit.is_set():
                now = time.monotonic()
                if not self.ready_sent and (
                    (
                        len(self.control.status.get("workers", [])) == s.train.workers
                        and all(w.get("state") != "restarting" for w in self.control.status["workers"])
                    )
                    # the model needs its vocabulary: its workers start once it is learned
                    or self.control.status.get("waiting_for") == "vocabulary"
                ):
                    self.notifier.ready(self._status_line())
                    self.ready_sent = True
                    log.info("ready: status socket %s, %d workers said hello", s.socket_path, s.train.workers)
                if interval and now - last_ping >= interval and self.health()["watchdog"]:
                    self.notifier.watchdog()
                    last_ping = now
                if now - last_status >= s.daemon.status_interval_s:
                    self.notifier.status(self._status_line())
                    last_status = now
                self._progress(now)
                self._note_surprise_written()
                self.generation.sample_cpu(now)
                await asyncio.to_thread(self.history.maybe_save)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.should_exit.wait(), TICK_S)
        finally:
            await self._stop(control_task, server)
        self.state = transition(DAEMON, self.state, "stopped")
        log.info("stopped")
        return 0


async def _logged(what: str, step: Awaitable[Any]) -> None:
    """A step of the stop's cleanup: a failure is logged in one line, and the stop goes on."""
    try:
        await step
    except Exception as exc:
        log.error("stop: %s failed: %s", what, describe(exc))


def _log_failure(task: asyncio.Task[None]) -> None:
    """A runner that ended by an exception: a bug (runners catch their components' failures)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("%s runner failed: %s", task.get_name(), task.exception())


def _ms(seconds: Any) -> float | None:
    return round(seconds * 1000.0, 3) if isinstance(seconds, int | float) else None


def _round(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 1)


def run_daemon(settings: Settings) -> int:
    # the daemon's own modes whatever the caller's umask (a shell's 022 would make checkpoints,
    # the registry and done/ world-readable): files 0640, directories 0750, as under systemd
    os.umask(0o027)
    raise_soft_limit()  # descriptors: the hard limit is what is allowed (crystalline.descriptors)
    supervisor = Supervisor(settings)
    try:
        # asyncio.run returns once the stop has waited for every thread the exit would join
        # (ingest's batch, which the close was handed to, among them): only then is the state
        # dir free; past EXIT_S the stop exits the process itself (Supervisor._wait_for_threads)
        return asyncio.run(supervisor.run())
    finally:
        supervisor.release_lock()
