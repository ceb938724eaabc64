"""Storage faults on a real daemon: a corrupt newest checkpoint at start, a full disk while
writing checkpoints and shards, the drop folder deleted while running, a read-only state dir
at start. Each ends in a clear error in the log and in status, no crash loop, nothing earlier
lost. The disk faults use a small tmpfs (mounting needs root; skipped with the reason if not)."""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fault_harness import Daemon, accounted, drop, short_tmp

from crystalline.shm.segments import list_segments
from crystalline.workers.checkpoint import list_checkpoints, load_latest
from crystalline.workers.trainer import engine_instance


def _ingested(n: int) -> Callable[[dict[str, Any]], bool]:
    def done(s: dict[str, Any]) -> bool:
        i = s["ingest"]
        counted = i.get("documents", 0) + i.get("failed", 0) + i.get("duplicates", 0) + i.get("filtered", 0)
        return i.get("pending", 1) == 0 and counted == n

    return done


def _steps(d: Daemon) -> list[int]:
    return [int(p.name.split("-")[1]) for p in list_checkpoints(d.state / "checkpoints")]


def _resumed_from(d: Daemon) -> int:
    lines = (d.state / "checkpoints" / "metrics.jsonl").read_text().splitlines()
    starts = [r for r in map(json.loads, lines) if r["event"] == "start"]
    return int(starts[-1]["resumed_from"])


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {out.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(path: Path) -> Path:
    """Write a file until the file system is full."""
    filler = path / "filler"
    chunk = b"\0" * (64 * 1024)
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one() -> None:
    with short_tmp() as root:
        d = Daemon(root, workers=2)
        drop(d.inbox, [f"doc{i}.txt" for i in range(4)])
        d.start()
        try:
            d.wait_step(2)
            d.wait_for("two checkpoints", lambda s: len(_steps(d)) >= 2)
            assert d.stop() == 0
            *_, previous, newest = _steps(d)
            params = d.state / "checkpoints" / f"step-{newest:08d}" / "params.npy"
            data = bytearray(params.read_bytes())
            data[-100:] = bytes(100)  # flipped bits in the weights: the manifest's sha256 catches it
            params.write_bytes(bytes(data))

            d.start()
            status = d.wait_step(previous)
            assert "skipping unusable checkpoint" in d.log() and "sha256 mismatch" in d.log()
            warnings = status["training"]["checkpoint_warnings"]
            assert any(f"step-{newest:08d}" in w for w in warnings), warnings
            assert _resumed_from(d) == previous
            # the damaged one is kept for inspection, out of the way of the kept checkpoints
            assert (d.state / "checkpoints" / f"corrupt-step-{newest:08d}").is_dir()
            assert status["training"]["control_restarts"] == 0
            assert d.stop() == 0
        finally:
            d.close()
        assert load_latest(d.state / "checkpoints") is not None


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_full_disk_while_writing_checkpoints_and_shards() -> None:
    with short_tmp() as root, tmpfs(root / "s", "24m") as state:
        inbox = root / "in"  # off the full file system, so documents can still arrive
        d = Daemon(root, workers=2, extra=["--inbox", str(inbox)])
        d.inbox = inbox
        first = [f"a{i}.txt" for i in range(6)]
        drop(inbox, first)
        d.start()
        try:
            d.wait_for("first documents ingested", _ingested(len(first)))
            d.wait_for("a checkpoint", lambda s: (s["training"]["last_checkpoint_step"] or 0) > 0)
            before = _steps(d)
            filler = _fill(state)
            second = [f"b{i}.txt" for i in range(6)]
            drop(inbox, second, seed0=100)
            status = d.wait_for(
                "checkpoint and ingest errors",
                lambda s: "checkpoint_error" in s["training"] and "error" in s["ingest"],
            )
            assert "No space left on device" in status["training"]["checkpoint_error"]
            assert "last_error" in status
            assert "checkpoint at step" in d.log() and "ingest failed (OSError" in d.log(), d.tail()
            step = status["training"]["step"]
            status = d.wait_step(step + 5)  # training goes on without checkpoints
            assert status["training"]["control_restarts"] == 0  # no crash loop
            assert _steps(d) == before  # nothing earlier lost
            assert not [p for p in (state / "checkpoints").iterdir() if p.name.startswith(".tmp-")]

            filler.unlink()  # space again: both recover on their own
            status = d.wait_for(
                "a checkpoint and every document after the disk was freed",
                lambda s: (
                    "checkpoint_error" not in s["training"]
                    and (s["training"]["last_checkpoint_step"] or 0) > max(before)
                    and _ingested(len(first) + len(second))(s)
                ),
            )
            assert "error" not in status["ingest"]
            assert d.stop() == 0
        finally:
            d.close()
        accounted(d, first + second)
        assert load_latest(state / "checkpoints") is not None
        tokens = state / "ingest" / "tokens"
        assert not [p for p in tokens.iterdir() if p.name.endswith(".tmp")]
        assert len(list(tokens.glob("*.bin"))) == len(list(tokens.glob("*.json")))
        assert list_segments(engine_instance(state / "checkpoints")) == []


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_drop_folder_deleted_while_running() -> None:
    with short_tmp() as root:
        d = Daemon(root, workers=2)
        first = [f"a{i}.txt" for i in range(4)]
        drop(d.inbox, first)
        d.start()
        try:
            d.wait_for("first documents ingested", _ingested(len(first)))
            shutil.rmtree(d.inbox)
            status = d.wait_for("the deletion reported", lambda s: "deleted" in s["ingest"].get("error", ""))
            assert str(d.inbox) in status["last_error"]
            assert "was deleted or replaced while running" in d.log()
            second = [f"b{i}.txt" for i in range(4)]
            drop(d.inbox, second, seed0=100)  # the recreated folder is watched again
            d.wait_for("documents in the recreated folder", _ingested(len(first) + len(second)))
            step = d.status()["training"]["step"]
            d.wait_step(step + 3)
            assert d.stop() == 0
        finally:
            d.close()
        done, failed = d.moved_files()
        assert sorted(done + failed) == sorted(second)
        assert sum(d.registry_rows().values()) == len(first) + len(second)  # nothing earlier lost


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_read_only_state_dir_at_start_reports_and_waits_without_crash_loop() -> None:
    with short_tmp() as root, tmpfs(root / "s", "24m") as state:
        d = Daemon(root, workers=2)
        first = [f"a{i}.txt" for i in range(4)]
        drop(d.inbox, first)
        d.start()
        try:
            d.wait_for("first documents ingested", _ingested(len(first)))
            d.wait_for("a checkpoint", lambda s: (s["training"]["last_checkpoint_step"] or 0) > 0)
            assert d.stop() == 0
            saved = _steps(d)
            subprocess.run(["mount", "-o", "remount,ro", str(state)], check=True)

            d.start()
            status = d.wait_for("the error in status", lambda s: s["state"] == "failed")
            assert "Read-only file system" in status["last_error"], status
            assert str(state) in status["last_error"]
            assert "cannot use the state directory" in d.log()
            cli = [sys.executable, "-m", "crystalline.daemon.cli", "status", "--runtime-dir", str(d.run_dir)]
            out = subprocess.run(cli, capture_output=True, text=True, timeout=60)
            assert out.returncode == 2 and "Read-only file system" in out.stdout, out  # degraded
            assert d.notify is not None and d.notify.seen("READY=1")  # systemd: started, not failed
            assert d.alive()
            assert d.proc is not None
            assert not [p for p in _children(d.proc.pid) if "control_process" in _cmd(p)]  # no training

            subprocess.run(["mount", "-o", "remount,rw", str(state)], check=True)
            status = d.wait_step(max(saved))  # retried by itself, resumed from the checkpoint
            assert "last_error" not in status or "state directory" not in status["last_error"]
            assert _resumed_from(d) == max(saved)
            assert d.stop() == 0
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(state)], check=False)
            d.close()
        accounted(d, first)
        assert list_segments(engine_instance(state / "checkpoints")) == []


def _children(pid: int) -> list[int]:
    from fault_harness import children

    return children(pid)


def _cmd(pid: int) -> str:
    from fault_harness import cmdline

    return cmdline(pid)
