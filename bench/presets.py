"""The daemon's model presets (workers/presets.py): what each costs, and which optimizer it uses.

    .venv/bin/python bench/presets.py speed [--workers 12] [--batch 48] [--micro-batch 0] [--steps 3]
    .venv/bin/python bench/presets.py optimizers [--steps 600] [--every 100]
    .venv/bin/python bench/presets.py vocab [--mib 32] [PATH ...]

``speed``: for each preset, its parameters, and through the process engine (the daemon's, W
workers, one BLAS thread each) tokens/s over ``--steps`` steps after one warm-up step and the
memory per worker: peak resident set (``VmHWM``: its private memory and the shared segments'
pages it touched) and private memory (``RssAnon``) read from /proc after the steps, beside the
shared segments' size. Token ids are random (speed and memory do not depend on the text); the
base preset's vocabulary is the learned one's size, 8192.

``optimizers``: the small preset under the daemon's recipe (stable schedule after a 100-step
warmup, the weights' moving average at 0.999 served, batch 48) with AdamW 1e-3 and with Muon
0.02, validation loss of the served average and of the raw weights at equal tokens on tiny
Shakespeare (``../shared/data/tinyshakespeare.txt``, bytes, last 10% held out, 400 fixed
windows), in this process (LocalEngine).

``vocab``: the base preset's learned vocabulary (tokens/learned_vocab.py) on ``--mib`` MiB of
text files (default: tiny Shakespeare and the standard library's Python sources) written to a
byte-level store in shards of 64 documents: the time to learn 8192 tokens from them, the
throughput of re-tokenizing the store (DerivedStore), tokens per byte and the stores' sizes.

Prints tables; asserts nothing.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

from crystalline.shm.blocks import layout
from crystalline.tokens.tokenizer import ByteTokenizer
from crystalline.tokens.windows import batch_for_step, eval_windows, load_split
from crystalline.workers.engine import EngineSettings, LocalEngine, ProcessEngine, segment_specs
from crystalline.workers.model import GPT, init_params
from crystalline.workers.optimizer import learning_rate
from crystalline.workers.presets import PRESETS
from crystalline.workers.train_config import TrainConfig
from crystalline.workers.trainer import evaluate

HERE = Path(__file__).resolve().parent
SHAKESPEARE = HERE.parent.parent / "shared/data/tinyshakespeare.txt"
VOCAB = {"small": 256, "base": 8192}


def preset_config(name: str, **overrides: object) -> TrainConfig:
    return dataclasses.replace(TrainConfig(preset=name), **{**PRESETS[name], **overrides})  # type: ignore[arg-type]


def proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def speed(args: argparse.Namespace) -> None:
    print(f"{args.workers} workers, batch {args.batch}, micro-batch {args.micro_batch}, load "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip
    print("| preset | parameters | context | tokens/s | s/step | peak RSS per worker (MiB) | "
          "private per worker (MiB) | shared segments (MiB) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.presets.split(","):
        cfg = preset_config(name, batch_size=args.batch, ema_decay=0.999, schedule="stable")
        model = GPT(cfg.model_config(VOCAB[name]))
        rng = np.random.default_rng(0)
        ids = rng.integers(0, VOCAB[name], size=(args.batch, cfg.seq_len + 1), dtype=np.int64)
        settings = EngineSettings(
            workers=args.workers, instance=f"bench{os.getpid()}", micro_batch=args.micro_batch
        )
        specs = segment_specs(model.num_params, args.workers, args.batch, cfg.seq_len, VOCAB[name], 3, True)
        shared = sum(layout(spec)[1] for spec in specs.values()) / 2**20
        engine = ProcessEngine(model, cfg.adamw_config(), lambda _s, ids=ids: ids, args.batch, settings)
        try:
            p = init_params(model.table, 0)
            engine.load_state(p, np.zeros_like(p), np.zeros_like(p))
            engine.step(0, 1e-3)
            t0 = time.monotonic()
            for s in range(1, args.steps + 1):
                engine.step(s, 1e-3)
            wall = time.monotonic() - t0
            pids = [w["pid"] for w in engine.stats()["workers"] if w.get("pid")]
            peak = max(proc_kib(pid, "VmHWM") for pid in pids) / 1024
            private = max(proc_kib(pid, "RssAnon") for pid in pids) / 1024
        finally:
            engine.close()
        rate = args.steps * args.batch * cfg.seq_len / wall
        print(f"| {name} | {model.num_params:,} | {cfg.seq_len} | {rate:,.0f} | {wall / args.steps:.2f} | "
              f"{peak:.0f} | {private:.0f} | {shared:.0f} |", flush=True)  # fmt: skip


def optimizers(args: argparse.Namespace) -> None:
    tok = ByteTokenizer()
    base = preset_config("small", batch_size=48, schedule="stable", ema_decay=0.999)
    split = load_split([SHAKESPEARE], tok, base.val_fraction)
    val = eval_windows(split.val, base.seq_len, 400)
    model = GPT(base.model_config(tok.vocab_size))
    print(f"small preset, {model.num_params:,} parameters, batch 48, stable after warmup 100, EMA 0.999, "
          f"{args.steps} steps, load {os.getloadavg()[0]:.1f}")  # fmt: skip
    rows: dict[str, dict[int, tuple[float, float]]] = {}
    for label, opt in (("AdamW 1e-3", {"optimizer": "adamw"}), ("Muon 0.02", {"optimizer": "muon"})):
        cfg = dataclasses.replace(base, **opt)  # type: ignore[arg-type]
        adamw = cfg.adamw_config()

        def batch(step: int, cfg: TrainConfig = cfg) -> np.ndarray:
            return batch_for_step(split.train, cfg.seed, step, cfg.batch_size, cfg.seq_len)

        engine = LocalEngine(model, adamw, batch)
        p = init_params(model.table, cfg.seed)
        engine.load_state(p, np.zeros_like(p), np.zeros_like(p))
        rows[label] = {}
        t0 = time.monotonic()
        for step in range(args.steps):
            engine.step(step, learning_rate(step, adamw))
            if (step + 1) % args.every == 0:
                ema = engine.ema()
                assert ema is not None
                rows[label][step + 1] = (evaluate(model, ema, val), evaluate(model, engine.params(), val))
                ema_loss, raw_loss = rows[label][step + 1]
                print(f"  {label} step {step + 1} ({time.monotonic() - t0:.0f} s): EMA {ema_loss:.4f} "
                      f"raw {raw_loss:.4f}", flush=True)  # fmt: skip
    labels = list(rows)
    print("\n| step | tokens | " + " | ".join(f"{k} EMA | {k} raw" for k in labels) + " |")
    print("|---:|---:|" + "---:|---:|" * len(labels))
    for step in rows[labels[0]]:
        cells = " | ".join(f"{rows[k][step][0]:.4f} | {rows[k][step][1]:.4f}" for k in labels)
        print(f"| {step} | {step * 48 * base.seq_len:,} | {cells} |")


def vocab(args: argparse.Namespace) -> None:
    import sys
    import tempfile

    from crystalline.tokens.learned_vocab import DerivedStore, learn_once
    from crystalline.tokens.token_store import PendingDocument, TokenStore
    from crystalline.tokens.tokenizer import iter_text_files, read_text_file

    paths = args.paths or [
        SHAKESPEARE,
        Path(sys.base_prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}",
    ]
    limit = args.mib * 2**20
    tok = ByteTokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        byte_dir, out_dir = Path(tmp) / "tokens", Path(tmp) / "tokens-bpe"
        store = TokenStore(byte_dir, tok.dtype)
        total, batch = 0, []
        for i, f in enumerate(iter_text_files(paths)):
            try:
                text = read_text_file(f)
            except ValueError:
                continue
            batch.append(PendingDocument(f"d{i}", f"e{i}", str(f), "train", tok.encode(text)))
            total += len(batch[-1].ids)
            if len(batch) == 64 or total >= limit:
                store.append(batch)
                batch = []
            if total >= limit:
                break
        store.append(batch)
        t0 = time.monotonic()
        learned = learn_once(byte_dir, Path(tmp) / "vocab.json", 8192, min(limit, total))
        learn_s = time.monotonic() - t0
        assert learned is not None
        t0 = time.monotonic()
        derived = DerivedStore(byte_dir, out_dir, learned)
        while derived.step(64):
            pass
        derive_s = time.monotonic() - t0
        out_bytes = sum(p.stat().st_size for p in out_dir.glob("*.bin"))
        in_bytes = sum(p.stat().st_size for p in byte_dir.glob("*.bin"))
        tokens = out_bytes // 2
    print(f"{total / 2**20:.1f} MiB of text ({derived.count} documents), load {os.getloadavg()[0]:.1f}")
    print(
        "| learn 8192 (s) | re-tokenize (s) | re-tokenize MiB/s | tokens per byte | byte store MiB "
        "| derived MiB |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {learn_s:.1f} | {derive_s:.1f} | {total / 2**20 / derive_s:.2f} | {tokens / total:.3f} | "
          f"{in_bytes / 2**20:.1f} | {out_bytes / 2**20:.1f} |")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("speed")
    p.add_argument("--presets", default="small,base")
    p.add_argument("--workers", type=int, default=12)
    p.add_argument("--batch", type=int, default=48)
    p.add_argument("--micro-batch", type=int, default=0)
    p.add_argument("--steps", type=int, default=3)
    p = sub.add_parser("optimizers")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--every", type=int, default=100)
    p = sub.add_parser("vocab")
    p.add_argument("--mib", type=int, default=32)
    p.add_argument("paths", nargs="*", type=Path)
    args = parser.parse_args()
    {"speed": speed, "optimizers": optimizers, "vocab": vocab}[args.what](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
