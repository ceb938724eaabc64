"""The drop folder under a hostile inbox writer or a short resource: a file that cannot be
moved is skipped (the others go on), a descriptor shortage is retried (never a refusal),
``done/`` and ``failed/`` not ours are not used, hard links are refused, the watch thread
survives an event it cannot handle."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _wait import until

from crystalline.ingest.drop_folder import Claimed, DropFolder

NOBODY = 65534
LONG_AGO = time.time() - 100  # settled: no settle wait


def settled_file(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    os.utime(path, (LONG_AGO, LONG_AGO))


def run_on_inbox(script: str, tmp_path: Path, name: str, data: bytes) -> dict[str, Any]:
    """What ``script`` prints (JSON), run in its own process on an inbox holding ``name``."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    settled_file(inbox / name, data)
    out = subprocess.run(
        [sys.executable, "-c", script, str(inbox)], capture_output=True, text=True, timeout=50
    )
    assert out.returncode == 0, out.stderr
    report: dict[str, Any] = json.loads(out.stdout)
    return report


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory ``nobody`` can reach (pytest's tmp_path sits under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="crystalline-drop-", dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def claim_as_nobody(inbox: Path, report_fd: int) -> None:
    """In a forked child turned ``nobody`` (no exec: the interpreter lives under /root, 0700):
    drop a file of its own, then claim what the inbox holds, twice."""
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    settled_file(inbox / "mine.txt", b"nobody's own file")
    folder = DropFolder(inbox, settle_s=0.0, rescan_s=3600.0)
    folder.scan()
    report: dict[str, Any] = {}
    try:
        taken = folder.take(10)
        report["taken"] = [c.name for c in taken]
        report["data"] = [c.read(1000).decode() for c in taken]
        for c in taken:
            folder.finish(c, None)
        folder.scan()  # the blocked file is listed again: not retried before its time
        report["again"] = [c.name for c in folder.take(10)]
        report["blocked"] = folder.blocked()
    except OSError as e:
        report["error"] = f"{type(e).__name__}: {e}"
    folder.close()
    os.write(report_fd, json.dumps(report).encode())


@pytest.mark.timeout(60)
def test_a_file_the_daemon_may_not_move_is_skipped_and_the_others_are_ingested(public_dir: Path) -> None:
    # a shared inbox with the sticky bit: the daemon (here nobody) may not rename root's file
    inbox = public_dir / "inbox"
    inbox.mkdir()
    os.chmod(inbox, 0o1777)
    settled_file(inbox / "another-users.txt", b"root's file")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child must never return into pytest
        code = 1
        try:
            os.close(r)
            claim_as_nobody(inbox, w)
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        report = json.loads(pipe.read() or b"{}")
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert "error" not in report, report["error"]
    assert report["taken"] == ["mine.txt"] and report["data"] == ["nobody's own file"]
    assert report["again"] == []
    assert report["blocked"] == [
        ["another-users.txt", "cannot be moved into .ingesting/ (Operation not permitted)"]
    ]
    assert (inbox / "done" / "mine.txt").exists() and (inbox / "another-users.txt").exists()


SHORT_OF_DESCRIPTORS = """
import json, os, resource, sys
from crystalline.ingest.drop_folder import Claimed, DropFolder
inbox = sys.argv[1]
folder = DropFolder(inbox, settle_s=0.0, rescan_s=3600.0)
folder.scan()
used = len(os.listdir("/proc/self/fd"))
resource.setrlimit(resource.RLIMIT_NOFILE, (used + 4, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
fillers = []
try:
    while True:
        fillers.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
report = {}
try:
    item = folder.take_one()
    report["refusal"] = item.refusal if item else None
except OSError as e:
    report["error"] = e.errno
for fd in fillers:
    os.close(fd)
report["claimed"] = os.listdir(os.path.join(inbox, ".ingesting"))
item = folder.take_one()
report["again"] = [item.name, item.refusal, item.read(1000).decode()]
report["fd_after_read"] = item.fd
folder.finish(item, None)
folder.close()
print(json.dumps(report))
"""


@pytest.mark.timeout(60)
def test_a_descriptor_shortage_puts_the_file_back_instead_of_refusing_it(tmp_path: Path) -> None:
    report = run_on_inbox(SHORT_OF_DESCRIPTORS, tmp_path, "good.txt", b"a good file")
    inbox = tmp_path / "inbox"
    assert report.get("error") == 24 and "refusal" not in report  # EMFILE: the batch's trouble
    assert report["claimed"] == ["good.txt"]  # kept in .ingesting/, not sent to failed/
    assert report["again"] == ["good.txt", None, "a good file"]
    assert report["fd_after_read"] == -1  # closed once read, not held until finish
    assert (inbox / "done" / "good.txt").exists() and not os.listdir(inbox / "failed")


TIGHT_MEMORY = """
import json, resource, sys
from crystalline.ingest.drop_folder import Claimed, DropFolder
folder = DropFolder(sys.argv[1], settle_s=0.0, rescan_s=3600.0)
folder.scan()
item = folder.take_one()
vm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + 24 * 2**20, resource.RLIM_INFINITY))
try:
    print(json.dumps({"data": item.read(64 * 2**20).decode()}))
except MemoryError:
    print(json.dumps({"error": "MemoryError"}))
"""


@pytest.mark.timeout(60)
def test_a_small_file_is_read_without_asking_for_the_whole_limit(tmp_path: Path) -> None:
    assert run_on_inbox(TIGHT_MEMORY, tmp_path, "small.txt", b"tiny") == {"data": "tiny"}


def test_a_failed_folder_planted_by_an_inbox_writer_is_not_used(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    folder = DropFolder(inbox, settle_s=0.0, rescan_s=3600.0)
    # the writer moves .ingesting/ and failed/ aside and plants a failed/ of their own, open to
    # all, with a link where a reason file's temporary name would be
    os.rename(inbox / ".ingesting", inbox / "moved")
    os.rename(inbox / "failed", inbox / "moved-failed")
    (inbox / "failed").mkdir()
    os.chmod(inbox / "failed", 0o777)
    os.chown(inbox / "failed", NOBODY, NOBODY)
    os.symlink("/nonexistent/loop", inbox / "failed" / ".fifo.reason.txt.tmp")
    assert not folder.intact()
    folder.reopen()
    st = os.stat(folder.failed)
    assert st.st_uid == os.geteuid() and not st.st_mode & 0o022
    assert any(p.name.startswith("failed.untrusted-") for p in inbox.iterdir())
    os.mkfifo(inbox / "fifo")
    folder.scan()
    (item,) = folder.take(10)
    assert item.refusal is not None
    folder.finish(item, item.refusal)
    assert (folder.failed / "fifo.reason.txt").read_text().startswith("FIFO: not a regular file")
    folder.close()


REASON_NOT_WRITTEN = """
import json, os, resource, signal, sys
from crystalline.ingest.drop_folder import DropFolder
folder = DropFolder(sys.argv[1], settle_s=0.0, rescan_s=3600.0)
folder.scan()
item = folder.take_one()
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (8, resource.RLIM_INFINITY))  # no reason file fits
try:
    moved = str(folder.finish(item, "not a document"))
except OSError as e:
    moved = f"{type(e).__name__}: {e}"
failed = os.path.join(sys.argv[1], "failed")
print(json.dumps({"moved": moved, "failed": sorted(os.listdir(failed))}))
"""


def test_a_reason_file_that_cannot_be_written_does_not_keep_the_file_back(tmp_path: Path) -> None:
    report = run_on_inbox(REASON_NOT_WRITTEN, tmp_path, "bad.bin", b"whatever")
    assert report == {"moved": str(tmp_path / "inbox" / "failed" / "bad.bin"), "failed": ["bad.bin"]}


def test_a_sub_folder_swapped_for_another_directory_is_noticed(tmp_path: Path) -> None:
    folder = DropFolder(tmp_path / "inbox")
    assert folder.intact()
    os.rename(folder.done, tmp_path / "inbox" / "done-old")
    folder.done.mkdir()  # a directory again, at the same path, but not the one held open
    assert not folder.intact()
    folder.reopen()
    assert folder.intact()
    folder.close()


def test_a_hard_link_is_refused_unread(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("root-only secret")
    os.chmod(secret, 0o600)
    inbox = tmp_path / "inbox"
    folder = DropFolder(inbox, settle_s=0.0)
    os.link(secret, inbox / "linked.txt")  # what protected_hardlinks=0 lets anyone do
    folder.scan()
    (item,) = folder.take(10)
    assert item.fd == -1 and item.refusal is not None and item.refusal.startswith("hard link (2 names)")
    folder.finish(item, item.refusal)
    assert (folder.failed / "linked.txt.reason.txt").read_text().startswith("hard link")
    folder.close()


def test_a_name_being_claimed_is_not_listed_again_by_a_scan_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = DropFolder(tmp_path, settle_s=0.0, rescan_s=3600.0)
    settled_file(tmp_path / "a.txt", b"once")
    folder.scan()
    opened = folder._open_claimed

    def scan_meanwhile(name: str, claims_fd: int) -> Claimed | None:
        folder.scan()  # what a rescan does between the claim and the hand-out
        return opened(name, claims_fd)

    monkeypatch.setattr(folder, "_open_claimed", scan_meanwhile)
    assert [c.name for c in folder.take(10)] == ["a.txt"]
    assert folder.take(10) == []
    folder.close()


@pytest.mark.timeout(30)
def test_the_watch_thread_survives_an_event_it_cannot_stat(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    folder = DropFolder(inbox, settle_s=60.0)
    folder.start()
    try:
        os.rename(inbox, tmp_path / "aside")  # the watch follows the directory
        os.symlink(inbox, inbox)  # the old path now loops: stat gives ELOOP
        (tmp_path / "aside" / "created.txt").write_text("x")  # IN_CREATE -> settling -> stat

        def event_error() -> int:
            assert folder._thread is not None and folder._thread.is_alive()
            return folder.event_errors

        until(event_error, "no event error", 20, 0.05)
        assert folder._thread is not None and folder._thread.is_alive()
        assert stat.S_ISLNK(os.lstat(inbox).st_mode)
    finally:
        folder.close()
