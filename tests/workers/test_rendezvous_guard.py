"""The rendezvous guard with real sockets and a real c10d TCPStore behind it on loopback:
garbage is refused, logged and counted; a real TCPStore client works through it (a value
larger than its buffers too); a client that sends nothing is closed after the deadline; the
connections are capped, per source address too; a flood is logged within the budget and
summed, and so are peers that reset during the handshake; out of descriptors it stops accepting
for a while and frees the oldest waiting connection; an unexpected error in its loop is logged
and it goes on, and one that ends it closes the port and shows in ``health``."""

from __future__ import annotations

import logging
import os
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from _wait import until

from crystalline.workers.rendezvous_guard import ACCEPT_PAUSE_S, HANDSHAKE, RendezvousGuard

pytest.importorskip("torch")
import torch.distributed as dist

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def store() -> Iterator[tuple[str, int]]:
    """c10d's store on a private loopback port (the socket handed to it, as the member does)."""
    private = socket.socket()
    private.bind(("127.0.0.1", 0))
    private.listen(128)
    address = private.getsockname()[:2]
    server = dist.TCPStore(
        address[0], address[1], None, True, timeout=timedelta(seconds=10),
        wait_for_workers=False, use_libuv=False, master_listen_fd=private.detach(),
    )  # fmt: skip
    yield address
    del server


def guard(upstream: tuple[str, int], **kwargs: float) -> RendezvousGuard:
    return RendezvousGuard(("127.0.0.2", 0), upstream, **kwargs)  # type: ignore[arg-type]


def client(address: tuple[str, int]) -> dist.TCPStore:
    return dist.TCPStore(
        address[0], address[1], None, False, timeout=timedelta(seconds=10),
        wait_for_workers=False, use_libuv=False,
    )  # fmt: skip


def closed_by_peer(sock: socket.socket, timeout_s: float = 30) -> bool:
    """True when the guard closed ``sock`` (EOF or reset) within ``timeout_s``."""
    sock.settimeout(timeout_s)
    try:
        return sock.recv(64) == b""
    except ConnectionResetError:
        return True


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "crystalline.cluster.guard"]


def summed(lines: list[str], what: str) -> int:
    """How many ``what`` the window's summary lines counted (not logged one by one)."""
    return sum(
        int(part.split()[0])
        for x in lines
        if x.startswith("not logged one by one")
        for part in x.split(": ", 1)[1].split(", ")
        if part.split(" ", 1)[1] == what
    )


def wait_until(test, what: str, timeout_s: float = 30) -> None:  # type: ignore[no-untyped-def]
    until(test, what, timeout_s, 0.02)


def test_the_handshake_is_what_this_torchs_client_sends_first() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    got: list[bytes] = []

    def take() -> None:
        with listener:  # closed once the first connection has spoken: retries are refused
            conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            data = b""
            while len(data) < len(HANDSHAKE):
                data += conn.recv(len(HANDSHAKE) - len(data))
            got.append(data)

    reader = threading.Thread(target=take)
    reader.start()
    with pytest.raises(RuntimeError):  # nobody answers its ping: it gives up
        dist.TCPStore(
            "127.0.0.1", listener.getsockname()[1], None, False, timeout=timedelta(seconds=2),
            wait_for_workers=False, use_libuv=False,
        )  # fmt: skip
    reader.join(timeout=30)
    assert got == [HANDSHAKE]
    assert HANDSHAKE[0] == 0 and int.from_bytes(HANDSHAKE[1:], "little") == 0x3C85F7CE  # on x86


def test_garbage_is_refused_logged_and_counted(
    store: tuple[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "crystalline.cluster.guard")
    g = guard(store)
    try:
        for payload in (b"GET / HTTP/1.0\r\n\r\n", b"\xff" * 64, HANDSHAKE[:3] + b"\x00garbage"):
            with socket.create_connection(g.address) as c:
                c.sendall(payload)
                assert closed_by_peer(c)
        wait_until(lambda: g.refused == 3, "three refusals counted")
        lines = refusals(caplog)
        assert len(lines) == 3, lines
        assert all("refused a connection to the rendezvous point from 127.0.0.1:" in x for x in lines)
        assert "'GET / HTTP/1.0\\r\\n\\r\\n'" in lines[0] and "not c10d's TCPStore handshake" in lines[0]
        assert "\\xff\\xff" in lines[1]
        assert g.relayed == 0
        # the store behind it is untouched and a real client still works
        c = client(g.address)
        c.set("after", "garbage")
        assert c.get("after") == b"garbage"
    finally:
        g.close()


def test_a_real_tcpstore_client_works_through_the_guard(store: tuple[str, int]) -> None:
    g = guard(store, buffer_bytes=4096)
    try:
        through, direct = client(g.address), client(store)
        through.set("a", "1")
        assert direct.get("a") == b"1"
        assert through.add("n", 5) == 5 and direct.add("n", 2) == 7 and through.add("n", 0) == 7
        big = bytes(range(256)) * 4096  # 1 MiB: far beyond the buffers (back-pressure)
        direct.set("big", big)
        assert through.get("big") == big
        through.set("big2", big)
        assert direct.get("big2") == big
        assert through.check(["a", "big"]) and not through.check(["missing"])
        direct.set("later", "x")
        through.wait(["later"], timedelta(seconds=10))
        others = [client(g.address) for _ in range(5)]
        for i, other in enumerate(others):
            other.set(f"k{i}", str(i))
        assert [through.get(f"k{i}") for i in range(5)] == [str(i).encode() for i in range(5)]
        assert g.refused == 0 and g.relayed == 6
        del others, other  # the clients close their connections
        wait_until(lambda: g.open_connections == 1, "closed clients' connections closed by the guard")
    finally:
        g.close()


def test_a_client_that_sends_nothing_is_closed_after_the_deadline(
    store: tuple[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "crystalline.cluster.guard")
    g = guard(store, handshake_timeout_s=0.5)
    try:
        with socket.create_connection(g.address) as silent, socket.create_connection(g.address) as partial:
            partial.sendall(HANDSHAKE[:2])  # the right start, then nothing
            assert closed_by_peer(silent) and closed_by_peer(partial)
        wait_until(lambda: g.refused == 2, "both counted")
        lines = refusals(caplog)
        assert any("sent nothing within 0.5 s" in x for x in lines), lines
        assert any("sent '\\x00\\xce' (2 bytes read) within 0.5 s" in x for x in lines), lines
    finally:
        g.close()


def test_connections_are_capped(store: tuple[str, int], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "crystalline.cluster.guard")
    g = guard(store, max_connections=3, handshake_timeout_s=60)
    try:
        held = [client(g.address), client(g.address)]
        with socket.create_connection(g.address):  # the third: not yet a handshake
            wait_until(lambda: g.open_connections == 3, "three open")
            with socket.create_connection(g.address) as fourth:
                assert closed_by_peer(fourth)
            wait_until(lambda: g.refused == 1, "the fourth refused")
            assert any("3 connections are open already" in x for x in refusals(caplog))
            assert held[0].add("n", 1) == 1  # the ones in hold go on
        wait_until(lambda: g.open_connections == 2, "the waiting one gone")
        third = client(g.address)  # room again
        assert third.add("n", 1) == 2
    finally:
        g.close()


def test_a_flood_is_logged_within_the_budget_and_summed(
    store: tuple[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "crystalline.cluster.guard")
    g = guard(store, log_burst=3, log_window_s=0.5)
    try:
        for _ in range(40):
            with socket.create_connection(g.address) as c:
                c.sendall(b"junk")
                closed_by_peer(c)
        wait_until(lambda: g.refused == 40, "all counted")

        def accounted() -> int:
            lines = refusals(caplog)
            single = sum(1 for x in lines if x.startswith("refused a connection"))
            return single + summed(lines, "refused connections")

        wait_until(lambda: accounted() == 40, "every refusal logged or summed")
        single = [x for x in refusals(caplog) if x.startswith("refused a connection")]
        assert len(single) < 40  # not one line each
    finally:
        g.close()


def test_peers_that_reset_during_the_handshake_are_refusals_within_the_budget(
    store: tuple[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "crystalline.cluster.guard")
    g = guard(store, log_burst=3, log_window_s=60)
    try:
        for i in range(40):
            c = socket.create_connection(g.address)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close: RST
            if i % 2:
                c.sendall(HANDSHAKE[:2])  # the right start, then the reset
            c.close()
        wait_until(lambda: g.refused == 40, lambda: f"40 refusals counted, not {g.refused}")
        lines = refusals(caplog)
        assert len(lines) == 3, lines  # the budget; the other 37 are summed when the window ends
        assert all(
            x.startswith("refused a connection to the rendezvous point from 127.0.0.1:") for x in lines
        )
        assert g.open_connections == 0
    finally:
        g.close()


def test_one_source_address_cannot_take_every_connection(
    store: tuple[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "crystalline.cluster.guard")
    g = guard(store, max_per_source=4, handshake_timeout_s=60)
    hog: list[socket.socket] = []
    try:
        for _ in range(6):  # silent connections from 127.0.0.3: the fifth and sixth are refused
            c = socket.socket()
            c.bind(("127.0.0.3", 0))
            c.connect(g.address)
            hog.append(c)
        assert closed_by_peer(hog[4]) and closed_by_peer(hog[5])
        wait_until(lambda: g.refused == 2, "two refused")
        assert g.open_connections == 4
        assert any("from 127.0.0.3:" in x and "4 connections from 127.0.0.3 are open already" in x
                   for x in refusals(caplog)), refusals(caplog)  # fmt: skip
        members = [client(g.address) for _ in range(4)]  # from 127.0.0.1: their own share
        for i, m in enumerate(members):
            assert m.add("n", 1) == i + 1
        assert g.refused == 2
    finally:
        for c in hog:
            c.close()
        g.close()


CLIENTS = """\
import socket, sys, time
clients = [socket.create_connection((sys.argv[1], int(sys.argv[2]))) for _ in range(int(sys.argv[3]))]
print("connected", flush=True)
time.sleep(120)  # silent (the test ends this process)
"""


def test_out_of_descriptors_it_pauses_accepting_and_frees_the_oldest_waiting_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The silent clients live in another process; this one may open 16 more descriptors."""
    caplog.set_level(logging.WARNING, "crystalline.cluster.guard")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with socket.socket() as upstream:  # nobody gets that far
        upstream.bind(("127.0.0.1", 0))
        upstream.listen(1)
        g = guard(upstream.getsockname()[:2], handshake_timeout_s=60, log_burst=1000)
        start = time.monotonic()
        clients = subprocess.Popen(
            [sys.executable, "-c", CLIENTS, g.address[0], str(g.address[1]), "60"], stdout=subprocess.PIPE
        )
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 16, hard))
            assert clients.stdout is not None and clients.stdout.readline() == b"connected\n"

            def failures() -> list[str]:
                return [x for x in refusals(caplog) if "cannot accept" in x]

            wait_until(lambda: len(failures()) >= 2, "two failed accepts logged")
            # one line, then no accept for ACCEPT_PAUSE_S (before: a line each pass, 90,000 in 2 s);
            # a slow run only widens the bound
            failed = len(failures())
            assert failed <= (time.monotonic() - start) / ACCEPT_PAUSE_S + 1, failed
            assert all("Too many open files" in x and "not accepting for 0.5 s" in x for x in failures())
            freed = [x for x in refusals(caplog) if "closed to free a descriptor" in x]
            assert freed and g.refused >= len(freed)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            clients.kill()
            clients.wait(timeout=30)
            g.close()


def test_an_unexpected_error_is_logged_and_the_guard_goes_on(
    store: tuple[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    """A fault injected into its handshake reading: that connection is closed, the next works."""
    caplog.set_level(logging.WARNING, "crystalline.cluster.guard")
    g = guard(store)
    read = g._read_handshake
    faults: list[int] = []

    def fails_once(conn):  # type: ignore[no-untyped-def]
        if not faults:
            faults.append(1)
            raise KeyError("injected")
        read(conn)

    g._read_handshake = fails_once  # type: ignore[method-assign]
    try:
        with socket.create_connection(g.address) as first:
            first.sendall(HANDSHAKE)
            assert closed_by_peer(first)
        assert any("rendezvous guard error: KeyError: 'injected'" in x for x in refusals(caplog))
        assert client(g.address).add("n", 1) == 1
        assert g.health == "ok, 1 error in its loop (the last: KeyError: 'injected')"
    finally:
        g.close()
    assert g.health == "down: closed"


def test_an_error_that_ends_the_guard_closes_the_port_and_shows_in_health(store: tuple[str, int]) -> None:
    class Fatal(BaseException):
        pass

    g = guard(store)

    def fatal() -> None:
        raise Fatal("injected")

    g._accept = fatal  # type: ignore[method-assign]
    try:
        with socket.create_connection(g.address):
            wait_until(lambda: g.health != "ok", "the guard ended")
        assert g.health == "down: Fatal: injected"
        with pytest.raises(ConnectionRefusedError):  # the port is closed: no client waits on it
            socket.create_connection(g.address).close()
    finally:
        g.close()


def test_a_taken_port_raises(store: tuple[str, int]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.2", 0))
        taken.listen(1)
        with pytest.raises(OSError):
            RendezvousGuard(taken.getsockname()[:2], store)


def test_a_torch_whose_client_opens_differently_cannot_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail closed: the hosting member's start-up client is refused, and hosting fails in one line."""
    from crystalline.workers import rendezvous_guard
    from crystalline.workers.cluster_config import ClusterSettings, ClusterUnavailable
    from crystalline.workers.cluster_member import Membership

    monkeypatch.setattr(rendezvous_guard, "HANDSHAKE", b"\x01\x02\x03\x04\x05")  # not what it sends
    with socket.socket() as probe:
        probe.bind(("127.0.0.2", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ClusterUnavailable) as failed:
        Membership(ClusterSettings("127.0.0.2", port, "127.0.0.2", timeout_s=2.0), dict)
    assert f"cannot host the rendezvous point 127.0.0.2:{port}: the guard refused torch " in str(failed.value)
    assert "'s own TCPStore client (sent '\\x00" in str(failed.value)
