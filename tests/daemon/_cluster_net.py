"""Several "machines" on one box for the cluster tests: network namespaces joined by veth pairs
to a bridge in a hub namespace, made (and removed) here with iproute2, each running a real
``crystalline run --cluster``; where namespaces are not allowed, distinct loopback addresses
(``kind`` says which ran, and a partition then cannot be made)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _daemon_process import SMALL_MODEL

from crystalline.daemon.status_server import request


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class Machines:
    def __init__(self, count: int, root: Path) -> None:
        self.count = count
        self.root = root
        self.tag = f"cr{os.getpid() % 100000}"
        self.namespaces: list[str] = []
        try:
            self._make_namespaces()
            self.kind = "namespaces"
            self.addresses = [f"10.0.0.{i + 1}" for i in range(count)]
        except (subprocess.CalledProcessError, FileNotFoundError, subprocess.TimeoutExpired):
            self._remove_namespaces()
            self.kind = "loopback"
            self.addresses = [f"127.0.{os.getpid() % 200 + 1}.{i + 1}" for i in range(count)]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    # ---- network ----------------------------------------------------------------------------
    def _make_namespaces(self) -> None:
        hub = f"{self.tag}h"
        _ip("netns", "add", hub)
        self.namespaces.append(hub)
        _ip("-n", hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", hub, "link", "set", "br0", "up")
        for i in range(self.count):
            ns = f"{self.tag}m{i}"
            _ip("netns", "add", ns)
            self.namespaces.append(ns)
            _ip("link", "add", f"{self.tag}b{i}", "type", "veth", "peer", "name", f"{self.tag}v{i}")
            _ip("link", "set", f"{self.tag}v{i}", "netns", ns)
            _ip("link", "set", f"{self.tag}b{i}", "netns", hub)
            _ip("-n", hub, "link", "set", f"{self.tag}b{i}", "master", "br0")
            _ip("-n", hub, "link", "set", f"{self.tag}b{i}", "up")
            _ip("-n", ns, "addr", "add", f"10.0.0.{i + 1}/24", "dev", f"{self.tag}v{i}")
            _ip("-n", ns, "link", "set", f"{self.tag}v{i}", "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def _remove_namespaces(self) -> None:
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.namespaces = []

    def prefix(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", f"{self.tag}m{i}"] if self.kind == "namespaces" else []

    def link(self, i: int, up: bool) -> None:
        """Cut machine ``i`` off the network (its only link down), or bring it back."""
        assert self.kind == "namespaces", "a partition needs network namespaces"
        _ip("-n", f"{self.tag}m{i}", "link", "set", f"{self.tag}v{i}", "up" if up else "down")

    def run_in(self, i: int, code: str) -> None:
        subprocess.run([*self.prefix(i), sys.executable, "-c", code], check=True, timeout=60)

    # ---- daemons ----------------------------------------------------------------------------
    def start(self, i: int, port: int, extra: tuple[str, ...] = ()) -> None:
        state, run = self.root / f"m{i}" / "state", self.root / f"m{i}" / "run"
        state.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC"):
            env.pop(key, None)
        cmd = [
            *self.prefix(i), sys.executable, "-m", "crystalline.daemon.cli", "run",
            "--state-dir", str(state), "--runtime-dir", str(run), "--no-crawl", "--http", "off",
            "--workers", "2", *SMALL_MODEL, "--batch-size", "8", "--eval-interval", "100000",
            "--checkpoint-interval-s", "20", "--cluster", f"{self.addresses[0]}:{port}",
            "--cluster-address", self.addresses[i], "--cluster-timeout-s", "5", *extra,
        ]  # fmt: skip
        log = (self.root / f"m{i}.log").open("ab")
        self.procs[i] = subprocess.Popen(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
        log.close()

    def log(self, i: int) -> str:
        return (self.root / f"m{i}.log").read_text(encoding="utf-8", errors="replace")

    def status(self, i: int) -> dict[str, Any]:
        proc = self.procs[i]
        assert proc.poll() is None, f"machine {i} exited with {proc.returncode}:\n{self.log(i)[-3000:]}"
        reply = request(self.root / f"m{i}" / "run" / "crystalline.sock", {"cmd": "status"})
        assert reply["ok"], reply
        data: dict[str, Any] = reply["data"]
        return data

    def wait(self, i: int, ok: Any, what: str, timeout_s: float = 240) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        data: dict[str, Any] = {}
        while True:
            try:
                data = self.status(i)
            except OSError:
                pass  # not listening yet
            else:
                if ok(data):
                    return data
            assert time.monotonic() < deadline, f"machine {i}: {what}: {data.get('cluster')}"
            time.sleep(0.2)

    def kill(self, i: int) -> None:
        """The machine dies: every process of its daemon at once."""
        proc = self.procs.pop(i)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def stop(self, i: int) -> None:
        proc = self.procs.pop(i)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever it left behind

    def close(self) -> None:
        for i in list(self.procs):
            self.stop(i)
        self._remove_namespaces()


def digests(status: dict[str, Any]) -> dict[int, str]:
    return {step: d for step, d in status["cluster"]["recent_digests"]}


def agree(machines: Machines, members: list[int], timeout_s: float = 120) -> int:
    """Wait until the members' recent digests share a step; assert they are equal at every
    shared step; the newest shared step."""
    deadline = time.monotonic() + timeout_s
    while True:
        seen = [digests(machines.status(i)) for i in members]
        common = set.intersection(*(set(d) for d in seen))
        if common:
            for step in common:
                assert len({d[step] for d in seen}) == 1, f"digests differ at step {step}: {seen}"
            return max(common)
        assert time.monotonic() < deadline, f"no step shared by all members: {seen}"
        time.sleep(0.1)
