"""Check the unit's system-call filter against what the daemon really calls (issue 18).

Runs the real ``crystalline run`` under ``strace -f`` through a full cycle: start, the bundled
samples ingested (the scanned PNG through tesseract, the PDF through pdfium), a crawl of a small
site served on 127.0.0.1 by this script, a ``checkpoint`` and a ``generate`` over the status
socket, the dashboard's page, status and metrics fetched, then SIGTERM.
The set of system calls of all its processes is then held against ``systemd/crystalline.service``:
its ``SystemCallFilter=`` lines expanded with ``systemd-analyze syscall-filter``, its
``RestrictAddressFamilies=`` and what ``MemoryDenyWriteExecute=yes`` refuses (an ``mmap`` that is
both writable and executable, an ``mprotect`` that adds PROT_EXEC, ``shmat`` with SHM_EXEC).

    sudo apt-get install strace      # and systemd, for systemd-analyze
    .venv/bin/python scripts/syscall_audit.py [--workers 3] [--keep-trace FILE]

Prints the figures and exits 1 when the filter would refuse a call the daemon made.
strace sees calls before any filter, so "used" is everything, refused or not.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "crystalline.service"
# a small model, as the daemon tests run it: the calls are the same at any size
SMALL_MODEL = ["--embed-dim", "32", "--num-layers", "2", "--num-heads", "2", "--seq-len", "32"]
SMALL_MODEL += ["--batch-size", "12", "--eval-interval", "25", "--eval-windows", "16"]
PAGES = 5
# groups a service may be denied on top of @system-service: each is reported with the calls of
# it that the daemon made (none: it can be denied)
CANDIDATES = ["@aio", "@chown", "@clock", "@ipc", "@keyring", "@memlock", "@resources", "@setuid"]
CANDIDATES += ["@sync", "@timer", "@privileged", "@debug", "@mount", "@obsolete", "@raw-io"]
CANDIDATES += ["@reboot", "@swap", "@cpu-emulation", "@module", "@pkey"]
# calls the filter refuses on purpose whose callers go on without them (checked under the unit
# by tests/systemd): a refused call returns EPERM (SystemCallErrorNumber=), it kills nothing
TOLERATED = {
    "mbind": "OpenBLAS (inside numpy) asks for NUMA placement of its 32 MiB buffers, ignores EPERM",
}
# calls made only because the audit runs as root, where the unit runs as User=crystalline
AS_ROOT_ONLY = {"fchown": "SQLite gives its journal the database's owner only when euid is 0"}
CALL = re.compile(r"^\d+\s+(?:<\.\.\. )?([a-z_][a-z0-9_]*)[( ]")


def site(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """A few linked HTML pages of prose from the bundled samples, served on 127.0.0.1."""
    samples = sorted((REPO / "daemon" / "samples").glob("shakespeare-*.txt"))
    for i in range(PAGES):
        text = samples[-1 - i].read_text(encoding="utf-8")[:3000]
        paras = "".join(f"<p>{p}</p>" for p in text.split("\n\n") if p.strip())
        links = "".join(f'<a href="/page-{j}.html">page {j}</a> ' for j in range(PAGES))
        html = (
            f"<html><head><title>Page {i}</title></head><body><article>{paras}</article>{links}</body></html>"
        )
        (root / f"page-{i}.html").write_text(html, encoding="utf-8")
    (root / "index.html").write_text((root / "page-0.html").read_text(encoding="utf-8"), encoding="utf-8")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def status(sock: Path, req: dict[str, Any] | None = None) -> dict[str, Any]:
    """The daemon's reply to ``req`` (default: status) on its socket; {} while it does not answer."""
    from crystalline.daemon.status_client import request

    try:
        reply: dict[str, Any] = request(sock, req or {"cmd": "status"}, 60)
    except OSError:
        return {}
    return reply


def wait(sock: Path, what: str, test: Any, timeout_s: float, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    data: dict[str, Any] = {}
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the daemon ended (strace exited {proc.returncode}) before {what}")
        data = status(sock).get("data", {})
        if data and test(data):
            print(f"  {what}")
            return data
        time.sleep(1.0)
    sys.exit(f"no {what} within {timeout_s:.0f} s: {data.get('ingest')} {data.get('crawler')}")


def run_daemon(trace: Path, workers: int, user: str | None) -> None:
    """The full cycle under strace, as ``user`` if given (as the unit's User= does: SQLite, for
    one, calls fchown on its journal only when run as root); the trace goes to ``trace``."""
    tmp = Path(tempfile.mkdtemp(prefix="cs-audit-"))  # short: the socket path limit is ~107 bytes
    os.chmod(tmp, 0o755)
    (tmp / "site").mkdir()
    server, url = site(tmp / "site")
    sock = tmp / "r" / "crystalline.sock"
    for d in ("s", "r"):
        (tmp / d).mkdir()
        if user:
            shutil.chown(tmp / d, user)
    as_user = ["-u", user] if user else []
    daemon = [str(REPO / ".venv" / "bin" / "crystalline"), "run", "--workers", str(workers), *SMALL_MODEL]
    daemon += ["--state-dir", str(tmp / "s"), "--runtime-dir", str(tmp / "r"), "--http", "127.0.0.1:0"]
    daemon += ["--crawl-start-url", url, "--crawl-allow-private-addresses", "--crawl-min-delay", "0"]
    daemon += ["--crawl-no-sitemaps"]
    cmd = ["strace", "-f", "-qq", "-o", str(trace), *as_user, *daemon]
    texts = len(list((REPO / "daemon" / "samples").glob("shakespeare-*.txt")))
    print(f"running the daemon under strace ({workers} workers, site {url}) ...")
    env = dict(os.environ, HOME=str(tmp / "s"))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=(tmp / "daemon.log").open("wb"), env=env)
    try:
        wait(sock, "a training step", lambda d: d["training"]["step"] > 0, 600, proc)
        crawled = wait(
            sock, "pages crawled", lambda d: d["crawler"].get("stored_total", 0) >= PAGES, 300, proc
        )
        # the texts and the crawled pages (the PNG by OCR, the PDF and the HTML sample are one
        # sonnet: two of them go as near-duplicates)
        ingest = wait(
            sock,
            "samples and pages ingested",
            lambda d: d["ingest"].get("pending") == 0 and d["ingest"].get("documents", 0) >= texts + PAGES,
            600,
            proc,
        )["ingest"]
        print(f"  ingest {ingest}\n  crawler stored {crawled['crawler'].get('stored_total')}")
        saved = status(sock, {"cmd": "checkpoint"})
        print(f"  checkpoint: {saved}")
        generated = status(sock, {"cmd": "generate", "prompt": "To be", "n": 40})
        print(f"  generate: {generated}")
        url = status(sock)["data"]["http"]["url"].rstrip("/")
        pages = [
            urllib.request.urlopen(f"{url}/{p}", timeout=60).status for p in ("", "api/status", "metrics")
        ]
        print(f"  dashboard {url}: / /api/status /metrics answered {pages}")
        if not saved.get("ok") or not generated.get("ok"):
            sys.exit("the checkpoint or generate command failed")
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        os.kill(int(children[0]), signal.SIGTERM)
        proc.wait(timeout=180)
        print(f"  stopped (strace exit {proc.returncode})")
    finally:
        if proc.poll() is None:
            proc.kill()
        if proc.wait() != 0:
            print((tmp / "daemon.log").read_text(errors="replace")[-3000:], file=sys.stderr)
        server.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def expand(name: str) -> set[str]:
    """A syscall or ``@group`` as the set of call names systemd-analyze gives, nested groups too."""
    if not name.startswith("@"):
        return {name}
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager", name], capture_output=True, text=True, check=True
    ).stdout
    calls: set[str] = set()
    for line in out.splitlines()[1:]:
        item = line.strip()
        if item and not item.startswith("#"):
            calls |= expand(item) if item.startswith("@") else {item}
    return calls


def unit_values(key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in UNIT.read_text().splitlines() if line.startswith(key + "=")]


def allowed_calls() -> set[str]:
    """What the unit's SystemCallFilter= lines allow, in systemd's order: the first line sets an
    allow list (or a deny list with ~), later lines add to or take from it."""
    allowed: set[str] = set()
    for value in unit_values("SystemCallFilter"):
        deny = value.startswith("~")
        names = set().union(*(expand(n) for n in value.lstrip("~").split()))
        allowed = allowed - names if deny else allowed | names
    return allowed


def analyse(trace: Path, as_root: bool) -> int:
    lines = trace.read_text(errors="replace").splitlines()
    used = {m.group(1) for line in lines if (m := CALL.match(line))}
    allowed = allowed_calls()
    excused = {**TOLERATED, **(AS_ROOT_ONLY if as_root else {})}
    refused = sorted(used - allowed - set(excused))
    print(f"\n{len(lines)} trace lines, {len(used)} distinct system calls used by all processes")
    for call in sorted((used - allowed) & set(excused)):
        print(f"refused by the filter, not needed: {call} ({excused[call]})")
    print(f"used but not allowed by the unit's filter: {' '.join(refused) or 'none'}")
    print("candidate groups (calls of each that were used; none: it can be denied):")
    for group in CANDIDATES:
        calls = expand(group)
        hit = sorted(calls & used)
        print(f"  {group:15} {len(calls & allowed):2}/{len(calls):2} allowed, used: {' '.join(hit) or '-'}")

    family = re.compile(r"\bsocket(?:pair)?\((AF_\w+)")
    families = sorted({m.group(1) for line in lines if (m := family.search(line))})
    allowed_families = set(" ".join(unit_values("RestrictAddressFamilies")).split())
    print(f"socket families used: {' '.join(families)}; allowed: {' '.join(sorted(allowed_families))}")
    for fam in families:
        if fam not in allowed_families:
            sample = next(line for line in lines if re.search(rf"\bsocket(?:pair)?\({fam}\b", line))
            print(f"  {fam} is not allowed (the call then fails with EAFNOSUPPORT), e.g.: {sample}")

    wx = [line for line in lines if re.search(r"\bmmap\(.*PROT_WRITE\|PROT_EXEC", line)]
    mx = [line for line in lines if re.search(r"\b(?:pkey_)?mprotect\(.*PROT_EXEC", line)]
    shx = [line for line in lines if re.search(r"\bshmat\(.*SHM_EXEC", line)]
    print(
        f"MemoryDenyWriteExecute=: writable+executable mmap {len(wx)}, mprotect adding PROT_EXEC {len(mx)},"
        f" shmat SHM_EXEC {len(shx)}"
    )
    for line in (wx + mx + shx)[:10]:
        print("  " + line)
    return 1 if refused or wx or mx or shx else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--keep-trace", type=Path, help="write the strace output here (default: a temp file)")
    parser.add_argument("--user", help="run the daemon as this user (it must be able to read the venv)")
    parser.add_argument("--trace", type=Path, help="analyse this trace instead of running the daemon")
    args = parser.parse_args()
    for tool in ("strace", "systemd-analyze"):
        if args.trace is None and shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: apt-get install {'strace' if tool == 'strace' else 'systemd'}")
    if args.trace:
        return analyse(args.trace, as_root=args.user is None and os.geteuid() == 0)
    with tempfile.TemporaryDirectory(prefix="cs-trace-") as tmp:
        trace = args.keep_trace or Path(tmp) / "trace"
        run_daemon(trace, args.workers, args.user)
        return analyse(trace, as_root=args.user is None and os.geteuid() == 0)


if __name__ == "__main__":
    sys.exit(main())
