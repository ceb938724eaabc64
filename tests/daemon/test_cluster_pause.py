"""``crystalline pause`` in a cluster, where it is hardest: three real daemons in network
namespaces (tests/daemon/_cluster_net.py; distinct loopback addresses where namespaces are not
allowed), two workers each, tiny model. Pausing the member that hosts the rendezvous point (the
c10d store lives in its process): the others step on without it, the store serving them, and on
resume it is sent the group's state. Pausing a member under DiLoCo (``--cluster-outer-every``):
it leaves at an outer step, the one point where every member holds the same parameters, and
after resume the members agree at every outer step (the anchor and the outer momentum they
hold are the same)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _cluster_net import Machines, agree, digests, machines_on_this_box
from _wait import until

from crystalline.daemon.status_server import request

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

H = 4  # DiLoCo's outer step every H steps
LEFT = "left the cluster by request"
REJOINED = "rejoining the cluster (resumed)"


@pytest.fixture
def machines() -> Iterator[Machines]:
    with machines_on_this_box(3) as m:  # cleaned up, and checked, however the test ends
        yield m


def world(n: int, step: int = 5):  # type: ignore[no-untyped-def]
    """A status test: ``n`` members training, past ``step``."""
    return lambda s: (s.get("cluster") or {}).get("world") == n and s["training"]["step"] >= step


def command(machines: Machines, i: int, cmd: str) -> None:
    reply = request(machines.root / f"m{i}" / "run" / "crystalline.sock", {"cmd": cmd}, 10.0)
    assert reply["ok"], reply


def no_failure_since(machines: Machines, marks: list[int]) -> None:
    """No member abandoned a step or saw a collective fail since its log was ``marks`` long."""
    for i, mark in enumerate(marks):
        since = machines.log(i)[mark:]
        for said in ("abandoned", "a collective failed", "failed to form"):
            assert said not in since, f"machine {i}: {said!r}\n{since[-3000:]}"


def sent_the_state_on_rejoining(machines: Machines, i: int, mark: int) -> None:
    """Member ``i``'s log since ``mark`` (taken before ``resume``) says it rejoined and, after
    that, received the group's state (its first formation logged a state received too)."""
    since = machines.log(i)[mark:]
    assert REJOINED in since, since[-3000:]
    assert "state of step" in since.split(REJOINED, 1)[1], since[-3000:]


def outer_agree(machines: Machines, members: list[int], after: int, timeout_s: float = 180) -> int:
    """Wait until the members' recent digests share an outer step (a multiple of ``H``) past
    ``after``; assert they are equal at every shared outer step past ``after``; the newest."""
    seen: list[dict[int, str]] = []

    def shared() -> int | None:
        nonlocal seen
        seen = [digests(machines.status(i)) for i in members]
        common = [s for s in set.intersection(*(set(d) for d in seen)) if s % H == 0 and s > after]
        for step in common:
            assert len({d[step] for d in seen}) == 1, f"digests differ at outer step {step}: {seen}"
        return max(common) if common else None

    return until(shared, lambda: f"no outer step past {after} shared by all members: {seen}", timeout_s, 0.1)


def test_the_paused_host_keeps_serving_the_others_and_rejoins_on_resume(machines: Machines) -> None:
    """crystalline pause on member 0, which hosts the rendezvous point: it leaves after its next
    allreduce; its store goes on serving and its coordinator goes on publishing generations, so
    the other two step on as two, no collective failing; resume: it registers again through its
    own store and is sent the group's state before its first step."""
    rendezvous = machines.start_all(range(3))
    for i in range(3):
        machines.wait(i, world(3), "three members training")
    marks = [len(machines.log(i)) for i in range(3)]
    command(machines, 0, "pause")
    paused = machines.wait(0, lambda s: LEFT in s["cluster"]["state"], "the host paused", timeout_s=60)
    assert paused["training"]["state"] == "paused" and paused["cluster"]["hosts_rendezvous"], paused
    held = paused["training"]["step"]
    for i in (1, 2):  # through the paused host's store: registered, a new generation, steps
        s = machines.wait(i, world(2, held + 10), "the other two stepping on as two", timeout_s=60)
        assert s["cluster"]["rendezvous"] == f"{machines.addresses[0]}:{rendezvous}"
        assert "cut off" not in s["cluster"]["state"], s["cluster"]
    host = machines.status(0)
    assert host["training"]["step"] == held and LEFT in host["cluster"]["state"]  # it did not step alone
    assert host["cluster"]["guard"] == "ok", host["cluster"]
    assert agree(machines, [1, 2]) > held
    no_failure_since(machines, marks)
    assert "told the cluster that member" in machines.log(0)[marks[0] :]
    mark = len(machines.log(0))
    command(machines, 0, "resume")
    for i in range(3):
        machines.wait(i, world(3, held + 20), "the host back in the group")
    assert agree(machines, [0, 1, 2]) > held
    sent_the_state_on_rejoining(machines, 0, mark)  # brought up to date before its first step


def test_a_member_paused_under_diloco_leaves_at_an_outer_step_and_rejoins(machines: Machines) -> None:
    """DiLoCo, an outer step every H steps, each member on batches of its own (seeds): pause on
    member 2 takes effect at its next outer step, whose allreduce carries the leave, so every
    member ends the generation there, with the same parameters, no collective failing; the
    other two step on and agree at each outer step; resume: member 2 is sent the group's state
    (its anchor and outer momentum with it) and the three agree at every outer step after."""
    machines.start_all(range(3), lambda i: ("--cluster-outer-every", str(H), "--seed", str(i + 1)))
    for i in range(3):
        machines.wait(i, world(3, 2 * H + 1), "three members past two outer steps")
    marks = [len(machines.log(i)) for i in range(3)]
    command(machines, 2, "pause")
    # every digest read from here on: the others step past a status's window of digests in about
    # a second, so at the end of the waits below step ``held`` may be in none of their statuses
    left: dict[int, dict[int, str]] = {i: {} for i in range(3)}
    paused = machines.wait(2, lambda s: LEFT in s["cluster"]["state"], "member 2 paused", 90, left)
    assert paused["training"]["state"] == "paused"
    held = paused["training"]["step"]
    assert held % H == 0, f"left at step {held}, not at an outer step"
    for i in (0, 1):
        machines.wait(i, world(2, held + 2 * H + 1), "the other two past two more outer steps", 90, left)
    assert all(held in left[i] for i in range(3)), f"step {held} not among each one's digests read: {left}"
    assert len({left[i][held] for i in range(3)}) == 1, f"not the same parameters at step {held}: {left}"
    assert machines.status(2)["training"]["step"] == held  # it did not step on its own
    outer_agree(machines, [0, 1], held)
    local = [s for s in set(left[0]) & set(left[1]) if s > held and s % H]
    assert any(left[0][s] != left[1][s] for s in local), left  # their own batches in between
    no_failure_since(machines, marks)
    marks = [len(machines.log(i)) for i in range(3)]
    command(machines, 2, "resume")
    for i in range(3):
        machines.wait(i, world(3, held + 1), "member 2 back in the group", timeout_s=120)
    sent_the_state_on_rejoining(machines, 2, marks[2])
    back = max(machines.status(i)["training"]["step"] for i in range(3))
    first = outer_agree(machines, [0, 1, 2], back)  # the anchor: the same outer step result
    outer_agree(machines, [0, 1, 2], first)  # and the momentum: the next one too
    # the join took effect at the others' next outer step: nothing failed, no local step lost
    no_failure_since(machines, marks)
    for i in range(3):
        lines = machines.log(i)[marks[i] :].splitlines()
        assert not [x for x in lines if "outer step" in x and "failed" in x], lines[-40:]
        cluster = machines.status(i)["cluster"]
        assert cluster["discarded_steps"] == 0, cluster
    for i in range(3):
        print(f"machine {i} from the resume on:", machines.log(i)[marks[i] :][-4000:], sep="\n")
