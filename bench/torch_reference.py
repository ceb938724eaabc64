"""Reference trainer: nanoGPT's CPU recipe for tiny Shakespeare in PyTorch, to set beside crystalline.

config/train_shakespeare_char.py with the README's CPU overrides: 4 layers, 4 heads, 128 wide, context
64, batch 12, dropout 0, AdamW lr 1e-3 betas (0.9, 0.99) weight decay 0.1 on 2-D tensors, warmup 100
iterations then cosine decay to 1e-4 at 2000, 2000 iterations, gradient clip 1.0, eval every 250.
The network is bench/torch_gpt.py (crystalline's architecture: nanoGPT with bias=True). Differences
from nanoGPT, for a like-for-like comparison with crystalline: byte tokens (vocab 256; the text is
ASCII, so the same sequence as nanoGPT's 65 characters), crystalline's split point (the last
round(10%) of tokens) and validation loss on fixed windows spread over the val split (as crystalline's
eval-windows) rather than 20 random batches. Needs torch (not a project dependency).

    .venv/bin/python bench/torch_reference.py [--threads 2 --max-iters 2000 --metrics torch.jsonl]
"""

from __future__ import annotations

import time

PROCESS_START = time.monotonic()  # elapsed_s counts from here, imports included

# ruff: noqa: E402  (the clock starts before torch loads)
import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from crystalline.workers.model_config import ModelConfig

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bench/ holds torch_gpt.py
try:
    import torch
    from torch_gpt import TorchGPT, adamw
except ImportError:
    torch = None  # type: ignore[assignment]


def eval_windows(tokens: np.ndarray, seq_len: int, limit: int) -> np.ndarray:
    """``limit`` non-overlapping (seq_len + 1)-token windows spread evenly over the split, as crystalline."""
    span = seq_len + 1
    count = (len(tokens) - 1) // seq_len
    starts = np.arange(count) * seq_len
    if 0 < limit < count:
        starts = starts[np.linspace(0, count - 1, limit).round().astype(np.int64)]
    return tokens[starts[:, None] + np.arange(span)]


def get_lr(it: int, a: argparse.Namespace) -> float:
    """nanoGPT's schedule: linear warmup, cosine decay to min_lr at lr_decay_iters, then min_lr."""
    if it < a.warmup_iters:
        return a.lr * (it + 1) / (a.warmup_iters + 1)
    if it > a.lr_decay_iters:
        return a.min_lr
    coeff = 0.5 * (1.0 + math.cos(math.pi * (it - a.warmup_iters) / (a.lr_decay_iters - a.warmup_iters)))
    return a.min_lr + coeff * (a.lr - a.min_lr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=HERE.parent.parent / "shared/data/tinyshakespeare.txt")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    for flag, kind, default in [
        ("max-iters", int, 2000), ("eval-interval", int, 250), ("eval-windows", int, 400),
        ("target-val-loss", float, 1.89), ("seed", int, 1337), ("batch", int, 12), ("block-size", int, 64),
        ("layers", int, 4), ("heads", int, 4), ("embed", int, 128), ("lr", float, 1e-3),
        ("min-lr", float, 1e-4), ("warmup-iters", int, 100), ("lr-decay-iters", int, 2000),
        ("weight-decay", float, 0.1), ("grad-clip", float, 1.0),
    ]:  # fmt: skip
        ap.add_argument(f"--{flag}", type=kind, default=default, help=f"default {default}")
    ap.add_argument("--metrics", type=Path, help="write eval events here (JSON lines, as metrics.jsonl)")
    a = ap.parse_args()
    if torch is None:
        print("torch is not importable: this reference needs it (pip install torch); skipping")
        return 0
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    data = np.frombuffer(a.data.read_bytes(), dtype=np.uint8).astype(np.int64)  # bytes = chars (ASCII)
    cut = len(data) - round(len(data) * 0.1)
    train = torch.from_numpy(data[:cut])
    val = torch.from_numpy(eval_windows(data[cut:], a.block_size, a.eval_windows))
    cfg = ModelConfig(256, a.block_size, a.embed, a.layers, a.heads)
    model = TorchGPT(cfg)
    opt = adamw(model, a.lr, (0.9, 0.99), a.weight_decay)
    nparams = sum(p.numel() for p in model.parameters())
    tokens_per_iter = a.batch * a.block_size
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); {nparams / 1e6:.3f} M params; "
          f"{len(train)} train / {len(data) - cut} val tokens, {len(val)} val windows of {a.block_size + 1}; "
          f"{a.max_iters} iters x {tokens_per_iter} tokens")  # fmt: skip

    def get_batch() -> torch.Tensor:  # nanoGPT's get_batch, as (B, T+1) windows
        ix = torch.randint(len(train) - a.block_size, (a.batch,))
        return torch.stack([train[i : i + a.block_size + 1] for i in ix])

    @torch.no_grad()
    def val_loss() -> float:
        model.eval()
        total = sum(model(val[i : i + 64]).item() * len(val[i : i + 64]) for i in range(0, len(val), 64))
        model.train()
        return total / len(val)

    out = a.metrics.open("w") if a.metrics else None
    train_losses: list[float] = []
    reached_at: float | None = None
    train_s = 0.0
    lr = get_lr(0, a)
    for it in range(a.max_iters + 1):
        if it % a.eval_interval == 0 or it == a.max_iters:
            vl = val_loss()
            elapsed = time.monotonic() - PROCESS_START
            tl = sum(train_losses) / len(train_losses) if train_losses else None
            train_losses = []
            rec = {"event": "eval", "step": it, "tokens": it * tokens_per_iter,
                   "elapsed_s": round(elapsed, 3), "train_loss": tl, "val_loss": vl, "lr": lr}  # fmt: skip
            if out:
                out.write(json.dumps(rec) + "\n")
                out.flush()
            tls = "-" if tl is None else f"{tl:.4f}"
            print(f"step {it}: train loss {tls}, val loss {vl:.4f}, lr {lr:.2e}, {elapsed:.1f} s", flush=True)
            if reached_at is None and vl <= a.target_val_loss:
                reached_at = elapsed
        if it == a.max_iters:
            break
        t0 = time.perf_counter()
        lr = get_lr(it, a)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = model(get_batch())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        train_losses.append(loss.item())
        train_s += time.perf_counter() - t0
    if out:
        out.close()

    wall = time.monotonic() - PROCESS_START
    reach = "not reached" if reached_at is None else f"{reached_at:.1f} s"
    print(f"wall {wall:.1f} s (from process start); val <= {a.target_val_loss}: {reach}; "
          f"{a.max_iters * tokens_per_iter / train_s:,.0f} tokens/s in training steps "
          f"({a.max_iters * tokens_per_iter / wall:,.0f} over the whole wall)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
