"""The daemon's control process ("node zero"): continuous training with the engine's workers,
driven by the supervisor over a ZeroMQ channel.

Started by the supervisor as ``python -m crystalline.daemon.control_process SPEC_JSON``. It waits for
enough tokens in the store, then trains through the same ``Trainer`` as `crystalline train`
(resuming from the newest checkpoint in ``<state>/checkpoints``), checkpoints every
``checkpoint_interval_s`` and on stop, and between steps serves the supervisor's requests
(pause, resume, checkpoint, stop) and publishes a status snapshot.

Resources that run out are reported, not crashed on: a /dev/shm too small for the engine's
segments or an open-files limit too low for the engine and the store's shard maps leaves
control alive, in state ``failed`` with a one-line ``error`` in its status, trying again
every ``[daemon] resource-retry-s`` until there is room (a restart would fail the same way); /dev/shm
is looked at every second meanwhile, and freed room is tried at once.

Channel: control's DEALER connects to the supervisor's ROUTER; the messages, their version
and size caps are ``daemon/control_protocol.py``'s. Control sends HELLO once, STATUS at most
every ``STATUS_EVERY_S``, a REPLY to each REQUEST, and ERROR for a message it cannot take (the
channel goes on). Every wait is a poll with a timeout, and control exits when its parent is
gone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import zmq

from ..descriptors import (
    DescriptorLimitTooLow,
    check_control_limit,
    raise_soft_limit,
    shard_map_cap,
    soft_limit,
)
from ..exit_status import one_line
from ..log_lines import log_to_stderr
from ..shm.segments import SharedMemoryFull
from ..states import TRAINING, transition
from ..tokens.learned_vocab import vocab_path
from ..workers.batch_ring import Ring, RingTimeout
from ..workers.bits_per_byte import beside
from ..workers.checkpoint import STATE, list_checkpoints
from ..workers.cluster_config import ClusterSettings, ClusterUnavailable
from ..workers.engine import EngineStopped
from ..workers.optimizer import learning_rate
from ..workers.train_config import TrainConfig
from ..workers.trainer import Trainer, TrainingData
from . import control_protocol as CP
from .ring_service import remove_orphaned_ring
from .source_eval import evaluate_sources
from .store_data import store_dir
from .surprise import SurpriseMeter, registry_opener

if TYPE_CHECKING:
    from ..workers.cluster_member import ClusterMember

log = logging.getLogger("crystalline.control")

STATUS_EVERY_S = 0.5


class ReadyData(TrainingData, Protocol):
    """Training data that may not hold a batch yet (a store that ingest is still filling),
    read through ``readers`` store readers whose open shard maps are capped."""

    readers: int

    def ready(self) -> bool: ...

    def limit_open_shards(self, cap: int) -> None: ...

    def resumed_from(self, saved: dict[str, Any]) -> str | None: ...

    def open_ring(self, context: zmq.Context | None = None) -> Ring: ...

    def close_ring(self) -> None: ...

    def source_windows(self) -> tuple[dict[str, np.ndarray], dict[str, int]]: ...

    def trained_through(self) -> int | None: ...


class Channel:
    """The DEALER end of the supervisor channel (``daemon/control_protocol.py``)."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 100)  # status snapshots may be dropped, never pile up
        self.sock.connect(endpoint)

    def send(self, kind: str, **fields: Any) -> None:
        try:
            self.sock.send(CP.encode(kind, **fields), zmq.NOBLOCK)
        except zmq.Again:
            log.debug("supervisor channel full; dropped a %s", kind)

    def receive(self, timeout_s: float) -> dict[str, Any] | None:
        """The next request within ``timeout_s``, else None. A message that is not one (wrong
        version, over the cap, unknown type) is answered with a one-line ERROR and skipped."""
        deadline = time.monotonic() + timeout_s
        while self.sock.poll(max(0, int((deadline - time.monotonic()) * 1000))):
            try:
                return CP.decode(self.sock.recv(), CP.TO_CONTROL, CP.MAX_TO_CONTROL)
            except CP.ProtocolError as exc:
                log.warning("refused a message from the supervisor: %s", exc)
                rid = {} if exc.request_id is None else {"id": exc.request_id}
                self.send(CP.ERROR, error=str(exc), **rid)
            if time.monotonic() >= deadline:
                break
        return None

    def close(self) -> None:
        """Close the channel and the process's one ZeroMQ context with every socket still open
        on it (the ring's, the engine's): a socket a failed path left open must not make the
        exit wait forever, as ``term()`` would."""
        self.ctx.destroy(linger=0)


class Control:
    """One control-process incarnation."""

    def __init__(self, spec: dict[str, Any], data_factory: Callable[[Any], ReadyData]) -> None:
        self.spec = spec
        self.config = TrainConfig(**spec["train"])
        self.checkpoint_dir = Path(spec["state_dir"]) / "checkpoints"
        self.parent_pid: int = spec["parent_pid"]
        self.checkpoint_interval_s: float = spec.get("checkpoint_interval_s", 300.0)
        self.resource_retry_s: float = spec["resource_retry_s"]  # [daemon] resource-retry-s
        self.channel = Channel(spec["endpoint"])
        self.data = data_factory(spec)
        self.data_ready = False
        self.cluster: ClusterMember | None = None  # with --cluster, joined as the trainer starts
        self.trainer: Trainer | None = None
        self.paused = False
        self.stopping = False
        self.state = TRAINING.initial
        self.last_checkpoint_step: int | None = None
        self.last_checkpoint_s: float | None = None  # how long the last checkpoint took to write
        self.last_checkpoint_at = time.monotonic()
        self.checkpoint_error: str | None = None  # the last periodic checkpoint failed (full disk)
        self.error: str | None = None  # training cannot start: /dev/shm or descriptors run out
        self.waiting_for: str | None = None  # "vocabulary": the learned one does not exist yet
        self.last_status = 0.0
        self.losses: deque[float] = deque(maxlen=50)
        self.last_bpb = math.nan  # bits per byte of the last step's batch
        self.rate: deque[tuple[float, int]] = deque(maxlen=20)  # (time, tokens) for tokens/s
        self.sources: list[dict[str, Any]] = []  # the last validation line of each source
        self.sources_step = -1  # the step they were measured at
        state_dir = Path(spec["state_dir"])
        opener = registry_opener(
            spec.get("database"), state_dir / "ingest" / "registry.sqlite3", spec["database_timeout_s"]
        )
        self.surprise = SurpriseMeter(
            store_dir(state_dir, self.config), opener, self.config.seq_len, self.config.surprise_windows
        )

    # ---- requests -------------------------------------------------------------------------
    def serve(self, timeout_s: float) -> None:
        """Handle the supervisor's requests that arrive within ``timeout_s``, then publish."""
        if os.getppid() != self.parent_pid:
            log.error("supervisor is gone; stopping")
            self.request_stop()
        deadline = time.monotonic() + timeout_s
        while True:
            msg = self.channel.receive(max(0.0, deadline - time.monotonic()))
            if msg is None:
                break
            self._answer(msg)
            if time.monotonic() >= deadline:
                break
        self.publish()

    def _answer(self, msg: dict[str, Any]) -> None:
        """Run a REQUEST's command from the dispatch table; one REPLY whatever happens."""
        rid, cmd = msg["id"], msg["cmd"]
        handler = self.handlers().get(cmd)
        try:
            if handler is None:
                raise ValueError(f"control does not handle {cmd!r} (only {', '.join(CP.COMMANDS)})")
            self.channel.send(CP.REPLY, id=rid, ok=True, data=handler())
        except (ValueError, RuntimeError) as exc:
            self.channel.send(CP.REPLY, id=rid, ok=False, error=str(exc))
        self.publish(force=True)

    def handlers(self) -> dict[str, Callable[[], Any]]:
        """The dispatch table: one handler per command of ``control_protocol.COMMANDS``."""
        return {
            "pause": self._pause,
            "resume": self._resume,
            "checkpoint": self._checkpoint_now,
            "stop": self._stop_now,
        }

    def _pause(self) -> dict[str, Any]:
        self.paused = True
        return {"training": "paused"}

    def _resume(self) -> dict[str, Any]:
        self.paused = False
        return {"training": "running"}

    def _checkpoint_now(self) -> dict[str, Any]:
        if self.trainer is None:
            raise RuntimeError("training has not started yet (waiting for data)")
        return {"path": str(self._checkpoint())}

    def _stop_now(self) -> dict[str, Any]:
        self.request_stop()
        return {"training": "stopping"}

    def request_stop(self) -> None:
        self.stopping = True
        if self.trainer is not None:
            self.trainer.stop_requested = True

    # ---- status ---------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        t = self.trainer
        snap: dict[str, Any] = {"state": self.state, "pid": os.getpid(), "paused": self.paused}
        if self.error:
            snap["error"] = self.error
        if self.waiting_for:
            snap["waiting_for"] = self.waiting_for
        if self.cluster is not None:
            snap["cluster"] = self.cluster.status()
            snap["params_digest"] = self.cluster.digest
        if t is None:
            return {**snap, "workers": [], "ring": {"slots": 0, "ready": 0}}
        stats = t.engine.stats()
        now = time.monotonic()
        rate = 0.0
        if len(self.rate) >= 2 and not self.paused:
            (t0, k0), (t1, k1) = self.rate[0], self.rate[-1]
            rate = (k1 - k0) / max(t1 - t0, 1e-9)
            if now - t1 > 30:  # no step for 30 s: not learning any more
                snap["stalled"] = f"no step for {now - t1:.0f} s"
        loss = self.losses[-1] if self.losses else math.nan
        trend = [round(x, 4) for x in list(self.losses)[::10]]
        return {
            **snap,
            "step": t.state.step,
            "tokens": t.state.tokens,
            # the loss of the last step's batch and the validation loss of the served weights
            # (the moving average when kept; the raw weights' beside it), each with its bits per
            # byte and perplexity, so models with different tokenizers compare
            **beside("loss", loss, self.last_bpb),
            **beside("val_loss", t.state.last_val_loss, t.state.last_val_bpb),
            **(
                beside("val_loss_raw", t.state.last_val_loss_raw, t.state.last_val_bpb_raw)
                if t.adamw.ema_decay > 0
                else {}
            ),
            "schedule": t.adamw.schedule,
            "ema_decay": t.adamw.ema_decay,
            "loss_trend": trend,
            "tokens_per_s": rate,
            "lr": learning_rate(max(t.state.step - 1, 0), t.adamw),  # of the last step taken
            "params_version": stats.get("params_version", t.state.step),
            "skipped_steps": t.state.skipped_steps,
            "last_checkpoint_step": self.last_checkpoint_step,
            "last_checkpoint_s": self.last_checkpoint_s,
            **({"checkpoint_error": self.checkpoint_error} if self.checkpoint_error else {}),
            **({"checkpoint_warnings": t.checkpoint_warnings} if t.checkpoint_warnings else {}),
            "workers": stats.get("workers", []),
            "ring": stats.get("ring", {"slots": 0, "ready": 0}),
            "data": t.data.describe(),
            "sources": self.sources,
            "surprise": self.surprise.stats(),
        }

    def publish(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last_status >= STATUS_EVERY_S:
            self.last_status = now
            self.channel.send(CP.STATUS, data=self.snapshot())

    # ---- training -------------------------------------------------------------------------
    def _checkpoint(self) -> Path:
        """Write a checkpoint now. A failure (a full disk, a read-only file system) is recorded
        for status and raised as RuntimeError; the previous checkpoints are untouched (a save
        builds in a temporary directory and removes it when it fails)."""
        assert self.trainer is not None
        self.last_checkpoint_at = started = time.monotonic()  # a failure is retried an interval later
        try:
            path = self.trainer.checkpoint()
        except OSError as exc:
            self._checkpoint_failed(exc)
            raise RuntimeError(self.checkpoint_error) from None
        if self.checkpoint_error:
            log.info("checkpoint written again (%s)", path.name)
        self.checkpoint_error = None
        self.last_checkpoint_step = self.trainer.state.step
        self.last_checkpoint_s = time.monotonic() - started
        return path

    def _checkpoint_failed(self, exc: OSError) -> None:
        assert self.trainer is not None
        self.checkpoint_error = f"checkpoint at step {self.trainer.state.step} failed: {exc}"
        log.error(
            "%s; training goes on, next try in %.0f s", self.checkpoint_error, self.checkpoint_interval_s
        )
        self.publish(force=True)

    def _between_steps(self) -> None:
        t = self.trainer
        assert t is not None
        while not self.data_ready and not self.stopping:
            self.data_ready = self.data.ready()
            if not self.data_ready:
                self.state = transition(TRAINING, self.state, "waiting for data")
                self.serve(1.0)
        if t.state.pending_losses and math.isfinite(t.state.pending_losses[-1]):
            self.losses.append(t.state.pending_losses[-1])
            self.last_bpb = t.state.pending_bpb[-1]
        self.rate.append((time.monotonic(), t.state.tokens))
        if t.state.step % self.config.eval_interval == 0 and t.state.step != self.sources_step:
            self._evaluate_sources()  # right after the trainer's own evaluation of this step
        self.surprise.step(t, self.data.trained_through())  # before the next step, within a budget
        if time.monotonic() - self.last_checkpoint_at >= self.checkpoint_interval_s:
            with contextlib.suppress(RuntimeError):  # recorded and logged; training goes on
                self._checkpoint()
        self.serve(0.0)
        if self.cluster is not None:  # the cluster's part of the step: its digest, DiLoCo's outer step
            self.cluster.after_step(t.engine, t.state)
        self._hold(t)
        self.state = transition(TRAINING, self.state, "training")

    def _hold(self, t: Trainer) -> None:
        """Wait, serving requests, while paused, and with --cluster until this member is in the
        newest group and holds its state (status ``cluster.state`` says why not). Paused, a
        member leaves its cluster cleanly (``ClusterMember.leave``: in a group, one more step
        tells the others) and registers again on resume."""
        while not self.stopping:
            member = self.cluster
            if self.paused and (member is None or member.leave()):
                self.state = transition(TRAINING, self.state, "paused")
                self.serve(0.2)
                continue
            if member is None:
                return
            if not self.paused:
                member.rejoin()
            if member.ready(t.engine, t.state):
                return
            self.state = transition(TRAINING, self.state, "paused")
            self.serve(0.5)

    def _serve_while_forming(self) -> bool:
        """While the cluster waits for a generation's members: requests served (a stop ends
        the wait); True once stopping."""
        self.serve(0.0)
        return self.stopping

    def _evaluate_sources(self) -> None:
        """Validation loss per source now (status ``training.sources``, and a ``sources``
        record in metrics.jsonl)."""
        t = self.trainer
        assert t is not None
        self.sources_step = t.state.step
        windows, documents = self.data.source_windows()
        if not windows:
            return
        self.sources = evaluate_sources(t, windows, documents)
        record = {"event": "sources", "step": t.state.step, "tokens": t.state.tokens, "sources": self.sources}
        t.metrics.write(record)

    def _start_trainer(self) -> Trainer:
        """The trainer and its engine, within the open-files limit: the engine's share is
        checked before it starts, the store readers get what is left once its workers are
        connected (SharedMemoryFull or DescriptorLimitTooLow when something does not fit)."""
        data = self.data
        if self.cluster is None:  # ClusterUnavailable: the rendezvous point cannot be hosted
            self.cluster = join_cluster(self.spec)
            if self.cluster is not None:
                self.cluster.while_forming = self._serve_while_forming
        # the supervisor's, on the channel's context; SharedMemoryFull when /dev/shm has no room
        ring = data.open_ring(self.channel.ctx)
        # the ring's descriptors are open now (kept for the next try): the engine's own are left
        check_control_limit(self.config.workers, data.readers, lent_ring=True)
        resume = any(self.checkpoint_dir.glob("step-*"))
        trainer = Trainer(
            lambda _tok: data,
            self.checkpoint_dir,
            self.config,
            resume=resume,
            ring=ring,
            exchange=self.cluster,
            zmq_context=self.channel.ctx,  # one ZeroMQ context per process
        )
        try:
            self.surprise.open()  # its registry connection counts among the descriptors in use
            cap = shard_map_cap(data.readers)
        except DescriptorLimitTooLow:
            trainer.close()
            raise
        data.limit_open_shards(cap)
        self.last_checkpoint_step = trainer.state.step if resume else None
        if resume:  # the data the checkpoint records, held against the store as it is now
            warning = data.resumed_from(
                _checkpoint_state(self.checkpoint_dir, trainer.state.step).get("data", {})
            )
            if warning:
                log.warning("%s", warning)
                trainer.checkpoint_warnings.append(warning)
        log.info("open-files limit %d: up to %d shard maps per store reader", soft_limit(), cap)
        return trainer

    def _wait_for_vocabulary(self) -> bool:
        """Under the learned vocabulary (the base preset), wait until the supervisor has learned
        it: the model's size and the ring's depend on it (False if stopped first)."""
        vocab = vocab_path(Path(self.spec["state_dir"]))
        if self.config.tokenizer != str(vocab):
            return True
        while not vocab.exists() and not self.stopping:
            self.waiting_for = "vocabulary"
            self.state = transition(TRAINING, self.state, "waiting for data")
            self.serve(1.0)
        self.waiting_for = None
        return not self.stopping

    def _wait_for_resources(self) -> bool:
        """Start the trainer, reporting and retrying while a resource runs short; False if
        stopped first."""
        while not self.stopping:
            try:
                self.trainer = self._start_trainer()
            # RingTimeout: the supervisor's ring did not answer (it restarts); ask again later
            except (SharedMemoryFull, DescriptorLimitTooLow, ClusterUnavailable, RingTimeout) as exc:
                error = one_line(exc)
                if error != self.error:
                    log.error("%s; not training, trying again every %g s", error, self.resource_retry_s)
                self.error = error
                self.state = transition(TRAINING, self.state, "failed")
                deadline = time.monotonic() + self.resource_retry_s
                while time.monotonic() < deadline and not self.stopping:
                    self.serve(min(1.0, max(0.0, deadline - time.monotonic())))
                    if isinstance(exc, SharedMemoryFull) and exc.room_now():
                        break  # /dev/shm has room again: try now, not at the interval's end
                continue
            except EngineStopped as exc:  # the supervisor died while control said HELLO to its ring
                log.error("%s; stopping", exc)
                self.request_stop()
                return False
            if self.error:
                log.info("training starts: the resources are there now (was: %s)", self.error)
            self.error = None
            return True
        return False

    def run(self) -> int:
        """Start the engine (its workers say hello now, so the daemon can report ready), then
        train; the first step waits in ``_between_steps`` until the store holds data."""
        self.channel.send(CP.HELLO, pid=os.getpid())
        if not self._wait_for_vocabulary() or not self._wait_for_resources():
            self.state = transition(TRAINING, self.state, "stopped")
            self.publish(force=True)
            return 0
        assert self.trainer is not None
        self.trainer.stop_requested = self.stopping
        self.trainer.on_checkpoint_error = self._checkpoint_failed
        self.state = transition(TRAINING, self.state, "training")
        try:
            result = self.trainer.run(between_steps=self._between_steps)  # checkpoints at the end
            self.last_checkpoint_step = result.steps
        except OSError as exc:  # the final checkpoint could not be written (a full disk)
            self.checkpoint_error = f"final checkpoint failed: {exc}"
            log.error("%s; %s", self.checkpoint_error, kept_checkpoint(self.last_checkpoint_step))
            return 1
        finally:
            self.surprise.close()
            self.state = transition(TRAINING, self.state, "stopped")
            self.publish(force=True)
        return 0


def kept_checkpoint(step: int | None) -> str:
    """What a failed final checkpoint leaves: the last one written (``step``), or none yet."""
    if step is None:
        return "no checkpoint is kept yet (none was written)"
    return f"the previous checkpoint (step {step}) is kept"


def join_cluster(spec: dict[str, Any]) -> ClusterMember | None:
    """This daemon's seat in the cluster of ``spec["cluster"]`` (torch is imported only here);
    ClusterUnavailable when this member should host the rendezvous point and cannot."""
    if "cluster" not in spec:
        return None
    from ..workers.cluster_member import ClusterMember

    return ClusterMember(ClusterSettings(**spec["cluster"]))


def _checkpoint_state(checkpoint_dir: Path, step: int) -> dict[str, Any]:
    """The ``state.json`` of the checkpoint of ``step`` ({} if it is gone or unreadable: the
    trainer has loaded and verified it already, this is only its record of the data)."""
    for path in list_checkpoints(checkpoint_dir):
        if int(path.name.removeprefix("step-")) == step:  # listed names are step-<digits>
            with contextlib.suppress(OSError, ValueError):
                state = json.loads((path / STATE).read_text(encoding="utf-8"))
                return state if isinstance(state, dict) else {}
    return {}


def main(argv: list[str] | None = None, data_factory: Callable[[Any], ReadyData] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    spec = json.loads(args[0])
    log_to_stderr("%(levelname)s control: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when control stops
    raise_soft_limit()  # inherited from the supervisor already; also when started on its own
    if data_factory is None:
        from .store_data import store_training_data

        data_factory = store_training_data
    control = Control(spec, data_factory)

    def on_term(signum: int, _frame: FrameType | None) -> None:
        control.request_stop()  # record only: the loop finishes the step and checkpoints

    signal.signal(signal.SIGTERM, on_term)
    try:
        return control.run()
    finally:
        if control.cluster is not None:
            control.cluster.close()
        control.data.close_ring()
        control.channel.close()
        # the supervisor was killed: its ring is left, and the state directory's lock (its
        # descriptor inherited: held while control lives) says no new supervisor took it yet
        if os.getppid() != control.parent_pid and spec.get("lock_fd") is not None:
            remove_orphaned_ring(Path(spec["state_dir"]))


if __name__ == "__main__":
    sys.exit(main())
