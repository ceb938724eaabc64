"""Training across machines (issue 16) on this one box: 1, 2 and 3 members on distinct loopback
addresses, each a process with its own engine (a few workers) and its own data, joined by the
daemon's ClusterMember (torch.distributed gloo over a TCPStore). With ``--link-mbit R`` (root,
iproute2) each member runs in a network namespace of its own whose link to the others carries
at most R Mbit/s each way (tc's tbf on both ends, the tests' harness tests/daemon/_cluster_net.py):
a slow network instead of loopback, where the bytes the link carried are counted too.

    .venv/bin/python bench/cluster_scaling.py [--members 1,2,3] [--workers 2] [--steps 60]
        [--outer-every 8] [--sweep 1000,10000,100000,1000000] [--link-mbit R]

Per configuration it prints ms per step, the allreduce's ms per step and its share of the step,
the bytes one member sends per step (ring allreduce: 2(n-1)/n of the payload) and the held-out
loss after the same number of steps, i.e. at equal tokens per member: synchronous allreduce
every step, then DiLoCo (local steps, an outer step with Nesterov momentum every H). Then the
allreduce of payloads of several sizes with 2 and 3 members, fitted to the ring's cost model
t = 2(n-1) a + 2(n-1)/n B b (a: per round, b: per byte), which the README's model of 10 and 100
machines uses. Loopback: a and b are this box's (memory copies and the kernel's TCP stack), not
a network's; on a shaped link they are that link's. Prints figures only; asserts nothing.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

import argparse
import json
import math
import random
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crystalline.workers.cluster_config import ClusterSettings
from crystalline.workers.engine import EngineSettings, LocalEngine, ProcessEngine, StepEngine
from crystalline.workers.model import GPT, init_params
from crystalline.workers.model_config import ModelConfig
from crystalline.workers.optimizer import learning_rate
from crystalline.workers.optimizer_config import AdamWConfig
from crystalline.workers.trainer import evaluate

MODEL = ModelConfig(vocab_size=256, seq_len=64, embed_dim=64, num_layers=2, num_heads=2)
BATCH = 8  # windows per member and step
ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT / "README.md"  # the data: this README's bytes


@dataclass
class State:
    step: int = 0
    tokens: int = 0
    skipped_steps: int = 0


def corpus() -> tuple[np.ndarray, np.ndarray]:
    data = np.frombuffer(TEXT.read_bytes(), dtype=np.uint8).astype(np.uint16)
    cut = len(data) * 9 // 10
    return data[:cut], data[cut:]


def windows(data: np.ndarray, rng: np.random.Generator, count: int) -> np.ndarray:
    starts = rng.integers(0, len(data) - MODEL.seq_len - 1, size=count)
    return np.stack([data[s : s + MODEL.seq_len + 1] for s in starts])


def member(args: argparse.Namespace) -> None:
    """One member: train ``--steps`` steps in the cluster, then the payload sweep; one JSON line."""
    from crystalline.workers.cluster_member import ClusterMember

    train, held = corpus()
    model = GPT(MODEL)
    adamw = AdamWConfig(learning_rate=3e-3, warmup_steps=5)

    def source(step: int) -> np.ndarray:
        return windows(train, np.random.default_rng([args.index, step]), BATCH)

    settings = ClusterSettings(
        args.host, args.port, args.address, args.members, args.members, 30.0, args.outer_every
    )
    cluster = ClusterMember(settings)
    engine: StepEngine
    if args.workers == 1:
        engine = LocalEngine(model, adamw, source, exchange=cluster)
    else:
        settings_e = EngineSettings(workers=args.workers, instance=f"bench_{uuid.uuid4().hex[:8]}")
        engine = ProcessEngine(model, adamw, source, BATCH, settings_e, exchange=cluster)
    try:
        params = init_params(model.table, 0)
        engine.load_state(params, np.zeros_like(params), np.zeros_like(params))
        st = State()
        deadline = time.monotonic() + 120
        while not cluster.ready(engine, st):
            assert time.monotonic() < deadline, f"no group: {cluster.state}"
            time.sleep(0.1)
        step_s, comm_s, sent = [], [], 0
        wire = wire_bytes(args.device)
        for _ in range(args.steps):
            t0 = time.perf_counter()
            before = cluster.outer_done
            out = engine.step(st.step, learning_rate(st.step, adamw))
            st.step += 1
            st.tokens += out.tokens
            cluster.after_step(engine, st)
            step_s.append(time.perf_counter() - t0)
            communicated = not args.outer_every or cluster.outer_done != before
            comm_s.append(cluster.last_ms / 1000 if communicated and args.members > 1 else 0.0)
            sent += cluster.last_bytes if communicated else 0
        wire = wire_bytes(args.device) - wire
        skip = min(5, args.steps // 4)  # the first steps include allocation and warm-up
        val = evaluate(model, engine.params(), windows(held, np.random.default_rng(99), 64))
        sweep = {}
        for floats in args.sweep if args.members > 1 else []:
            import torch

            t = torch.ones(floats, dtype=torch.float32)
            times = []
            for _ in range(args.reps):
                t0 = time.perf_counter()
                cluster.group.allreduce([t]).wait()
                times.append(time.perf_counter() - t0)
            sweep[floats * 4] = float(np.median(times))
        print(
            json.dumps(
                {
                    "rank": cluster.rank,
                    "step_ms": 1000 * float(np.mean(step_s[skip:])),
                    "comm_ms": 1000 * float(np.mean(comm_s[skip:])),
                    "bytes_per_step": sent / args.steps,
                    "wire_bytes_per_step": wire / args.steps,
                    "payload_bytes": cluster.payload_bytes,
                    "val_loss": val,
                    "tokens": st.tokens,
                    "digest": cluster.digest,
                    "sweep": sweep,
                }
            ),
            flush=True,
        )
    finally:
        engine.close()
        cluster.close()


def wire_bytes(device: str) -> int:
    """Bytes this member's namespace has sent over ``device`` (its link; 0 without one): ip netns
    exec mounts the namespace's own /sys."""
    if not device:
        return 0
    return int(Path(f"/sys/class/net/{device}/statistics/tx_bytes").read_text())


def run(members: int, args: argparse.Namespace, outer_every: int, machines: Any) -> list[dict[str, Any]]:
    """One configuration: ``members`` member processes (in ``machines``' namespaces, or on
    loopback addresses without), each one JSON line."""
    port = random.randrange(20000, 30000)
    if machines is None:
        host, addresses = "127.0.0.1", [f"127.0.0.{i + 1}" for i in range(members)]
    else:
        host, addresses = machines.addresses[0], machines.addresses
    common = [
        "--port", str(port), "--members", str(members), "--workers", str(args.workers),
        "--steps", str(args.steps), "--outer-every", str(outer_every),
        "--sweep", ",".join(map(str, args.sweep)), "--reps", str(args.reps),
    ]  # fmt: skip
    procs = []
    for i in range(members):
        where = ["--host", host, "--address", addresses[i]]
        if machines is not None:
            where += ["--device", f"{machines.tag}v{i}"]
        cmd = [*(machines.prefix(i) if machines else []), sys.executable, __file__, "--member", str(i)]
        procs.append(subprocess.Popen([*cmd, *common, *where], stdout=subprocess.PIPE, text=True))
    out = []
    for p in procs:
        stdout, _ = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise SystemExit(f"a member exited with {p.returncode}")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return sorted(out, key=lambda r: r["rank"])


def fit(points: list[tuple[int, int, float]]) -> tuple[float, float]:
    """Least squares of t = 2(n-1) a + 2(n-1)/n B b over (n, B, t)."""
    x = np.array([[2 * (n - 1), 2 * (n - 1) / n * b] for n, b, _ in points])
    y = np.array([t for _, _, t in points])
    (a, b), *_ = np.linalg.lstsq(x, y, rcond=None)
    return float(a), float(b)


def table(counts: list[int], args: argparse.Namespace, machines: Any) -> list[tuple[int, int, float]]:
    """Each configuration's row; the payload sweeps' (members, bytes, seconds)."""
    where = f"a {args.link_mbit:g} Mbit/s link each (tc tbf)" if machines else "loopback addresses"
    print(f"model {GPT(MODEL).num_params:,} parameters, batch {BATCH} x {MODEL.seq_len} per member, "
          f"{args.workers} workers per member, {args.steps} steps; {where}")  # fmt: skip
    print("| members | mode | ms/step | allreduce ms/step | share | bytes sent/step | on the link | "
          "held-out loss | same digest |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    points: list[tuple[int, int, float]] = []
    for n in counts:
        modes = [0] + ([args.outer_every] if n > 1 and args.outer_every else [])
        for h in modes:
            rows = run(n, args, h, machines)
            step = np.mean([r["step_ms"] for r in rows])
            comm = np.mean([r["comm_ms"] for r in rows])
            same = len({r["digest"] for r in rows}) == 1
            mode = f"DiLoCo H={h}" if h else "allreduce"
            wire = f"{np.mean([r['wire_bytes_per_step'] for r in rows]):,.0f}" if machines else "-"
            print(f"| {n} | {mode} | {step:.1f} | {comm:.2f} | {comm / step:.1%} | "
                  f"{np.mean([r['bytes_per_step'] for r in rows]):,.0f} | {wire} | "
                  f"{np.mean([r['val_loss'] for r in rows]):.4f} | {same} |", flush=True)  # fmt: skip
            if not h and n > 1:
                points += [(n, int(b), t) for b, t in rows[0]["sweep"].items()]
    return points


def link_rate(text: str) -> float:
    """``--link-mbit``: 0 (loopback) or a positive finite rate in Mbit/s."""
    try:
        rate = float(text)
    except ValueError:
        rate = float("nan")
    if not (math.isfinite(rate) and rate >= 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not 0 (loopback) or a positive finite rate in Mbit/s")
    return rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", default="1,2,3")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--outer-every", type=int, default=8)
    p.add_argument("--sweep", default="1000,10000,100000,1000000")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument(
        "--link-mbit", type=link_rate, default=0.0, help="each member in a namespace on a link of this rate"
    )
    p.add_argument("--member", type=int, default=-1, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--host", default="", help=argparse.SUPPRESS)
    p.add_argument("--address", default="", help=argparse.SUPPRESS)
    p.add_argument("--device", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.sweep = [int(x) for x in str(args.sweep).split(",") if x]
    if args.member >= 0:
        args.index, args.members = args.member, int(args.members)
        member(args)
        return
    counts = [int(x) for x in args.members.split(",")]
    with tempfile.TemporaryDirectory(prefix="cr-bench-") as d:
        machines: Any = None  # tests/daemon/_cluster_net.py's Machines with --link-mbit
        if args.link_mbit > 0:
            sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "daemon")]
            from _cluster_net import LinkShapingUnavailable, Machines

            machines = Machines(max(counts), Path(d))
            why = machines.shaping_unavailable("tc")
            try:
                for i in range(machines.count if why is None else 0):
                    machines.limit_rate(i, args.link_mbit)
            except LinkShapingUnavailable as exc:
                why = str(exc)
            if why is not None:
                machines.close()
                raise SystemExit(f"--link-mbit: {why}")
        try:
            points = table(counts, args, machines)
        finally:
            if machines is not None:
                machines.close()
    if points:
        for n, size, t in points:
            print(f"allreduce of {size:,} bytes among {n}: {1000 * t:.3f} ms")
        a, b = fit(points)
        print(f"ring fit: a = {a * 1e6:.1f} us per round, b = {b * 1e9:.3f} ns per byte "
              f"({1 / b / 1e6 if b > 0 else float('inf'):,.1f} MB/s)")  # fmt: skip
        if a < 0:
            print("  a < 0: the per-round cost is below the noise of the largest payloads' times "
                  "(a slow link's transfers); only b is measured here")  # fmt: skip


if __name__ == "__main__":
    main()
