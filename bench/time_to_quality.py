"""Time to quality on tiny Shakespeare, side by side in one run: the PyTorch nanoGPT CPU recipe
(bench/torch_reference.py) against `crystalline train --workers 12` with the tuned
bench/shakespeare_char.toml. Both evaluate the same fixed validation windows (bytes, last 10%).

    .venv/bin/python bench/time_to_quality.py [--target 1.89] [--workers 12] [--skip-reference]
        [--config bench/shakespeare_char.toml] [--repeat N]

Prints, for each, the wall time (from process start) at which the validation loss first
reached the target, the tokens it took, the tokens/s up to then, the final validation loss,
the parameter count, the CPU seconds of the whole run (all its processes) and the load average
around it; then the ratio of the two times and of the two CPU times. The two run one after the
other, never at once; --repeat alternates them N times. On a machine loaded by other work the
wall ratio favours the side with more processes (12 workers get more of the time slices than 2
torch threads), so the CPU ratio is printed beside it. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared/data/tinyshakespeare.txt"


def first_reaching(metrics: Path, target: float) -> dict[str, Any]:
    """When val <= target first (elapsed_s, tokens), the last val loss and params, from a metrics.jsonl."""
    out: dict[str, Any] = {"reached_s": None, "reached_tokens": None, "last": None, "params": None}
    for line in metrics.read_text().splitlines():
        record = json.loads(line)
        if record.get("event") == "start":
            out["params"] = record.get("params")
        if record.get("event") != "eval" or record.get("val_loss") is None:
            continue
        out["last"] = record["val_loss"]
        if out["reached_s"] is None and out["last"] <= target:
            out["reached_s"], out["reached_tokens"] = record["elapsed_s"], record["tokens"]
    return out


def cpu_seconds() -> float:
    """User + system time of all finished children (the trainers and their worker processes)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(label: str, cmd: list[str], metrics: Path, target: float) -> tuple[float, float] | None:
    """Runs one trainer; prints its line; returns (seconds to the target, CPU seconds of the run)
    or None when the target was not reached."""
    load_before = os.getloadavg()[0]
    start, cpu_start = time.perf_counter(), cpu_seconds()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    load = f"cpu {cpu:6.1f} s   load {load_before:.1f}->{os.getloadavg()[0]:.1f}"
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        print(f"{label:<34} failed (exit {proc.returncode}): {tail[0]}")
        return None
    if not metrics.exists():
        print(f"{label:<34} wrote no metrics: {proc.stdout.strip()[-200:]}")
        return None
    r = first_reaching(metrics, target)
    reached = r["reached_s"]
    when = f"{reached:7.1f} s" if reached is not None else "not reached"
    tokens = f"{r['reached_tokens']:,} tokens, {r['reached_tokens'] / reached:,.0f} tok/s" if reached else "-"
    size = f"{r['params']:,}" if r["params"] else "see its output"
    print(
        f"{label:<34} val <= {target}: {when:>11} ({tokens})   final val {r['last']:.4f}   "
        f"wall {wall:6.1f} s   params {size}   {load}"
    )
    for line in proc.stdout.strip().splitlines()[-2:]:
        print(f"    | {line}")
    metrics.unlink()
    return None if reached is None else (reached, cpu)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--target", type=float, default=1.89)
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--config", type=Path, default=HERE / "shakespeare_char.toml")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    print(f"tiny Shakespeare {args.data}, target val {args.target}, {os.cpu_count()} cores, {args.config}")
    for _ in range(args.repeat):
        ref, ours = race(args)
        if ref and ours:
            print(
                f"ratio crystalline / PyTorch: time to {args.target} {ours[0] / ref[0]:.2f}, "
                f"CPU seconds of the runs {ours[1] / ref[1]:.2f}"
            )
    return 0


def race(args: argparse.Namespace) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    ref: tuple[float, float] | None = None
    with tempfile.TemporaryDirectory(prefix="crystalline-ttq-") as tmp:
        out = Path(tmp)
        if not args.skip_reference:
            ref_metrics = out / "torch.jsonl"
            ref = run(
                "PyTorch nanoGPT recipe (reference)",
                [
                    sys.executable,
                    str(HERE / "torch_reference.py"),
                    "--data",
                    str(args.data),
                    "--metrics",
                    str(ref_metrics),
                    "--target-val-loss",
                    str(args.target),
                ],
                ref_metrics,
                args.target,
            )
        ck = out / "crystalline"
        ours = run(
            f"crystalline --workers {args.workers}",
            [
                sys.executable,
                "-m",
                "crystalline.daemon.cli",
                "train",
                str(args.data),
                "--checkpoint-dir",
                str(ck),
                "--config",
                str(args.config),
                "--workers",
                str(args.workers),
                "--target-val-loss",
                str(args.target),
            ],
            ck / "metrics.jsonl",
            args.target,
        )
    return ref, ours


if __name__ == "__main__":
    raise SystemExit(main())
