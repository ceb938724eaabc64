"""The learned vocabulary's service: a pass that fails in any way (a tokenizers exception,
MemoryError, not only OSError / ValueError) is reported in its stats and tried again, with a
growing wait, instead of ending the task and leaving control waiting for the vocabulary; a stop
ends the learning in hand instead of waiting for it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from crystalline.daemon import vocab_service
from crystalline.daemon.store_data import byte_store_dir
from crystalline.daemon.vocab_service import VocabService
from crystalline.tokens import learned_vocab
from crystalline.tokens.learned_vocab import vocab_path
from crystalline.tokens.token_store import PendingDocument, TokenStore
from crystalline.tokens.tokenizer import ByteTokenizer
from crystalline.workers.train_config import TrainConfig
from tests.conftest import make_corpus

BYTES = ByteTokenizer()


class TokenizerFailure(Exception):
    """Stands for an exception of the tokenizers library that is not a ValueError."""


def test_an_unexpected_failure_is_reported_and_retried_with_backoff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(vocab_service, "POLL_S", 0.01)
    monkeypatch.setattr(vocab_service, "MAX_BACKOFF_S", 0.05, raising=False)
    service = VocabService(tmp_path, TrainConfig())
    # R20 5: one without a message was named twice, "MemoryError: MemoryError"
    failures: list[BaseException] = [TokenizerFailure("merges broke"), MemoryError("no room"), MemoryError()]
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
            if len(waits) >= 5:
                break
            await asyncio.sleep(0.005)
        assert not task.done()  # still running after the failures
        await service.stop(1.0)
        assert task.done() and task.exception() is None

    caplog.set_level(logging.ERROR, logger="crystalline.vocab")
    asyncio.run(run())
    assert "TokenizerFailure: merges broke" in errors and "MemoryError: no room" in errors
    assert "MemoryError" in errors and "MemoryError: MemoryError" not in errors
    assert service.stats().get("error") is None  # the pass after them worked
    assert waits[:5] == [0.01, 0.02, 0.04, 0.05, 0.01]  # doubled per failure (capped), reset by a success
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 3 and "TokenizerFailure" in logged[0] and "MemoryError: no room" in logged[1]
    assert logged[2] == "learned vocabulary: MemoryError; trying again (every 0 s at most)"
    assert service.wait_s() == 0.01
    service.failures = 30
    assert service.wait_s() == 0.05  # capped


@pytest.mark.timeout(300)
def test_a_stop_ends_the_learning_at_its_next_piece_of_text(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopping the daemon while it learns its vocabulary (several seconds for 32 MiB, more on
    a busy machine) does not wait for the learning: it ends when the learning next asks for
    text, writes no vocabulary, reports no error, and the next start learns it from the
    beginning. The stop comes once the tokenizers library has come back for text twice (it
    takes 256 pieces at a time), so the learning is well under way in its own threads."""
    pulled = 0
    cut = learned_vocab.pieces

    def counted(text: str, size: int) -> Iterator[str]:
        nonlocal pulled
        for piece in cut(text, size):
            pulled += 1
            yield piece

    monkeypatch.setattr(learned_vocab, "pieces", counted)
    state = tmp_path / "state"
    store = TokenStore(byte_store_dir(state), np.uint16)
    text = make_corpus(2**20, seed=5)
    for shard in range(4):  # 32 MiB of training text, the default the base preset learns from
        store.append(
            [
                PendingDocument(f"d{shard}-{i}", f"e{shard}-{i}", "file:x", "train", BYTES.encode(text))
                for i in range(8)
            ]
        )
    config = TrainConfig(learned_vocab=8192, learned_vocab_bytes=32 * 2**20)
    service = VocabService(state, config)
    caplog.set_level(logging.INFO)

    def said(words: str) -> bool:
        return any(words in r.getMessage() for r in caplog.records)

    async def run() -> None:
        task = service.start()
        for _ in range(24_000):  # 240 s for the learning to be under way (or, wrongly, done)
            if pulled > 2 * 256 or vocab_path(state).exists() or task.done():
                break
            await asyncio.sleep(0.01)
        assert said("learning a 8192-token vocabulary"), [r.getMessage() for r in caplog.records]
        await service.stop(120.0)
        assert task.done() and task.exception() is None

    asyncio.run(run())  # which waits for the learning's thread, as the daemon's end does
    assert said("stopped with the daemon") and not said("written to")
    whole = sum(1 for _ in cut(text, learned_vocab.PIECE_CHARS)) * 32
    assert 2 * 256 < pulled < whole / 2, (pulled, whole)  # stopped early in the text
    assert not vocab_path(state).exists() and not any(vocab_path(state).parent.glob("*"))
    assert service.stats() == {
        "path": str(vocab_path(state)),
        "learned": False,
        "learns_from_bytes": 32 * 2**20,
    }
