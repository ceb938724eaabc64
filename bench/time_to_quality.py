"""Time to quality on tiny Shakespeare, side by side in one run: the PyTorch nanoGPT CPU recipe
(bench/torch_reference.py) against `crystalline train --workers 12` with the tuned
bench/shakespeare_char.toml. Both evaluate the same fixed validation windows (bytes, last 10%).

    .venv/bin/python bench/time_to_quality.py [--target 1.89] [--workers 12] [--skip-reference]

Prints, for each, the wall time (from process start) at which the validation loss first
reached the target, the final validation loss and the parameter count. The two run one
after the other, never at once, so each has the machine to itself. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared/data/tinyshakespeare.txt"


def first_reaching(metrics: Path, target: float) -> tuple[float | None, float | None, int | None]:
    """(elapsed_s when val <= target first, last val loss, params) from a metrics.jsonl."""
    reached = last = params = None
    for line in metrics.read_text().splitlines():
        record = json.loads(line)
        if record.get("event") == "start":
            params = record.get("params")
        if record.get("event") != "eval" or record.get("val_loss") is None:
            continue
        last = record["val_loss"]
        if reached is None and last <= target:
            reached = record["elapsed_s"]
    return reached, last, params


def run(label: str, cmd: list[str], metrics: Path, target: float) -> None:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        print(f"{label:<34} failed (exit {proc.returncode}): {tail[0]}")
        return
    if not metrics.exists():
        print(f"{label:<34} wrote no metrics: {proc.stdout.strip()[-200:]}")
        return
    reached, last, params = first_reaching(metrics, target)
    when = f"{reached:7.1f} s" if reached is not None else "not reached"
    size = f"{params:,}" if params else "see its output"
    print(
        f"{label:<34} val <= {target}: {when:>11}   final val {last:.4f}   wall {wall:6.1f} s   params {size}"
    )
    for line in proc.stdout.strip().splitlines()[-2:]:
        print(f"    | {line}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--target", type=float, default=1.89)
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="crystalline-ttq-") as tmp:
        out = Path(tmp)
        print(f"tiny Shakespeare {args.data}, target val {args.target}, {os.cpu_count()} cores")
        if not args.skip_reference:
            ref_metrics = out / "torch.jsonl"
            run(
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
        run(
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
                str(HERE / "shakespeare_char.toml"),
                "--workers",
                str(args.workers),
                "--target-val-loss",
                str(args.target),
            ],
            ck / "metrics.jsonl",
            args.target,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
