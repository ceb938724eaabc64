"""`crystalline status`: the summary and the health verdict behind its exit code."""

from __future__ import annotations

from typing import Any

from crystalline.daemon.status_command import DEGRADED, HEALTHY, health, ring, summary


def data(**training: Any) -> dict[str, Any]:
    workers = [
        {"id": i, "pid": 100 + i, "state": "idle", "restarts": 0, "last_seen_s": 0.1} for i in range(12)
    ]
    return {
        "state": "running",
        "uptime_s": 12.0,
        "training": {
            "step": 10,
            "tokens": 7680,
            "loss": 2.5,
            "val_loss": 2.6,
            "tokens_per_s": 9000.0,
            "params_version": 10,
            "last_checkpoint_step": 5,
            "workers": workers,
            **training,
        },
        "crawler": {"fetched": 3, "queued": 4, "errors": 0, "hosts": 1},
        "ingest": {"documents": 43, "failed": 0, "pending": 0, "tokens": 400_000},
        "ring": {"slots": 3, "ready": 2},
    }


def test_healthy_daemon() -> None:
    assert health(data()) == (HEALTHY, [])


def test_a_restarting_worker_or_a_stall_is_degraded() -> None:
    d = data()
    d["training"]["workers"][3]["state"] = "restarting"
    code, reasons = health(d)
    assert code == DEGRADED and reasons == ["worker 3 is restarting"]
    code, reasons = health(data(stalled="no step for 45 s"))
    assert code == DEGRADED and "stalled" in reasons[0]


def test_summary_shows_every_worker_around_node_zero() -> None:
    text = summary(data())
    assert "[node 0]" in text and "step 10" in text and "documents 43" in text
    for i in range(12):
        assert f"{i:02d}o" in text
    assert ring([]) == ["  (no worker processes: training runs in node zero)"]


def test_generation_taking_cpu_time_is_reported_as_degraded() -> None:
    d = data()
    flag = "generation took 31% of 2 cores' time in the last 60 s"
    d["generation"] = {"pid": 7, "cpu_share": 0.31, "slowing_training": flag}
    code, reasons = health(d)
    assert code == DEGRADED and reasons == [f"training slowed: {flag}"]
    d["generation"] = {"pid": 7, "cpu_share": 0.05}
    assert health(d) == (HEALTHY, [])


def test_summary_names_dropped_files_the_daemon_may_not_move() -> None:
    d = data()
    reason = "cannot be moved into .ingesting/ (Operation not permitted)"
    d["ingest"].update(blocked=1, blocked_files=[{"name": "other-user.txt", "reason": reason}])
    assert f"  blocked    1  other-user.txt: {reason}" in summary(d).splitlines()
    assert "blocked" not in summary(data())
