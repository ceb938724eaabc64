"""The batch ring as the supervisor owns it, in a real daemon: the supervisor process maps the
segment, a control process killed mid-run resumes on bit-identical batches, and no segment is
left in /dev/shm after a clean stop, after a killed control, after a killed supervisor (its
successor sweeps it) or after a supervisor killed alone (its control removes it)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _daemon_process import SMALL_MODEL, NotifyListener, daemon_status, group_survivors
from _wait import until, until_status

from crystalline.daemon.ring_service import ring_instance
from crystalline.daemon.state_dir_lock import take_lock
from crystalline.shm.segments import list_segments, segment_name
from crystalline.workers.checkpoint import list_checkpoints
from crystalline.workers.trainer import engine_instance

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="cr-", dir="/tmp") as d:  # AF_UNIX path limit
        yield Path(d)


def start(state: Path, run: Path, notify: NotifyListener, workers: int = 2) -> subprocess.Popen[bytes]:
    env = dict(os.environ, NOTIFY_SOCKET=str(notify.path), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env.pop("WATCHDOG_USEC", None)
    cmd = [
        sys.executable, "-m", "crystalline.daemon.cli", "run", "--state-dir", str(state),
        "--runtime-dir", str(run), "--no-crawl", "--workers", str(workers), *SMALL_MODEL, "--batch-size", "8",
        "--eval-interval", "1", "--eval-windows", "4", "--checkpoint-interval-s", "3",
    ]  # fmt: skip
    return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, start_new_session=True)


def wait_until(
    run: Path, proc: subprocess.Popen[bytes], ok: Any, what: str, timeout_s: float = 240
) -> dict[str, Any]:
    """Status's ``training`` once ``ok`` holds of it."""
    return until_status(lambda left: daemon_status(run, proc, left)["training"], ok, what, timeout_s)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=90) == 0
    assert group_survivors(proc.pid) == [], "the daemon exited leaving children behind"


def no_segments(state: Path) -> bool:
    checkpoints = state / "checkpoints"
    return list_segments(ring_instance(checkpoints)) == list_segments(engine_instance(checkpoints)) == []


def train_losses(state: Path) -> dict[int, list[float]]:
    """Every eval record's batch loss by step (with an eval per step, that step's batch loss)."""
    out: dict[int, list[float]] = defaultdict(list)
    for line in (state / "checkpoints" / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # the line a SIGKILL cut short
            continue
        if record.get("event") == "eval" and record.get("train_loss") is not None:
            out[record["step"]].append(record["train_loss"])
    return out


def kill_past_a_checkpoint(state: Path, control: int, kill: Callable[[], object]) -> None:
    """``kill()`` (control, or the whole daemon) at a moment control has recorded a step past its
    newest checkpoint, so that the steps since are trained again after it. Control is frozen
    (SIGSTOP) while its checkpoints and metrics are compared, and let go to try again when it
    has not (a checkpoint written after the status that led here: killed then, the restarted
    control would resume at the step it was killed at and train no step twice)."""

    def frozen_past() -> bool:
        os.kill(control, signal.SIGSTOP)
        killed = False
        try:
            until(lambda: _state_of(control) == "T", "control did not stop on SIGSTOP", 30, 0.01)
            steps = [int(p.name.removeprefix("step-")) for p in list_checkpoints(state / "checkpoints")]
            if max(train_losses(state), default=-1) > max(steps, default=-1):
                kill()
                killed = True
        finally:
            if not killed:  # let go whatever failed meanwhile: a stopped control would hang teardown
                with contextlib.suppress(ProcessLookupError):
                    os.kill(control, signal.SIGCONT)
        return killed

    until(frozen_past, "control never recorded a step past its newest checkpoint", 120, 0.05)


def _state_of(pid: int) -> str:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2]


@pytest.mark.parametrize("workers", [2, 1])  # 1: the one-process engine copies its batch out
def test_supervisor_owns_the_ring_and_a_killed_control_gets_the_same_batches(
    short_dir: Path, workers: int
) -> None:
    state, run = short_dir / "state", short_dir / "run"
    ring = f"/dev/shm/{segment_name(ring_instance(state / 'checkpoints'), 'ring')}"
    notify = NotifyListener(short_dir / "notify")
    proc = start(state, run, notify, workers)
    try:
        if workers > 1:
            notify.wait_for("READY=1", 180, proc)
        first = wait_until(run, proc, lambda t: (t.get("step") or 0) > 3, "training did not start")
        # the supervisor (this daemon's main process) created and maps the ring; control, a
        # child of it, maps it too, to read what it hands to the workers
        assert ring in Path(f"/proc/{proc.pid}/maps").read_text(), "the supervisor does not map the ring"
        control = first["control_pid"]
        assert control != proc.pid and ring in Path(f"/proc/{control}/maps").read_text()
        assert first["data"]["kind"] == "store" and first["data"]["documents"] > 0

        # kill control a few steps past a checkpoint: those steps are trained again after it
        before = wait_until(
            run, proc,
            lambda t: t.get("last_checkpoint_step") is not None
            and t["step"] >= t["last_checkpoint_step"] + 3,
            "no steps past a checkpoint",
        )  # fmt: skip
        kill_past_a_checkpoint(
            state, before["control_pid"], lambda: os.kill(before["control_pid"], signal.SIGKILL)
        )
        killed_at = before["step"]
        again = wait_until(
            run, proc,
            lambda t: t.get("control_pid") not in (None, before["control_pid"])
            and (t.get("step") or 0) > killed_at + 3,
            "a restarted control did not train past the step its predecessor was killed at",
        )  # fmt: skip
        assert ring in Path(f"/proc/{proc.pid}/maps").read_text()  # the same ring, still the supervisor's
        assert again["data"]["documents"] > 0
        stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
    assert no_segments(state), "a segment outlived the clean stop"

    # steps trained twice (before the kill and again after it) had bit-identical batches: with
    # the parameters of the same checkpoint, their batch losses are equal to the last bit
    twice = {step: losses for step, losses in train_losses(state).items() if len(losses) > 1}
    assert twice, "no step was trained twice"
    assert all(len(set(losses)) == 1 for losses in twice.values()), twice
    # the record of documents visible per step that made it so
    record = json.loads((state / "visible-steps.json").read_text(encoding="utf-8"))
    assert record["through"] >= killed_at and record["changes"][0][1] > 0


def test_a_killed_supervisor_leaves_no_segment_and_its_successor_the_same_batches(short_dir: Path) -> None:
    state, run = short_dir / "state", short_dir / "run"
    notify = NotifyListener(short_dir / "notify")
    proc = start(state, run, notify)
    try:
        notify.wait_for("READY=1", 180, proc)
        before = wait_until(
            run,
            proc,
            lambda t: (
                t.get("last_checkpoint_step") is not None and t["step"] >= t["last_checkpoint_step"] + 3
            ),
            "no steps past a checkpoint",
        )
        # supervisor, control and workers at once: nothing cleans up
        kill_past_a_checkpoint(state, before["control_pid"], lambda: os.killpg(proc.pid, signal.SIGKILL))
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
    assert not no_segments(state)  # what a killed run leaves: the next start sweeps it
    notify2 = NotifyListener(short_dir / "notify2")
    proc = start(state, run, notify2)
    try:
        notify2.wait_for("READY=1", 180, proc)
        wait_until(run, proc, lambda t: (t.get("step") or 0) > before["step"] + 3, "training did not resume")
        stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify2.close()
    assert no_segments(state)
    # a restarted supervisor cut the steps trained twice from the same documents: same losses
    twice = {step: losses for step, losses in train_losses(state).items() if len(losses) > 1}
    assert twice, "no step was trained twice"
    assert all(len(set(losses)) == 1 for losses in twice.values()), twice


def test_a_supervisor_killed_alone_leaves_no_segment_once_control_sees_it_gone(short_dir: Path) -> None:
    """SIGKILL to the supervisor alone: control (its child) notices it gone, even while it waits
    for a batch, stops with a final checkpoint, and unlinks the ring the supervisor left, as no
    new supervisor holds the state directory."""
    state, run = short_dir / "state", short_dir / "run"
    notify = NotifyListener(short_dir / "notify")
    proc = start(state, run, notify)
    try:
        notify.wait_for("READY=1", 180, proc)
        training = wait_until(run, proc, lambda t: (t.get("step") or 0) > 2, "training did not start")
        assert list_segments(ring_instance(state / "checkpoints")), "no ring while training"
        proc.send_signal(signal.SIGKILL)  # the supervisor alone: control and its workers live on
        proc.wait(timeout=30)
        until(
            lambda: not Path(f"/proc/{training['control_pid']}").exists() and not group_survivors(proc.pid),
            "control and its workers did not exit after their supervisor was killed",
            120,
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        notify.close()
    assert no_segments(state), "a segment outlived the killed supervisor's control"
    steps = [int(p.name.removeprefix("step-")) for p in list_checkpoints(state / "checkpoints")]
    assert max(steps) >= training["step"], f"no final checkpoint past step {training['step']}: {steps}"


def test_a_supervisor_started_while_a_killed_ones_control_checkpoints_starts_no_second_control(
    short_dir: Path,
) -> None:
    """SIGKILL to the supervisor alone while its control writes its final checkpoint (held
    stopped here: a checkpoint as slow as it gets): control keeps the state directory's lock it
    inherited, so a supervisor started meanwhile waits for it and then refuses (StateDirInUse),
    never starting a second control on the same checkpoints; the lock is free once that
    control has exited."""
    state, run = short_dir / "state", short_dir / "run"
    notify = NotifyListener(short_dir / "notify")
    proc = start(state, run, notify)
    notify2 = NotifyListener(short_dir / "notify2")
    second: subprocess.Popen[bytes] | None = None
    control = 0
    try:
        notify.wait_for("READY=1", 180, proc)
        training = wait_until(run, proc, lambda t: (t.get("step") or 0) > 2, "training did not start")
        control = training["control_pid"]
        os.kill(control, signal.SIGSTOP)
        proc.send_signal(signal.SIGKILL)  # the supervisor alone: control and its workers live on
        proc.wait(timeout=30)
        second = start(state, short_dir / "run2", notify2)
        assert second.wait(timeout=120) != 0, "a supervisor started beside a live control"
        os.kill(control, signal.SIGCONT)
        until(
            lambda: not Path(f"/proc/{control}").exists() and not group_survivors(proc.pid),
            "control and its workers did not exit after their supervisor was killed",
            120,
        )
        lock = take_lock(state)
        assert lock is not None, "control exited and the state directory's lock is still held"
        lock.close()
    finally:
        for p in (proc, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        with contextlib.suppress(ProcessLookupError):
            os.kill(control, signal.SIGCONT)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        notify.close()
        notify2.close()
    assert no_segments(state), "a segment outlived the killed supervisor's control"
