"""Screen training-recipe changes one at a time: the one-process trainer on tiny Shakespeare
(bytes, last 10% held out) for each variant at the same steps and batch, side by side in one
run. Prints validation loss at equal tokens (deterministic given the seed), the tokens at which
each first reached the target, and tokens/s (noisy: the variants run one after another).

    .venv/bin/python bench/recipe_screen.py [--steps 300] [--variant NAME=key:value,key:value ...]

With no --variant the built-in list runs: the tuned AdamW recipe of bench/shakespeare_char.toml
and each speedrun change alone and stacked. Asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from crystalline.workers.train_config import from_file, settings_tree
from crystalline.workers.trainer import TrainConfig, Trainer

HERE = Path(__file__).resolve().parent
KEYS = settings_tree().tables["train"].keys
DATA = HERE.parent.parent / "shared/data/tinyshakespeare.txt"

VARIANTS: dict[str, dict[str, Any]] = {
    "adamw (toml recipe)": {},
    "+muon": {"optimizer": "muon"},
    "+relu2": {"mlp": "relu2"},
    "+untied": {"head": "untied"},
    "+muon +relu2": {"optimizer": "muon", "mlp": "relu2"},
    "+muon +relu2 +untied": {"optimizer": "muon", "mlp": "relu2", "head": "untied"},
}


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """NAME=key:value,key:value with values as TOML scalars (3e-3, "muon" or muon)."""
    name, _, body = text.partition("=")
    out: dict[str, Any] = {}
    for item in filter(None, body.split(",")):
        key, _, raw = item.partition(":")
        key = key.strip().replace("-", "_")
        if key not in KEYS:
            raise SystemExit(f"--variant: unknown key {key!r}")
        out[key] = KEYS[key].coerce(raw.strip().strip('"'), "--variant")
    return name, out


def run(base: dict[str, Any], changes: dict[str, Any], steps: int, target: float) -> dict[str, Any]:
    values = {**base, **changes, "workers": 1, "max_steps": steps, "target_val_loss": 0.0}
    values.setdefault("lr_decay_steps", steps)
    values["lr_decay_steps"] = steps
    values["eval_interval"] = max(1, steps // 10)
    values["checkpoint_interval"] = steps
    cfg = TrainConfig(**values)
    with tempfile.TemporaryDirectory(prefix="crystalline-screen-") as tmp:
        start = time.perf_counter()
        trainer = Trainer([DATA], Path(tmp) / "ck", cfg)
        result = trainer.run()
        wall = time.perf_counter() - start
        evals = [
            json.loads(line)
            for line in (Path(tmp) / "ck" / "metrics.jsonl").read_text().splitlines()
            if '"eval"' in line
        ]
    below = [e["tokens"] for e in evals if e["val_loss"] is not None and e["val_loss"] <= target]
    reached = below[0] if below else None
    return {"val": result.val_loss, "tokens": result.tokens, "reached": reached, "wall": wall, "evals": evals}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--target", type=float, default=1.89)
    parser.add_argument("--config", type=Path, default=HERE / "shakespeare_char.toml")
    parser.add_argument("--variant", action="append", default=[])
    args = parser.parse_args()
    base = dataclasses.asdict(from_file(args.config))
    variants = dict(parse_variant(v) for v in args.variant) if args.variant else VARIANTS
    print(f"{args.steps} steps, batch {base.get('batch_size')}, one process; val at every 10% of the run")
    print(f"load average {os.getloadavg()[0]:.1f} at the start")
    for name, changes in variants.items():
        r = run(base, changes, args.steps, args.target)
        curve = " ".join(f"{e['val_loss']:.3f}" for e in r["evals"][1:])
        reached = f"{r['reached']:,}" if r["reached"] else "-"
        print(
            f"{name:<28} val {r['val']:.4f}  tokens to {args.target}: {reached:>10}  "
            f"{r['tokens'] / r['wall']:7,.0f} tok/s  | {curve}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
