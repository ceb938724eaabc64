"""Training across machines on bad links: three real daemons in network namespaces
(tests/daemon/_cluster_net.py), one member's link shaped on both of its ends: losing 5 % of its
packets each way (nft's netdev hooks, past both TCP stacks), limited to a few Mbit/s (tc's tbf),
or delayed 50 ms each way (a userspace wire, tests/daemon/_delay_wire.py: this kernel has no tc
netem). TCP retransmits what the link loses, well within the cluster's deadline, so the members
keep publishing the same parameters, as they do on the delayed link; on the slow link DiLoCo's
outer step every H steps carries about 1/H of the synchronous allreduce's bytes per step,
counted on the link itself, and on the delayed link it agrees at each outer step. Each test
skips, naming why, where this machine cannot shape a link (no namespaces, no tc or nft, nft or a
kernel that refuses the netdev egress hook)."""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _cluster_net import LinkShapingUnavailable, Machines, agree, digests, machines_on_this_box
from _wait import until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SHAPED = 1  # not the hosting member 0, whose link also carries the rendezvous store's replies
MBIT = 5  # the slow link's rate, each way
H = 4  # DiLoCo's outer step every H steps
DELAY_MS = 50  # the delayed link's delay, each way


@pytest.fixture
def machines() -> Iterator[Machines]:
    with machines_on_this_box(3) as m:  # cleaned up, and checked, however the test ends
        yield m


def need(machines: Machines, tool: str) -> None:
    why = machines.shaping_unavailable(tool)
    if why is not None:
        pytest.skip(why)


def shape(link: Callable[[], None]) -> None:
    """Shape the link; skip, saying why, where this machine refuses that shaping."""
    try:
        link()
    except LinkShapingUnavailable as exc:
        pytest.skip(str(exc))


def training(n: int, past: int = 5) -> Callable[[dict[str, Any]], bool]:
    """A status test: ``n`` members in the group, this one past step ``past``."""
    return lambda s: (s.get("cluster") or {}).get("world") == n and s["training"]["step"] >= past


def start_three(machines: Machines, extra: tuple[str, ...] = (), own_seeds: bool = False) -> int:
    """Three members training together (with ``own_seeds``, each from parameters and on batches
    of its own: the group's state, received at step 0, replaces the step 0 each published
    first); the newest step among them."""
    machines.start_all(range(3), lambda i: (*extra, "--seed", str(i + 1)) if own_seeds else extra)
    return max(machines.wait(i, training(3), "three members training")["training"]["step"] for i in range(3))


def test_members_agree_on_a_link_losing_five_percent_of_its_packets(machines: Machines) -> None:
    need(machines, "nft")
    step = start_three(machines)
    generation = machines.status(SHAPED)["cluster"]["generation"]
    shape(lambda: machines.drop_packets(SHAPED, 5))
    for i in range(3):
        machines.wait(i, training(3, step + 30), "30 steps on the lossy link", timeout_s=300)
    assert agree(machines, [0, 1, 2]) > step
    seen, dropped = machines.packets_dropped(SHAPED)
    assert seen > 500 and 0.02 < dropped / seen < 0.10, (seen, dropped)  # the link really lost 5 %
    # Nobody was dropped: a lost packet costs TCP a retransmission after 200 ms or more, and a
    # member is dropped (or a collective given up) only after 5 s of silence, which would take
    # the same segment lost about five times in a row (0.05^5). So the group never re-formed.
    for i in range(3):
        s = machines.status(i)["cluster"]
        assert s["generation"] == generation and s["world"] == 3, (i, s["state"], s["generation"])
    print(f"{dropped} of {seen} packets dropped on member {SHAPED}'s link; generation {generation} held")


def bytes_per_step(machines: Machines, steps: int) -> tuple[float, int]:
    """The shaped member's link: bytes sent and received per step over the next ``steps`` steps
    (every member in the same generation throughout), and status's allreduce_bytes then."""
    before = machines.status(SHAPED)
    sent, received = machines.link_bytes(SHAPED)
    after = machines.wait(
        SHAPED, training(3, before["training"]["step"] + steps), f"{steps} steps on the slow link"
    )
    sent2, received2 = machines.link_bytes(SHAPED)
    generations = (before["cluster"]["generation"], after["cluster"]["generation"])
    assert generations[0] == generations[1], f"the group re-formed while measuring: {generations}"
    taken = after["training"]["step"] - before["training"]["step"]
    ours = [m for m in after["cluster"]["members"] if m["address"] == machines.addresses[SHAPED]]
    return (sent2 - sent + received2 - received) / taken, ours[0]["allreduce_bytes"]


def agree_at_outer_steps(machines: Machines) -> list[int]:
    """Assert the three members' digests are equal at every outer step (a multiple of H) they
    all still show, of which there is one at least; those steps."""
    seen = [digests(machines.status(i)) for i in range(3)]
    common = set.intersection(*(set(d) for d in seen))
    outer = sorted(s for s in common if s % H == 0)  # step 0 too: the group's state replaced their own
    assert outer, seen
    for s in outer:
        assert len({d[s] for d in seen}) == 1, f"digests differ at outer step {s}: {seen}"
    return outer


def test_on_a_slow_link_diloco_moves_an_hth_of_the_bytes_per_step(machines: Machines) -> None:
    need(machines, "tc")
    shape(lambda: machines.limit_rate(SHAPED, MBIT))

    step = start_three(machines)
    for i in range(3):
        machines.wait(i, training(3, step + 2), "synchronous steps on the slow link")
    assert agree(machines, [0, 1, 2]) > step
    # each synchronous step carries one allreduce of the same payload: a few steps measure it
    synchronous, allreduce_bytes = bytes_per_step(machines, 6)
    # on the wire: what status says one member sends per allreduce, sent and received, plus
    # the headers, acknowledgements and the store's beats
    assert 2 * allreduce_bytes < synchronous < 2 * allreduce_bytes * 1.3, (synchronous, allreduce_bytes)

    machines.stop_all()  # the same three machines again, fresh, with DiLoCo
    for i in range(3):
        shutil.rmtree(machines.root / f"m{i}")
    step = start_three(machines, ("--cluster-outer-every", str(H)), own_seeds=True)
    for i in range(3):
        machines.wait(i, training(3, step + 2 * H), "DiLoCo steps on the slow link")
    diloco, outer_bytes = bytes_per_step(machines, 10 * H)
    # an outer step's payload is the gradient's (the pseudo-gradient and the token count)
    assert abs(outer_bytes - allreduce_bytes) < 16, (outer_bytes, allreduce_bytes)
    assert 0.7 / H < diloco / synchronous < 1.4 / H, (diloco, synchronous)
    agree_at_outer_steps(machines)
    print(
        f"link at {MBIT} Mbit/s: {synchronous:,.0f} B/step synchronous (status: {allreduce_bytes:,} B sent "
        f"per allreduce), {diloco:,.0f} B/step DiLoCo H={H}"
    )


def pace(machines: Machines, steps: int) -> tuple[float, float]:
    """The shaped member over its next ``steps`` steps: the median of the allreduce times status
    shows (status has the last collective's), and the wall milliseconds per step (a figure to
    print, never to assert)."""
    seen: dict[int, float] = {}
    first = machines.status(SHAPED)["training"]["step"]
    began = time.monotonic()

    def sample() -> bool:
        s = machines.status(SHAPED)
        ours = [m for m in s["cluster"]["members"] if m["address"] == machines.addresses[SHAPED]]
        seen[ours[0]["step"]] = ours[0]["allreduce_ms"]
        return s["training"]["step"] >= first + steps

    until(sample, f"{steps} steps of member {SHAPED}", 300, 0.05)
    last = machines.status(SHAPED)["training"]["step"]
    return statistics.median(seen.values()), (time.monotonic() - began) * 1000 / (last - first)


def wire_forwarded(machines: Machines, i: int = SHAPED, least_bytes: int = 0) -> str:
    """Assert member ``i``'s wire forwarded frames both ways (``least_bytes`` at least each way)
    and dropped none, neither from its queue nor in the kernel at its sockets (whose buffers
    hold far more than these links carry while the wire's Python falls behind); what it did."""

    def carried() -> dict[str, dict[str, int]] | None:  # the counters are written every 0.2 s
        wire = machines.wire_counters(i)
        return wire if min(w["bytes"] for w in wire.values()) >= least_bytes else None

    wire = until(carried, lambda: f"member {i}'s wire: {machines.wire_counters(i)}", 10)
    for way in ("sent", "received"):
        assert wire[way]["frames"] > 100 and wire[way]["bytes"] >= least_bytes, wire
        assert wire[way]["dropped"] == wire[way]["kernel_dropped"] == 0, wire
    return (
        f"the wire forwarded {wire['sent']['frames']} frames ({wire['sent']['bytes']:,} B) from the member "
        f"and {wire['received']['frames']} ({wire['received']['bytes']:,} B) to it, none dropped (the "
        f"kernel saw {wire['sent']['kernel_seen']} and {wire['received']['kernel_seen']} at its sockets)"
    )


def delay_needs_namespaces(machines: Machines) -> None:
    if machines.kind != "namespaces":
        pytest.skip("a delayed link needs network namespaces, and this machine does not allow them")


def test_members_agree_on_a_delayed_link(machines: Machines) -> None:
    delay_needs_namespaces(machines)
    step = start_three(machines)
    direct_s = machines.round_trip_s(SHAPED, machines.addresses[0])
    direct_ms, direct_step_ms = pace(machines, 10)
    generation = machines.status(SHAPED)["cluster"]["generation"]

    machines.delay(SHAPED, DELAY_MS)  # while they train
    delayed_s = machines.round_trip_s(SHAPED, machines.addresses[0])
    assert delayed_s >= 2 * DELAY_MS / 1000, (delayed_s, direct_s)  # the wire really delays
    step = max(machines.status(i)["training"]["step"] for i in range(3))
    for i in range(3):
        machines.wait(i, training(3, step + 10), "10 steps on the delayed link", timeout_s=300)
    assert agree(machines, [0, 1, 2]) > step
    delayed_ms, delayed_step_ms = pace(machines, 10)
    # the link was down for the moment the wire took to be put in, far less than the 5 s after
    # which a member is dropped: the group never re-formed (over the 20 steps on the delayed
    # link, about 0.45 s each: longer than that timeout)
    for i in range(3):
        s = machines.status(i)["cluster"]
        assert s["generation"] == generation and s["world"] == 3, (i, s["state"], s["generation"])
    print(
        f"member {SHAPED}'s link delayed {DELAY_MS} ms each way: TCP round trip to member 0 "
        f"{direct_s * 1000:.3f} -> {delayed_s * 1000:.1f} ms; allreduce (status, median of 10 steps) "
        f"{direct_ms:.1f} -> {delayed_ms:.1f} ms; a step {direct_step_ms:.0f} -> {delayed_step_ms:.0f} ms; "
        f"{wire_forwarded(machines)}; generation {generation} held"
    )


def test_on_a_delayed_link_diloco_agrees_at_each_outer_step(machines: Machines) -> None:
    delay_needs_namespaces(machines)
    machines.delay(SHAPED, DELAY_MS)
    step = start_three(machines, ("--cluster-outer-every", str(H)), own_seeds=True)
    for i in range(3):
        machines.wait(i, training(3, step + 2 * H), "DiLoCo steps on the delayed link", timeout_s=300)
    outer_ms, step_ms = pace(machines, 5 * H)
    outer = agree_at_outer_steps(machines)
    print(
        f"member {SHAPED}'s link delayed {DELAY_MS} ms each way, DiLoCo H={H}: an outer step's allreduce "
        f"(status, median) {outer_ms:.1f} ms, a step {step_ms:.0f} ms; the same digests at outer steps "
        f"{outer}; {wire_forwarded(machines)}"
    )


# Run in member i's namespace: echo `size` bytes on `address`:`port` to one client (one line "ready"
# once listening), with a deadline on every wait.
ECHO = """
import socket, sys
address, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with socket.create_server((address, port)) as server:
    server.settimeout(60)
    print("ready", flush=True)
    conn, _ = server.accept()
    conn.settimeout(60)
    got = bytearray()
    while len(got) < size:
        chunk = conn.recv(65536)
        assert chunk, "the client closed early"
        got += chunk
    conn.sendall(got)
    conn.close()
"""

# Run in member 0's namespace: send `size` bytes to the echo, read them back.
ECHOED = """
import socket, sys
address, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with socket.create_connection((address, port), timeout=60) as conn:
    conn.sendall(bytes(size))
    back = 0
    while back < size:
        chunk = conn.recv(65536)
        assert chunk, "the echo closed early"
        back += len(chunk)
print(back)
"""


def echo(machines: Machines, i: int, size: int) -> None:
    """Member 0 sends ``size`` bytes over TCP to member ``i``, which sends them back."""
    args = [machines.addresses[i], "5002", str(size)]
    with subprocess.Popen(
        [*machines.prefix(i), sys.executable, "-c", ECHO, *args], stdout=subprocess.PIPE, text=True
    ) as server:
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            back = subprocess.run(
                [*machines.prefix(0), sys.executable, "-c", ECHOED, *args],
                check=True, capture_output=True, text=True, timeout=120,
            ).stdout  # fmt: skip
            assert int(back) == size and server.wait(timeout=60) == 0
        finally:
            server.kill()


def test_a_delayed_link_can_be_rate_limited_in_either_order(machines: Machines) -> None:
    """Member 1's link delayed, then limited to MBIT; member 2's limited, then delayed (the
    move that puts the wire in takes the hub end's tbf, which goes onto the new end). Each
    echoes 300 kB from member 0: both ends' tbf carried it and made packets wait (overlimits),
    the wire forwarded it and dropped nothing, and a round trip takes at least the delay."""
    delay_needs_namespaces(machines)
    need(machines, "tc")
    shape(lambda: machines.limit_rate(2, MBIT))  # skips where tc refuses tbf
    machines.delay(2, DELAY_MS)
    machines.delay(1, DELAY_MS)
    machines.limit_rate(1, MBIT)  # tbf works here: a refusal now would be this harness's fault
    size = 300_000  # half a second each way at MBIT, far more than the tbf's burst
    seen = []
    for i in (1, 2):
        assert machines.round_trip_s(i, machines.addresses[0]) >= 2 * DELAY_MS / 1000
        echo(machines, i, size)
        ends = machines.qdisc_counts(i)
        for end in ends:
            assert end["kind"] == "tbf" and end["bytes"] >= size and end["overlimits"] > 0, ends
        seen.append(f"member {i}: tbf {ends}; {wire_forwarded(machines, i, size)}")
    print(f"delayed {DELAY_MS} ms and limited to {MBIT} Mbit/s, {size:,} B echoed: " + "; ".join(seen))
