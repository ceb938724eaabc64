"""Which weights should a run that never ends serve? Raw weights at a stable learning rate,
their exponential moving average (several decays), or periodic short cool-downs: validation
loss at equal tokens, side by side in one run.

    .venv/bin/python bench/served_weights.py [--steps 1000] [--period 200] [--cooldown 40]
        [--no-cooldowns] [--optimizer adamw|muon] [--json FILE]

The daemon's model and recipe (embed 128, 4 layers, context 64, batch 48, AdamW 1e-3, warmup
100) on tiny Shakespeare (``../shared/data/tinyshakespeare.txt``, bytes, last 10% held out;
the bundled samples when it is missing), in this process (LocalEngine, one BLAS thread):

- stable: warmup, then the peak learning rate; evaluated raw and through the EMA of
  ``workers/ema.py`` at each decay, every ``period`` steps;
- branch cool-down: at ``period - cooldown`` steps before each evaluation, a copy of the stable
  run decays linearly to min-lr over ``cooldown`` steps on the stable run's own batches and is
  evaluated at the same tokens, then dropped (``cooldown / period`` extra compute);
- in-line cool-down (sawtooth): one run whose learning rate decays to min-lr over the last
  ``cooldown`` steps of every period and jumps back to the peak after it; what it can serve
  between cool-downs is the weights of the last one.

Prints a table of validation loss per evaluation and per kind of weights; asserts nothing.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from crystalline.tokens.tokenizer import ByteTokenizer
from crystalline.tokens.windows import batch_for_step, eval_windows, load_split
from crystalline.workers.ema import decay_at, ema_step
from crystalline.workers.engine import LocalEngine
from crystalline.workers.model import GPT, init_params
from crystalline.workers.optimizer import learning_rate
from crystalline.workers.train_config import TrainConfig
from crystalline.workers.trainer import evaluate

HERE = Path(__file__).resolve().parent
SHAKESPEARE = HERE.parent.parent / "shared/data/tinyshakespeare.txt"
SAMPLES = HERE.parent / "daemon/samples"
DECAYS = (0.99, 0.995, 0.998, 0.999)


def cooldown_lr(step: int, start: int, length: int, peak: float, floor: float) -> float:
    """Linear decay from ``peak`` at ``start`` to ``floor`` at the cool-down's last step."""
    return peak + (floor - peak) * (step - start + 1) / length


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--period", type=int, default=200)
    parser.add_argument("--cooldown", type=int, default=40)
    parser.add_argument("--eval-windows", type=int, default=400)
    parser.add_argument("--no-cooldowns", action="store_true", help="raw and EMAs only (longer runs)")
    parser.add_argument("--optimizer", default="adamw", choices=("adamw", "muon"),
                        help="muon: Muon 0.02 on the hidden matrices (the small preset)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    source = [SHAKESPEARE] if SHAKESPEARE.exists() else [SAMPLES]
    cfg = dataclasses.replace(TrainConfig(), batch_size=48, schedule="stable", optimizer=args.optimizer)
    adamw = cfg.adamw_config()
    tok = ByteTokenizer()
    split = load_split(source, tok, cfg.val_fraction)
    val = eval_windows(split.val, cfg.seq_len, args.eval_windows)
    model = GPT(cfg.model_config(tok.vocab_size))

    def batch(step: int) -> np.ndarray:
        return batch_for_step(split.train, cfg.seed, step, cfg.batch_size, cfg.seq_len)

    def fresh() -> LocalEngine:
        engine = LocalEngine(model, adamw, batch)
        params = init_params(model.table, cfg.seed)
        engine.load_state(params, np.zeros_like(params), np.zeros_like(params))
        return engine

    print(f"data: {', '.join(map(str, source))} ({len(split.train):,} train tokens, {len(val)} val windows)")
    print(f"model {model.num_params:,} parameters, {cfg.optimizer}, batch {cfg.batch_size}, "
          f"lr {cfg.learning_rate} "
          f"(min {cfg.min_lr}), warmup {cfg.warmup_steps}, {args.steps} steps, cool-down "
          f"{args.cooldown} of every {args.period}, load {os.getloadavg()[0]:.1f}")  # fmt: skip
    evals = list(range(args.period, args.steps + 1, args.period))
    rows: dict[int, dict[str, float]] = {s: {} for s in evals}
    t0 = time.monotonic()

    # stable run: raw, EMAs, branch cool-downs
    engine = fresh()
    emas = {d: engine.params().copy() for d in DECAYS}
    scratch = np.empty_like(engine.params())
    for step in range(args.steps):
        if step + args.cooldown in rows and not args.no_cooldowns:  # branch: cool down a copy
            saved = (engine.params().copy(), *(x.copy() for x in engine.moments()))
            for s in range(step, step + args.cooldown):
                engine.step(s, cooldown_lr(s, step, args.cooldown, cfg.learning_rate, cfg.min_lr))
            rows[step + args.cooldown]["branch cool-down"] = evaluate(model, engine.params(), val)
            engine.load_state(*saved)
        engine.step(step, learning_rate(step, adamw))
        for d, ema in emas.items():
            ema_step(ema, engine.params(), decay_at(step, d), ema, scratch)
        if step + 1 in rows:
            rows[step + 1]["raw (stable)"] = evaluate(model, engine.params(), val)
            for d, ema in emas.items():
                rows[step + 1][f"ema {d}"] = evaluate(model, ema, val)
            figures = "  ".join(f"{k} {v:.4f}" for k, v in rows[step + 1].items())
            print(f"  stable run: step {step + 1} ({time.monotonic() - t0:.0f} s): {figures}", flush=True)

    # in-line cool-downs
    engine = fresh()
    for step in range(0 if args.no_cooldowns else args.steps):
        end = (step // args.period + 1) * args.period
        if step >= end - args.cooldown and step >= cfg.warmup_steps:
            lr = cooldown_lr(step, end - args.cooldown, args.cooldown, cfg.learning_rate, cfg.min_lr)
        else:
            lr = learning_rate(step, adamw)
        engine.step(step, lr)
        if step + 1 in rows:
            rows[step + 1]["in-line cool-down"] = evaluate(model, engine.params(), val)
            print(f"  in-line run: step {step + 1} ({time.monotonic() - t0:.0f} s)", flush=True)

    kinds = list(rows[evals[0]])
    print(f"\nvalidation loss (nats/byte) at equal tokens ({cfg.batch_size * cfg.seq_len} a step), "
          f"{time.monotonic() - t0:.0f} s")  # fmt: skip
    print(f"{'step':>6}" + "".join(f"{k:>19}" for k in kinds))
    for s in evals:
        print(f"{s:>6}" + "".join(f"{rows[s][k]:>19.4f}" for k in kinds))
    means = {k: float(np.mean([rows[s][k] for s in evals[1:]])) for k in kinds}
    print(f"{'mean*':>6}" + "".join(f"{means[k]:>19.4f}" for k in kinds))
    cost = (f"; branch cool-downs cost {args.cooldown / args.period:.0%} extra steps, in-line ones serve "
            f"weights up to {args.period} steps old between cool-downs")  # fmt: skip
    print("* over the evaluations after the first" + ("" if args.no_cooldowns else cost))
    if args.json:
        args.json.write_text(
            json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
