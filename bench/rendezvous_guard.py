"""The rendezvous guard's cost (issue 16): c10d's TCPStore (classic backend) on a private
loopback port behind the guard, as the hosting member runs them (``host_store`` in
workers/rendezvous_guard.py, the guard on another loopback address), one client straight to
the store and one through the guard; ``--gets`` store ``get``s of a 100-byte value each way,
in ``--rounds`` alternating rounds, round-trip median / p95 / mean.

Run: .venv/bin/python bench/rendezvous_guard.py [--gets 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import timedelta

import torch.distributed as dist

from crystalline.workers.rendezvous_guard import host_store


def client(address: tuple[str, int]) -> dist.TCPStore:
    return dist.TCPStore(
        address[0], address[1], None, False, timeout=timedelta(seconds=10),
        wait_for_workers=False, use_libuv=False,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gets", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    server, guard = host_store(("127.0.0.2", 0), timeout_s=10)
    ways = {"direct": client(guard.upstream), "guard": client(guard.address)}
    ways["direct"].set("k", "v" * 100)
    print("| round | way | median us | p95 us | mean us |\n|---|---|---|---|---|")
    for r in range(args.rounds):
        for name, store in ways.items():
            times = []
            for _ in range(args.gets):
                started = time.perf_counter()
                store.get("k")
                times.append(time.perf_counter() - started)
            times.sort()
            median, p95 = times[len(times) // 2], times[int(len(times) * 0.95)]
            mean = statistics.mean(times)
            print(f"| {r} | {name} | {median * 1e6:.1f} | {p95 * 1e6:.1f} | {mean * 1e6:.1f} |")
    guard.close()
    del ways, server


if __name__ == "__main__":
    main()
