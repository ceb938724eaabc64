"""crystalline.descriptors: the shard-map cap follows RLIMIT_NOFILE; a limit too low is one
clear error. Each case runs in a child process whose limit it sets (as `ulimit -n` would)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def with_limit(soft: int, hard: int, code: str) -> subprocess.CompletedProcess[str]:
    script = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))
        from crystalline import descriptors as D
    """) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)


@pytest.mark.timeout(60)
def test_soft_limit_is_raised_to_the_hard_limit() -> None:
    out = with_limit(64, 512, "print(D.raise_soft_limit(), D.soft_limit())")
    assert out.stdout.split() == ["512", "512"], out.stderr


@pytest.mark.timeout(60)
def test_shard_map_cap_follows_the_limit() -> None:
    code = "print(D.open_descriptors(), D.shard_map_cap(2), D.RESERVE)"
    caps = {}
    for limit in (64, 256, 1024, 8192):
        out = with_limit(limit, limit, code)
        in_use, cap, reserve = map(int, out.stdout.split())
        assert cap == min((limit - in_use - reserve) // 2, 1024), (limit, in_use, cap)
        caps[limit] = cap
    assert caps[64] < caps[256] < caps[1024] < 64 * caps[64]
    assert caps[8192] == 1024  # bounded even under a generous limit


@pytest.mark.timeout(60)
def test_too_low_a_limit_names_the_limit_and_the_minimum() -> None:
    code = """
    try:
        D.check_control_limit(12, 2)
    except D.DescriptorLimitTooLow as exc:
        print(exc)
    """
    out = with_limit(32, 32, code)
    message = out.stdout.strip()
    assert message.startswith(
        "the open-files limit (RLIMIT_NOFILE) is 32, the control process with 12 workers"
    )
    need = int(message.split("needs at least ")[1].split(":")[0])
    assert need > 32 and f"ulimit -n {need} or more" in message and "LimitNOFILE=" in message
    # and at that minimum the check passes
    out = with_limit(need, need, "print(D.check_control_limit(12, 2))")
    assert out.returncode == 0 and int(out.stdout) == need, out.stderr


@pytest.mark.timeout(120)
def test_engine_descriptor_estimate_covers_a_real_engine() -> None:
    # as in control: the engine's socket on the process's ZeroMQ context (in use already), and
    # the context is still usable after the engine closes (the engine never terminates it)
    code = """
    import os, uuid
    import numpy as np
    import zmq
    from crystalline.workers.engine import EngineSettings, ProcessEngine
    from crystalline.workers.model import GPT
    from crystalline.workers.optimizer_config import AdamWConfig
    from crystalline.workers.model_config import ModelConfig
    cfg = ModelConfig(vocab_size=64, seq_len=16, embed_dim=32, num_layers=2, num_heads=2)
    ctx = zmq.Context()
    ctx.socket(zmq.DEALER).close(0)
    for workers in (2, 5, 12):
        before = D.open_descriptors()
        e = ProcessEngine(GPT(cfg), AdamWConfig(), lambda s: None, 10,
                          EngineSettings(workers, "t" + uuid.uuid4().hex[:10]), zmq_context=ctx)
        print(workers, D.open_descriptors() - before, D.engine_descriptors(workers))
        e.close()
    ctx.socket(zmq.DEALER).close(0)
    ctx.term()
    """
    out = with_limit(4096, 4096, code)
    rows = [list(map(int, line.split())) for line in out.stdout.splitlines()]
    assert [r[0] for r in rows] == [2, 5, 12] and out.returncode == 0, out.stderr
    for _workers, measured, estimate in rows:
        # the estimate is what the engine opens; up to 2 fewer while ZeroMQ's reaper has not
        # yet closed the previous engine's socket (its mailbox is reused)
        assert estimate - 2 <= measured <= estimate, rows
