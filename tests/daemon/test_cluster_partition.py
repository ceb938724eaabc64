"""A partition that leaves the rendezvous host on the small side: three real daemons in network
namespaces (tests/daemon/_cluster_net.py), two workers each, tiny model; the hosting member's
only link goes down. The other two, cut off from the rendezvous point, pause and say so however
many they are. The host holds the store, so it is never cut off from it: with the harness's
``--cluster-nodes`` (1:3, MIN 1) it steps on alone, and with a majority as MIN (2:3) it forms no
group of one and pauses too (its coordinator logs that it publishes none for fewer than MIN).
Either way, once the link is back the three re-form and agree, the two brought up to the host's
state (one lineage: nothing diverged)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from _cluster_net import agree, machines_on_this_box
from _wait import until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# the cluster's deadline here (the harness's 5 s elsewhere): how long the cut-off members wait
# before they say so, and the host's coordinator before it drops them; the order is the same
TIMEOUT = ("--cluster-timeout-s", "3")
RECEIVED = re.compile(r"state of step (\d+) received from rank (\d+) \(this member was at step (\d+)")


def stepping(world: int, past: int) -> Any:
    """A status test: in a group of ``world``, at ``past`` steps or more."""
    return lambda s: (s.get("cluster") or {}).get("world") == world and s["training"]["step"] >= past


def formed_in(log: str) -> dict[int, int]:
    """Generation -> this member's rank in it, from its log's "generation G formed" lines."""
    return {int(g): int(r) for g, r in re.findall(r"generation (\d+) formed: rank (\d+) of", log)}


def received(log: str) -> tuple[int, int, int, int] | None:
    """The first state this member received in ``log``: (generation, step, from rank, its own
    step before), None if it received none."""
    generation = -1
    for line in log.splitlines():
        if m := re.search(r"generation (\d+) formed: rank", line):
            generation = int(m.group(1))
        elif m := RECEIVED.search(line):
            return generation, int(m.group(1)), int(m.group(2)), int(m.group(3))
    return None


@pytest.mark.parametrize("nodes", [(), ("--cluster-nodes", "2:3")], ids=["min-1", "min-2"])
def test_a_cut_off_rendezvous_host_steps_alone_only_if_min_allows_and_all_agree_once_healed(
    nodes: tuple[str, ...],
) -> None:
    with machines_on_this_box(3) as machines:
        if machines.kind != "namespaces":
            pytest.skip("a partition needs network namespaces; this machine does not allow them")
        machines.start_all(range(3), lambda i: (*nodes, *TIMEOUT))
        for i in range(3):
            machines.wait(i, stepping(3, 5), "three members training")
        cut = len(machines.log(0))
        machines.link(0, up=False)
        held = {}
        for i in (1, 2):
            s = machines.wait(
                i, lambda s: "cut off from the rendezvous point" in s["cluster"]["state"], "it says so", 60
            )
            assert s["training"]["state"] == "paused"
            held[i] = s["training"]["step"]
        if not nodes:  # MIN 1: the host's group of one
            host = machines.wait(0, stepping(1, max(held.values()) + 20), "the host stepping alone", 60)
        else:  # MIN 2: no group without another member
            host = machines.wait(0, lambda s: s["training"]["state"] == "paused", "the host pausing", 60)
            cluster = host["cluster"]
            assert cluster["world"] == 0 and "waiting for" in cluster["state"], cluster
            # the coordinator drops both (silent for the timeout), and once only the host is left
            # (for a tick) it decides on a generation: it logs that it publishes none for fewer
            # than MIN, however long the machine took; none can follow while the link is down
            number = cluster["member"]
            alone = f"cluster members [{number}]: fewer than MIN 2"
            until(lambda: alone in machines.log(0)[cut:], f"the host's coordinator saying {alone!r}", 60)
            since = machines.log(0)[cut:]
            assert not re.search(rf"cluster generation \d+: members \[{number}\]", since), since[-3000:]
            again = machines.status(0)
            assert again["training"]["step"] == host["training"]["step"], again["cluster"]["state"]
            assert again["training"]["state"] == "paused" and again["cluster"]["world"] == 0
        for i in (1, 2):  # the cut-off members did not step alone
            s = machines.status(i)
            assert s["training"]["step"] == held[i] and "cut off" in s["cluster"]["state"], s["cluster"]
        marks = [len(machines.log(i)) for i in range(3)]
        machines.link(0, up=True)
        for i in range(3):
            machines.wait(i, stepping(3, host["training"]["step"] + 5), "the three re-formed")
        assert agree(machines, [0, 1, 2]) > host["training"]["step"]
        since = [machines.log(i)[marks[i] :] for i in range(3)]
        assert "state of step" not in since[0], since[0][-3000:]  # the host kept its own state
        for i in (1, 2):  # sent the state the host carried on (its step, past theirs without MIN 2)
            got, formed = received(since[i]), formed_in(since[0])
            assert got is not None, since[i][-3000:]
            generation, step, source, was = got
            assert was == held[i] and source == formed.get(generation), (got, formed)  # the host's state
            assert step >= host["training"]["step"] and (step == host["training"]["step"] or not nodes), got
        after = [machines.status(i)["cluster"] for i in range(3)]  # one lineage: nothing diverged
        assert after[0]["replaced"] is None and after[0]["lineage"] > 0, after[0]
        assert len({c["lineage"] for c in after}) == 1, [c["lineage"] for c in after]
        steps = {i: held.get(i, host["training"]["step"]) for i in range(3)}
        said = host["cluster"]["state"]
        print(f"{' '.join(nodes) or 'MIN 1'}: steps while cut off {steps}; the host's cluster state {said!r}")
