"""Continual learning measured in a real daemon (issue 13): validation loss per source in
``training.sources`` for files dropped at the top of the drop folder (``inbox``) and in a
sub-folder of it (real processes: supervisor, ingest pool, control, workers)."""

from __future__ import annotations

import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _daemon_process import start_small_daemon, wait_daemon

from crystalline.tokens.held_out import held_out

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SAMPLES = Path(__file__).resolve().parents[2] / "daemon" / "samples"
VAL_FRACTION = 0.3


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="cs-", dir="/tmp") as d:  # AF_UNIX path limit
        yield Path(d)


def drop(folder: Path, texts: list[Path]) -> None:
    """Each text under a name that makes the hash hold out some and train on others."""
    names = [f"doc-{i}.txt" for i in range(200)]
    held = [n for n in names if held_out(str(folder / n), VAL_FRACTION)][:2]
    trained = [n for n in names if not held_out(str(folder / n), VAL_FRACTION)]
    for name, text in zip(held + trained, texts, strict=False):
        (folder / name).write_bytes(text.read_bytes())


def wait_for(proc: subprocess.Popen[bytes], run: Path, done: Any, what: str) -> dict[str, Any]:
    return wait_daemon(run, proc, done, what, 240)


def test_validation_loss_per_source_in_status(short_dir: Path) -> None:
    inbox = short_dir / "state" / "inbox"
    (inbox / "plays").mkdir(parents=True)
    texts = sorted(SAMPLES.glob("shakespeare-*.txt"))
    drop(inbox, texts[:6])
    drop(inbox / "plays", texts[6:12])
    extra = ["--eval-interval", "5", "--eval-windows", "8", "--val-fraction", str(VAL_FRACTION)]
    proc, notify = start_small_daemon(short_dir, [*extra, "--source-eval-windows", "4"])
    run = short_dir / "run"

    def both(data: dict[str, Any]) -> bool:
        return {s["source"] for s in data["training"]["sources"]} == {"inbox", "plays"}

    try:
        data = wait_for(proc, run, both, "no validation line per source")
        lines = {s["source"]: s for s in data["training"]["sources"]}
        for line in lines.values():
            assert line["documents"] == 6
            assert 0 < line["windows"] <= 4
            assert line["val_loss"] > 0 and line["val_bpb"] > 0
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        notify.close()


def surprises(state: Path) -> dict[str, tuple[str, float]]:
    """doc_id -> (source, surprise) of every document whose surprise is recorded."""
    db = sqlite3.connect(state / "ingest" / "registry.sqlite3")
    try:
        rows = db.execute("SELECT doc_id, source_group, surprise FROM documents WHERE surprise IS NOT NULL")
        return {str(d): (str(g), float(s)) for d, g, s in rows}
    finally:
        db.close()


def test_surprise_is_measured_once_before_training_and_kept_across_a_restart(short_dir: Path) -> None:
    state, run = short_dir / "state", short_dir / "run"
    texts = sorted(SAMPLES.glob("shakespeare-*.txt"))
    (state / "inbox").mkdir(parents=True)
    drop(state / "inbox", texts[:4])
    extra = ["--eval-interval", "20", "--val-fraction", str(VAL_FRACTION), "--surprise-windows", "2"]

    def trained(data: dict[str, Any]) -> bool:
        return data["training"].get("step", 0) >= 5

    def scored(source: str, count: int) -> Any:
        def done(data: dict[str, Any]) -> bool:  # in the registry, and in control's last report
            recorded = {s["source"]: s["documents"] for s in data["ingest"]["surprise"]}.get(source)
            return recorded == count and data["training"]["surprise"].get("measured", 0) >= count

        return done

    proc, notify = start_small_daemon(short_dir, extra)
    try:
        wait_for(proc, run, trained, "no training")
        (state / "inbox" / "late").mkdir()
        drop(state / "inbox" / "late", texts[4:8])  # arrive while it trains: scored before training
        data = wait_for(proc, run, scored("late", 4), "the late documents' surprise not in status")
        assert data["training"]["surprise"]["measured"] == 4
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0
        notify.close()
    first = surprises(state)
    assert {g for g, _ in first.values()} == {"late"}  # the first ones were in the first batch
    assert all(0 < s < 10 for _, s in first.values())

    proc, notify = start_small_daemon(short_dir, extra)  # a restart: resumes the checkpoint
    try:
        wait_for(proc, run, trained, "no training after the restart")
        (state / "inbox" / "later").mkdir()
        drop(state / "inbox" / "later", texts[8:11])
        data = wait_for(proc, run, scored("later", 3), "the later documents' surprise not in status")
        assert data["training"]["surprise"]["measured"] == 3  # none of the earlier ones again
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        notify.close()
    second = surprises(state)
    assert {d: v for d, v in second.items() if v[0] == "late"} == first  # never recomputed
    assert sum(1 for g, _ in second.values() if g == "later") == 3
