"""`crystalline train` on files cuts its windows with ``tokens.windows`` (the daemon's cutter),
and its process engine fills its own batch ring from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crystalline.shm.segments import list_segments
from crystalline.tokens.windows import FileWindows, batch_for_step
from crystalline.workers.batch_ring import BatchRing
from crystalline.workers.engine import ProcessEngine
from crystalline.workers.train_config import TrainConfig
from crystalline.workers.trainer import Trainer, engine_instance

pytestmark = pytest.mark.timeout(180)

CONFIG = {"embed_dim": 32, "num_layers": 2, "num_heads": 2, "seq_len": 16, "batch_size": 4, "seed": 9}


def test_files_train_through_the_window_module_and_the_engines_own_ring(tmp_path: Path) -> None:
    text = tmp_path / "a.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 80, encoding="utf-8")
    trainer = Trainer([text], tmp_path / "ck", TrainConfig(**CONFIG, workers=2, tokenizer="bytes"))
    try:
        assert isinstance(trainer.data, FileWindows)
        split = trainer.data.split
        assert np.array_equal(trainer.data.batch(3), batch_for_step(split.train, 9, 3, 4, 16))
        engine = trainer.engine
        assert isinstance(engine, ProcessEngine) and isinstance(engine.ring, BatchRing)
        for step in (0, 1, 5):  # a jump refills from that step, as after a resume
            taken = engine.ring.take(step, timeout=30)
            assert taken.step == step
            assert np.array_equal(engine.ring.slots[taken.slot], trainer.data.batch(step))
            engine.ring.release(taken.slot)
    finally:
        trainer.close()
    assert list_segments(engine_instance(tmp_path / "ck")) == []
