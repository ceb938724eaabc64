"""The status socket under load and under a hostile user, on the real daemon (12 workers):

- `crystalline status` wall time with training running and with training paused;
- training steps/s alone and while 4 clients loop on `generate` (and what status says);
- the supervisor's RSS while clients pipeline requests and never read the replies;
- `crystalline status` while another uid (`nobody`) holds 600 connections open with a newline
  every few seconds.

A benchmark: it prints its figures and asserts nothing. Run as root (the hostile user is
``nobody``, reached with setuid in a forked child):

    .venv/bin/python bench/status_socket.py
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "crystalline.daemon.cli"]
SMALL = ["--embed-dim", "32", "--num-layers", "2", "--num-heads", "2", "--seq-len", "32"]
NOBODY = 65534


def ask(path: Path, payload: dict[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(path))
        sock.sendall(json.dumps(payload).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed without a reply")
            buf += chunk
    reply: dict[str, Any] = json.loads(buf)
    return reply


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def status_cli(run_dir: Path, times: int) -> tuple[list[float], list[int]]:
    walls, codes = [], []
    for _ in range(times):
        t0 = time.perf_counter()
        out = subprocess.run(
            [*CLI, "status", "--runtime-dir", str(run_dir), "--json"], capture_output=True, timeout=60
        )
        walls.append(time.perf_counter() - t0)
        codes.append(out.returncode)
    return walls, codes


def steps_per_s(sock: Path, seconds: float) -> float:
    a = ask(sock, {"cmd": "status"})["data"]["training"]["step"]
    t0 = time.monotonic()
    time.sleep(seconds)
    b = ask(sock, {"cmd": "status"})["data"]["training"]["step"]
    return (b - a) / (time.monotonic() - t0)


def fmt(walls: list[float]) -> str:
    return f"median {statistics.median(walls) * 1000:6.0f} ms  max {max(walls) * 1000:6.0f} ms"


def generate_loopers(
    sock: Path, clients: int, seconds: float, settle_s: float
) -> tuple[float, dict[str, int]]:
    """Steps/s while ``clients`` loop on generate, measured after the first ``settle_s``
    (a limited daemon lets a burst through first), and how their requests fared."""
    counts = {"ok": 0, "refused": 0, "failed": 0}
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def loop() -> None:
        while time.monotonic() < end:
            try:
                reply = ask(sock, {"cmd": "generate", "prompt": "The ", "n": 200, "seed": 1}, 90)
                key = "ok" if reply.get("ok") else "refused"
            except OSError:
                key = "failed"
            with lock:
                counts[key] += 1
            if key != "ok":
                time.sleep(0.05)  # a looping client retries at once; do not spin the bench itself

    threads = [threading.Thread(target=loop) for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(settle_s)
    rate = steps_per_s(sock, seconds - settle_s - 1.0)
    for t in threads:
        t.join(120)
    return rate, counts


def non_reading_clients(
    sock: Path, pid: int, clients: int, requests: int, hold_s: float
) -> tuple[int, int, int]:
    """Clients that pipeline ``requests`` status requests and never read: peak RSS growth (KiB),
    RSS growth after they went away, and how many of them the server had closed."""
    before = rss_kib(pid)
    line = b'{"cmd": "status"}\n'
    socks: list[socket.socket] = []
    pending: list[bytes] = []
    for _ in range(clients):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(sock))
        s.setblocking(False)
        socks.append(s)
        pending.append(line * requests)
    peak = before
    end = time.monotonic() + hold_s
    while time.monotonic() < end:
        for i, s in enumerate(socks):
            if pending[i]:
                with contextlib.suppress(OSError):  # full (BlockingIOError) or closed
                    pending[i] = pending[i][s.send(pending[i]) :]
        peak = max(peak, rss_kib(pid))
        time.sleep(0.2)
    closed = 0
    for s in socks:
        # without reading anything: a send to a connection the server closed fails at once
        try:
            s.send(b"\n")
        except (BrokenPipeError, ConnectionResetError):
            closed += 1
        except BlockingIOError:
            pass  # still open: the server has simply stopped reading it
        s.close()
    time.sleep(2.0)
    return peak - before, rss_kib(pid) - before, closed


def hostile_child(sock: Path, connections: int, seconds: float, out_fd: int) -> None:
    """Runs as ``nobody``: holds connections open with a newline every 3 s; writes a JSON count."""
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    socks: list[socket.socket] = []
    refused = 0
    for _ in range(connections):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(sock))
            socks.append(s)
        except OSError:
            refused += 1
            s.close()
    os.write(out_fd, (json.dumps({"connected": len(socks), "refused_connect": refused}) + "\n").encode())
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for s in socks:
            with contextlib.suppress(OSError):
                s.send(b"\n")
        time.sleep(3.0)
    closed = 0
    for s in socks:
        ready, _, _ = select.select([s], [], [], 0)
        if ready:
            closed += 1  # the server answered (a refusal) or hung up
    os.write(out_fd, (json.dumps({"answered_or_closed": closed}) + "\n").encode())


def hostile(sock: Path, run_dir: Path, connections: int) -> tuple[dict[str, Any], list[float], list[int]]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            hostile_child(sock, connections, 40.0, w)
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        first = json.loads(pipe.readline())
        time.sleep(5.0)  # the connections are held, with newlines going out
        walls, codes = status_cli(run_dir, 5)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return first, walls, codes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--label", default="", help="a name for this run in the output")
    args = parser.parse_args()
    if os.getuid() != 0:
        print("run as root: the hostile client becomes nobody", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="bss-", dir="/tmp") as d:
        root = Path(d)
        os.chmod(root, 0o755)  # nobody must reach the socket
        state, run_dir = root / "s", root / "r"
        inbox = state / "inbox"
        inbox.mkdir(parents=True)
        run_dir.mkdir(mode=0o755)  # made here: the daemon's umask would close it to nobody
        text = (ROOT.parent / "shared/data/tinyshakespeare.txt").read_text(encoding="utf-8")
        for i in range(8):
            (inbox / f"part{i}.txt").write_text(text[i * 100_000 : (i + 1) * 100_000], encoding="utf-8")
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        cmd = [*CLI, "run", "--state-dir", str(state), "--runtime-dir", str(run_dir), "--no-crawl",
               "--no-samples", "--workers", str(args.workers), "--socket-mode", "0666", *SMALL]  # fmt: skip
        log = (root / "daemon.log").open("wb")
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        sock = run_dir / "crystalline.sock"
        try:
            deadline = time.monotonic() + 300
            while True:
                assert proc.poll() is None, (root / "daemon.log").read_text()[-2000:]
                try:
                    if ask(sock, {"cmd": "status"}, 5)["data"]["training"]["step"] > 20:
                        break
                except (OSError, ValueError, KeyError):
                    pass
                assert time.monotonic() < deadline, "no training within 300 s"
                time.sleep(0.5)
            print(f"== status socket bench {args.label} ({args.workers} workers, {os.cpu_count()} cores)")
            walls, codes = status_cli(run_dir, 10)
            print(f"crystalline status, training:     {fmt(walls)}  exit codes {sorted(set(codes))}")
            base = steps_per_s(sock, 10.0)
            rate, counts = generate_loopers(sock, 4, 45.0, settle_s=20.0)
            g = ask(sock, {"cmd": "status"})["data"].get("generation", {})
            flag = {k: g[k] for k in ("cpu_share", "slowing_training") if k in g}
            print(f"steps/s alone:                    {base:8.1f}")
            print(f"steps/s, 4 generate loopers:      {rate:8.1f}  replies {counts}  status {flag}")
            peak, after, closed = non_reading_clients(sock, proc.pid, 200, 4000, 30.0)
            print(f"supervisor RSS, 200 non-readers:  peak +{peak / 1024:.1f} MiB, after +{after / 1024:.1f} "
                  f"MiB, closed by the server {closed}/200")  # fmt: skip
            print(f"socket counters:                  {ask(sock, {'cmd': 'status'})['data'].get('socket')}")
            first, walls, codes = hostile(sock, run_dir, 600)
            print(f"nobody holding 600 connections:   {first}")
            print(f"crystalline status meanwhile:     {fmt(walls)}  exit codes {codes}")
            ask(sock, {"cmd": "pause", "what": "training"})
            time.sleep(2.0)
            walls, codes = status_cli(run_dir, 10)
            print(f"crystalline status, paused:       {fmt(walls)}  exit codes {sorted(set(codes))}")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
