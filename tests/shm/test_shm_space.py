"""A /dev/shm too small for the segments: a clear error naming /dev/shm and the size needed at
creation, never a SIGBUS when a page is first touched. The small /dev/shm is a real tmpfs
mounted in a private mount namespace (``unshare --mount``; needs root, skipped otherwise)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _mount_namespace import UNSHARE, require_mount_namespace

from crystalline.shm.segments import SharedMemoryFull, check_space, free_bytes


def in_small_shm(script: str, size: str = "1m", timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in Python with a fresh ``size`` tmpfs on /dev/shm that only it sees."""
    require_mount_namespace()
    shell = f'mount -t tmpfs -o size={size} tmpfs /dev/shm && exec "$0" -c "$1"'
    return subprocess.run(
        [*UNSHARE, "sh", "-c", shell, sys.executable, script],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1"),
        check=False,
    )


def test_check_space_names_the_directory_and_the_size_needed(tmp_path: Path) -> None:
    free = free_bytes(tmp_path)
    assert free is not None
    check_space({"crystalline-a-state": 4096}, directory=tmp_path)  # fits: no error
    with pytest.raises(SharedMemoryFull) as info:
        check_space({"crystalline-a-state": free + (3 << 20), "crystalline-a-ring": 4096}, tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert f"{(free + (3 << 20) + 4096) / 2**20:.1f} MiB" in message
    assert "crystalline-a-ring, crystalline-a-state" in message
    assert "\n" not in message
    assert info.value.errno == 28  # ENOSPC, for callers that look


@pytest.mark.timeout(150)
def test_room_now_once_what_did_not_fit_is_free(tmp_path: Path) -> None:
    free = free_bytes(tmp_path)
    assert free is not None
    with pytest.raises(SharedMemoryFull) as failed:
        check_space({"crystalline-a-state": free + (3 << 20)}, tmp_path)
    assert failed.value.need >= free + (3 << 20) and not failed.value.room_now()  # still no room
    assert SharedMemoryFull("full", need=4096, free=0, directory=tmp_path).room_now()  # room freed since
    assert not SharedMemoryFull("full", need=4096, free=free + (1 << 30), directory=tmp_path).room_now()
    assert not SharedMemoryFull("full").room_now()  # what did not fit unknown (the ring's reply)


def test_segment_larger_than_dev_shm_is_a_clear_error_not_sigbus() -> None:
    out = in_small_shm(
        textwrap.dedent("""
        import os
        from crystalline.shm.segments import Segment, SharedMemoryFull, free_bytes
        try:
            Segment.create("crystalline-t-big", 4 << 20)
        except SharedMemoryFull as exc:
            print("ERROR", exc)
        print("LEFT", os.listdir("/dev/shm"))
        before = free_bytes()
        seg = Segment.create("crystalline-t-small", 768 << 10)
        print("RESERVED", before - free_bytes())  # pages allocated at creation, none touched yet
        try:
            Segment.create("crystalline-t-second", 512 << 10)  # only 256 KiB left
        except SharedMemoryFull as exc:
            print("ERROR2", exc)
        seg.buf[:] = b"x" * seg.size  # every page of the first one is usable
        print("WROTE", seg.size)
        seg.close()
        seg.unlink()
        """)
    )
    assert out.returncode == 0, out.stderr  # a SIGBUS would be -7
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert "/dev/shm has no room for the 4.0 MiB segment 'crystalline-t-big'" in lines["ERROR"]
    assert "(1.0 MiB free)" in lines["ERROR"]
    assert lines["LEFT"] == "[]"  # the failed segment's name is gone too
    assert int(lines["RESERVED"]) == 768 << 10
    assert "0.5 MiB segment 'crystalline-t-second'" in lines["ERROR2"]
    assert int(lines["WROTE"]) == 768 << 10


@pytest.mark.timeout(150)
def test_process_engine_checks_dev_shm_before_mapping_or_starting_workers() -> None:
    out = in_small_shm(
        textwrap.dedent("""
        import os
        from crystalline.shm.blocks import layout
        from crystalline.shm.segments import SharedMemoryFull
        from crystalline.workers.engine import EngineSettings, ProcessEngine, segment_specs
        from crystalline.workers.model import GPT
        from crystalline.workers.optimizer_config import AdamWConfig
        from crystalline.workers.model_config import ModelConfig

        cfg = ModelConfig(vocab_size=256, seq_len=64, embed_dim=96, num_layers=2, num_heads=2)
        model = GPT(cfg)
        need = sum(layout(s)[1] for s in segment_specs(model.num_params, 4, 16, 64, 256, 3).values())
        print("NEED", f"{need / 2**20:.1f} MiB")
        try:
            ProcessEngine(model, AdamWConfig(), lambda s: None, 16, EngineSettings(4, "t"))
        except SharedMemoryFull as exc:
            print("ERROR", exc)
        print("LEFT", os.listdir("/dev/shm"))
        print("CHILDREN", open(f"/proc/self/task/{os.getpid()}/children").read().split())
        """)
    )
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert lines["ERROR"].startswith("/dev/shm has 1.0 MiB free but the shared memory needs ")
    assert (
        f"needs {lines['NEED']} (crystalline-t-grads, crystalline-t-ring, crystalline-t-state)"
        in (lines["ERROR"])
    )
    assert lines["LEFT"] == "[]"
    assert lines["CHILDREN"] == "[]"  # no worker was started
