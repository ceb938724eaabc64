"""Resources that run out, on a real daemon: /dev/shm too small for the engine's segments (a
real tmpfs on /dev/shm in a private mount namespace), a low open-files limit (``setrlimit`` in
the daemon's process, as ``ulimit -n`` would), and a shell's umask 022. Each ends in either
training or one clear error in status that names what to change, never a crash loop, and the
error clears once the resource is back."""

from __future__ import annotations

import os
import resource
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from _mount_namespace import UNSHARE, require_mount_namespace
from fault_harness import Daemon, accounted, children, cmdline, drop, short_tmp

from crystalline.shm.segments import list_segments
from crystalline.tokens.token_store import PendingDocument, TokenStore
from crystalline.workers.trainer import engine_instance

SHM_SIZE_KIB = 8192
FILLER_KIB = 7680  # leaves 0.5 MiB: the small model's segments need about 1.3 MiB with 2 workers
RETRY_S = 1.0  # [daemon] resource-retry-s (10 s by default)


def small_full_dev_shm() -> list[str]:
    """A command prefix: a private mount namespace whose /dev/shm is a small tmpfs, nearly full
    (``filler``), then exec the daemon (same pid, so the harness sees the daemon itself)."""
    shell = (
        f"mount -t tmpfs -o size={SHM_SIZE_KIB}k tmpfs /dev/shm"
        f" && head -c {FILLER_KIB}k /dev/zero > /dev/shm/filler"
        ' && exec "$@"'
    )
    return [*UNSHARE, "sh", "-c", shell, "sh"]


def _status_cli(d: Daemon) -> subprocess.CompletedProcess[str]:
    cli = [sys.executable, "-m", "crystalline.daemon.cli", "status", "--runtime-dir", str(d.run_dir)]
    return subprocess.run(cli, capture_output=True, text=True, timeout=60)


def _control_pids(d: Daemon) -> list[int]:
    assert d.proc is not None
    return [p for p in children(d.proc.pid) if "crystalline.daemon.control_process" in cmdline(p)]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_dev_shm_too_small_is_reported_without_sigbus_and_clears_when_space_returns() -> None:
    require_mount_namespace()
    with short_tmp() as root:
        d = Daemon(root, workers=2, extra=["--resource-retry-s", str(RETRY_S)])
        _fill_store(d.state / "ingest" / "tokens", 10)  # training data without the drop folder
        d.start(wrap=small_full_dev_shm())
        try:
            status = d.wait_for("the /dev/shm error", lambda s: "error" in s["training"])
            error = status["training"]["error"]
            assert error.startswith("/dev/shm has 0.5 MiB free but the shared memory needs "), error
            assert "MiB (crystalline-" in error and "\n" not in error
            assert status["last_error"] == error
            out = _status_cli(d)
            assert out.returncode == 2 and "/dev/shm has 0.5 MiB free" in out.stdout, out  # degraded
            first = _control_pids(d)
            assert "not training, trying again every 1 s" in d.log()  # the setting took effect
            # three retry intervals pass (nothing counts the tries: control logs an error once,
            # status has no count): the error stays, control is the same process, not restarted
            time.sleep(3 * RETRY_S)
            status = d.status()
            assert status["training"]["error"] == error
            assert status["training"]["control_restarts"] == 0  # no restart loop
            assert _control_pids(d) == first
            assert "status -7" not in d.log() and "SIGBUS" not in d.log()
            assert d.log().count("/dev/shm has 0.5 MiB free") == 1  # logged once, not per retry

            assert d.proc is not None
            (Path(f"/proc/{d.proc.pid}/root/dev/shm") / "filler").unlink()  # space returns
            status = d.wait_step(3)
            assert "error" not in status["training"] and "last_error" not in status, status
            assert status["training"]["control_restarts"] == 0
            assert "training starts: the resources are there now" in d.log()
            assert d.stop() == 0
        finally:
            d.close()


def _fill_store(store_dir: Path, shards: int) -> None:
    """``shards`` committed shards of two small documents each, as ingest batches leave them."""
    store = TokenStore(store_dir, np.uint16)
    rng = np.random.default_rng(0)
    for i in range(shards):
        docs = [
            PendingDocument(
                f"doc{i}-{k}", f"entry{i}-{k}", f"seed/{i}-{k}", "val" if k == 1 else "train", ids
            )
            for k, ids in enumerate(rng.integers(97, 123, size=(2, 300), dtype=np.uint16))
        ]
        store.append(docs)


def _limit(n: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))  # soft and hard, as `ulimit -n` does

    return apply


def _shard_maps(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        count += "/shard-" in target and target.endswith(".bin")
    return count


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_open_files_limit_64_with_12_workers_trains_with_the_shard_map_cap_from_the_limit() -> None:
    with short_tmp() as root:
        d = Daemon(root, workers=12)
        _fill_store(d.state / "ingest" / "tokens", 150)  # more shards than the limit allows maps
        d.start(preexec=_limit(64))
        try:
            status = d.wait_for(
                "a checkpoint after some steps",
                lambda s: s["training"]["step"] > 30 and (s["training"]["last_checkpoint_step"] or 0) > 0,
                timeout_s=400,
            )
            assert "error" not in status["training"] and "checkpoint_error" not in status["training"]
            line = next(x for x in d.log().splitlines() if "open-files limit" in x)
            cap = int(line.split("up to ")[1].split()[0])
            assert line.split("open-files limit ")[1].startswith("64:")
            assert 4 <= cap < 64  # follows the limit (the old fixed cap was 64 per reader)
            control = d.control_pid()
            # two readers, the surprise meter's one map; + 2: a map being opened holds its file
            # and the mmap's duplicate a moment
            assert _shard_maps(control) <= 2 * cap + 1 + 2
            assert len(os.listdir(f"/proc/{control}/fd")) <= 64
            assert status["training"]["control_restarts"] == 0
            assert d.stop() == 0
        finally:
            d.close()
        assert "Too many open files" not in d.log() and "Errno 24" not in d.log()
        assert list_segments(engine_instance(d.state / "checkpoints")) == []


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_open_files_limit_too_low_is_one_clear_error_naming_the_minimum() -> None:
    with short_tmp() as root:
        d = Daemon(root, workers=12)
        _fill_store(d.state / "ingest" / "tokens", 10)
        d.start(preexec=_limit(48))
        try:
            status = d.wait_for("the open-files error", lambda s: "error" in s["training"])
            error = status["training"]["error"]
            assert error.startswith("the open-files limit (RLIMIT_NOFILE) is 48, the control process "), error
            need = int(error.split("needs at least ")[1].split(":")[0])
            assert need > 48 and f"ulimit -n {need}" in error
            assert status["last_error"] == error
            assert not [p for p in children(_control_pids(d)[0]) if "workers.worker" in cmdline(p)]
            assert status["training"]["control_restarts"] == 0
            assert d.stop() == 0
        finally:
            d.close()


def _shell_umask() -> None:
    os.umask(0o022)  # what a login shell has; systemd's unit sets 0027


def _private(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode & 0o007 == 0, f"{path} is mode {mode:04o}: readable by others"


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_files_keep_the_daemons_modes_under_umask_022() -> None:
    with short_tmp() as root:
        d = Daemon(root, workers=2)
        good = [f"doc{i}.txt" for i in range(3)]
        d.start(preexec=_shell_umask)  # the daemon makes the state dir (one given to it stays as is)
        try:
            d.wait_for("the inbox", lambda s: d.inbox.is_dir())
            drop(d.inbox, good)
            (d.inbox / ".broken.part").write_bytes(b"%PDF-1.4 not really a pdf\n")
            os.replace(d.inbox / ".broken.part", d.inbox / "broken.pdf")  # fails: goes to failed/
            d.wait_for(
                "a checkpoint and every document handled",
                lambda s: (
                    (s["training"]["last_checkpoint_step"] or 0) > 0
                    and s["ingest"].get("pending", 1) == 0
                    and s["ingest"].get("documents", 0) + s["ingest"].get("failed", 0) == len(good) + 1
                ),
            )
            assert d.stop() == 0
        finally:
            d.close()
        accounted(d, [*good, "broken.pdf"])
        state = d.state
        checked = [
            state,
            state / "checkpoints",
            state / "ingest",
            state / "inbox" / "done",
            state / "inbox" / "failed",
        ]
        checked += [state / "ingest" / "registry.sqlite3", *(state / "ingest" / "tokens").iterdir()]
        for ckpt in (state / "checkpoints").glob("step-*"):
            checked += [ckpt, *ckpt.iterdir()]
        assert len(checked) > 10
        for path in checked:
            _private(path)
        assert stat.S_IMODE((state / "ingest" / "registry.sqlite3").stat().st_mode) == 0o640
        assert stat.S_IMODE(next((state / "checkpoints").glob("step-*/params.npy")).stat().st_mode) == 0o640
