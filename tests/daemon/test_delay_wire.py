"""The delaying wire (tests/daemon/_delay_wire.py) on its own: namespaces A and B, each with one
veth whose peer is in namespace W, where the wire forwards between the two peers. IPv6 is off and
each side's neighbour is fixed, so the only frames are the test's UDP datagrams, each carrying
its sequence number and the monotonic time it was sent (one clock in every network namespace).
Checked: every datagram crosses, in order, at least the wire's delay late, and the wire's
counters match what crossed; with the wire stopped (SIGSTOP) while a flood arrives, the frames
the kernel drops at the wire's full socket are counted as ``kernel_dropped``, and every frame
that reached the socket is either forwarded or counted dropped. Skips where namespaces are not
allowed (not root, no iproute2)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _wait import until

pytestmark = pytest.mark.timeout(180)

WIRE = Path(__file__).with_name("_delay_wire.py")
DELAY_MS = 30
UDP_FRAME_EXTRA = 14 + 20 + 8  # Ethernet, IPv4 and UDP headers: a frame's bytes less the payload
PORT = 5001

# Run in a namespace: receive `count` datagrams on `address`:PORT (the socket's buffer forced to 8 MiB),
# print how many came, whether in order, and the least time any took from its sender.
RECEIVER = """
import json, socket, struct, sys, time
address, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
s.bind((address, port))
s.settimeout(30)
print("ready", flush=True)
seqs, least = [], None
try:
    while len(seqs) < count:
        data = s.recv(65536)
        now = time.monotonic_ns()
        seq, sent = struct.unpack("!QQ", data[:16])
        seqs.append(seq)
        least = now - sent if least is None else min(least, now - sent)
except TimeoutError:
    pass
print(json.dumps({"received": len(seqs), "in_order": seqs == sorted(seqs), "least_ns": least}))
"""

# Run in a namespace: send `count` datagrams of `size` bytes to `address`:PORT as fast as it can.
SENDER = """
import socket, struct, sys, time
address, port, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for seq in range(count):
    s.sendto(struct.pack("!QQ", seq, time.monotonic_ns()).ljust(size, b"."), (address, port))
"""


def _run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30).stdout


def in_ns(ns: str, code: str, address: str, *args: int) -> list[str]:
    """The command that runs Python ``code`` in namespace ``ns`` with ``address``, PORT and ``args``."""
    return ["ip", "netns", "exec", ns, sys.executable, "-c", code, address, str(PORT), *map(str, args)]


@dataclass
class Wired:
    tag: str
    counters: Path
    wire: subprocess.Popen[bytes]

    def ns(self, side: str) -> str:
        return f"{self.tag}{side}"

    def read(self) -> dict[str, dict[str, int]]:
        """The wire's counters: "a" (frames from namespace A towards B) and "b" (the other way)."""
        counts = json.loads(self.counters.read_text(encoding="utf-8"))
        return {"a": counts[f"{self.tag}x->{self.tag}y"], "b": counts[f"{self.tag}y->{self.tag}x"]}

    def packets(self, side: str, dev: str, way: str) -> int:
        """Packets device ``dev`` of namespace ``side`` has received (``way`` "rx") or sent ("tx")."""
        shown = json.loads(_run("ip", "-n", self.ns(side), "-s", "-j", "link", "show", "dev", dev))
        return int(shown[0]["stats64"][way]["packets"])


@pytest.fixture
def wired(tmp_path: Path) -> Iterator[Wired]:
    if os.geteuid() != 0:
        pytest.skip("the wire's namespaces need root")
    tag = f"dw{os.getpid() % 100000}"
    made: list[str] = []
    wire: subprocess.Popen[bytes] | None = None
    try:
        try:
            for side in "AWB":
                _run("ip", "netns", "add", f"{tag}{side}")
                made.append(f"{tag}{side}")
        except (FileNotFoundError, subprocess.CalledProcessError) as exc:
            pytest.skip(f"no network namespaces here: {exc}")
        for side in "AWB":  # no IPv6: no neighbour discovery nor router solicitations on the links
            if Path("/proc/sys/net/ipv6").exists():
                _run(
                    "ip", "netns", "exec", f"{tag}{side}", "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"
                )
                _run(
                    "ip",
                    "netns",
                    "exec",
                    f"{tag}{side}",
                    "sysctl",
                    "-qw",
                    "net.ipv6.conf.default.disable_ipv6=1",
                )
        for side, peer, address in (("A", "x", "10.98.0.1"), ("B", "y", "10.98.0.2")):
            dev = f"{tag}{side.lower()}"
            _run(
                "ip",
                "link",
                "add",
                dev,
                "netns",
                f"{tag}{side}",
                "type",
                "veth",
                "peer",
                "name",
                f"{tag}{peer}",
                "netns",
                f"{tag}W",
            )
            _run("ip", "-n", f"{tag}{side}", "addr", "add", f"{address}/24", "dev", dev)
            _run("ip", "-n", f"{tag}{side}", "link", "set", dev, "up")
            _run("ip", "-n", f"{tag}W", "link", "set", f"{tag}{peer}", "up")
        for side, other, address in (("A", "B", "10.98.0.2"), ("B", "A", "10.98.0.1")):  # no ARP
            mac = json.loads(
                _run("ip", "-n", f"{tag}{other}", "-j", "link", "show", "dev", f"{tag}{other.lower()}")
            )
            _run("ip", "-n", f"{tag}{side}", "neigh", "replace", address, "lladdr", mac[0]["address"],
                 "dev", f"{tag}{side.lower()}", "nud", "permanent")  # fmt: skip
        counters = tmp_path / "wire.json"
        log = (tmp_path / "wire.log").open("ab")
        wire = subprocess.Popen(
            [
                "ip", "netns", "exec", f"{tag}W", sys.executable, str(WIRE), f"{tag}x", f"{tag}y",
                str(DELAY_MS), str(counters),
            ],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )  # fmt: skip
        log.close()

        def ready() -> bool:
            assert wire is not None and wire.poll() is None, (tmp_path / "wire.log").read_text()
            return counters.exists()

        until(ready, "the wire forwarding", 30)
        yield Wired(tag, counters, wire)
    finally:
        if wire is not None:
            with contextlib.suppress(ProcessLookupError):
                wire.send_signal(signal.SIGCONT)  # a test that stopped it and failed
                wire.terminate()
            try:
                wire.wait(timeout=10)
            except subprocess.TimeoutExpired:
                wire.kill()
                wire.wait(timeout=30)
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
        assert not [line for line in listed.splitlines() if line.startswith(tag)], listed


def cross(wired: Wired, src: str, dst: str, address: str, count: int, size: int) -> dict[str, Any]:
    """``count`` datagrams of ``size`` bytes from namespace ``src`` to ``address`` in ``dst``
    through the wire; what the receiver saw."""
    with subprocess.Popen(
        in_ns(wired.ns(dst), RECEIVER, address, count), stdout=subprocess.PIPE, text=True
    ) as receiver:
        try:
            assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
            _run(*in_ns(wired.ns(src), SENDER, address, count, size))
            out, _ = receiver.communicate(timeout=60)
        finally:
            receiver.kill()
    seen: dict[str, Any] = json.loads(out)
    return seen


def settled(wired: Wired, direction: str, arrived: int) -> dict[str, int] | None:
    """The wire's counters for ``direction`` once all of the ``arrived`` frames that reached its
    socket were forwarded or counted dropped (the queue empty); None before."""
    c = wired.read()[direction]
    done = c["kernel_seen"] == arrived and c["frames"] + c["dropped"] + c["kernel_dropped"] == arrived
    return c if done else None


def test_frames_cross_in_order_at_least_the_delay_late_and_are_counted(wired: Wired) -> None:
    count, size = 200, 1000
    there = cross(wired, "A", "B", "10.98.0.2", count, size)
    back = cross(wired, "B", "A", "10.98.0.1", count, size)
    for seen in (there, back):
        assert seen["received"] == count and seen["in_order"], seen
        assert seen["least_ns"] >= DELAY_MS * 1_000_000, seen  # the wire held each one that long
    for direction in "ab":
        c = until(
            lambda d=direction: settled(wired, d, count), lambda: f"the wire's counters: {wired.read()}", 30
        )
        assert c == {
            "frames": count,
            "bytes": count * (size + UDP_FRAME_EXTRA),
            "dropped": 0,
            "kernel_seen": count,
            "kernel_dropped": 0,
        }, c
    print(
        f"{count} datagrams each way, none lost, in order; least time across "
        f"{there['least_ns'] / 1e6:.2f} / {back['least_ns'] / 1e6:.2f} ms (delay {DELAY_MS} ms)"
    )


def test_frames_the_kernel_drops_at_a_stalled_wire_are_counted(wired: Wired) -> None:
    count, size = 30_000, 1400  # 43 MB: more than the wire's socket buffer (16 MiB) can hold
    wired.wire.send_signal(signal.SIGSTOP)  # Python far behind: nothing read from the socket
    try:
        _run(*in_ns(wired.ns("A"), SENDER, "10.98.0.2", count, size))
    finally:
        wired.wire.send_signal(signal.SIGCONT)
    arrived = wired.packets("W", f"{wired.tag}x", "rx")  # what reached the wire's interface from A
    c = until(
        lambda: settled(wired, "a", arrived), lambda: f"{arrived} arrived; the wire: {wired.read()}", 60
    )
    assert c["kernel_dropped"] > 0 and c["frames"] > 0, c
    assert c["bytes"] == c["frames"] * (size + UDP_FRAME_EXTRA), c
    b_end = f"{wired.tag}b"
    until(
        lambda: wired.packets("B", b_end, "rx") >= c["frames"],
        "B's end to receive what the wire forwarded",
        30,
    )
    assert wired.packets("B", b_end, "rx") == c["frames"], c
    print(
        f"{count} datagrams sent, {arrived} reached the stopped wire's interface: {c['frames']} forwarded, "
        f"{c['dropped']} dropped by the wire's queue, {c['kernel_dropped']} by the kernel at its socket"
    )
