"""A wire that delays every frame: run in a namespace holding two interfaces, it forwards each
frame either receives to the other one ``delay_ms`` later, in order (the delay is fixed, so each
direction's queue is a deque sorted by due time). For kernels without tc's netem (nor sch_fq for
a BPF delay). Usage: ``python _delay_wire.py IFACE_A IFACE_B DELAY_MS COUNTERS_JSON``.

Raw sockets (AF_PACKET, ETH_P_ALL) in promiscuous mode on both interfaces; frames a socket saw
leave (PACKET_OUTGOING: its own sends) are ignored. PACKET_VNET_HDR keeps a frame's offload
state with it (a TCP segment of up to 64 KiB that the receiver splits, a checksum still to be
filled in), so the veths' offloads need not be turned off. Each direction queues at most
QUEUE_BYTES; a frame that does not fit, or that the other interface refuses, is dropped and
counted (``dropped``). A frame that arrives while the receiving socket's buffer is full (this
process fell behind) is dropped by the kernel before the wire sees it: each socket's buffer is
RCVBUF_BYTES (SO_RCVBUFFORCE, as root), and the kernel's own count (PACKET_STATISTICS, reset on
each read, so summed here) is reported as ``kernel_seen`` (frames that reached the socket,
dropped or not, its interface's few outgoing ones that it ignores included) and
``kernel_dropped``. The counters (frames and bytes forwarded each way and those three) are
written to COUNTERS_JSON (temp file, rename) every COUNTERS_EVERY_S and on SIGTERM, which ends
it."""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import sys
import time
from collections import deque
from pathlib import Path

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_VNET_HDR = 15
PACKET_OUTGOING = 4
PACKET_STATISTICS = 6
SO_RCVBUFFORCE = 33  # not in Python's socket module
QUEUE_BYTES = 16 * 1024 * 1024  # per direction: 50 ms of 2.5 Gbit/s, far more than Python forwards
RCVBUF_BYTES = 8 * 1024 * 1024  # the kernel doubles it: ~250 GSO frames of 64 KiB while Python stalls
FRAME_MAX = 256 * 1024  # a GSO frame (64 KiB, or more with BIG TCP) and its virtio header
COUNTERS_EVERY_S = 0.2


def _open(ifname: str) -> socket.socket:
    # protocol 0: nothing is received until bind names the interface (ETH_P_ALL here would take
    # every interface's frames until then)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF_BYTES)
    sock.bind((ifname, ETH_P_ALL))
    ifindex = socket.if_nametoindex(ifname)
    # struct packet_mreq: int ifindex, unsigned short type, unsigned short alen, unsigned char address[8]
    mreq = ifindex.to_bytes(4, sys.byteorder) + PACKET_MR_PROMISC.to_bytes(2, sys.byteorder) + bytes(10)
    sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
    sock.setblocking(False)
    return sock


class Direction:
    def __init__(self, name: str, source: socket.socket, into: socket.socket) -> None:
        self.name = name
        self.source = source
        self.into = into
        self.queue: deque[tuple[float, bytes]] = deque()
        self.queued_bytes = 0
        self.frames = 0
        self.bytes = 0
        self.dropped = 0
        self.kernel_seen = 0
        self.kernel_dropped = 0

    def take(self, frame: bytes, due: float) -> None:
        if self.queued_bytes + len(frame) > QUEUE_BYTES:
            self.dropped += 1
            return
        self.queue.append((due, frame))
        self.queued_bytes += len(frame)

    def send_due(self, now: float) -> None:
        while self.queue and self.queue[0][0] <= now:
            _, frame = self.queue.popleft()
            self.queued_bytes -= len(frame)
            try:
                self.into.send(frame)
            except OSError:  # the interface refused it (a full queue, a frame it cannot take)
                self.dropped += 1
                continue
            self.frames += 1
            self.bytes += len(frame) - 10  # less the virtio header

    def counters(self) -> dict[str, int]:
        # struct tpacket_stats: unsigned tp_packets (dropped ones included), tp_drops; zeroed by the read
        stats = self.source.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        self.kernel_seen += int.from_bytes(stats[:4], sys.byteorder)
        self.kernel_dropped += int.from_bytes(stats[4:], sys.byteorder)
        return {
            "frames": self.frames,
            "bytes": self.bytes,
            "dropped": self.dropped,
            "kernel_seen": self.kernel_seen,
            "kernel_dropped": self.kernel_dropped,
        }


def _write_counters(path: Path, directions: list[Direction]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({d.name: d.counters() for d in directions}), encoding="utf-8")
    os.replace(tmp, path)  # a test's counters: readers see a whole file, durability not needed


def main(a: str, b: str, delay_ms: str, counters: str) -> None:
    delay = float(delay_ms) / 1000
    path = Path(counters)
    sock_a, sock_b = _open(a), _open(b)
    a_to_b, b_to_a = Direction(f"{a}->{b}", sock_a, sock_b), Direction(f"{b}->{a}", sock_b, sock_a)
    directions = [a_to_b, b_to_a]
    selector = selectors.DefaultSelector()
    selector.register(sock_a, selectors.EVENT_READ, a_to_b)
    selector.register(sock_b, selectors.EVENT_READ, b_to_a)
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    _write_counters(path, directions)
    written = time.monotonic()
    while not stopping:
        heads = [d.queue[0][0] for d in directions if d.queue]
        now = time.monotonic()
        wait = min([COUNTERS_EVERY_S, *(h - now for h in heads)])
        for key, _ in selector.select(max(0.0, wait)):
            direction: Direction = key.data
            for _ in range(256):  # then the other side's turn
                try:
                    frame, address = key.fileobj.recvfrom(FRAME_MAX)  # type: ignore[union-attr]
                except BlockingIOError:
                    break
                if address[2] != PACKET_OUTGOING:
                    direction.take(frame, time.monotonic() + delay)
        now = time.monotonic()
        for d in directions:
            d.send_due(now)
        if now - written >= COUNTERS_EVERY_S:
            _write_counters(path, directions)
            written = now
    _write_counters(path, directions)


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit("usage: _delay_wire.py IFACE_A IFACE_B DELAY_MS COUNTERS_JSON")
    main(*sys.argv[1:])
