"""Soak: the real daemon (12 workers) for a bounded time, its drop folder fed continuously and a
local site crawled; prints memory, descriptors, shared memory, SQLite sizes, throughput at the
start and at the end, and lost documents. A benchmark: it prints a table and asserts nothing.

    .venv/bin/python bench/soak.py --minutes 20
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from crystalline.daemon.status_server import request

WORDS = [
    *("river", "meadow", "farmer", "sheep", "spring", "ground", "grass", "winter", "harvest", "stone"),
    *("bridge", "market", "village", "mill", "road", "lantern", "orchard", "valley", "storm", "letter"),
]


def text_doc(rng: random.Random, n: int) -> str:
    sentences = [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 16))).capitalize() + "." for _ in range(n)
    ]
    return " ".join(sentences)


def slug(i: int) -> str:
    """Letters, not digits, as a real site's article slugs are words (the crawler's trap guard
    once capped URLs whose digit-masked shape repeated; it now judges what the pages give)."""
    out = ""
    while True:
        i, d = divmod(i, 26)
        out = chr(97 + d) + out
        if i == 0:
            return out


def unslug(text: str) -> int:
    n = 0
    for ch in text:
        n = n * 26 + (ord(ch) - 97)
    return n


def site_app(pages: int) -> web.Application:
    async def page(request: web.Request) -> web.Response:
        name = request.match_info["i"]
        if not name.isalpha() or not name.islower():
            raise web.HTTPNotFound()
        i = unslug(name)
        rng = random.Random(i)
        links = "".join(f'<a href="/p/{slug((i * 7 + k) % pages)}">more</a> ' for k in range(1, 4))
        head = f"<html><head><title>Page {i}</title></head>"
        body = f"{head}<body><h1>Page {i}</h1><p>{text_doc(rng, 30)}</p>{links}</body></html>"
        return web.Response(text=body, content_type="text/html")

    app = web.Application()
    app.add_routes([web.get("/p/{i}", page)])
    return app


def serve_site(pages: int) -> tuple[int, threading.Event]:
    ready: list[int] = []
    stop = threading.Event()

    def run() -> None:
        async def main() -> None:
            runner = web.AppRunner(site_app(pages), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            ready.append(runner.addresses[0][1])
            while not stop.is_set():
                await asyncio.sleep(0.2)
            await runner.cleanup()

        asyncio.run(main())

    threading.Thread(target=run, daemon=True).start()
    while not ready:
        time.sleep(0.05)
    return ready[0], stop


def tree(pid: int) -> dict[int, str]:
    """pid -> command line of ``pid`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out: dict[int, str] = {}
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        out[p] = cmd
        todo += children.get(p, [])
    return out


def role(pid: int, root: int, cmd: str) -> str:
    if pid == root:
        return "supervisor"
    for key, name in (
        ("control", "control"),
        ("worker", "worker"),
        ("pool", "ingest-pool"),
        ("resource_tracker", "tracker"),
    ):
        if key in cmd:
            return name
    return "child" if "spawn_main" in cmd else cmd[:20]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def shm_bytes() -> tuple[int, int]:
    files = [p for p in Path("/dev/shm").iterdir() if p.name.startswith("crystalline")]
    return len(files), sum(p.stat().st_blocks * 512 for p in files if p.exists())


def snapshot(root: int, state: Path, sock: Path) -> dict[str, Any]:
    procs = []
    for pid, cmd in sorted(tree(root).items()):
        try:
            procs.append((role(pid, root, cmd), pid, rss_kb(pid), fds(pid)))
        except OSError:
            continue
    status = request(sock, {"cmd": "status"}, timeout_s=30.0)["data"]
    sqlite = {str(p.relative_to(state)): p.stat().st_size for p in state.rglob("*.sqlite*")}
    return {"t": time.monotonic(), "procs": procs, "status": status, "shm": shm_bytes(), "sqlite": sqlite}


def rate(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float]:
    dt = max(b["t"] - a["t"], 1e-9)
    steps = (b["status"]["training"]["step"] - a["status"]["training"]["step"]) / dt
    docs = (b["status"]["ingest"]["documents"] - a["status"]["ingest"]["documents"]) / dt
    return steps, docs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--files-per-s", type=float, default=1.0, help="drop folder feed rate")
    ap.add_argument("--pages", type=int, default=5000, help="pages on the local site")
    ap.add_argument("--window-s", type=float, default=60.0, help="rates are measured over this window")
    args = ap.parse_args()

    base = Path(tempfile.mkdtemp(prefix="soak-", dir="/tmp"))
    state, run = base / "state", base / "run"
    inbox = state / "inbox"
    inbox.mkdir(parents=True)
    port, site_stop = serve_site(args.pages)
    crystalline = str(Path(sys.executable).with_name("crystalline"))
    cmd = [
        crystalline,
        "run",
        "--state-dir",
        str(state),
        "--runtime-dir",
        str(run),
        "--workers",
        str(args.workers),
        "--no-samples",
        "--crawl-start-url",
        f"http://127.0.0.1:{port}/p/{slug(0)}",
        "--crawl-allow-private-addresses",
        "--crawl-min-delay",
        "0.05",
        "--embed-dim",
        "32",
        "--num-layers",
        "2",
        "--num-heads",
        "2",
        "--seq-len",
        "32",
        "--batch-size",
        "12",
        "--checkpoint-interval-s",
        "60",
    ]
    log = open(base / "daemon.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    sock = run / "crystalline.sock"
    rng = random.Random(0)
    dropped = 0
    stop_feed = threading.Event()

    def feed() -> None:
        nonlocal dropped
        while not stop_feed.wait(1.0 / args.files_per_s):
            name = f"doc-{dropped:06d}" + rng.choice([".txt", ".html"])
            body = text_doc(rng, 40)
            if name.endswith(".html"):
                body = f"<html><body><h1>{dropped}</h1><p>{body}</p></body></html>"
            tmp = inbox / ("." + name + ".part")
            tmp.write_text(body)
            os.replace(tmp, inbox / name)  # appears complete
            dropped += 1

    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, f"daemon exited with {proc.returncode}; see {base / 'daemon.log'}"
            try:
                if request(sock, {"cmd": "status"})["data"]["training"]["step"] > 0:
                    break
            except (OSError, KeyError, TypeError):
                pass
            assert time.monotonic() < deadline, "daemon did not start training within 300 s"
            time.sleep(1.0)
        threading.Thread(target=feed, daemon=True).start()
        end = time.monotonic() + args.minutes * 60
        window = min(args.window_s, args.minutes * 60 / 3)
        s0 = snapshot(proc.pid, state, sock)
        time.sleep(window)
        s1 = snapshot(proc.pid, state, sock)
        time.sleep(max(0.0, end - time.monotonic() - window))
        e0 = snapshot(proc.pid, state, sock)
        time.sleep(window)
        e1 = snapshot(proc.pid, state, sock)
        stop_feed.set()
        time.sleep(15)  # let ingest catch up with the last files
        final = snapshot(proc.pid, state, sock)
    finally:
        stop_feed.set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        site_stop.set()
        log.close()

    print(f"soak: {args.minutes:g} min, {args.workers} workers, daemon exit {proc.returncode}, logs {base}")
    print(
        f"\n{'process':<12} {'pid':>7} {'RSS start MB':>13} {'RSS end MB':>11}"
        f" {'fds start':>10} {'fds end':>8}"
    )
    start_procs = {pid: (r, rss, fd) for r, pid, rss, fd in s0["procs"]}
    for r, pid, rss, fd in e1["procs"]:
        a = start_procs.get(pid)
        sa = f"{a[1] / 1024:13.1f}" if a else f"{'(new)':>13}"
        fa = f"{a[2]:10d}" if a else f"{'(new)':>10}"
        print(f"{r:<12} {pid:>7} {sa} {rss / 1024:11.1f} {fa} {fd:8d}")
    total0 = sum(p[2] for p in s0["procs"]) / 1024
    total1 = sum(p[2] for p in e1["procs"]) / 1024
    print(f"{'total':<12} {'':>7} {total0:13.1f} {total1:11.1f}")
    print(f"\n{'':<28} {'start':>12} {'end':>12}")
    print(f"{'/dev/shm segments':<28} {s0['shm'][0]:>12} {e1['shm'][0]:>12}")
    print(f"{'/dev/shm bytes':<28} {s0['shm'][1]:>12} {e1['shm'][1]:>12}")
    for name in sorted(set(s0["sqlite"]) | set(e1["sqlite"])):
        print(f"{'sqlite ' + name:<28} {s0['sqlite'].get(name, 0):>12} {e1['sqlite'].get(name, 0):>12}")
    (st_steps, st_docs), (en_steps, en_docs) = rate(s0, s1), rate(e0, e1)
    print(f"{'steps/s':<28} {st_steps:>12.2f} {en_steps:>12.2f}")
    print(f"{'docs/s (ingested)':<28} {st_docs:>12.2f} {en_docs:>12.2f}")
    ing, crawl = final["status"]["ingest"], final["status"]["crawler"]
    print(
        f"{'crawl stored/queued/errors':<28} "
        f"{crawl.get('stored', 0)}/{crawl.get('queued', 0)}/{crawl.get('errors', 0)}"
    )
    done_files = len(list((inbox / "done").iterdir())) if (inbox / "done").exists() else 0
    failed_files = (
        len([p for p in (inbox / "failed").iterdir() if not p.name.endswith(".reason.txt")])
        if (inbox / "failed").exists()
        else 0
    )
    pending_files = len([p for p in inbox.iterdir() if p.is_file() and not p.name.startswith(".")])
    lost = dropped - done_files - failed_files - pending_files
    print(
        f"\ndrop folder: dropped {dropped}, done {done_files}, failed {failed_files},"
        f" pending {pending_files}, lost {lost}"
    )
    print(
        f"ingest registry: documents {ing.get('documents')}, duplicates {ing.get('duplicates')}, "
        f"filtered {ing.get('filtered')}, failed {ing.get('failed')}, pending {ing.get('pending')}"
    )
    print(f"/dev/shm after stop: {shm_bytes()[0]} crystalline segments")
    shutil.rmtree(base / "state" / "tokens", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
