"""The drop folder: complete files only, a scan at start, nothing deleted, files claimed into
``.ingesting/`` and read from a descriptor, odd entries refused unread."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _wait import until

from crystalline.ingest.drop_folder import Claimed, DropFolder


def take_within(folder: DropFolder, timeout_s: float = 5.0) -> list[Claimed]:
    """What the folder hands out first (events arrive on the watch thread); nothing within
    ``timeout_s`` fails."""
    return until(lambda: folder.take(10), "the folder handed nothing out", timeout_s, 0.05)


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


def test_a_file_under_a_name_still_being_ingested_waits_for_it(tmp_path: Path) -> None:
    folder = DropFolder(tmp_path, settle_s=0.0)
    (tmp_path / "a.txt").write_text("first")
    folder.scan()
    (first,) = folder.take(10)
    (tmp_path / "a.txt").write_text("second")  # the same name arrives while the first is claimed
    folder.scan()
    assert folder.take(10) == [] and folder.pending() == 2
    folder.finish(first, None)
    (second,) = folder.take(10)
    assert second.read(100) == b"second"
    folder.finish(second, None)
    folder.close()
    assert sorted(p.read_text() for p in folder.done.iterdir()) == ["first", "second"]


def test_claims_left_by_a_crash_are_taken_first_at_the_next_start(tmp_path: Path) -> None:
    folder = DropFolder(tmp_path, settle_s=0.0)
    (tmp_path / "old.txt").write_text("claimed before the crash")
    folder.scan()
    assert names(folder.take(1)) == ["old.txt"]
    folder.close()  # the process dies here: old.txt stays in .ingesting/
    (tmp_path / "new.txt").write_text("arrived later")
    again = DropFolder(tmp_path, settle_s=0.0)
    again.scan()
    assert names(again.take(10)) == ["old.txt", "new.txt"]
    again.close()


def test_put_back_files_are_handed_out_again_in_order(tmp_path: Path) -> None:
    folder = DropFolder(tmp_path, settle_s=0.0)
    for name in ("a.txt", "b.txt", "c.txt"):
        (tmp_path / name).write_text(name)
    folder.scan()
    taken = folder.take(2)
    folder.put_back(taken)
    assert names(folder.take(10)) == ["a.txt", "b.txt", "c.txt"]
    folder.close()


def test_a_file_whose_event_was_lost_is_found_by_the_periodic_rescan(tmp_path: Path) -> None:
    folder = DropFolder(tmp_path, settle_s=0.0, rescan_s=0.1)  # not started: no events at all
    folder.scan()
    (tmp_path / "unseen.txt").write_text("no event for this one")
    time.sleep(0.15)
    assert names(folder.take(10)) == ["unseen.txt"]
    folder.close()


def test_a_private_claims_folder_taken_over_by_someone_else_is_not_used(tmp_path: Path) -> None:
    (tmp_path / ".ingesting").mkdir(mode=0o777)
    os.chmod(tmp_path / ".ingesting", 0o777)  # writable by anyone: a swap inside it would be possible
    folder = DropFolder(tmp_path)
    assert stat.S_IMODE(os.stat(folder.claims).st_mode) == 0o700
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ingesting.untrusted-")]
    folder.close()


SWAPPER = """
import ctypes, ctypes.util, os, sys
libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
AT_FDCWD, RENAME_EXCHANGE = -100, 2
inbox, rounds = sys.argv[1], int(sys.argv[2])
swaps = 0
for i in range(rounds):
    a, b = os.path.join(inbox, f"doc-{i}.txt").encode(), os.path.join(inbox, f"lnk-{i}").encode()
    while not (os.path.lexists(a) and os.path.lexists(b)):  # the round's pair is being made
        pass
    n = 0
    while libc.renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE) == 0:  # until one is claimed
        n += 1
        if n == 1:  # tell the test the race is on
            open(os.path.join(inbox, f".racing-{i}"), "w").close()
    if n == 0:
        open(os.path.join(inbox, f".racing-{i}"), "w").close()
    swaps += n
print(swaps)
"""


@pytest.mark.timeout(120)
def test_a_symlink_swapped_in_with_rename_exchange_is_never_followed(tmp_path: Path) -> None:
    inbox, rounds = tmp_path / "inbox", 200
    secret = tmp_path / "secret.txt"
    secret.write_text("root-only secret " * 10)
    os.chmod(secret, 0o600)
    folder = DropFolder(inbox, settle_s=0.0)
    attacker = subprocess.Popen(
        [sys.executable, "-c", SWAPPER, str(inbox), str(rounds)], stdout=subprocess.PIPE, text=True
    )
    wins = regular = links = 0
    try:
        for i in range(rounds):
            decoy = f"decoy {i} ".encode() * 10
            (inbox / f".doc-{i}.part").write_bytes(decoy)
            os.symlink(secret, inbox / f"lnk-{i}")
            os.rename(inbox / f".doc-{i}.part", inbox / f"doc-{i}.txt")

            def racing(marker: Path = inbox / f".racing-{i}") -> bool:  # the attacker swaps the pair now
                assert attacker.poll() is None
                return marker.exists()

            until(racing, "the attacker did not start", 30, 0)
            folder.offer(f"doc-{i}.txt")
            folder.offer(f"lnk-{i}")
            taken: list[Claimed] = []
            while len(taken) < 2:  # both names of the pair, whatever each holds when claimed
                taken += folder.take(2)
            for item in taken:
                if item.refusal is None:
                    data = item.read(10_000)
                    wins += data != decoy
                    regular += 1
                    folder.finish(item, None)
                else:
                    links += item.refusal.startswith("symbolic link")
                    folder.finish(item, item.refusal)
        swaps = int(attacker.communicate(timeout=60)[0])
    finally:
        if attacker.poll() is None:
            attacker.kill()
            attacker.wait()
    assert wins == 0 and (regular, links) == (rounds, rounds)
    assert swaps >= rounds  # the attacker really raced: it was swapping when each round was claimed
    assert not any(p.is_symlink() for p in folder.done.iterdir())
    assert all(
        (folder.failed / f"{p.name}.reason.txt").exists() for p in folder.failed.iterdir() if p.is_symlink()
    )
    folder.close()


MAX_QUEUED = Path("/proc/sys/fs/inotify/max_queued_events")
BURST = """
import os, sys
inbox, count = sys.argv[1], int(sys.argv[2])
for i in range(count):
    with open(os.path.join(inbox, f"f{i:05d}.txt"), "w") as f:  # IN_CREATE + IN_CLOSE_WRITE each
        f.write(f"file {i}")
"""


@contextlib.contextmanager
def inotify_queue_of(events: int) -> Iterator[bool]:
    """Lower the kernel's inotify queue for instances made inside (restored on the way out);
    yields False, changing nothing, where the setting cannot be written."""
    try:
        old = MAX_QUEUED.read_text()
        MAX_QUEUED.write_text(f"{events}\n")
    except OSError:
        yield False
        return
    try:
        yield True
    finally:
        MAX_QUEUED.write_text(old)


@pytest.mark.timeout(300)
def test_an_inotify_queue_overflow_is_rescanned_and_loses_no_file(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    folder = DropFolder(inbox, settle_s=0.0, rescan_s=3600.0)  # the periodic rescan cannot help here
    with inotify_queue_of(16) as lowered:
        folder.start()  # an instance's queue size is fixed when it is made
    # else a burst past the default queue (16384 events): two events per file
    count = 200 if lowered else 12_000
    try:
        with folder._lock:  # the watch thread blocks on its first event; the kernel queue fills up
            subprocess.run([sys.executable, "-c", BURST, str(inbox), str(count)], check=True, timeout=240)
        finished = 0

        def all_finished() -> bool:
            nonlocal finished
            items = folder.take(100)
            for item in items:
                folder.finish(item, None)
            finished += len(items)
            return finished >= count

        until(all_finished, lambda: f"{finished} of {count} files handed out", 120, 0.05)
        assert folder.overflows >= 1 and folder.pending() == 0
    finally:
        folder.close()
    assert len(os.listdir(folder.done)) == count
