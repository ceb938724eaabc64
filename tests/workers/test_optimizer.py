"""AdamW, the learning-rate schedule and clipping."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from crystalline.workers.optimizer import AdamW, clip_coefficient, global_norm, learning_rate
from crystalline.workers.optimizer_config import AdamWConfig


def _reference_adamw(p, g, m, v, mask, t, lr, cfg):  # type: ignore[no-untyped-def]
    """Textbook AdamW (Loshchilov & Hutter, PyTorch's form), float64."""
    p = p * (1 - lr * cfg.weight_decay * mask)
    m = cfg.beta1 * m + (1 - cfg.beta1) * g
    v = cfg.beta2 * v + (1 - cfg.beta2) * g * g
    mhat = m / (1 - cfg.beta1**t)
    vhat = v / (1 - cfg.beta2**t)
    return p - lr * mhat / (np.sqrt(vhat) + cfg.eps), m, v


def test_adamw_matches_the_textbook_update_over_several_steps() -> None:
    rng = np.random.default_rng(0)
    cfg = AdamWConfig(weight_decay=0.1, beta2=0.99)
    n = 50
    mask = (rng.random(n) < 0.5).astype(np.float64)
    opt = AdamW(cfg, mask)
    p = rng.normal(size=n)
    ref_p, ref_m, ref_v = p.copy(), np.zeros(n), np.zeros(n)
    for step in range(5):
        g = rng.normal(size=n)
        lr = 1e-2 * (step + 1)
        opt.update(p, g, step, lr)
        ref_p, ref_m, ref_v = _reference_adamw(ref_p, g, ref_m, ref_v, mask, step + 1, lr, cfg)
    np.testing.assert_allclose(p, ref_p, rtol=1e-12)
    np.testing.assert_allclose(opt.m, ref_m, rtol=1e-12)
    np.testing.assert_allclose(opt.v, ref_v, rtol=1e-12)


def test_no_weight_decay_where_the_mask_is_zero() -> None:
    cfg = AdamWConfig(weight_decay=0.5)
    opt = AdamW(cfg, np.array([0.0, 1.0]))
    p = np.array([2.0, 2.0])
    opt.update(p, np.zeros(2), step=0, lr=0.1)  # zero gradient: only decay can move p
    assert p[0] == 2.0
    assert p[1] == pytest.approx(2.0 * (1 - 0.1 * 0.5))


def test_slice_updates_equal_one_whole_update() -> None:
    # in the engine each owner steps its own slice; the union must be the whole step
    rng = np.random.default_rng(1)
    mask = np.ones(30, dtype=np.float32)
    whole, parts = AdamW(AdamWConfig(), mask), AdamW(AdamWConfig(), mask.copy())
    p1 = rng.normal(size=30).astype(np.float32)
    p2 = p1.copy()
    g = rng.normal(size=30).astype(np.float32)
    whole.update(p1, g, 0, 1e-3, grad_scale=0.5)
    for lo, hi in ((0, 7), (7, 19), (19, 30)):
        parts.update(p2, g, 0, 1e-3, grad_scale=0.5, lo=lo, hi=hi)
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(whole.m, parts.m)


def test_gradient_is_left_untouched_and_float32_stays_float32() -> None:
    opt = AdamW(AdamWConfig(), np.ones(10, dtype=np.float32))
    p = np.ones(10, dtype=np.float32)
    g = np.full(10, 0.5, dtype=np.float32)
    opt.update(p, g, 0, 1e-3, grad_scale=0.3)
    assert np.all(g == 0.5)
    assert p.dtype == np.float32 and opt.m.dtype == np.float32


def test_schedule_warmup_cosine_and_floor() -> None:
    cfg = AdamWConfig(learning_rate=1e-3, min_lr=1e-4, warmup_steps=10, decay_steps=110)
    assert learning_rate(0, cfg) == pytest.approx(1e-4)  # (0 + 1) / 10 of the peak
    assert learning_rate(9, cfg) == pytest.approx(1e-3)
    assert learning_rate(10, cfg) == pytest.approx(1e-3)
    assert learning_rate(60, cfg) == pytest.approx((1e-3 + 1e-4) / 2)  # half way down the cosine
    assert learning_rate(110, cfg) == pytest.approx(1e-4)
    assert learning_rate(10_000, cfg) == pytest.approx(1e-4)
    rates = [learning_rate(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(rates))


def test_clipping_scales_to_the_max_norm() -> None:
    g = np.array([3.0, 4.0], dtype=np.float32)
    norm = global_norm(g)
    assert norm == pytest.approx(5.0)
    assert clip_coefficient(norm, 1.0) * norm == pytest.approx(1.0, rel=1e-5)
    assert clip_coefficient(norm, 10.0) == 1.0
    assert clip_coefficient(norm, 0.0) == 1.0  # 0 disables clipping
    assert math.isnan(global_norm(np.array([np.nan, 1.0])))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"learning_rate": 0.0}, "learning-rate"),
        ({"min_lr": 1.0}, "min-lr"),
        ({"weight_decay": -1.0}, "weight-decay"),
        ({"beta2": 1.0}, "betas"),
    ],
)
def test_absurd_settings_are_rejected(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AdamWConfig(**kwargs).validate()  # type: ignore[arg-type]
