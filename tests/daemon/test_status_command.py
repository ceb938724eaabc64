"""`crystalline status`: the summary, and the exit code from the daemon's own health verdict
(the verdict itself: tests/daemon/test_health.py)."""

from __future__ import annotations

from typing import Any

from crystalline.daemon.health import judge
from crystalline.daemon.status_command import DEGRADED, HEALTHY, ring, summary, verdict


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


def judged(d: dict[str, Any]) -> dict[str, Any]:
    return {**d, "health": judge(d)}  # as the daemon sends it


def test_healthy_daemon() -> None:
    assert verdict(judged(data())) == (HEALTHY, [])


def test_a_restarting_worker_or_a_stall_is_degraded() -> None:
    d = data()
    d["training"]["workers"][3]["state"] = "restarting"
    code, reasons = verdict(judged(d))
    assert code == DEGRADED and reasons == ["worker 3 is restarting"]
    code, reasons = verdict(judged(data(stalled="no step for 45 s")))
    assert code == DEGRADED and reasons == [
        "stuck: the watchdog is no longer fed",
        "training stalled: no step for 45 s",
    ]


def test_the_cli_never_judges_by_itself() -> None:
    d = data(stalled="no step for 45 s")  # the CLI would call this degraded, the daemon says ok
    assert verdict({**d, "health": {"verdict": "ok", "watchdog": True, "reasons": []}}) == (HEALTHY, [])
    assert verdict(data()) == (DEGRADED, ["the daemon's reply has no health verdict"])


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
    code, reasons = verdict(judged(d))
    assert code == DEGRADED and reasons == [f"training slowed: {flag}"]
    d["generation"] = {"pid": 7, "cpu_share": 0.05}
    assert verdict(judged(d)) == (HEALTHY, [])


def test_summary_shows_the_learned_vocabulary() -> None:
    assert not [line for line in summary(data()).splitlines() if line.startswith("vocabulary")]
    d = data()
    d["vocabulary"] = {"learned": False, "learns_from_bytes": 33554432}
    assert (
        "vocabulary   not learned yet: learns from the first 33554432 bytes of training text"
        in summary(d).splitlines()
    )
    d["vocabulary"] = {"learned": True, "vocab_size": 8192, "derived_documents": 40, "error": "disk full"}
    line = "vocabulary   learned, 8192 tokens  documents re-tokenized 40  error: disk full"
    assert line in summary(d).splitlines()


def test_summary_names_dropped_files_the_daemon_may_not_move() -> None:
    d = data()
    reason = "cannot be moved into .ingesting/ (Operation not permitted)"
    d["ingest"].update(blocked=1, blocked_files=[{"name": "other-user.txt", "reason": reason}])
    assert f"  blocked    1  other-user.txt: {reason}" in summary(d).splitlines()
    assert "blocked" not in summary(data())


def test_summary_shows_the_cluster_and_its_members() -> None:
    d = data()
    d["training"]["params_digest"] = "0123456789abcdef"
    member = {"address": "10.0.0.2", "rank": 1, "step": 40, "state": "training", "allreduce_ms": 2.5,
              "allreduce_bytes": 185018, "data_share": 0.5}  # fmt: skip
    d["cluster"] = {"state": "training", "generation": 3, "rank": 1, "world": 2,
                    "rendezvous": "10.0.0.1:29500", "outer_every": 0, "refused_connections": 2, "guard": "ok",
                    "members": [{**member, "address": "10.0.0.1", "rank": 0}, member]}  # fmt: skip
    lines = summary(d).splitlines()
    head = next(x for x in lines if x.startswith("cluster"))
    assert "generation 3  rank 1 of 2  at 10.0.0.1:29500" in head and "digest 0123456789abcdef" in head
    assert head.endswith("  refused 2 connections")  # by the hosting member's rendezvous guard
    assert "  10.0.0.2        rank 1  step 40  allreduce 2.5 ms 185018 B  share 0.50  training" in lines
    assert not any(x.startswith("cluster") for x in summary(data()).splitlines())
    d["cluster"]["guard"] = down = "down: OSError: [Errno 9] Bad file descriptor"  # its thread ended
    head = next(x for x in summary(d).splitlines() if x.startswith("cluster"))
    assert head.endswith(f"  refused 2 connections  rendezvous guard {down}")
    d["cluster"].update(replaced={"step": 27, "by_step": 36, "lineage": 1700000000000}, discarded_steps=3)
    head = next(x for x in summary(d).splitlines() if x.startswith("cluster"))
    assert head.endswith("  own state of step 27 replaced by the group's of step 36  3 local steps discarded")
    d["cluster"].update(replaced=None, discarded_steps=0)
    # out of a group (paused): no rank, and a member's own info says -1 then
    d["cluster"].update(state="paused: left the cluster by request", rank=None, world=0, generation=None)
    d["cluster"]["members"][1]["rank"] = -1
    lines = summary(d).splitlines()
    head = next(x for x in lines if x.startswith("cluster"))
    assert "generation -  not in a group  at 10.0.0.1:29500" in head, head
    assert "  10.0.0.2        not in a group  step 40  allreduce" in "\n".join(lines)


def test_summary_gives_bits_per_byte_and_perplexity_beside_each_loss() -> None:
    d = data(bpb=3.6067, perplexity=12.18, val_bpb=3.7510, val_perplexity=13.46)
    d["training"].update(val_loss_raw=2.7, val_bpb_raw=3.8953)  # the EMA serves: the raw weights too
    line = next(x for x in summary(judged(d)).splitlines() if x.startswith("per byte"))
    assert "loss 3.6067 bpb (perplexity 12.18)" in line
    assert "val 3.7510 bpb (perplexity 13.46)" in line
    assert "raw weights' val 2.7000 (3.8953 bpb)" in line
    plain = next(x for x in summary(judged(data())).splitlines() if x.startswith("per byte"))
    assert "raw" not in plain and "loss - bpb" in plain


def test_summary_says_when_no_checkpoint_is_written_yet() -> None:
    # the daemon sends last_checkpoint_step null until its first checkpoint: not 'checkpoint @None'
    line = next(
        x for x in summary(judged(data(last_checkpoint_step=None))).splitlines() if x.startswith("training")
    )
    assert line.endswith("checkpoint none yet")
    line = next(x for x in summary(judged(data())).splitlines() if x.startswith("training"))
    assert line.endswith("checkpoint @5")
