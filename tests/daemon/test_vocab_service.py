"""The learned vocabulary's service: a pass that fails in any way (a tokenizers exception,
MemoryError, not only OSError / ValueError) is reported in its stats and tried again, with a
growing wait, instead of ending the task and leaving control waiting for the vocabulary."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from crystalline.daemon import vocab_service
from crystalline.daemon.vocab_service import VocabService
from crystalline.workers.train_config import TrainConfig


class TokenizerFailure(Exception):
    """Stands for an exception of the tokenizers library that is not a ValueError."""


def test_an_unexpected_failure_is_reported_and_retried_with_backoff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(vocab_service, "POLL_S", 0.01)
    monkeypatch.setattr(vocab_service, "MAX_BACKOFF_S", 0.05, raising=False)
    service = VocabService(tmp_path, TrainConfig())
    failures: list[BaseException] = [TokenizerFailure("merges broke"), MemoryError("no room")]
    errors: list[object] = []
    waits: list[float] = []

    def step() -> None:
        waits.append(service.wait_s() if hasattr(service, "wait_s") else vocab_service.POLL_S)
        if failures:
            raise failures.pop(0)

    monkeypatch.setattr(service, "_step", step)

    async def run() -> None:
        task = service.start()
        for _ in range(500):
            errors.append(service.stats().get("error"))
            if len(waits) >= 4:
                break
            await asyncio.sleep(0.005)
        assert not task.done()  # still running after both failures
        await service.stop(1.0)
        assert task.done() and task.exception() is None

    caplog.set_level(logging.ERROR, logger="crystalline.vocab")
    asyncio.run(run())
    assert "TokenizerFailure: merges broke" in errors and "MemoryError: no room" in errors
    assert service.stats().get("error") is None  # the pass after them worked
    assert waits[:4] == [0.01, 0.02, 0.04, 0.01]  # doubling after each failure, reset by a success
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 2 and "TokenizerFailure" in logged[0] and "MemoryError" in logged[1]
    assert service.wait_s() == 0.01
    service.failures = 30
    assert service.wait_s() == 0.05  # capped
