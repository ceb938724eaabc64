"""The drop folder: complete files only, a scan at start, nothing deleted, files claimed into
``.ingesting/`` and read from a descriptor, odd entries refused unread."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from crystalline.ingest.drop_folder import Claimed, DropFolder


def take_within(folder: DropFolder, timeout_s: float = 5.0) -> list[Claimed]:
    """What the folder hands out within ``timeout_s`` (events arrive on the watch thread)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        taken = folder.take(10)
        if taken:
            return taken
        time.sleep(0.05)
    return []


def names(items: list[Claimed]) -> list[str]:
    return [c.name for c in items]


@pytest.mark.timeout(30)
def test_half_written_file_waits_for_close(tmp_path: Path) -> None:
    folder = DropFolder(tmp_path, settle_s=60.0)
    folder.start()
    try:
        with open(tmp_path / "report.txt", "wb") as f:
            f.write(b"first half ")
            f.flush()
            time.sleep(0.5)
            assert folder.take(10) == []  # counted as pending, but not handed out
            f.write(b"second half")
        taken = take_within(folder)
        assert names(taken) == ["report.txt"] and taken[0].refusal is None
        assert taken[0].read(1000) == b"first half second half"
        assert not (tmp_path / "report.txt").exists() and (folder.claims / "report.txt").exists()
    finally:
        folder.close()


@pytest.mark.timeout(30)
def test_moved_in_file_is_taken_and_partial_names_ignored(tmp_path: Path) -> None:
    folder = DropFolder(tmp_path, settle_s=60.0)
    folder.start()
    try:
        (tmp_path / "download.part").write_bytes(b"partial")  # closed, but a partial-download name
        outside = tmp_path.parent / f"{tmp_path.name}-elsewhere"
        outside.write_bytes(b"complete")
        os.utime(outside, (time.time() - 100, time.time() - 100))  # written long ago, as mv keeps it
        os.rename(outside, tmp_path / "arrived.txt")
        taken = take_within(folder)
        assert names(taken) == ["arrived.txt"]
        assert folder.pending() == 1  # claimed, not finished: still waiting
        folder.finish(taken[0], None)
        assert folder.pending() == 0 and (folder.done / "arrived.txt").read_bytes() == b"complete"
    finally:
        folder.close()


def test_scan_at_start_skips_files_still_settling(tmp_path: Path) -> None:
    old = tmp_path / "old.txt"
    old.write_text("arrived while down")
    os.utime(old, (time.time() - 100, time.time() - 100))
    (tmp_path / "new.txt").write_text("maybe still being written")
    folder = DropFolder(tmp_path, settle_s=10.0)
    assert folder.scan() == 1 and names(folder.take(10)) == ["old.txt"]
    folder.close()


def test_finish_never_overwrites(tmp_path: Path) -> None:
    folder = DropFolder(tmp_path, settle_s=0.0)
    for _ in range(2):
        (tmp_path / "a.txt").write_text("x")
        folder.scan()
        (item,) = folder.take(10)
        folder.finish(item, "bad input")
    folder.close()
    assert (folder.failed / "a.txt.reason.txt").read_text().startswith("bad input\n")
    assert sorted(p.name for p in folder.failed.iterdir()) == [
        "a-1.txt", "a-1.txt.reason.txt", "a.txt", "a.txt.reason.txt"
    ]  # fmt: skip


def test_a_young_file_found_at_start_is_taken_once_it_settles(tmp_path: Path) -> None:
    # its close event came before the watch began: only its age can tell it is complete
    young = tmp_path / "young.txt"
    young.write_text("copied in just before the daemon started")
    folder = DropFolder(tmp_path, settle_s=0.3)
    assert folder.scan() == 0 and folder.take(10) == []
    assert folder.pending() == 1
    time.sleep(0.4)
    assert names(folder.take(10)) == ["young.txt"]
    folder.close()
