"""The rendezvous guard with real sockets and a real c10d TCPStore behind it on loopback, set
up by ``host_store`` as the hosting member does: garbage is refused, logged and counted; a real
TCPStore client works through it (a value larger than its buffers too); a client that sends
nothing is closed after the deadline, and so are a relayed connection the store does not take
and one that leaves the store's replies unread; the connections are capped, per source address
too, and the cap is cut to what the descriptor limit pays for (3 descriptors a connection,
measured); a flood of connections is taken a batch a pass; a flood is logged within the budget
and summed, and so are peers that reset during the handshake; out of descriptors it stops
accepting for a while and frees the oldest waiting connection; an unexpected error in its loop
is logged and it goes on, and one that ends it closes the port and shows in ``health``; the
port is closed even when closing a connection fails."""

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
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from _wait import until

from crystalline.descriptors import RESERVE, open_descriptors
from crystalline.workers.rendezvous_guard import (
    ACCEPT_BATCH,
    ACCEPT_PAUSE_S,
    DESCRIPTOR_SHARE,
    DESCRIPTORS_PER_CONNECTION,
    HANDSHAKE,
    RendezvousGuard,
    host_store,
)

pytest.importorskip("torch")
import torch.distributed as dist

pytestmark = pytest.mark.timeout(120)


Host = Callable[..., RendezvousGuard]


@pytest.fixture
def host() -> Iterator[Host]:
    """``host(**options)``: c10d's store behind a guard on 127.0.0.2 with those options
    (``host_store``); the store is at the guard's ``upstream``. Each is closed at the end."""
    hosted: list[tuple[dist.TCPStore, RendezvousGuard]] = []

    def make(**options: float) -> RendezvousGuard:
        hosted.append(host_store(("127.0.0.2", 0), 10, **options))
        return hosted[-1][1]

    yield make
    for _store, g in hosted:
        g.close()
    hosted.clear()  # the stores' servers end with their objects


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


def test_garbage_is_refused_logged_and_counted(host: Host, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "crystalline.cluster.guard")
    g = host()
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


def test_a_real_tcpstore_client_works_through_the_guard(host: Host) -> None:
    g = host(buffer_bytes=4096)
    through, direct = client(g.address), client(g.upstream)
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


def test_a_client_that_sends_nothing_is_closed_after_the_deadline(
    host: Host, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "crystalline.cluster.guard")
    g = host(handshake_timeout_s=0.5)
    with socket.create_connection(g.address) as silent, socket.create_connection(g.address) as partial:
        partial.sendall(HANDSHAKE[:2])  # the right start, then nothing
        assert closed_by_peer(silent) and closed_by_peer(partial)
    wait_until(lambda: g.refused == 2, "both counted")
    lines = refusals(caplog)
    assert any("sent nothing within 0.5 s" in x for x in lines), lines
    assert any("sent '\\x00\\xce' (2 bytes read) within 0.5 s" in x for x in lines), lines


def test_connections_are_capped(host: Host, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "crystalline.cluster.guard")
    g = host(max_connections=3, handshake_timeout_s=60)
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


def test_a_flood_is_logged_within_the_budget_and_summed(host: Host, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "crystalline.cluster.guard")
    g = host(log_burst=3, log_window_s=0.5)
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


def test_peers_that_reset_during_the_handshake_are_refusals_within_the_budget(
    host: Host, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "crystalline.cluster.guard")
    g = host(log_burst=3, log_window_s=60)
    for i in range(40):
        c = socket.create_connection(g.address)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close: RST
        if i % 2:
            c.sendall(HANDSHAKE[:2])  # the right start, then the reset
        c.close()
    wait_until(lambda: g.refused == 40, lambda: f"40 refusals counted, not {g.refused}")
    lines = refusals(caplog)
    assert len(lines) == 3, lines  # the budget; the other 37 are summed when the window ends
    assert all(x.startswith("refused a connection to the rendezvous point from 127.0.0.1:") for x in lines)
    assert g.open_connections == 0


def test_one_source_address_cannot_take_every_connection(
    host: Host, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "crystalline.cluster.guard")
    g = host(max_per_source=4, handshake_timeout_s=60)
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


def test_a_relayed_connection_costs_the_descriptors_the_cap_counts(host: Host) -> None:
    """Measured in this process, which holds the store's server, the guard and the clients."""
    g = host()
    before = open_descriptors()
    clients = [client(g.address) for _ in range(8)]
    for c in clients:
        c.add("n", 1)
    wait_until(lambda: g.open_connections == 8, "eight relayed")
    assert open_descriptors() - before == 8 * (DESCRIPTORS_PER_CONNECTION + 1)  # + the client's own


def test_the_connection_cap_is_cut_to_what_the_descriptor_limit_pays_for(
    host: Host, caplog: pytest.LogCaptureFixture
) -> None:
    """A soft limit that leaves a share of 6 connections' descriptors (and 3 to spare) when the
    guard starts: 6 connections, not 512, and 6 from one source, not 32."""
    caplog.set_level(logging.INFO, "crystalline.cluster.guard")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    share = DESCRIPTOR_SHARE * DESCRIPTORS_PER_CONNECTION * 6 + 3
    try:  # host_store's private socket is open when the guard counts
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_descriptors() + 1 + RESERVE + share, hard))
        g = host(handshake_timeout_s=60)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert (g.max_connections, g.max_per_source) == (6, 6)
    assert any("at most 6 connections, not 512 (3 descriptors each" in x for x in refusals(caplog))
    held = [client(g.address) for _ in range(6)]
    with socket.create_connection(g.address) as seventh:
        assert closed_by_peer(seventh)
    wait_until(lambda: g.refused == 1, "the seventh refused")
    assert any("6 connections are open already" in x for x in refusals(caplog))
    assert held[5].add("n", 1) == 1


def test_a_relayed_connection_the_store_does_not_take_is_closed_after_the_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A store whose accept queue is full (listen(0), one connection it never accepts): the
    relay's connect stays in progress (the kernel would retry its SYN for minutes)."""
    caplog.set_level(logging.INFO, "crystalline.cluster.guard")
    with socket.socket() as upstream, socket.socket() as filler:
        upstream.bind(("127.0.0.1", 0))
        upstream.listen(0)
        filler.connect(upstream.getsockname())
        g = RendezvousGuard(("127.0.0.2", 0), upstream.getsockname()[:2], handshake_timeout_s=0.5)
        try:
            with socket.create_connection(g.address) as c:
                c.sendall(HANDSHAKE)
                assert closed_by_peer(c, timeout_s=10)
            assert g.relayed == 1 and g.open_connections == 0 and g.refused == 0
            assert any("ended: the store did not take it within 0.5 s" in x for x in refusals(caplog))
        finally:
            g.close()


def get_request(key: str) -> bytes:
    """c10d's GET as a client sends it: QueryType GET (3), then the key with TCPStore's "/"
    prefix as a uint64 length and its bytes (the installed torch's TCPStoreBackend.hpp)."""
    wire = f"/{key}".encode()
    return b"\x03" + struct.pack("=Q", len(wire)) + wire


def test_a_client_that_leaves_the_stores_replies_unread_is_closed(
    host: Host, caplog: pytest.LogCaptureFixture
) -> None:
    """64 pipelined gets of a 1 MiB value, never read: c10d's server blocks in its send to that
    client and every other client of the store waits (before: a member's add with a 5 s timeout
    had not returned after 35 s). The guard closes it after stall_timeout_s and the store
    answers again."""
    caplog.set_level(logging.WARNING, "crystalline.cluster.guard")
    g = host(stall_timeout_s=1)
    direct, member = client(g.upstream), client(g.address)
    direct.set("big", b"x" * 2**20)
    probe = socket.create_connection(g.address)  # the protocol as written here: one get answered
    probe.sendall(HANDSHAKE + get_request("big"))
    probe.settimeout(30)
    reply = b""
    while len(reply) < 8 + 2**20:
        reply += probe.recv(2**20)
    assert struct.unpack("=Q", reply[:8]) == (2**20,)
    probe.close()
    stalling = socket.socket()
    stalling.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalling.connect(g.address)
    try:
        stalling.sendall(HANDSHAKE + get_request("big") * 64)
        wait_until(lambda: g.open_connections == 1, "the stalling client closed (the member's stays)")
        assert member.add("n", 1) == 1 and direct.add("n", 1) == 2
        assert any("it left the store's replies unread for 1 s" in x for x in refusals(caplog)), refusals(
            caplog
        )
    finally:
        stalling.close()


def test_a_flood_of_connections_is_taken_a_batch_a_pass(host: Host) -> None:
    """100 connections waiting in the backlog while the loop is held: no pass takes more than
    ACCEPT_BATCH of them (the other sockets' events and the deadlines come between)."""
    g = host(max_connections=4, handshake_timeout_s=60)
    one_pass = g._pass
    held, go = threading.Event(), threading.Event()
    taken: list[int] = []

    def counted() -> None:
        held.set()
        go.wait(30)
        before = g.refused + g.open_connections
        one_pass()
        taken.append(g.refused + g.open_connections - before)

    g._pass = counted  # type: ignore[method-assign]
    held.wait(30)
    flood = [socket.create_connection(g.address) for _ in range(100)]
    try:
        go.set()
        wait_until(lambda: g.refused + g.open_connections == 100, "all 100 taken")
        assert max(taken) <= ACCEPT_BATCH < 100, taken
    finally:
        for c in flood:
            c.close()


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
        g = RendezvousGuard(
            ("127.0.0.2", 0), upstream.getsockname()[:2], handshake_timeout_s=60, log_burst=1000
        )
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
    host: Host, caplog: pytest.LogCaptureFixture
) -> None:
    """A fault injected into its handshake reading, once before and once after the connection
    was refused: each connection is closed (once: the fault is the one error counted), the next
    works."""
    caplog.set_level(logging.WARNING, "crystalline.cluster.guard")
    g = host()
    read = g._read_handshake
    faults: list[int] = []

    def fails_twice(conn):  # type: ignore[no-untyped-def]
        faults.append(1)
        if len(faults) == 2:
            read(conn)  # refuses the garbage and closes the connection
        if len(faults) <= 2:
            raise KeyError(f"injected {len(faults)}")
        read(conn)

    g._read_handshake = fails_twice  # type: ignore[method-assign]
    for payload in (HANDSHAKE, b"junk!"):
        with socket.create_connection(g.address) as c:
            c.sendall(payload)
            assert closed_by_peer(c)
    wait_until(lambda: g.errors >= 2, "both faults counted")
    lines = refusals(caplog)
    assert any("rendezvous guard error: KeyError: 'injected 1'" in x for x in lines), lines
    assert client(g.address).add("n", 1) == 1
    assert g.health == "ok, 2 errors in its loop (the last: KeyError: 'injected 2')"
    g.close()
    assert g.health == "down: closed"


def test_an_error_that_ends_the_guard_closes_the_port_and_shows_in_health(host: Host) -> None:
    class Fatal(BaseException):
        pass

    g = host()

    def fatal() -> None:
        raise Fatal("injected")

    g._accept = fatal  # type: ignore[method-assign]
    with socket.create_connection(g.address):
        wait_until(lambda: g.health != "ok", "the guard ended")
    assert g.health == "down: Fatal: injected"
    with pytest.raises(ConnectionRefusedError):  # the port is closed: no client waits on it
        socket.create_connection(g.address).close()


def test_the_port_is_closed_even_when_closing_a_connection_fails(
    host: Host, caplog: pytest.LogCaptureFixture
) -> None:
    g = host(handshake_timeout_s=60)
    waiting = socket.create_connection(g.address)
    try:
        wait_until(lambda: g.open_connections == 1, "one waiting")

        def fails(conn) -> None:  # type: ignore[no-untyped-def]
            raise OSError(9, "injected")

        g._close = fails  # type: ignore[method-assign]
        g.close()
        assert g.health == "down: closed"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(g.address).close()
        assert any("rendezvous guard: closing 127.0.0.1:" in x and "injected" in x for x in refusals(caplog))
    finally:
        waiting.close()


def test_a_taken_port_raises_before_a_store_exists() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.2", 0))
        taken.listen(1)
        before = open_descriptors()
        with pytest.raises(OSError):
            host_store(taken.getsockname()[:2], 10)
        assert open_descriptors() == before  # the private socket closed, no store made


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
