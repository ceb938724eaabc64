"""The data-parallel engine: same math for any worker count, faults survived, nothing leaked."""

from __future__ import annotations

import dataclasses
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from _wait import until

from crystalline.shm.segments import list_segments
from crystalline.tokens.windows import batch_for_step
from crystalline.workers.engine import (
    EngineSettings,
    EngineStopped,
    LocalEngine,
    ProcessEngine,
    StepEngine,
    _shares,
)
from crystalline.workers.model import GPT, init_params
from crystalline.workers.model_config import ModelConfig
from crystalline.workers.optimizer import learning_rate
from crystalline.workers.optimizer_config import AdamWConfig

pytestmark = pytest.mark.timeout(120)

SMALL = ModelConfig(vocab_size=64, seq_len=16, embed_dim=32, num_layers=2, num_heads=2)
ADAMW = AdamWConfig(learning_rate=3e-3, warmup_steps=2, decay_steps=20)
TOKENS = np.random.default_rng(0).integers(0, 64, 20_000).astype(np.uint16)


@pytest.fixture
def instance() -> Iterator[str]:
    """A unique segment instance per test, and the check that none of its segments survive."""
    name = "test" + uuid.uuid4().hex[:10]
    yield name
    leftovers = list_segments(name)
    assert leftovers == [], f"shared memory leaked: {leftovers}"


def source(batch: int, cfg: ModelConfig = SMALL) -> Callable[[int], np.ndarray]:
    return lambda step: batch_for_step(TOKENS, 7, step, batch, cfg.seq_len)


def make_engine(
    workers: int,
    batch: int,
    instance: str,
    cfg: ModelConfig = SMALL,
    adamw: AdamWConfig = ADAMW,
    **settings: float,
) -> StepEngine:
    model = GPT(cfg)
    if workers == 0:
        engine: StepEngine = LocalEngine(model, adamw, source(batch, cfg))
    else:
        engine = ProcessEngine(
            model,
            adamw,
            source(batch, cfg),
            batch,
            EngineSettings(workers=workers, instance=instance, **settings),
        )  # type: ignore[arg-type]
    params = init_params(model.table, 3)
    engine.load_state(params, np.zeros_like(params), np.zeros_like(params))
    return engine


def train(engine: StepEngine, steps: int, during: Callable[[int], None] | None = None) -> np.ndarray:
    try:
        for step in range(steps):
            if during is not None:
                during(step)
            outcome = engine.step(step, learning_rate(step, ADAMW))
            assert outcome.applied
        return engine.params().copy()
    finally:
        engine.close()


@pytest.mark.parametrize(
    "workers, batch",
    [(1, 12), (3, 12), (4, 12), (12, 12), (4, 10), (5, 3)],  # uneven shares; idle workers
)
def test_worker_count_changes_speed_never_math(instance: str, workers: int, batch: int) -> None:
    reference = train(make_engine(0, batch, instance), 6)
    result = train(make_engine(workers, batch, instance), 6)
    assert not np.array_equal(reference, init_params(GPT(SMALL).table, 3))  # it did train
    np.testing.assert_allclose(result, reference, rtol=0, atol=2e-5)


MUON = dataclasses.replace(ADAMW, optimizer="muon", muon_lr=0.02)
SPEEDRUN = dataclasses.replace(SMALL, mlp="relu2", head="untied")


@pytest.mark.parametrize("workers, batch", [(3, 12), (12, 12), (5, 3)])
def test_muon_engine_matches_one_process(instance: str, workers: int, batch: int) -> None:
    """Each hidden matrix has one owner, which orthogonalises it whole: same result as one process."""
    reference = train(make_engine(0, batch, instance, cfg=SPEEDRUN, adamw=MUON), 6)
    result = train(make_engine(workers, batch, instance, cfg=SPEEDRUN, adamw=MUON), 6)
    assert not np.array_equal(reference, init_params(GPT(SPEEDRUN).table, 3))
    np.testing.assert_allclose(result, reference, rtol=0, atol=2e-5)


def test_clipped_steps_take_the_update_barrier_and_match(instance: str) -> None:
    """With a tiny clip every step needs the UPDATE barrier (the speculative update is redone)."""
    clipped = dataclasses.replace(ADAMW, grad_clip=1e-3)
    reference = train(make_engine(0, 8, instance, adamw=clipped), 4)
    engine = make_engine(4, 8, instance, adamw=clipped)
    assert isinstance(engine, ProcessEngine)
    result = train(engine, 4)
    assert engine.speculation_hits == 0
    np.testing.assert_allclose(result, reference, rtol=0, atol=2e-5)


def test_unclipped_steps_ride_on_the_reduce_barrier(instance: str) -> None:
    engine = make_engine(3, 6, instance, adamw=dataclasses.replace(ADAMW, grad_clip=1e6))
    assert isinstance(engine, ProcessEngine)
    train(engine, 3)
    assert engine.speculation_hits == 3


def test_shares_cover_the_range_and_align() -> None:
    shares = _shares(1000, 7, align=16)
    assert shares[0][0] == 0 and shares[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in itertools.pairwise(shares))
    assert all(lo % 16 == 0 for lo, _ in shares)
    assert _shares(3, 5) == [(0, 0), (0, 1), (1, 1), (1, 2), (2, 3)]


def _worker_pid_in_state(engine: ProcessEngine, worker: int, states: tuple[str, ...], timeout: float) -> int:
    def pid() -> int | None:
        h = engine.workers[worker]
        return h.proc.pid if h.state in states and h.proc is not None else None

    return until(pid, f"worker {worker} never reached {states}", timeout, 0.0002)


BUSY = ModelConfig(vocab_size=64, seq_len=32, embed_dim=64, num_layers=2, num_heads=2)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP])
def test_a_killed_or_hung_worker_is_replaced_and_the_result_is_unchanged(instance: str, sig: int) -> None:
    clean = train(make_engine(3, 24, instance, BUSY), 5)
    engine = make_engine(3, 24, instance, BUSY, min_deadline_s=1.0, deadline_factor=5.0)
    assert isinstance(engine, ProcessEngine)
    victim: list[int] = []

    def strike(step: int) -> None:
        if step != 2:
            return

        def hit() -> None:
            pid = _worker_pid_in_state(engine, 1, ("computing",), timeout=30)
            os.kill(pid, sig)
            victim.append(pid)

        threading.Thread(target=hit, daemon=True).start()

    faulty = train(engine, 5, during=strike)
    assert victim, "the fault was never injected"
    assert engine.workers[1].restarts == 1
    assert engine.workers[0].restarts == engine.workers[2].restarts == 0
    # the redone compute writes the same bits: not just close, equal
    np.testing.assert_array_equal(faulty, clean)


def test_non_finite_gradient_skips_the_step(instance: str) -> None:
    engine = make_engine(2, 4, instance)
    assert isinstance(engine, ProcessEngine)
    try:
        params = engine.params().copy()
        poisoned = params.copy()
        poisoned[5] = np.nan  # inside wte: every loss becomes NaN
        m, v = engine.moments()
        engine.load_state(poisoned, m.copy(), v.copy())
        outcome = engine.step(0, 1e-3)
        assert not outcome.applied
        assert engine.skipped_steps == 1
        assert engine.version == 0  # nothing was published
    finally:
        engine.close()


def test_stop_while_parked_in_a_barrier_ends_the_step(instance: str) -> None:
    stop = threading.Event()
    model = GPT(SMALL)
    engine = ProcessEngine(
        model,
        ADAMW,
        source(6),
        6,
        EngineSettings(workers=3, instance=instance, min_deadline_s=600.0, first_deadline_s=600.0),
        should_stop=stop.is_set,
    )
    params = init_params(model.table, 3)
    engine.load_state(params, np.zeros_like(params), np.zeros_like(params))
    try:
        engine.step(0, 1e-3)
        pid = engine.workers[2].proc.pid  # type: ignore[union-attr]
        os.kill(pid, signal.SIGSTOP)  # parks the barrier: its deadline is 10 minutes away
        threading.Timer(0.5, stop.set).start()
        with pytest.raises(EngineStopped):
            engine.step(1, 1e-3)
        assert engine.version == 1  # the abandoned step published nothing
        np.testing.assert_array_equal(engine.params(), engine.state.arrays["params"][engine.src])
    finally:
        engine.close()  # kills the stopped worker too
    assert all(h.proc is not None and h.proc.poll() is not None for h in engine.workers)


def test_killed_control_leaves_no_workers_and_the_next_start_sweeps(instance: str, tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import sys, numpy as np
        from crystalline.workers.engine import ProcessEngine, EngineSettings
        from crystalline.workers.model import GPT
        from crystalline.workers.model_config import ModelConfig
        from crystalline.workers.optimizer_config import AdamWConfig
        cfg = ModelConfig(vocab_size=64, seq_len=16, embed_dim=32, num_layers=2, num_heads=2)
        src = lambda s: np.zeros((4, 17), dtype=np.uint16)
        e = ProcessEngine(GPT(cfg), AdamWConfig(), src, 4, EngineSettings(workers=2, instance={instance!r}))
        print(" ".join(str(h.proc.pid) for h in e.workers), flush=True)
        sys.stdin.read()
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    worker_pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(worker_pids) == 2
    assert len(list_segments(instance)) == 3
    proc.kill()
    proc.wait(timeout=10)
    until(lambda: not any(_alive(p) for p in worker_pids), "orphaned workers outlived control", 30, 0.1)
    assert len(list_segments(instance)) == 3  # a killed run leaves its segments ...
    engine = make_engine(1, 4, instance)  # ... and the next start with the same instance sweeps them
    engine.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its dead parent's reaper) counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


def test_stats_report_every_worker(instance: str) -> None:
    engine = make_engine(3, 6, instance)
    assert isinstance(engine, ProcessEngine)
    try:
        engine.step(0, 1e-3)
        stats = engine.stats()
    finally:
        engine.close()
    assert stats["params_version"] == 1
    assert [w["id"] for w in stats["workers"]] == [0, 1, 2]
    for w in stats["workers"]:
        assert w["state"] == "idle" and w["steps"] == 1 and w["restarts"] == 0 and w["pid"] > 0
        assert w["compute_s"] > 0
    assert stats["last_step"]["grad_norm"] > 0


def test_reducing_in_control_gives_the_same_result(instance: str) -> None:
    scattered = train(make_engine(4, 8, instance), 4)
    in_control = train(make_engine(4, 8, instance, reduce_in_control=True), 4)
    # same sums; the global norm adds up in another order, so the clip factor may differ in the last bit
    np.testing.assert_allclose(in_control, scattered, rtol=0, atol=2e-5)
