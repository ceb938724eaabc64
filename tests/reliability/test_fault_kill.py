"""SIGKILL and SIGSTOP of the daemon's processes, on a real `crystalline run`: training goes on
or resumes from the last checkpoint, the dead run's shared memory is swept, and every dropped
document is accounted for exactly once."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from _wait import until
from fault_harness import Daemon, accounted, drop, short_tmp

from crystalline.shm.segments import list_segments
from crystalline.workers.checkpoint import list_checkpoints
from crystalline.workers.trainer import engine_instance


def _worker(data: dict, index: int) -> dict:
    return next(w for w in data["training"]["workers"] if w["id"] == index)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_worker_sigkill_and_sigstop_are_replaced_and_training_goes_on() -> None:
    with short_tmp() as root:
        d = Daemon(root, workers=4)
        drop(d.inbox, [f"doc{i}.txt" for i in range(6)])
        d.start()
        try:
            data = d.wait_for("4 workers", lambda s: len(s["training"]["workers"]) == 4)
            data = d.wait_step(3)
            killed = _worker(data, 1)
            os.kill(killed["pid"], signal.SIGKILL)
            data = d.wait_for(
                "worker 1 replaced",
                lambda s: _worker(s, 1)["restarts"] >= 1 and _worker(s, 1)["pid"] != killed["pid"],
            )
            step = data["training"]["step"]
            d.wait_step(step + 3)

            stopped = _worker(d.status(), 2)
            os.kill(stopped["pid"], signal.SIGSTOP)  # a hang: alive, never answers
            data = d.wait_for(
                "stopped worker 2 replaced",
                lambda s: _worker(s, 2)["restarts"] >= 1 and _worker(s, 2)["pid"] != stopped["pid"],
            )
            assert "missed its" in d.log() and "deadline" in d.log()
            step = data["training"]["step"]
            data = d.wait_step(step + 3)
            assert data["training"]["control_restarts"] == 0  # only the workers were replaced
            assert all(w["state"] != "dead" for w in data["training"]["workers"])
            assert not os.path.exists(f"/proc/{stopped['pid']}")  # the hung process was killed
            assert d.stop() == 0
        finally:
            d.close()
        assert list_segments(engine_instance(d.state / "checkpoints")) == []


def _metrics_starts(d: Daemon) -> list[dict]:
    lines = (d.state / "checkpoints" / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == "start"]


def _ingested(n: int) -> Callable[[dict], bool]:
    def done(s: dict) -> bool:
        i = s["ingest"]
        counted = i.get("documents", 0) + i.get("failed", 0) + i.get("duplicates", 0) + i.get("filtered", 0)
        return i.get("pending", 1) == 0 and counted == n

    return done


def _newest_step(d: Daemon) -> int:
    newest = list_checkpoints(d.state / "checkpoints")[-1]
    return int(newest.name.split("-")[1])


def _wait_gone(pid: int) -> None:
    until(
        lambda: not os.path.exists(f"/proc/{pid}") or "zombie" in _state(pid), f"{pid} did not die", 30, 0.05
    )


def _state(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line
    except OSError:
        return "gone"
    return ""


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_control_and_ingest_pool_sigkill_resume_and_account_for_every_document() -> None:
    with short_tmp() as root:
        d = Daemon(root, workers=2)
        first = [f"a{i}.txt" for i in range(8)]
        drop(d.inbox, first)
        d.start()
        try:
            d.wait_for("first documents ingested", _ingested(len(first)))
            d.wait_for("a checkpoint", lambda s: (s["training"]["last_checkpoint_step"] or 0) > 0)

            # an ingest pool process dies: the pool replaces it, ingest goes on
            pool = d.pool_pids()
            assert pool, "no ingest pool process found"
            for pid in pool:
                os.kill(pid, signal.SIGKILL)
            second = [f"b{i}.txt" for i in range(8)]
            drop(d.inbox, second, seed0=100)
            data = d.wait_for("documents after the pool kill", _ingested(len(first) + len(second)))
            assert data["ingest"]["state"] == "running"
            assert set(d.pool_pids()).isdisjoint(pool)

            # control dies: the supervisor restarts it, it resumes from the newest checkpoint
            control = d.control_pid()
            os.kill(control, signal.SIGKILL)
            _wait_gone(control)
            resumed_at = _newest_step(d)
            crashed = d.wait_for(
                "the crash in status", lambda s: "control process exited" in s.get("last_error", "")
            )
            # degraded, not stuck: the runner restarts it, so the watchdog is still fed
            health = crashed["health"]
            assert health["verdict"] == "degraded" and health["watchdog"], health
            assert "control: control process exited with status -9" in health["reasons"]
            d.wait_for(
                "control restarted and stepping, the crash no longer reported",
                lambda s: (
                    s["training"]["control_restarts"] >= 1
                    and s["training"]["control_pid"] not in (None, control)
                    and s["training"]["step"] > resumed_at
                    and "last_error" not in s
                ),
            )
            assert _metrics_starts(d)[-1]["resumed_from"] == resumed_at
            # the component runner restarted it after a backoff and forgot the crash once it stepped
            crash = "control process exited with status -9"
            assert f"control failed ({crash}; 1 in a row); restarting in" in d.log()
            assert f"control works again (earlier: {crash})" in d.log()
            assert d.stop() == 0
        finally:
            d.close()
        accounted(d, first + second)
        assert list_segments(engine_instance(d.state / "checkpoints")) == []


@pytest.mark.slow
@pytest.mark.timeout(500)
def test_whole_daemon_sigkill_then_restart_sweeps_resumes_and_loses_nothing() -> None:
    with short_tmp() as root:
        d = Daemon(root, workers=12)
        first = [f"a{i}.txt" for i in range(10)]
        drop(d.inbox, first)
        d.start()
        instance = engine_instance(d.state / "checkpoints")
        try:
            d.wait_for("first documents ingested", _ingested(len(first)))
            d.wait_for("a checkpoint", lambda s: (s["training"]["last_checkpoint_step"] or 0) > 0)
            second = [f"b{i}.txt" for i in range(10)]
            drop(d.inbox, second, seed0=100)  # some of these are in flight when the power goes
            d.kill_all()
            leftovers = list_segments(instance)
            assert leftovers, "a killed run leaves its segments (nothing to sweep otherwise)"
            resumed_at = _newest_step(d)

            d.start()
            d.wait_for(
                "12 workers after restart",
                lambda s: len(s["training"]["workers"]) == 12 and s["training"]["step"] > resumed_at,
            )
            assert f"removed {len(leftovers)} shared-memory segments left by a killed run" in d.log()
            assert _metrics_starts(d)[-1]["resumed_from"] == resumed_at
            d.wait_for("every document ingested", _ingested(len(first) + len(second)))
            assert d.stop() == 0
        finally:
            d.close()
        accounted(d, first + second)
        assert list_segments(instance) == []
