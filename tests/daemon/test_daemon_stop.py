"""The supervisor's stop when one of its steps fails: a real daemon whose ingest stop raises
(injected by ``_failing_ingest_stop.py``) still has control write its final checkpoint and exit,
says what failed in one log line, cleans up (status socket, ring, processes) and exits 0."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from _daemon_process import group_survivors, start_small_daemon, wait_daemon
from conftest import make_corpus

from crystalline.workers.checkpoint import list_checkpoints

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
FAILING_INGEST_STOP = str(Path(__file__).with_name("_failing_ingest_stop.py"))


def test_a_failing_stop_step_is_logged_and_the_rest_of_the_stop_still_runs(tmp_path: Path) -> None:
    log_path = tmp_path / "daemon.log"
    state, run = tmp_path / "state", tmp_path / "run"
    (state / "inbox").mkdir(parents=True)
    (state / "inbox" / "doc.txt").write_text(make_corpus(20_000, seed=1), encoding="utf-8")
    # no periodic checkpoint: the one on disk at the end is the final one
    args = ["--checkpoint-interval-s", "86400", "--checkpoint-interval", "1000000000"]
    with log_path.open("wb") as log_file:
        proc, notify = start_small_daemon(tmp_path, args, stderr=log_file, program=(FAILING_INGEST_STOP,))
    try:
        step = wait_daemon(run, proc, lambda d: d["training"]["step"] > 0, "the daemon training", 180)
        step = step["training"]["step"]
        assert list_checkpoints(state / "checkpoints") == []
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, log_path.read_text(errors="replace").splitlines()[-30:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
    lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    failed = [line for line in lines if "stop: ingest's stop failed" in line]
    said = "RuntimeError: injected: ingest's stop failed"
    assert len(failed) == 1 and failed[0].endswith(said), lines[-30:]
    assert any("control exited (status 0)" in line for line in lines), lines[-30:]
    final = list_checkpoints(state / "checkpoints")
    assert len(final) == 1 and int(final[0].name.removeprefix("step-")) >= step, final
    assert lines[-1].endswith("crystalline.supervisor: stopped"), lines[-30:]
    assert not (run / "crystalline.sock").exists()  # the socket closed (and removed)
    assert group_survivors(proc.pid) == [], "the daemon left processes behind"
