"""Muon: Newton-Schulz against its exact polynomial (float64), the step against torch.optim.Muon,
and the hybrid AdamW/Muon plan sharded by owner equal to one whole update."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from crystalline.workers.model import init_params
from crystalline.workers.model_config import ModelConfig
from crystalline.workers.optimizer import (
    NS_COEFFS,
    NS_STEPS,
    AdamW,
    hybrid_step,
    muon_step,
    newton_schulz,
    owner_shares,
    update_plan,
)
from crystalline.workers.optimizer_config import AdamWConfig
from crystalline.workers.params import ParamTable

MUON = AdamWConfig(optimizer="muon", muon_lr=0.05, learning_rate=1e-2)
SMALL = ModelConfig(vocab_size=64, seq_len=16, embed_dim=32, num_layers=2, num_heads=2)


def _exact_ns(g: np.ndarray) -> np.ndarray:
    """What the iteration computes, from the SVD: U p(S / |G|_F) V^T with p the quintic applied
    NS_STEPS times to each singular value."""
    u, s, vt = np.linalg.svd(g, full_matrices=False)
    a, b, c = NS_COEFFS
    x = s / np.linalg.norm(g)
    for _ in range(NS_STEPS):
        x = a * x + b * x**3 + c * x**5
    return (u * x) @ vt


@pytest.mark.parametrize("shape", [(6, 9), (9, 6), (7, 7)])
def test_newton_schulz_is_the_singular_value_polynomial(shape: tuple[int, int]) -> None:
    g = np.random.default_rng(0).normal(size=shape)
    np.testing.assert_allclose(newton_schulz(g), _exact_ns(g), rtol=0, atol=1e-12)


def test_newton_schulz_orthogonalises_roughly_and_stacks() -> None:
    g = np.random.default_rng(1).normal(size=(3, 16, 48))
    x = newton_schulz(g)
    for i in range(3):
        np.testing.assert_allclose(x[i], newton_schulz(g[i]), rtol=0, atol=1e-12)
        s = np.linalg.svd(x[i], compute_uv=False)
        assert s.min() > 0.5 and s.max() < 1.3  # the quintic's band, not exactly 1


def test_muon_step_matches_torch_optim_muon() -> None:
    """Three steps on one matrix. torch's Newton-Schulz runs in bfloat16, so the parameters agree
    to bfloat16's precision; the momentum (no Newton-Schulz in it) to float32's."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    w = rng.normal(0, 0.1, (24, 40)).astype(np.float32)  # our (in, out) layout
    grads = [rng.normal(size=w.shape).astype(np.float32) for _ in range(3)]
    ref = torch.nn.Parameter(torch.from_numpy(w.T.copy()))  # torch's (out, in)
    opt = torch.optim.Muon([ref], lr=0.05, weight_decay=0.0, momentum=0.95, nesterov=True)
    p, m = w.copy(), np.zeros_like(w)
    for g in grads:
        ref.grad = torch.from_numpy(g.T.copy())
        opt.step()
        muon_step(p, m, g, (p, m), 0.05, MUON)
    np.testing.assert_allclose(m, opt.state[ref]["momentum_buffer"].numpy().T, rtol=1e-5, atol=1e-7)
    moved = np.abs(p - w).max()
    assert np.abs(p - ref.detach().numpy().T).max() < 0.03 * moved


def test_qkv_blocks_are_orthogonalised_separately() -> None:
    rng = np.random.default_rng(3)
    g = rng.normal(size=(8, 24))
    p0, m0 = np.zeros_like(g), np.zeros_like(g)
    cfg = dataclasses.replace(MUON, muon_momentum=0.0)
    p, m = p0.copy(), m0.copy()
    muon_step(p0, m0, g, (p, m), 1.0, cfg, blocks=3)
    for i in range(3):
        cols = slice(8 * i, 8 * (i + 1))
        np.testing.assert_allclose(-p[:, cols], newton_schulz(g[:, cols]), rtol=0, atol=1e-12)


def test_plan_sends_hidden_matrices_to_muon_and_the_rest_to_adamw() -> None:
    table = ParamTable(SMALL)
    plan = update_plan(table.specs, MUON)
    muon = {(q.lo, q.hi) for q in plan if q.muon}
    hidden = {(s.offset, s.end) for s in table if s.name.endswith(("qkv.w", "proj.w", "fc.w"))}
    assert muon == hidden
    assert [(q.lo, q.hi) for q in update_plan(table.specs, AdamWConfig())] == [(0, table.size)]
    covered = sorted((q.lo, q.hi) for q in plan)
    assert covered[0][0] == 0 and covered[-1][1] == table.size
    assert all(a[1] == b[0] for a, b in itertools.pairwise(covered))


@pytest.mark.parametrize("parts", [1, 3, 5, 12, 40])
def test_owner_shares_never_cut_a_muon_matrix(parts: int) -> None:
    table = ParamTable(SMALL)
    plan = update_plan(table.specs, MUON)
    shares = owner_shares(plan, table.size, parts)
    assert len(shares) == parts and shares[0][0] == 0 and shares[-1][1] == table.size
    assert all(a[1] == b[0] for a, b in itertools.pairwise(shares))
    for q in (q for q in plan if q.muon):
        assert any(lo <= q.lo and q.hi <= hi for lo, hi in shares if hi > lo)
    biggest = max(q.hi - q.lo for q in plan if q.muon)
    assert max(hi - lo for lo, hi in shares) <= max(biggest, -(-table.size // parts) + 2 * 16 + biggest)


def test_owner_shares_balance_the_baby_model_over_twelve() -> None:
    table = ParamTable(ModelConfig())
    shares = owner_shares(update_plan(table.specs, MUON), table.size, 12)
    # the contiguous optimum is 90,368 against an even 69,525: 16 hidden matrices of up to 65,536
    # floats do not pack evenly into 12 contiguous shares
    assert max(hi - lo for lo, hi in shares) <= 1.35 * table.size / 12
    assert sum(hi > lo for lo, hi in shares) == 12


def test_sharded_hybrid_steps_equal_one_whole_step() -> None:
    """What 5 owners write is bit for bit the one-process update (AdamW and Muon alike)."""
    table = ParamTable(SMALL)
    plan = update_plan(table.specs, MUON)
    rng = np.random.default_rng(4)
    p = init_params(table, 0)
    m = rng.normal(0, 0.01, p.shape).astype(np.float32)
    v = rng.uniform(0, 1e-4, p.shape).astype(np.float32)
    grad = rng.normal(0, 0.1, p.shape).astype(np.float32)
    whole = AdamW(MUON, table.decay_mask(), plan)
    whole.m[...], whole.v[...] = m, v
    p_whole = p.copy()
    whole.update(p_whole, grad, 3, 5e-3, grad_scale=0.7)
    out = (np.zeros_like(p), np.zeros_like(p), np.zeros_like(p))
    scratch = (np.empty_like(p), np.empty_like(p))
    for lo, hi in owner_shares(plan, table.size, 5):
        hybrid_step(plan, lo, hi, (p, m, v), grad, table.decay_mask(), out, scratch, 3, 5e-3, MUON, 0.7)
    for got, want in zip(out, (p_whole, whole.m, whole.v), strict=True):
        assert np.array_equal(got, want)
    assert not np.array_equal(out[0], p)


def test_a_range_cutting_a_muon_matrix_is_refused() -> None:
    table = ParamTable(SMALL)
    plan = update_plan(table.specs, MUON)
    q = next(q for q in plan if q.muon)
    p = np.zeros(table.size, np.float32)
    state = (p, p.copy(), p.copy())
    with pytest.raises(ValueError, match="cuts a Muon matrix"):
        hybrid_step(plan, 0, q.lo + 1, state, p, p, state, (p.copy(), p.copy()), 0, 1e-3, MUON)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"optimizer": "sgd"}, "optimizer"),
        ({"muon_lr": 0.0}, "muon-lr"),
        ({"muon_momentum": 1.0}, "muon-momentum"),
    ],
)
def test_absurd_muon_settings_are_rejected(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AdamWConfig(**kwargs).validate()  # type: ignore[arg-type]
