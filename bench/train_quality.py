"""One-process training on tiny Shakespeare (bytes): validation loss and tokens/s after N steps,
for the normal and the lattice (prime / Ulam spiral) token-embedding initialisation, side by side.

    .venv/bin/python bench/train_quality.py [--steps 300] [--data ../shared/data/tinyshakespeare.txt]

Reference: nanoGPT reaches val 2.44 at step 250 with the same size (4 layers, 4 heads, 128 wide,
context 64, batch 12, lr 1e-3, char-level vocab 65); ours uses bytes (vocab 256).
Prints figures only; asserts nothing.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one BLAS thread: the figure is per core
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from crystalline.workers.train_config import TrainConfig, from_file
from crystalline.workers.trainer import Trainer

HERE = Path(__file__).resolve().parent


def run(data: Path, config: TrainConfig) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="crystalline-bench-") as tmp:
        trainer = Trainer([data], Path(tmp) / "ckpt", config)
        start = time.perf_counter()
        result = trainer.run()
        elapsed = time.perf_counter() - start
        evals = [
            json.loads(line)
            for line in (Path(tmp) / "ckpt" / "metrics.jsonl").read_text().splitlines()
            if '"eval"' in line
        ]
    return {
        "val_loss": result.val_loss,
        "train_loss": result.train_loss,
        "tokens_per_s": result.tokens / elapsed,  # includes evals and checkpoints
        "seconds": elapsed,
        "curve": [(e["step"], e["val_loss"]) for e in evals],  # type: ignore[dict-item]
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared/data/tinyshakespeare.txt")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-windows", type=int, default=400)
    parser.add_argument("--inits", default="normal,lattice")
    args = parser.parse_args()
    # nanoGPT's recipe (bench/shakespeare_char.toml holds the tuned 12-worker one)
    base = from_file(HERE / "shakespeare_char.toml")
    base = replace(
        base,
        workers=1,
        batch_size=12,
        learning_rate=1e-3,
        min_lr=1e-4,
        warmup_steps=100,
        lr_decay_steps=2000,
        max_steps=args.steps,
        eval_interval=max(args.steps // 6, 1),
        eval_windows=args.eval_windows,
        checkpoint_interval=args.steps,
    )
    print(
        f"data {args.data}  steps {args.steps}  batch {base.batch_size}x{base.seq_len}  "
        f"model {base.num_layers}L {base.num_heads}H {base.embed_dim}d  bytes vocab 256"
    )
    rows = {}
    for init in args.inits.split(","):
        rows[init] = run(args.data, replace(base, init=init))
        r = rows[init]
        curve = "  ".join(f"{s}:{v:.3f}" for s, v in r["curve"])  # type: ignore[attr-defined]
        print(
            f"{init:>8}: val {r['val_loss']:.4f}  train {r['train_loss']:.4f}  "
            f"{r['tokens_per_s']:,.0f} tok/s  {r['seconds']:.1f} s   curve {curve}"
        )
    print("reference: nanoGPT val 2.44 at step 250 (char vocab 65); goal here: val < 2.6 at step 300")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
