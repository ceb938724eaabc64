"""A member that joins a group which has already trained: before its first step it holds the
group's parameters, Adam moments and moving average, byte for byte (not only parameters that
hash alike), and its step; after a step together each member reports its own share of the
global batch. The survivors of a member that dies go on from their last published step. Real
ClusterMembers (gloo over a TCPStore on loopback addresses), each with a one-process engine, in
threads of this process."""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any

import numpy as np
import pytest
from _rendezvous_port import TRIES, free_port, taken_in
from _wait import until
from test_cluster_member import in_threads

pytest.importorskip("torch")

from crystalline.workers.cluster_config import ClusterSettings, ClusterUnavailable
from crystalline.workers.cluster_member import ClusterMember
from crystalline.workers.engine import LocalEngine, StepAbandoned
from crystalline.workers.model import GPT, init_params
from crystalline.workers.model_config import ModelConfig
from crystalline.workers.optimizer_config import AdamWConfig

pytestmark = pytest.mark.timeout(300)

CFG = ModelConfig(vocab_size=32, seq_len=8, embed_dim=16, num_layers=1, num_heads=2)
ADAMW = AdamWConfig(warmup_steps=0, ema_decay=0.9)
TIMEOUT_S = 3.0  # the cluster's deadline; a new store's first generation waits this long


def settings(port: int, address: str, nodes: tuple[int, int] = (1, 2)) -> ClusterSettings:
    """A member at ``address`` of the store on 127.0.0.1:``port`` (hosted by 127.0.0.1),
    ``nodes`` MIN and MAX."""
    return ClusterSettings("127.0.0.1", port, address, *nodes, TIMEOUT_S)


class Seat:
    """One member with its engine (its own batches of ``rows`` windows, its own initial
    parameters, zero moments) and its counters."""

    def __init__(self, member: ClusterMember, seed: int, rows: int) -> None:
        windows = np.random.default_rng(seed).integers(0, CFG.vocab_size, size=(rows, CFG.seq_len + 1))
        model = GPT(CFG)
        self.member = member
        self.engine = LocalEngine(model, ADAMW, lambda _s: windows.astype(np.uint16), exchange=member)
        params = init_params(model.table, seed)
        self.engine.load_state(params, np.zeros_like(params), np.zeros_like(params))
        self.step = self.tokens = self.skipped_steps = 0  # what control counts (TrainerState)

    def in_group_of(self, world: int) -> None:
        """Wait (60 s at most) until this member may step in a group of ``world`` members."""
        for _ in range(600):
            if self.member.ready(self.engine, self) and self.member.world == world:
                return
            threading.Event().wait(0.1)
        raise AssertionError(f"no group of {world} within 60 s: {self.member.state}")

    def train(self) -> None:
        self.engine.step(self.step, 1e-2)
        self.step += 1
        self.member.after_step(self.engine, self)

    def held(self) -> list[bytes]:
        ema = self.engine.ema()
        assert ema is not None
        return [x.tobytes() for x in (self.engine.params(), *self.engine.moments(), ema)]


def hosting_member(nodes: tuple[int, int] = (1, 2)) -> ClusterMember:
    """The member that hosts the store, on a port free when asked (another, should another
    process take it first)."""
    said = ""
    for _ in range(TRIES):
        try:
            return ClusterMember(settings(free_port("127.0.0.1"), "127.0.0.1", nodes))
        except ClusterUnavailable as exc:
            said = str(exc)
            if not taken_in(said):
                raise
    raise AssertionError(f"the rendezvous port was taken {TRIES} times running: {said}")


def seats_members(seats: list[Seat]) -> list[ClusterMember]:
    return [s.member for s in seats]


def test_a_joining_member_holds_the_groups_moments_and_average_before_its_first_step() -> None:
    host = Seat(hosting_member(), seed=1, rows=3)
    joiner: Seat | None = None
    try:
        host.in_group_of(1)
        for _ in range(3):  # alone: its moments and average move away from the joiner's
            host.train()
        before = host.held()
        joiner = Seat(ClusterMember(settings(host.member.s.port, "127.0.0.2")), seed=2, rows=5)
        assert joiner.held()[1:3] != before[1:3]  # zero moments against the host's
        seats = [host, joiner]
        first: list[dict[str, Any]] = [{}, {}]

        def run(i: int) -> None:
            seats[i].in_group_of(2)
            first[i] = {"held": seats[i].held(), "step": seats[i].step}  # before any step together
            seats[i].train()

        in_threads(seats_members(seats), run, close=False)
        assert first[0] == first[1] == {"held": before, "step": 3}  # parameters, m, v, average
        assert host.member.digest == joiner.member.digest and host.step == joiner.step == 4
        # the global batch is 3 + 5 windows of the same length: each member's share of it
        assert (host.member.status()["data_share"], joiner.member.status()["data_share"]) == (0.375, 0.625)
    finally:
        for m in [joiner.member if joiner else None, host.member]:  # the host last: it holds the store
            if m is not None:
                m.close()


def test_the_survivors_of_a_dead_member_go_on_from_their_last_published_step(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Three members step twice together; member 2 dies (its beats stop, its group is gone,
    nothing told). The step the other two were in is abandoned (nothing of it published); they
    re-form without it within the deadline and go on from step 2 with the parameters, moments
    and digests they held there. The new group's agreement sends one of them the other's state
    of that same step 2 (the log says so: at step 2 before it), so nothing moves; nothing is
    replaced (``replaced`` stays None, the lineage is the one they had)."""
    nodes = (2, 3)
    host = Seat(hosting_member(nodes), seed=1, rows=2)
    seats = [host] + [
        Seat(ClusterMember(settings(host.member.s.port, f"127.0.0.{i + 1}", nodes)), seed=1, rows=2)
        for i in (1, 2)
    ]
    kept: list[dict[str, Any]] = [{}, {}]
    try:

        def together(i: int) -> None:
            seats[i].in_group_of(3)
            for _ in range(2):
                seats[i].train()

        in_threads(seats_members(seats), together, close=False)
        lineage = host.member.lineage
        assert lineage > 0 and seats[1].member.lineage == lineage
        caplog.clear()
        dead = seats[2].member
        dead.membership._stop.set()  # no more beats, and no "left" told
        dead.group = None  # its end of the gloo group goes with it

        def survive(i: int) -> None:
            seat = seats[i]
            held, recent = seat.held(), seat.member.status()["recent_digests"]
            with pytest.raises(StepAbandoned):
                seat.engine.step(seat.step, 1e-2)  # the allreduce with the dead member fails
            assert seat.held() == held  # nothing of the abandoned step applied
            seat.in_group_of(2)
            kept[i] = {"held": seat.held() == held, "step": seat.step, "recent": recent}
            seat.train()
            assert seat.member.status()["recent_digests"][: len(recent)] == recent

        with caplog.at_level(logging.INFO, logger="crystalline.cluster"):
            in_threads(seats_members(seats[:2]), survive, close=False)
        received = [r.getMessage() for r in caplog.records if "received from rank" in r.getMessage()]
        assert len(received) == 1, received  # one of the two was sent the other's state ...
        said = r"state of step 2 received from rank \d \(this member was at step 2\)"
        assert re.fullmatch(said, received[0]), received
        for seat in seats[:2]:  # ... of the step it was at: nothing replaced, the same lineage
            assert (seat.member.status()["replaced"], seat.member.lineage) == (None, lineage)
        assert kept[0]["held"] and kept[1]["held"] and kept[0]["step"] == kept[1]["step"] == 2
        assert [s for s, _ in kept[0]["recent"]] == [0, 1, 2] and kept[0]["recent"] == kept[1]["recent"]
        assert host.step == seats[1].step == 3 and host.member.digest == seats[1].member.digest
        assert host.member.world == 2 and host.member.group_generation > 1
    finally:
        for seat in reversed(seats):  # the host last: it holds the store
            seat.member.close()


def test_no_generation_forms_below_min_and_none_holds_more_than_max() -> None:
    """--cluster-nodes 2:2. The host alone: no generation, it does not step, through the new
    store's first-generation wait (one deadline, which alone holds off a group of one) and one
    whole deadline after it, where only MIN does. Two more members register: the generation
    holds the host and the first of them, who step together; the third waits for a later
    generation and never steps."""
    nodes = (2, 2)
    host = Seat(hosting_member(nodes), seed=1, rows=2)
    seats = [host]
    try:
        coordinator = host.member.membership._coordinator
        assert coordinator is not None  # the host's: the store's start is its ``opened``
        past_min = coordinator.opened + 2 * TIMEOUT_S  # the first generation's wait, then MIN alone
        while time.monotonic() < past_min:
            assert not host.member.ready(host.engine, host), host.member.state
            threading.Event().wait(0.1)
        assert host.member.status()["generation"] is None and host.member.state == "waiting to join"
        for i in (1, 2):  # registered in this order: numbers 2 and 3
            seats.append(Seat(ClusterMember(settings(host.member.s.port, f"127.0.0.{i + 1}", nodes)), 1, 2))
            until(lambda: seats[-1].member.status()["member"] is not None, lambda: "not registered", 60)
        third: list[str] = []

        def run(i: int) -> None:
            if i < 2:
                seats[i].in_group_of(2)
                seats[i].train()
                return
            for _ in range(round(2 * TIMEOUT_S / 0.1)):  # while the other two form and step
                assert not seats[2].member.ready(seats[2].engine, seats[2])
                threading.Event().wait(0.1)
            third.append(seats[2].member.state)

        in_threads(seats_members(seats), run, close=False)
        assert host.step == seats[1].step == 1 and host.member.digest == seats[1].member.digest
        assert seats[2].step == 0 and third[0].startswith("waiting for generation"), third
        members = [m["address"] for m in host.member.status()["members"]]
        assert members == ["127.0.0.1", "127.0.0.2"], members
    finally:
        for seat in reversed(seats):  # the host last: it holds the store
            seat.member.close()
