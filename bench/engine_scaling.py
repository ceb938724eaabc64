"""Scaling of the data-parallel engine: tokens/s with W worker processes against the
one-process, single-thread trainer, and where a step's time goes.

    .venv/bin/python bench/engine_scaling.py [--workers 1,2,4,12] [--batch 12,48] [--steps 30]
        [--optimizer adamw|muon] [--ema-decay D]

For each batch size it prints one row per configuration, side by side with the reference
(LocalEngine in this process, one BLAS thread): ms/step, tokens/s, speed-up, and the share
of step time that is not the slowest worker's forward/backward (barriers, reduction,
optimizer, messaging). Prints figures only; asserts nothing.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

import argparse
import time
import uuid

import numpy as np

from crystalline.tokens.windows import batch_for_step
from crystalline.workers.engine import EngineSettings, LocalEngine, ProcessEngine, StepEngine
from crystalline.workers.model import GPT, init_params
from crystalline.workers.model_config import ModelConfig
from crystalline.workers.optimizer_config import AdamWConfig

BABY = ModelConfig(vocab_size=256, seq_len=64, embed_dim=128, num_layers=4, num_heads=4)


def measure(
    workers: int,
    batch: int,
    steps: int,
    warmup: int,
    reduce_in_control: bool = False,
    optimizer: str = "adamw",
    ema_decay: float = 0.0,
) -> dict[str, float]:
    tokens = np.random.default_rng(0).integers(0, 256, 500_000).astype(np.uint16)
    model = GPT(BABY)

    def source(step: int) -> np.ndarray:
        return batch_for_step(tokens, 0, step, batch, BABY.seq_len)

    engine: StepEngine
    opt = AdamWConfig(optimizer=optimizer, ema_decay=ema_decay)
    if workers == 0:
        engine = LocalEngine(model, opt, source)
    else:
        settings = EngineSettings(
            workers=workers, instance="bench" + uuid.uuid4().hex[:8], reduce_in_control=reduce_in_control
        )
        engine = ProcessEngine(model, opt, source, batch, settings)
    params = init_params(model.table, 0)
    engine.load_state(params, np.zeros_like(params), np.zeros_like(params))
    try:
        for s in range(warmup):
            engine.step(s, 1e-3)
        compute = coordination = 0.0
        start = time.perf_counter()
        for s in range(warmup, warmup + steps):
            t0 = time.perf_counter()
            engine.step(s, 1e-3)
            total = time.perf_counter() - t0
            if isinstance(engine, ProcessEngine):
                fwd_bwd = engine.last_step["slowest_worker_compute_s"]
                compute += fwd_bwd
                coordination += total - fwd_bwd
        elapsed = time.perf_counter() - start
    finally:
        engine.close()
    per_step = elapsed / steps
    return {
        "ms": per_step * 1e3,
        "tok_s": batch * BABY.seq_len / per_step,
        "coord_share": coordination / (compute + coordination) if compute else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2,4,12")
    parser.add_argument("--batch", default="12,48,96")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--optimizer", default="adamw", choices=("adamw", "muon"))
    parser.add_argument("--ema-decay", type=float, default=0.0, help="keep a moving average of the weights")
    args = parser.parse_args()
    print(f"model: baby (4 layers, 4 heads, 128 wide, context 64, bytes vocab), {os.cpu_count()} cores, "
          f"1 BLAS thread per process, {args.steps} timed steps, {args.optimizer}, ema {args.ema_decay}, "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    for batch in (int(b) for b in args.batch.split(",")):
        ref = measure(0, batch, args.steps, args.warmup, optimizer=args.optimizer, ema_decay=args.ema_decay)
        print(f"\nbatch {batch} ({batch * BABY.seq_len} tokens/step)")
        print(f"  {'engine':<24}{'ms/step':>9}{'tokens/s':>11}{'speed-up':>10}{'not fwd/bwd':>13}")
        print(
            f"  {'one process (reference)':<24}{ref['ms']:>9.1f}{ref['tok_s']:>11,.0f}{1.0:>10.2f}{'-':>13}"
        )
        counts = [int(x) for x in args.workers.split(",")]
        rows = [(f"{w} worker processes", w, False) for w in counts]
        rows.append((f"{counts[-1]}, reduce in control", counts[-1], True))
        for label, w, in_control in rows:
            r = measure(w, batch, args.steps, args.warmup, in_control, args.optimizer, args.ema_decay)
            print(f"  {label:<24}{r['ms']:>9.1f}{r['tok_s']:>11,.0f}"
                  f"{r['tok_s'] / ref['tok_s']:>10.2f}{r['coord_share']:>13.1%}")  # fmt: skip
    print(
        "\ngoal: 12 workers >= 1.8x the one-process single-thread throughput, coordination < 10% of step time"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
