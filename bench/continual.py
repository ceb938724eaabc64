"""Continual learning, measured (issue 13): a stream in two phases through the real ingest path
and the trainer reading the real token store.

Phase A: tiny Shakespeare (``../shared/data/tinyshakespeare.txt``, else the bundled samples),
cut into documents dropped in the drop sub-folder ``shakespeare``, trained on until its
validation loss flattens (under 1% better over ``--flat-steps`` steps). Phase B: docstrings of
Python's standard library, a clearly different domain, dropped in the sub-folder ``docs`` in
``--waves`` waves during phase B (its held-out documents in the first wave, so B's validation
set is fixed from the start). Both are ingested by the daemon's ``Ingestor`` (pool, filters,
registry, shards) through ``DropSources``; batches are cut by ``tokens.windows.StoreWindows``
from the documents visible, as the daemon's ring cuts them. Before each wave becomes visible its
documents' surprise is measured as control measures it (``daemon.surprise.first_windows``
under the current weights).

From the end of phase A the run forks: the replay policy (``--fresh-share``, no cap), the
same with ``--source-cap``, and replay off (``fresh-share 1``: every row from B, the newest
tokens), each for ``--b-steps`` steps; and a B-only model from scratch, scored at as many B
tokens as each run trained on. The daemon's recipe (its ``RUN_DEFAULTS``): the stable
schedule, the weights' moving average served, evaluated and used for surprise. Printed as it
goes, and a summary against the goals: B's loss falls by at least half its excess over the
B-only model's at the same B tokens, A's rises by at most 3%.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/continual.py
"""

from __future__ import annotations

import argparse
import ast
import math
import shutil
import sys
import sysconfig
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from crystalline.daemon.config import RUN_DEFAULTS
from crystalline.daemon.source_eval import served_params
from crystalline.daemon.surprise import first_windows
from crystalline.ingest.drop_sources import DropSources
from crystalline.ingest.ingestor import Ingestor
from crystalline.ingest.settings import IngestSettings
from crystalline.tokens.held_out import held_out
from crystalline.tokens.token_store import StoreReader
from crystalline.tokens.tokenizer import Tokenizer, load_tokenizer
from crystalline.tokens.windows import SourceValidation, StoreWindows
from crystalline.workers.train_config import TrainConfig
from crystalline.workers.trainer import Trainer, evaluate

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
DOC_BYTES = 8000
VAL_FRACTION = 0.1
EVAL_WINDOWS = 96  # per corpus, fixed for the whole run
DAEMON = RUN_DEFAULTS["train"]  # the daemon's schedule and moving average of the weights


def shakespeare_docs() -> list[str]:
    """Tiny Shakespeare in documents of about DOC_BYTES, cut at blank lines."""
    if SHAKESPEARE.exists():
        text = SHAKESPEARE.read_text(encoding="utf-8")
    else:
        text = "\n\n".join(
            p.read_text(encoding="utf-8") for p in sorted((REPO / "daemon" / "samples").glob("*.txt"))
        )
    docs, current = [], ""
    for part in text.split("\n\n"):
        current += part + "\n\n"
        if len(current) >= DOC_BYTES:
            docs.append(current)
            current = ""
    return docs + ([current] if current.strip() else [])


def docstring_docs(total_bytes: int) -> list[str]:
    """Docstrings of the standard library's modules, one document per module (capped at
    DOC_BYTES), in name order until ``total_bytes``."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs: list[str] = []
    size = 0
    for path in sorted(stdlib.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        parts = [
            doc
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and (doc := ast.get_docstring(node))
        ]
        text = "\n\n".join(parts)[:DOC_BYTES]
        if len(text) >= 2000:
            docs.append(text)
            size += len(text)
        if size >= total_bytes:
            break
    return docs


def drop_and_ingest(ing: Ingestor, sources: DropSources, folder: Path, named: list[tuple[str, str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in named:
        (folder / name).write_text(text, encoding="utf-8")
    sources.discover()
    sources.start()
    for folder_ in [sources.top, *sources.subs.values()]:
        folder_.scan()
    while ing.run_once():
        pass


class StreamData:
    """``TrainingData`` for the trainer: batches from the store's visible documents as the
    daemon's ring cuts them; counts the rows that start in corpus B."""

    def __init__(self, store: Path, cfg: TrainConfig, b_offset: int) -> None:
        self.windows = StoreWindows(
            store, cfg.batch_size, cfg.seq_len, seed=cfg.seed, val_fraction=cfg.val_fraction,
            fresh_fraction=cfg.fresh_share, fresh_tokens=cfg.fresh_tokens, source_cap=cfg.source_cap,
            refresh_s=0.0,
        )  # fmt: skip
        self.visible = 0
        self.b_offset = b_offset  # train-stream offset where B starts (A's train tokens)
        self.b_rows = 0

    def show(self) -> None:
        self.windows.refresh()
        self.visible = self.windows.visible()

    def batch(self, step: int) -> np.ndarray:
        out = np.empty((self.windows.batch_size, self.windows.span), dtype=self.windows.dtype)
        self.windows.fill(step, out, self.visible)
        self.b_rows += int((self.windows.starts(step, self.visible) >= self.b_offset).sum())
        return out

    def val_windows(self) -> np.ndarray:
        return np.zeros((0, self.windows.span), dtype=self.windows.dtype)

    def describe(self) -> dict[str, Any]:
        return self.windows.describe(self.visible)


def loss(trainer: Trainer, windows: np.ndarray) -> float:
    return evaluate(trainer.model, served_params(trainer), windows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fresh-share", type=float, default=0.25)
    p.add_argument("--source-cap", type=float, default=0.5)
    p.add_argument("--a-max-steps", type=int, default=4000)
    p.add_argument("--flat-steps", type=int, default=400)
    p.add_argument("--b-steps", type=int, default=1000)
    p.add_argument("--waves", type=int, default=3)
    p.add_argument("--b-bytes", type=int, default=160_000)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--work-dir", default="/tmp/crystalline-continual", help="emptied at start and end")
    args = p.parse_args()
    started = time.monotonic()
    base = TrainConfig(
        embed_dim=64, num_layers=2, num_heads=2, seq_len=64, batch_size=16, learning_rate=2e-3,
        warmup_steps=50, schedule=DAEMON["schedule"], ema_decay=DAEMON["ema_decay"], max_steps=1 << 40,
        val_fraction=VAL_FRACTION,
        checkpoint_interval=1 << 40, workers=1, seed=7,
    )  # fmt: skip
    tokenizer: Tokenizer = load_tokenizer("bytes")
    settings = IngestSettings(processes=1, val_fraction=VAL_FRACTION, drop_settle_s=0.0)
    # a fixed place: which documents are held out is a hash of their path, so the split (and the
    # figures) repeat from run to run
    root = Path(args.work_dir)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    try:
        (root / "inbox").mkdir()
        inbox = (root / "inbox").resolve()
        sources = DropSources(inbox, 0.0)
        ing = Ingestor(settings, root / "data", tokenizer, drop_folder=sources)
        store = root / "data" / "tokens"
        try:
            a_texts = shakespeare_docs()
            drop_and_ingest(
                ing, sources, inbox / "shakespeare", [(f"a-{i:04d}.txt", t) for i, t in enumerate(a_texts)]
            )
            b_texts = docstring_docs(args.b_bytes)
            b_named = [(f"b-{i:04d}.txt", t) for i, t in enumerate(b_texts)]
            b_held = [n for n in b_named if held_out(str(inbox / "docs" / n[0]), VAL_FRACTION)]
            b_train = [n for n in b_named if n not in b_held]
            per_wave = math.ceil(len(b_train) / args.waves)
            waves = [b_held + b_train[:per_wave]] + [
                b_train[i : i + per_wave] for i in range(per_wave, len(b_train), per_wave)
            ]
            a_val = SourceValidation(store, base.seq_len, EVAL_WINDOWS).windows()["shakespeare"]
            a_data = StreamData(store, base, b_offset=1 << 62)
            a_data.show()
            a_info = a_data.describe()
            print(f"A: {len(a_texts)} documents dropped, {a_info['train_documents']} train "
                  f"({a_info['train_tokens']:,} tokens), {len(a_val)} validation windows")  # fmt: skip
            print(f"B: {len(b_texts)} documents of docstrings in {len(waves)} waves "
                  f"({sum(len(t) for t in b_texts):,} bytes, {len(b_held)} held out)")  # fmt: skip
            ckpt_a = root / "ckpt-a"
            trainer = Trainer(lambda _t: a_data, ckpt_a, base)
            best_then = math.inf
            while trainer.state.step < args.a_max_steps:
                for _ in range(args.flat_steps):
                    trainer.train_step()
                now = loss(trainer, a_val)
                elapsed = time.monotonic() - started
                print(f"  phase A step {trainer.state.step}: A val {now:.4f}  ({elapsed:.0f} s)")
                if now > best_then * 0.99:
                    break  # flat: under 1% better over flat-steps
                best_then = now
            a_end = loss(trainer, a_val)
            a_steps = trainer.state.step
            trainer.checkpoint()
            trainer.close()
            print(f"phase A ends at step {a_steps}: A val {a_end:.4f}")

            b_offset = a_info["train_tokens"]
            arrive = [round(k * args.b_steps / len(waves)) for k in range(len(waves))]
            runs: dict[str, dict[str, Any]] = {}
            b_val: np.ndarray | None = None
            wave_visible: list[int] = []  # documents visible after each wave (the first run ingests)
            variants = (
                ("replay policy", args.fresh_share, 1.0),
                (f"replay policy, source-cap {args.source_cap}", args.fresh_share, args.source_cap),
                ("replay off", 1.0, 1.0),
            )
            for n, (label, fresh, cap) in enumerate(variants):
                cfg = replace(base, fresh_share=fresh, source_cap=cap)
                ckpt = root / f"ckpt-{n}"
                shutil.copytree(ckpt_a, ckpt)
                data = StreamData(store, cfg, b_offset)
                data.windows.refresh()
                data.visible = a_data.visible
                trainer = Trainer(lambda _t, d=data: d, ckpt, cfg, resume=True)
                rows: list[dict[str, Any]] = []
                surprise: list[tuple[int, float]] = []
                print(f"{label}: fresh-share {fresh}, source-cap {cap}")
                for step in range(args.b_steps + 1):
                    if step in arrive:
                        k = arrive.index(step)
                        if n == 0:  # the store is shared: each wave is ingested once
                            drop_and_ingest(ing, sources, inbox / "docs", waves[k])
                        reader = StoreReader(store)
                        reader.refresh()
                        if n == 0:
                            wave_visible.append(len(reader.documents))
                        new = reader.documents[data.visible : wave_visible[k]]  # not visible yet: untrained
                        tries = [first_windows(reader.tokens(d), cfg.seq_len, 2) for d in new]
                        scores = [loss(trainer, w) for w in tries if len(w)]
                        surprise.append((step, float(np.mean(scores)) if scores else math.nan))
                        data.windows.refresh()
                        data.visible = wave_visible[k]
                        if fresh == 1.0:  # replay off: the newest tokens are B's, all of them
                            data.windows.fresh_tokens = data.describe()["train_tokens"] - b_offset
                        if b_val is None:
                            b_val = SourceValidation(store, cfg.seq_len, EVAL_WINDOWS).windows()["docs"]
                    if step % args.eval_every == 0 or step == args.b_steps:
                        assert b_val is not None
                        row = {"step": step, "a": loss(trainer, a_val), "b": loss(trainer, b_val),
                               "b_tokens": data.b_rows * cfg.seq_len}  # fmt: skip
                        rows.append(row)
                        elapsed = time.monotonic() - started
                        print(f"  B step {step}: A val {row['a']:.4f}  B val {row['b']:.4f}  "
                              f"B tokens {row['b_tokens']:,}  ({elapsed:.0f} s)")  # fmt: skip
                    if step < args.b_steps:
                        trainer.train_step()
                trainer.close()
                runs[label] = {"rows": rows, "surprise": surprise}
                print(
                    "  B's surprise at each wave's arrival: "
                    + ", ".join(f"step {s}: {v:.4f}" for s, v in surprise)
                )

            # B only, from scratch, for as many B tokens as each run trained on: every row from
            # B's train documents (the newest tokens of the store; all waves from the start), the
            # same validation windows
            assert b_val is not None
            per_step = base.batch_size * base.seq_len
            want = {name: max(1, round(run["rows"][-1]["b_tokens"] / per_step)) for name, run in runs.items()}
            only_cfg = replace(base, fresh_share=1.0)
            only_data = StreamData(store, only_cfg, b_offset)
            only_data.show()
            only_data.windows.fresh_tokens = only_data.describe()["train_tokens"] - b_offset
            trainer = Trainer(lambda _t: only_data, root / "ckpt-b-only", only_cfg)
            at_steps: dict[int, float] = {}
            while trainer.state.step < max(want.values()):
                trainer.train_step()
                if trainer.state.step in want.values():
                    at_steps[trainer.state.step] = loss(trainer, b_val)
                    print(f"B only: step {trainer.state.step} ({trainer.state.step * per_step:,} B tokens): "
                          f"B val {at_steps[trainer.state.step]:.4f}")  # fmt: skip
            b_only = {label: at_steps[steps] for label, steps in want.items()}
            trainer.close()
        finally:
            ing.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print("\nsummary (A = tiny Shakespeare, B = stdlib docstrings; losses in nats per byte token)")
    head = "| run | A val end of A | A val end | A change | B val at arrival | B val end |"
    print(head + " B-only at same B tokens | share of B's excess closed |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, run in runs.items():
        first, last_row = run["rows"][0], run["rows"][-1]
        excess = first["b"] - b_only[label]
        closed = (first["b"] - last_row["b"]) / excess if excess > 0 else math.nan
        print(f"| {label} | {a_end:.4f} | {last_row['a']:.4f} | {100 * (last_row['a'] / a_end - 1):+.1f}% | "
              f"{first['b']:.4f} | {last_row['b']:.4f} | {b_only[label]:.4f} | {closed:.2f} |")  # fmt: skip
    print(f"wall time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
