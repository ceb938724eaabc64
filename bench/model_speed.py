"""Training-step speed of the numpy GPT against the same network in PyTorch, one CPU thread each.

Both sides run forward, backward, gradient clipping (1.0) and AdamW (betas 0.9/0.99, weight decay
0.1 on 2-D tensors, constant learning rate) on random token windows of the same shape. Before
timing, the PyTorch copy gets the numpy parameters and the loss and gradients of one batch are
compared tensor by tensor (float32 and float64), as is one AdamW step. Prints figures only.

    .venv/bin/python bench/model_speed.py [--layers 4 --embed 128 --seq-len 64 --batch 12 ...]
"""

# ruff: noqa: E402  (the thread variables must be set before numpy and torch load their BLAS)
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy / torch load their BLAS

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from crystalline.workers.model import GPT, init_params
from crystalline.workers.model_config import ModelConfig
from crystalline.workers.optimizer import AdamW, clip_coefficient, global_norm
from crystalline.workers.optimizer_config import AdamWConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ holds torch_gpt.py
try:
    import torch
    from torch_gpt import TorchGPT, adamw, load_params

    torch.set_num_threads(1)
except ImportError:  # numpy figures only
    torch = None  # type: ignore[assignment]

SGEMM = (768, 128, 512)  # M, K, N: the MLP up-projection of the default shape
OPT = AdamWConfig()  # lr 1e-3, betas (0.9, 0.99), eps 1e-8, weight decay 0.1, clip 1.0


def timeit(fn: Callable[[int], object], warmup: int, steps: int, repeats: int) -> list[float]:
    """Milliseconds per call of fn(i), one figure per repeat of ``steps`` calls after warmup."""
    for i in range(warmup):
        fn(i)
    out = []
    for r in range(repeats):
        t0 = time.perf_counter()
        for i in range(steps):
            fn(r * steps + i)
        out.append((time.perf_counter() - t0) * 1e3 / steps)
    return out


def torch_adamw(model: Any) -> Any:
    return adamw(model, OPT.learning_rate, (OPT.beta1, OPT.beta2), OPT.weight_decay, OPT.eps)


def sanity(cfg: ModelConfig, windows: np.ndarray, dtype: type[np.floating]) -> None:
    """Loss and gradient of one batch, numpy vs torch; then one AdamW step from the numpy gradient."""
    m = GPT(cfg)
    flat = init_params(m.table, seed=1, dtype=dtype)
    grad = np.zeros_like(flat)
    loss_sum, n = m.loss_and_grad(flat, windows, grad)
    model = TorchGPT(cfg).to(torch.float64 if dtype == np.float64 else torch.float32)
    pairs = load_params(model, m.table, flat)
    loss = model(torch.from_numpy(windows))
    loss.backward()

    def worst(arrays: dict[str, np.ndarray], attr: str) -> tuple[float, str]:
        """Largest |numpy - torch| over all tensors, and the tensor where it occurs."""
        diffs = []
        for name, arr in arrays.items():
            p, tr = pairs[name]
            other = getattr(p, attr).detach()
            diffs.append((float(np.abs(arr - (other.T if tr else other).numpy()).max()), name))
        return max(diffs)

    label, lnp = np.dtype(dtype).name, loss_sum / n
    gdiff, gname = worst(m.table.views(grad), "grad")
    print(
        f"sanity {label}: loss numpy {lnp:.6f} torch {loss.item():.6f} |diff| {abs(lnp - loss.item()):.1e}; "
        f"grad max |diff| {gdiff:.1e} = {gdiff / np.abs(grad).max():.1e} of max |grad| (at {gname})"
    )
    for name, g in m.table.views(grad).items():  # the same gradient on both sides
        p, tr = pairs[name]
        p.grad = torch.from_numpy((g.T if tr else g).copy())
    before = flat.copy()
    AdamW(OPT, m.table.decay_mask(dtype)).update(flat, grad, 0, OPT.learning_rate)
    torch_adamw(model).step()
    pdiff, pname = worst(m.table.views(flat), "data")
    step = np.abs(flat - before).max()
    print(
        f"sanity {label}: one AdamW step, params max |diff| {pdiff:.1e} (at {pname}; max |update| {step:.1e})"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, default in [("vocab", 256), ("layers", 4), ("heads", 4), ("embed", 128), ("seq-len", 64),
                          ("batch", 12), ("warmup", 5), ("steps", 40), ("repeats", 3)]:  # fmt: skip
        ap.add_argument(f"--{flag}", type=int, default=default, help=f"default {default}")
    a = ap.parse_args()
    cfg = ModelConfig(a.vocab, a.seq_len, a.embed, a.layers, a.heads)
    b, t, c, L, tokens = a.batch, a.seq_len, a.embed, a.layers, a.batch * a.seq_len
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, a.vocab, size=(b, t + 1), dtype=np.int64) for _ in range(8)]
    m = GPT(cfg)
    mm_params = L * (4 + 2 * cfg.mlp_ratio) * c * c + a.vocab * c  # every weight used in a matmul
    dense, attn = 6 * mm_params * tokens, 12 * L * b * t * t * c  # attention: full T x T, as numpy does
    gflop = (dense + attn) / 1e9
    print(f"shape: vocab {a.vocab}, {L} layers, {a.heads} heads, {c} wide, context {t}, batch {b} "
          f"({tokens} tokens/step); {m.num_params / 1e6:.3f} M params; 1 thread")  # fmt: skip
    print(f"work: {gflop:.3f} GFLOP/step = 6*N*tokens {dense / 1e9:.3f} (N = {mm_params / 1e6:.3f} M "
          f"matmul weights) + attention 12*L*B*T^2*C {attn / 1e9:.3f}")  # fmt: skip
    if torch is None:
        print("torch is not importable: numpy figures only")
    else:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
        sanity(cfg, batches[0], np.float32)
        sanity(cfg, batches[0], np.float64)

    params = init_params(m.table, seed=0)
    grad = np.zeros_like(params)
    opt = AdamW(OPT, m.table.decay_mask())

    def np_update(i: int) -> None:
        opt.update(params, grad, i, OPT.learning_rate, clip_coefficient(global_norm(grad), OPT.grad_clip))

    def np_step(i: int) -> None:
        m.loss_and_grad(params, batches[i % 8], grad)
        np_update(i)

    runs = a.warmup, a.steps, a.repeats
    rows = {"numpy": timeit(np_step, *runs)}
    if torch is not None:
        model = TorchGPT(cfg)
        load_params(model, m.table, init_params(m.table, seed=0))
        topt, tb = torch_adamw(model), [torch.from_numpy(w) for w in batches]

        def torch_step(i: int) -> None:
            loss = model(tb[i % 8])
            topt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), OPT.grad_clip)
            topt.step()

        rows["torch"] = timeit(torch_step, *runs)

    print(f"\ntrain step (fwd+bwd+clip+AdamW), {a.steps} steps x {a.repeats} after {a.warmup} warmup:")
    print(f"  {'':6} {'best ms':>9} {'median ms':>10} {'best tok/s':>11} {'median tok/s':>13}")
    for name, ms in rows.items():
        best, med = min(ms), statistics.median(ms)
        print(f"  {name:6} {best:9.2f} {med:10.2f} {tokens / best * 1e3:11.0f} {tokens / med * 1e3:13.0f}")
    if "torch" in rows:
        r_best = min(rows["torch"]) / min(rows["numpy"])
        r_med = statistics.median(rows["torch"]) / statistics.median(rows["numpy"])
        print(f"  numpy/torch tokens/s: {r_best:.2f} (best), {r_med:.2f} (median)")

    print("\nnumpy, where the time goes (ms/step, best / median):")
    parts = {
        "forward (loss)": lambda i: m.loss(params, batches[i % 8]),
        "forward+backward (loss_and_grad)": lambda i: m.loss_and_grad(params, batches[i % 8], grad),
        "clip norm + AdamW update": np_update,
    }
    for name, fn in parts.items():
        ms = timeit(fn, *runs)
        print(f"  {name:34} {min(ms):7.2f} / {statistics.median(ms):7.2f}")

    (mm, kk, nn_), flop = SGEMM, 2 * math.prod(SGEMM)
    x, w, out = np.ones((mm, kk), np.float32), np.ones((kk, nn_), np.float32), np.empty((mm, nn_), np.float32)

    def gflops(mm_call: Callable[[int], object]) -> float:
        return flop / min(timeit(mm_call, 10, 200, 5)) / 1e6  # timeit gives ms per call

    rate = gflops(lambda i: np.matmul(x, w, out=out))
    line = f"\nsgemm {mm}x{kk} @ {kk}x{nn_} float32, 1 thread: numpy {rate:.1f} GFLOP/s"
    if torch is not None:
        tx, tw, to = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(out)
        line += f", torch {gflops(lambda i: torch.matmul(tx, tw, out=to)):.1f} GFLOP/s"
    print(line)
    floor, actual = gflop / rate * 1e3, min(rows["numpy"])
    print(f"matmul floor at the numpy rate: {floor:.2f} ms/step (forward alone {floor / 3:.2f} ms); "
          f"numpy's train step takes {actual / floor:.2f}x it (floor = {floor / actual:.0%})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
