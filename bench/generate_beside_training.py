"""Training steps/s of a running daemon alone, while the dashboard's chat streams without a
pause, and while 4 clients loop on the socket's `generate` (all served by the generation
process, within the socket's share of time), side by side, with the generation tokens/s and the
generation process's CPU share that status reports (issue 14).

    .venv/bin/python bench/generate_beside_training.py --runtime-dir state/run [--seconds 20]

The daemon must run with its dashboard on; its figures depend on the model size and the cores.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import urllib.request
from pathlib import Path

from crystalline.daemon.status_client import request


def steps(sock: Path) -> int:
    return int(request(sock, {"cmd": "status"})["data"]["training"]["step"])


def rate(sock: Path, seconds: float) -> tuple[float, float]:
    """Steps/s over ``seconds``, and the generation process's CPU share at the end."""
    a, t0 = steps(sock), time.monotonic()
    time.sleep(seconds)
    r = (steps(sock) - a) / (time.monotonic() - t0)
    share = request(sock, {"cmd": "status"})["data"].get("generation", {}).get("cpu_share", 0.0)
    return r, float(share)


def chat_loop(url: str, token: str, stop: threading.Event, n: int, out: list[float]) -> None:
    body = json.dumps({"prompt": "The ", "n": n, "temperature": 0.8}).encode()
    while not stop.is_set():
        req = urllib.request.Request(
            url + "api/generate",
            data=body,
            headers={"Content-Type": "application/json", "X-Crystalline-Token": token},
        )
        with urllib.request.urlopen(req, timeout=120) as r:
            for line in r:
                msg = json.loads(line)
                if msg.get("done"):
                    out.append(float(msg["tokens_per_s"]))


def socket_loop(sock: Path, stop: threading.Event, n: int, out: list[float]) -> None:
    while not stop.is_set():
        t0 = time.monotonic()
        reply = request(sock, {"cmd": "generate", "prompt": "The ", "n": n}, timeout_s=120)
        if reply.get("ok"):
            out.append(n / (time.monotonic() - t0))
        else:
            time.sleep(1.0)  # over the socket's share: wait as the reply says


def socket_clients(sock: Path, stop: threading.Event, n: int, out: list[float], clients: int = 4) -> None:
    threads = [threading.Thread(target=socket_loop, args=(sock, stop, n, out)) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runtime-dir", type=Path, default=Path("state/run"))
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--tokens", type=int, default=200)
    args = ap.parse_args()
    sock = args.runtime_dir / "crystalline.sock"
    info = json.loads((args.runtime_dir / "dashboard.json").read_text(encoding="utf-8"))
    alone, share = rate(sock, args.seconds)
    rows = [("training alone", alone, None, share)]
    for name, loop, target in (
        ("chat streaming", chat_loop, (info["url"], info["token"])),
        ("4 socket clients looping generate", socket_clients, (sock,)),
    ):
        stop, out = threading.Event(), []
        worker = threading.Thread(target=loop, args=(*target, stop, args.tokens, out), daemon=True)
        worker.start()
        time.sleep(2.0)  # the generation process starts on the first request
        r, share = rate(sock, args.seconds)
        stop.set()
        worker.join(180)
        rows.append((name, r, sum(out) / len(out) if out else 0.0, share))
        time.sleep(2.0)  # the last requests drain
    print(f"{'':36s} {'steps/s':>9s} {'vs alone':>9s} {'gen tok/s':>10s} {'gen cpu_share':>14s}")
    for name, r, gen, share in rows:
        gen_text = "-" if gen is None else f"{gen:10.1f}"
        print(f"{name:36s} {r:9.2f} {r / alone:9.2f} {gen_text:>10s} {share:14.2f}")


if __name__ == "__main__":
    main()
