"""Control's waits before training (the learned vocabulary, then the resources the trainer
needs), driven on a Control whose requests and trainer are stand-ins: the state goes through
the training machine's own transitions, and a short resource (RingTimeout too) is reported
and tried again, never a crash."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from crystalline.daemon import control_process
from crystalline.daemon.control_process import Control
from crystalline.descriptors import DescriptorLimitTooLow
from crystalline.shm.segments import SharedMemoryFull
from crystalline.tokens.learned_vocab import vocab_path
from crystalline.workers.batch_ring import RingTimeout
from crystalline.workers.engine import EngineStopped


def _control(state_dir: Path, starts: list[Any], retry_s: float = 10.0) -> Control:
    """A Control without its channel, data or engine: ``serve`` only counts (and creates the
    vocabulary after the second wait), ``_start_trainer`` raises or returns ``starts`` in turn."""
    c = object.__new__(Control)
    vocab = vocab_path(state_dir)
    c.spec = {"state_dir": str(state_dir)}
    c.resource_retry_s = retry_s  # [daemon] resource-retry-s
    c.config = SimpleNamespace(tokenizer=str(vocab))  # type: ignore[assignment]
    c.stopping = False
    c.trainer = None
    c.cluster = None
    c.state = control_process.TRAINING.initial
    c.error = None
    c.waiting_for = None
    served: list[tuple[str, str | None]] = []

    def serve(_timeout_s: float) -> None:
        served.append((c.state, c.waiting_for))
        if len(served) == 2:
            vocab.parent.mkdir(parents=True, exist_ok=True)
            vocab.write_text("{}")

    def start() -> Any:
        result = starts.pop(0)
        if isinstance(result, BaseException):
            raise result
        return result

    c.serve = serve  # type: ignore[method-assign]
    c._start_trainer = start  # type: ignore[method-assign]
    c.served = served  # type: ignore[attr-defined]
    return c


def test_waiting_for_the_vocabulary_then_a_short_resource_then_training(tmp_path: Path) -> None:
    trainer = object()
    c = _control(tmp_path, [SharedMemoryFull("/dev/shm is full"), trainer], retry_s=0.0)
    assert c._wait_for_vocabulary()
    assert c.served == [("waiting for data", "vocabulary")] * 2  # type: ignore[attr-defined]
    assert c.state == "waiting for data" and c.waiting_for is None
    assert c._wait_for_resources()
    assert c.state == "failed" and c.trainer is trainer and c.error is None
    c.state = control_process.transition(control_process.TRAINING, c.state, "training")  # as run() does


def test_straight_from_the_vocabulary_wait_to_training_or_stopped(tmp_path: Path) -> None:
    c = _control(tmp_path, [object()])
    assert c._wait_for_vocabulary() and c._wait_for_resources()
    assert control_process.transition(control_process.TRAINING, c.state, "training") == "training"
    assert control_process.transition(control_process.TRAINING, "waiting for data", "stopped") == "stopped"


@pytest.mark.parametrize(
    "short",
    [RingTimeout("ring: no answer to HELLO"), DescriptorLimitTooLow("needs at least 66")],
    ids=["ring-timeout", "descriptors"],
)
def test_a_short_resource_is_reported_and_tried_again(tmp_path: Path, short: Exception) -> None:
    trainer = object()
    c = _control(tmp_path, [short, short, trainer], retry_s=0.0)
    c.config.tokenizer = "bytes"  # type: ignore[misc]  # no vocabulary to wait for
    assert c._wait_for_vocabulary() and c.state == "starting"
    assert c._wait_for_resources()
    assert c.trainer is trainer and c.state == "failed" and c.error is None


def test_a_supervisor_gone_during_the_ring_hello_stops_control(tmp_path: Path) -> None:
    """The ring's HELLO ends in EngineStopped (the supervisor killed meanwhile): a stop, not a
    crash out of run() nor a resource to try again."""
    c = _control(tmp_path, [EngineStopped("the supervisor is gone: HELLO not answered")])
    c.config.tokenizer = "bytes"  # type: ignore[misc]  # no vocabulary to wait for
    assert c._wait_for_vocabulary()
    assert not c._wait_for_resources()
    assert c.stopping and c.trainer is None


def test_room_freed_in_dev_shm_is_tried_at_once(tmp_path: Path) -> None:
    """A SharedMemoryFull that says what did not fit: once the directory has that much free (and
    more than when it failed), control tries again after a second's serve, not at the interval's
    end (an hour here)."""
    trainer = object()
    full = SharedMemoryFull("/dev/shm is full", need=4096, free=0, directory=tmp_path)
    c = _control(tmp_path, [full, trainer], retry_s=3600.0)
    c.config.tokenizer = "bytes"  # type: ignore[misc]  # no vocabulary to wait for
    assert c._wait_for_vocabulary() and c._wait_for_resources()
    assert c.trainer is trainer and c.error is None
    assert c.served == [("failed", None)]  # type: ignore[attr-defined]
