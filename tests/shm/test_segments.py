"""crystalline.shm.segments: names, create/attach across processes, resource tracker, sweep."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from multiprocessing import resource_tracker
from pathlib import Path

import _shm_children
import numpy as np
import pytest

from crystalline.shm.segments import (
    Segment,
    list_segments,
    parse_segment_name,
    segment_name,
    sweep,
    unlink_segment,
)

HERE = str(Path(__file__).resolve().parent)
SPAWN = multiprocessing.get_context("spawn")


def run_script(script: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``python -c script args``; returns once the process *and* anything it started that
    holds its stderr (a resource tracker) have finished."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")])))
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def assert_quiet(stderr: str) -> None:
    for needle in ("leaked", "resource_tracker", "Traceback", "KeyError", "Warning"):
        assert needle not in stderr, stderr


# --- names ------------------------------------------------------------------------------------


def test_segment_name_format_and_parse() -> None:
    assert segment_name("run_1.a", "grads") == "crystalline-run_1.a-grads"
    assert parse_segment_name("crystalline-run_1.a-grads") == ("run_1.a", "grads")
    assert parse_segment_name("crystalline-a-b-c") is None
    assert parse_segment_name("other-a-b") is None


@pytest.mark.parametrize(
    ("instance", "what"),
    [("", "x"), ("x", ""), ("a-b", "x"), ("x", "a-b"), ("a/b", "x"), ("a b", "x"), ("é", "x"), ("x", "p\0")],
)
def test_segment_name_rejects_invalid_parts(instance: str, what: str) -> None:
    with pytest.raises(ValueError, match="A-Za-z0-9"):
        segment_name(instance, what)


def test_segment_name_rejects_too_long() -> None:
    assert len(segment_name("i", "w" * (200 - len("crystalline-i-")))) == 200
    with pytest.raises(ValueError, match="longer than 200"):
        segment_name("i", "w" * (201 - len("crystalline-i-")))


# --- one process ----------------------------------------------------------------------------


def test_create_is_exclusive_attach_shares_memory_unlink_idempotent(instance: str) -> None:
    name = segment_name(instance, "seg")
    with Segment.create(name, 10_000) as owner:
        assert (owner.name, owner.size, owner.created) == (name, 10_000, True)
        assert bytes(owner.buf[:16]) == bytes(16)  # zero-filled
        with pytest.raises(FileExistsError):
            Segment.create(name, 10_000)
        with Segment.attach(name) as other:
            assert other.size == 10_000 and not other.created
            other.buf[100:103] = b"abc"
        assert bytes(owner.buf[100:103]) == b"abc"
        owner.unlink()
        owner.unlink()  # already gone: fine
        assert bytes(owner.buf[100:103]) == b"abc"  # the mapping outlives the name
    assert owner.closed
    with pytest.raises(FileNotFoundError):
        Segment.attach(name)
    assert unlink_segment(name) is False


def test_create_rejects_bad_size_and_name(instance: str) -> None:
    with pytest.raises(ValueError):
        Segment.create(segment_name(instance, "z"), 0)
    with pytest.raises(ValueError):
        Segment.create("a/b", 4096)


def test_close_with_live_view_raises_clear_error_then_succeeds(instance: str) -> None:
    segment = Segment.create(segment_name(instance, "v"), 4096)
    segment.unlink()
    view = np.frombuffer(segment.buf, dtype=np.uint8)
    with pytest.raises(BufferError, match=rf"{segment.name}.*delete every view"):
        segment.close()
    assert not segment.closed
    view[0] = 7  # still mapped and usable
    assert segment.buf[0] == 7
    del view
    segment.close()
    segment.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        _ = segment.buf


def test_segments_never_talk_to_the_resource_tracker(instance: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Create, attach, close and unlink send no shared_memory REGISTER/UNREGISTER at all (a
    register-then-unregister races between workers that share one tracker)."""
    calls: list[tuple[str, str, str]] = []
    register, unregister = resource_tracker.register, resource_tracker.unregister

    def spy_register(name: str, rtype: str) -> None:
        calls.append(("register", name, rtype))
        register(name, rtype)

    def spy_unregister(name: str, rtype: str) -> None:
        calls.append(("unregister", name, rtype))
        unregister(name, rtype)

    monkeypatch.setattr(resource_tracker, "register", spy_register)
    monkeypatch.setattr(resource_tracker, "unregister", spy_unregister)
    with Segment.create(segment_name(instance, "quiet"), 4096) as owner:
        with Segment.attach(owner.name):
            pass
        owner.unlink()
    assert [call for call in calls if call[2] == "shared_memory"] == []
    assert resource_tracker.register is spy_register  # restored after the temporary swap


# --- across processes -------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_spawned_child_writes_parent_reads(instance: str) -> None:
    with Segment.create(segment_name(instance, "rw"), 4096) as segment:
        child = SPAWN.Process(target=_shm_children.write_bytes, args=(segment.name, 10, b"from child"))
        child.start()
        child.join(30)
        assert child.exitcode == 0
        assert bytes(segment.buf[10:20]) == b"from child"
        segment.unlink()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_spawned_child_that_attaches_does_not_unlink(instance: str, how: str) -> None:
    with Segment.create(segment_name(instance, "keep"), 4096) as segment:
        segment.buf[:4] = b"live"
        if how == "exit":
            child = SPAWN.Process(target=_shm_children.attach_and_exit, args=(segment.name,))
            child.start()
        else:
            ready = SPAWN.Event()
            child = SPAWN.Process(target=_shm_children.attach_and_hang, args=(segment.name, ready))
            child.start()
            assert ready.wait(30)
            child.kill()  # SIGKILL
        child.join(30)
        assert child.exitcode == (0 if how == "exit" else -signal.SIGKILL)
        with Segment.attach(segment.name) as again:
            assert bytes(again.buf[:4]) == b"live"
        segment.unlink()


ATTACH_SCRIPT = """
import sys, time
from crystalline.shm.segments import Segment
segment = Segment.attach(sys.argv[1])
print("attached", flush=True)
if sys.argv[2] == "hang":
    time.sleep(60)
segment.close()
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_separate_process_that_attaches_does_not_unlink(instance: str, how: str) -> None:
    """A process with its own resource tracker: on 3.11 a tracked attach would be unlinked
    by that tracker when the process exits or is killed."""
    with Segment.create(segment_name(instance, "keep"), 4096) as segment:
        segment.buf[:4] = b"live"
        if how == "exit":
            result = run_script(ATTACH_SCRIPT, segment.name, "exit")
            assert result.returncode == 0, result.stderr
            stderr = result.stderr
        else:
            proc = subprocess.Popen(
                [sys.executable, "-c", ATTACH_SCRIPT, segment.name, "hang"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "attached"
            proc.kill()
            _, stderr = proc.communicate(timeout=30)  # EOF once any tracker has finished too
            assert proc.returncode == -signal.SIGKILL
        assert_quiet(stderr)
        with Segment.attach(segment.name) as again:
            assert bytes(again.buf[:4]) == b"live"
        segment.unlink()


OWNER_SCRIPT = """
import multiprocessing, sys
import _shm_children
from crystalline.shm.segments import Segment
segment = Segment.create(sys.argv[1], 4096)
segment.buf[:5] = b"hello"
ctx = multiprocessing.get_context("spawn")
child = ctx.Process(target=_shm_children.attach_and_exit, args=(segment.name,))
child.start()
child.join()
assert child.exitcode == 0
segment.close()  # and exit without unlinking
"""


@pytest.mark.timeout(60)
def test_owner_with_spawned_children_exits_without_tracker_unlink_or_warning(instance: str) -> None:
    """Spawned children share the owner's tracker: a tracked attach would be unlinked (with a
    "leaked shared_memory" warning) when the owner exits. Lifetime is ours: the segment stays."""
    name = segment_name(instance, "owned")
    result = run_script(OWNER_SCRIPT, name)
    assert result.returncode == 0, result.stderr
    assert_quiet(result.stderr)
    with Segment.attach(name) as segment:
        assert bytes(segment.buf[:5]) == b"hello"
    assert sweep(instance) == [name]


CONCURRENT_SCRIPT = """
import multiprocessing, sys
import numpy as np
import _shm_children
from crystalline.shm.blocks import ArrayBlock
ctx = multiprocessing.get_context("spawn")
with ArrayBlock.create(sys.argv[1], {"x": ((4,), np.float32)}) as block:
    barrier = ctx.Barrier(8)
    target, args = _shm_children.attach_repeatedly, (block.name, barrier, 100)
    children = [ctx.Process(target=target, args=args) for _ in range(8)]
    for child in children:
        child.start()
    for child in children:
        child.join()
    assert all(child.exitcode == 0 for child in children)
    block.unlink()
"""


@pytest.mark.timeout(60)
def test_concurrent_attaches_by_spawned_workers_leave_the_tracker_silent(instance: str) -> None:
    """Register-then-unregister from workers sharing one tracker interleaves and makes the
    tracker print KeyError tracebacks; attaching never talks to the tracker."""
    result = run_script(CONCURRENT_SCRIPT, segment_name(instance, "many"))
    assert result.returncode == 0, result.stderr
    assert_quiet(result.stderr)


CREATE_UNLINK_SCRIPT = """
import sys
import numpy as np
from crystalline.shm.blocks import ArrayBlock
from crystalline.shm.segments import Segment
with Segment.create(sys.argv[1], 4096) as segment, Segment.attach(sys.argv[1]) as other:
    other.buf[0] = 1
    segment.unlink()
with ArrayBlock.create(sys.argv[2], {"a": ((3, 5), np.float32)}) as block:
    with ArrayBlock.attach(sys.argv[2]) as again:
        again.arrays["a"][:] = 1
    block.unlink()
"""


@pytest.mark.timeout(60)
def test_no_leaked_shared_memory_warning_at_exit(instance: str) -> None:
    result = run_script(CREATE_UNLINK_SCRIPT, segment_name(instance, "a"), segment_name(instance, "b"))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


# --- leftovers --------------------------------------------------------------------------------

KILLED_RUN_SCRIPT = """
import sys, time
from crystalline.shm.segments import Segment, segment_name
segments = [Segment.create(segment_name(sys.argv[1], what), 4096) for what in ("ring", "params", "grads")]
print("ready", flush=True)
time.sleep(60)
"""


@pytest.mark.timeout(60)
def test_sweep_removes_a_killed_runs_segments_only(instance: str, new_instance: Callable[..., str]) -> None:
    similar = new_instance(instance + "x")  # "crystalline-<instance>-" is not a prefix of it
    unrelated = new_instance()
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN_SCRIPT, instance], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.kill()
    proc.communicate(timeout=30)
    expected = sorted(segment_name(instance, w) for w in ("ring", "params", "grads"))
    assert list_segments(instance) == expected  # the killed run left them behind

    kept = [Segment.create(segment_name(other, "grads"), 4096) for other in (similar, unrelated)]
    try:
        assert sweep(instance) == expected
        assert list_segments(instance) == []
        assert sweep(instance) == []
        for segment, other in zip(kept, (similar, unrelated), strict=True):
            assert list_segments(other) == [segment.name]
            with Segment.attach(segment.name):
                pass
    finally:
        for segment in kept:
            segment.close()
            segment.unlink()


def test_list_and_sweep_in_a_directory(tmp_path: Path) -> None:
    for name in (
        "crystalline-a-ring",
        "crystalline-a-grads",
        "crystalline-b-ring",
        "crystalline-a-x-y",
        "a-b-c",
    ):
        (tmp_path / name).touch()
    assert list_segments("a", tmp_path) == ["crystalline-a-grads", "crystalline-a-ring"]
    assert list_segments(None, tmp_path) == [
        "crystalline-a-grads",
        "crystalline-a-ring",
        "crystalline-b-ring",
    ]
    assert sweep("a", tmp_path) == ["crystalline-a-grads", "crystalline-a-ring"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-b-c", "crystalline-a-x-y", "crystalline-b-ring"]
    assert sweep("a", tmp_path / "missing") == []
    with pytest.raises(ValueError):
        sweep("a-b", tmp_path)
