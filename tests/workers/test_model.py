"""The numpy GPT: gradients against finite differences (float64), dtype discipline, init loss."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from crystalline.workers.model import GPT, _layernorm, _layernorm_backward, _softmax, init_params
from crystalline.workers.model_config import ModelConfig
from crystalline.workers.params import ParamTable

TINY = ModelConfig(vocab_size=11, seq_len=6, embed_dim=8, num_layers=2, num_heads=2)


def _perturbed_params(model: GPT, seed: int = 0) -> np.ndarray:
    params = init_params(model.table, seed, np.float64)
    # break the symmetry of unit gains / zero biases so every path carries gradient
    params += np.random.default_rng(seed + 1).normal(0.0, 0.3, params.shape)
    return params


def _numeric_grad(model: GPT, params: np.ndarray, windows: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    num = np.zeros_like(params)
    n = windows[:, 1:].size
    for i in range(params.size):
        old = params[i]
        params[i] = old + eps
        plus, _ = model.loss(params, windows)
        params[i] = old - eps
        minus, _ = model.loss(params, windows)
        params[i] = old
        num[i] = (plus - minus) / (2 * eps) / n
    return num


@pytest.mark.parametrize("t", [6, 4])  # full context and a shorter block
@pytest.mark.parametrize(
    "options", [{}, {"mlp": "relu2"}, {"head": "untied"}, {"mlp": "relu2", "head": "untied"}], ids=str
)
def test_whole_model_gradient_matches_finite_differences(t: int, options: dict[str, str]) -> None:
    model = GPT(dataclasses.replace(TINY, **options))
    params = _perturbed_params(model)
    windows = np.random.default_rng(2).integers(0, TINY.vocab_size, (3, t + 1))
    grad = np.zeros_like(params)
    model.loss_and_grad(params, windows, grad)
    num = _numeric_grad(model, params, windows)
    for spec in model.table:
        a, b = grad[spec.offset : spec.end], num[spec.offset : spec.end]
        err = np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12)
        assert err < 1e-6, f"{spec.name}: relative error {err:.2e}"


def test_layernorm_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(3)
    n, c = 5, 7
    x = rng.normal(size=(n, c))
    w, b = rng.normal(size=c), rng.normal(size=c)
    upstream = rng.normal(size=(n, c))

    def forward(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> float:
        xhat, rstd, out = np.zeros((n, c)), np.zeros((n, 1)), np.zeros((n, c))
        _layernorm(x, w, b, xhat, rstd, out, mean_vec)
        return float((out * upstream).sum())

    mean_vec = np.full((c, 1), 1.0 / c)
    xhat, rstd, out = np.zeros((n, c)), np.zeros((n, 1)), np.zeros((n, c))
    _layernorm(x, w, b, xhat, rstd, out, mean_vec)
    dw, db, dx = np.zeros(c), np.zeros(c), np.zeros((n, c))
    _layernorm_backward(
        upstream.copy(), xhat, rstd, w, dw, db, dx, np.zeros((n, c)), np.zeros((n, 1)), mean_vec
    )
    eps = 1e-6
    for arr, analytic in ((x, dx), (w, dw), (b, db)):
        numeric = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            old = arr[i]
            arr[i] = old + eps
            plus = forward(x, w, b)
            arr[i] = old - eps
            minus = forward(x, w, b)
            arr[i] = old
            numeric[i] = (plus - minus) / (2 * eps)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


def test_every_parameter_tensor_gets_a_nonzero_gradient() -> None:
    # the C original shared only the embedding gradient; every tensor must move
    cfg = ModelConfig(vocab_size=32, seq_len=16, embed_dim=16, num_layers=2, num_heads=2)
    model = GPT(cfg)
    params = init_params(model.table, 0)
    windows = np.random.default_rng(0).integers(0, 32, (4, 17))
    grad = np.zeros_like(params)
    model.loss_and_grad(params, windows, grad)
    views = model.table.views(grad)
    for name, g in views.items():
        assert np.abs(g).max() > 0, f"{name} received no gradient"


def test_float32_stays_float32() -> None:
    # a NumPy float64 scalar would silently promote the activations and halve the speed
    model = GPT(ModelConfig(vocab_size=40, seq_len=8, embed_dim=16, num_layers=1, num_heads=4))
    params = init_params(model.table, 0)
    grad = np.zeros_like(params)
    windows = np.random.default_rng(0).integers(0, 40, (2, 9))
    model.loss_and_grad(params, windows, grad)
    assert params.dtype == np.float32 and grad.dtype == np.float32
    ws = next(iter(model._workspaces.values()))
    assert ws.probs.dtype == np.float32 and ws.layers[0].att.dtype == np.float32
    assert model.probabilities(params, windows[:, :-1]).dtype == np.float32


def test_loss_at_init_is_about_ln_vocab() -> None:
    cfg = ModelConfig(vocab_size=256, seq_len=32, embed_dim=64, num_layers=2, num_heads=4)
    model = GPT(cfg)
    params = init_params(model.table, 0)
    windows = np.random.default_rng(0).integers(0, 256, (8, 33))
    loss_sum, n = model.loss(params, windows)
    assert n == 8 * 32
    assert abs(loss_sum / n - math.log(256)) < 0.05


def test_gradient_scale_multiplies_the_gradient() -> None:
    # workers pass 1/(global tokens) so the reduction is a plain sum of rows
    model = GPT(TINY)
    params = _perturbed_params(model)
    windows = np.random.default_rng(4).integers(0, TINY.vocab_size, (2, 7))
    mean_grad, sum_grad = np.zeros_like(params), np.zeros_like(params)
    model.loss_and_grad(params, windows, mean_grad)
    model.loss_and_grad(params, windows, sum_grad, scale=1.0)
    np.testing.assert_allclose(sum_grad, mean_grad * windows[:, 1:].size, rtol=1e-10, atol=1e-13)


def test_split_batch_gradients_sum_to_the_whole_batch_gradient() -> None:
    model = GPT(TINY)
    params = _perturbed_params(model)
    windows = np.random.default_rng(5).integers(0, TINY.vocab_size, (5, 7))
    whole, part = np.zeros_like(params), np.zeros_like(params)
    model.loss_and_grad(params, windows, whole)
    total = np.zeros_like(params)
    for rows in (slice(0, 2), slice(2, 5)):
        model.loss_and_grad(params, windows[rows], part, scale=1.0 / windows[:, 1:].size)
        total += part
    np.testing.assert_allclose(total, whole, rtol=1e-10, atol=1e-14)


def test_causal_mask_hides_the_future() -> None:
    model = GPT(ModelConfig(vocab_size=20, seq_len=8, embed_dim=16, num_layers=2, num_heads=2))
    params = init_params(model.table, 1)
    idx = np.random.default_rng(0).integers(0, 20, (1, 8))
    changed = idx.copy()
    changed[0, 5:] = (changed[0, 5:] + 1) % 20
    a = model.probabilities(params, idx)
    b = model.probabilities(params, changed)
    np.testing.assert_array_equal(a[0, :5], b[0, :5])
    assert not np.array_equal(a[0, 5:], b[0, 5:])


def test_param_table_layout_is_contiguous_and_decay_only_on_matrices() -> None:
    table = ParamTable(ModelConfig())
    offset = 0
    for spec in table:
        assert spec.offset == offset
        offset = spec.end
        assert spec.decay == (len(spec.shape) == 2)
    assert table.size == offset
    mask = table.decay_mask()
    assert mask.sum() == sum(s.size for s in table if s.decay)


def test_bad_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="num-heads"):
        ModelConfig(embed_dim=130, num_heads=4).validate()
    model = GPT(TINY)
    params = init_params(model.table, 0)
    with pytest.raises(ValueError, match="token block"):
        model.probabilities(params, np.zeros((1, TINY.seq_len + 1), dtype=np.int64))


@pytest.mark.parametrize("offset", [0.0, 200.0, -200.0])  # exact path, overflow, underflow
def test_softmax_falls_back_to_the_stable_form(offset: float) -> None:
    rng = np.random.default_rng(0)
    scores = (rng.normal(size=(6, 5)) + offset).astype(np.float32)
    scores[0, 3] = -np.inf  # a masked entry
    out, row_sum = np.zeros_like(scores), np.zeros((6, 1), dtype=np.float32)
    _softmax(scores, out, row_sum, np.ones((5, 1), dtype=np.float32))
    shifted = np.exp(scores.astype(np.float64) - scores.max(axis=1, keepdims=True))
    np.testing.assert_allclose(out, shifted / shifted.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-7)
    assert out[0, 3] == 0.0


BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.parametrize("options", [{}, {"mlp": "relu2"}, {"head": "untied"}], ids=str)
def test_gradient_matches_pytorch_in_float64(options: dict[str, str]) -> None:
    """The same network in PyTorch (bench/torch_gpt.py), autograd in float64."""
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(BENCH))
    try:
        from torch_gpt import TorchGPT, load_params
    finally:
        sys.path.remove(str(BENCH))
    cfg = dataclasses.replace(TINY, **options)
    model = GPT(cfg)
    params = _perturbed_params(model, seed=4)
    windows = np.random.default_rng(5).integers(0, cfg.vocab_size, (3, cfg.seq_len + 1))
    grad = np.zeros_like(params)
    loss_sum, n = model.loss_and_grad(params, windows, grad)
    reference = TorchGPT(cfg).double()
    pairs = load_params(reference, model.table, params)
    loss = reference(torch.from_numpy(windows))
    loss.backward()
    assert loss_sum / n == pytest.approx(loss.item(), rel=1e-12)
    views = model.table.views(grad)
    for name, (param, transposed) in pairs.items():
        expected = param.grad.numpy()
        np.testing.assert_allclose(views[name], expected.T if transposed else expected, rtol=1e-9, atol=1e-12)


def test_untied_head_starts_at_zero_and_the_default_table_is_unchanged() -> None:
    """Old checkpoints load: the default config keeps the original table (no lm_head)."""
    assert "lm_head" not in ParamTable(TINY).by_name
    untied = GPT(dataclasses.replace(TINY, head="untied"))
    assert untied.num_params == GPT(TINY).num_params + TINY.vocab_size * TINY.embed_dim
    views = untied.table.views(init_params(untied.table, 0))
    assert not views["lm_head"].any() and views["wte"].any()
