"""A daemon fed one document that the hash holds out for validation still trains (real processes)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _daemon_process import start_small_daemon, wait_daemon

from crystalline.tokens.held_out import held_out

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SAMPLE = Path(__file__).resolve().parents[2] / "daemon" / "samples" / "shakespeare-00.txt"
VAL_FRACTION = 0.1


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ch-", dir="/tmp") as d:  # AF_UNIX path limit
        yield Path(d)


def held_out_name(inbox: Path) -> str:
    """The first name whose drop-folder source the hash sends to validation (deterministic)."""
    return next(f"only-{i}.txt" for i in range(1000) if held_out(str(inbox / f"only-{i}.txt"), VAL_FRACTION))


def test_single_held_out_document_trains_and_validates(short_dir: Path) -> None:
    state, run = short_dir / "state", short_dir / "run"
    inbox = state / "inbox"
    inbox.mkdir(parents=True)
    name = held_out_name(inbox)
    (inbox / name).write_bytes(SAMPLE.read_bytes())
    extra = ["--eval-interval", "10", "--eval-windows", "8", "--val-fraction", str(VAL_FRACTION)]
    proc, notify = start_small_daemon(short_dir, extra)
    training: dict[str, Any] = {}
    try:
        data = wait_daemon(
            run,
            proc,
            lambda d: d["training"].get("step", 0) > 10 and d["training"].get("val_loss") is not None,
            "no training on the held-out document",
            240,
            0.5,
        )
        training = data["training"]
        assert data["ingest"]["documents"] == 1
        assert training["data"]["train_documents"] == 0
        assert training["data"]["val_documents"] == 1
        assert training["data"]["trains_on_held_out"] is True
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        notify.close()
