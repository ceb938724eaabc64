"""The base preset's learned vocabulary in a real daemon: ingest writes bytes, the supervisor
learns the vocabulary once from them and derives the store the model trains on, control waits
for it and then trains on BPE windows; a restart reads the same vocabulary, never relearns it."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from _daemon_process import group_survivors, start_small_daemon, wait_daemon

from crystalline.tokens.learned_vocab import derived_dir, vocab_path
from crystalline.tokens.token_store import StoreReader
from tests.conftest import make_corpus

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

LEARNED = ["--preset", "base", "--learned-vocab", "300", "--learned-vocab-bytes", "20000",
           "--eval-interval", "2", "--eval-windows", "4", "--checkpoint-interval-s", "2"]  # fmt: skip


def wait_until(root: Path, proc: subprocess.Popen[bytes], ok: Any, what: str) -> dict[str, Any]:
    """The daemon's status once ``ok`` holds of it (within 300 s)."""
    return wait_daemon(root / "run", proc, ok, what, 300)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=90) == 0
    assert group_survivors(proc.pid) == []


def test_the_daemon_learns_its_vocabulary_once_and_trains_on_it(tmp_path: Path) -> None:
    inbox = tmp_path / "state" / "inbox"
    inbox.mkdir(parents=True)
    for i in range(8):
        (inbox / f"doc{i}.txt").write_text(make_corpus(6_000, seed=i), encoding="utf-8")
    proc, notify = start_small_daemon(tmp_path, LEARNED)
    try:
        notify.wait_for("READY=1", 120, proc)
        data = wait_until(
            tmp_path, proc, lambda d: d["training"].get("step", 0) >= 3, "training on the vocabulary"
        )
        vocabulary = data["vocabulary"]
        assert vocabulary["learned"] and 257 < vocabulary["vocab_size"] <= 300
        assert vocabulary["derived_documents"] >= 8
        stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        notify.close()
    path = vocab_path(tmp_path / "state")
    learned, stamp = path.read_bytes(), path.stat().st_mtime_ns
    reader = StoreReader(derived_dir(tmp_path / "state"))
    reader.refresh()
    assert len(reader.documents) >= 8 and int(max(reader.tokens(d).max() for d in reader.documents)) > 255
    stepped = data["training"]["step"]

    # restarted with more text and no preset named: it stays base on the same vocabulary
    (inbox / "more.txt").write_text(make_corpus(30_000, seed=99), encoding="utf-8")
    again = ["--learned-vocab", "400", "--eval-interval", "2", "--eval-windows", "4"]
    proc, notify = start_small_daemon(tmp_path, again)
    try:
        data = wait_until(tmp_path, proc, lambda d: d["training"].get("step", 0) > stepped + 1, "resumed")
        assert data["vocabulary"]["vocab_size"] == vocabulary["vocab_size"]
        stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        notify.close()
    assert path.read_bytes() == learned and path.stat().st_mtime_ns == stamp
