"""The record of which documents each step was cut from: blocks, reload, pruning, damage."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from crystalline.daemon.visible_steps import BLOCK, VisibleSteps


def test_a_block_keeps_its_documents_and_survives_a_reload(tmp_path: Path) -> None:
    path = tmp_path / "visible-steps.json"
    record = VisibleSteps(path)
    assert record.documents_at(0) is None
    record.record(0, 3)
    assert [record.documents_at(s) for s in range(BLOCK)] == [3] * BLOCK  # the block is reserved
    assert record.documents_at(BLOCK) is None
    record.record(BLOCK, 3)  # unchanged: no new change, the block extends the record
    record.record(2 * BLOCK, 7)
    again = VisibleSteps(path)
    assert [again.documents_at(s) for s in (0, BLOCK, 2 * BLOCK - 1, 2 * BLOCK, 3 * BLOCK - 1)] == [
        3,
        3,
        3,
        7,
        7,
    ]
    assert again.changes == [(0, 3), (2 * BLOCK, 7)] and again.documents_at(3 * BLOCK) is None
    with pytest.raises(ValueError, match="recorded already"):
        again.record(BLOCK, 9)


def test_changes_before_the_oldest_checkpoint_are_dropped(tmp_path: Path) -> None:
    record = VisibleSteps(tmp_path / "v.json")
    for i in range(5):
        record.record(i * BLOCK, i + 1)
    record.record(5 * BLOCK, 6, floor=2 * BLOCK + 3)
    # the change that step 2 * BLOCK + 3 was cut by stays; older ones go
    assert record.changes == [(2 * BLOCK, 3), (3 * BLOCK, 4), (4 * BLOCK, 5), (5 * BLOCK, 6)]
    assert record.documents_at(2 * BLOCK + 3) == 3


def test_forgetting_from_a_step_lets_it_be_cut_anew(tmp_path: Path) -> None:
    record = VisibleSteps(tmp_path / "v.json")
    record.record(0, 4)
    record.record(BLOCK, 9)
    record.forget_from(BLOCK + 2)
    assert record.through == BLOCK + 1 and record.documents_at(BLOCK + 1) == 9
    assert record.documents_at(BLOCK + 2) is None
    record.record(BLOCK + 2, 5)
    assert VisibleSteps(tmp_path / "v.json").documents_at(BLOCK + 2) == 5


def test_a_damaged_record_is_reported_and_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "v.json"
    path.write_text('{"version": 1, "through": ', encoding="utf-8")
    record = VisibleSteps(path)
    assert "is unreadable" in caplog.text and record.documents_at(0) is None
    record.record(0, 2)
    assert json.loads(path.read_text(encoding="utf-8"))["changes"] == [[0, 2]]


def test_a_record_that_cannot_be_written_is_logged_once_and_training_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="crystalline.ring")
    path = tmp_path / "v.json"
    record = VisibleSteps(path)
    path.mkdir()  # a directory in its place: the rename of every write fails, even for root
    record.record(0, 2)
    record.record(BLOCK, 3)
    assert record.write_error is not None and caplog.text.count("could not be written") == 1
    assert record.documents_at(BLOCK) == 3  # kept in memory for this run
    assert [p.name for p in tmp_path.iterdir()] == ["v.json"]  # no temporary file left
    path.rmdir()
    record.record(2 * BLOCK, 4)
    assert record.write_error is None and "written again" in caplog.text
    assert VisibleSteps(path).documents_at(BLOCK) == 3
