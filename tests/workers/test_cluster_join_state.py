"""A member that joins a group which has already trained: before its first step it holds the
group's parameters, Adam moments and moving average, byte for byte (not only parameters that
hash alike), and its step; after a step together each member reports its own share of the
global batch. Two real ClusterMembers (gloo over a TCPStore on loopback addresses), each with a
one-process engine, in threads of this process."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
from _rendezvous_port import TRIES, free_port, taken_in

pytest.importorskip("torch")

from crystalline.workers.cluster_config import ClusterSettings, ClusterUnavailable
from crystalline.workers.cluster_member import ClusterMember
from crystalline.workers.engine import LocalEngine
from crystalline.workers.model import GPT, init_params
from crystalline.workers.optimizer import AdamWConfig
from crystalline.workers.params import ModelConfig

pytestmark = pytest.mark.timeout(300)

CFG = ModelConfig(vocab_size=32, seq_len=8, embed_dim=16, num_layers=1, num_heads=2)
ADAMW = AdamWConfig(warmup_steps=0, ema_decay=0.9)
TIMEOUT_S = 3.0  # the cluster's deadline; a new store's first generation waits this long


def settings(port: int, address: str) -> ClusterSettings:
    """A member at ``address`` of the store on 127.0.0.1:``port`` (hosted by 127.0.0.1), MIN 1, MAX 2."""
    return ClusterSettings("127.0.0.1", port, address, 1, 2, TIMEOUT_S)


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


def hosting_member() -> ClusterMember:
    """The member that hosts the store, MIN 1 MAX 2, on a port free when asked (another, should
    another process take it first)."""
    said = ""
    for _ in range(TRIES):
        try:
            return ClusterMember(settings(free_port("127.0.0.1"), "127.0.0.1"))
        except ClusterUnavailable as exc:
            said = str(exc)
            if not taken_in(said):
                raise
    raise AssertionError(f"the rendezvous port was taken {TRIES} times running: {said}")


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
        errors: list[BaseException] = []

        def run(i: int) -> None:
            try:
                seats[i].in_group_of(2)
                first[i] = {"held": seats[i].held(), "step": seats[i].step}  # before any step together
                seats[i].train()
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        assert not any(t.is_alive() for t in threads)
        assert first[0] == first[1] == {"held": before, "step": 3}  # parameters, m, v, average
        assert host.member.digest == joiner.member.digest and host.step == joiner.step == 4
        # the global batch is 3 + 5 windows of the same length: each member's share of it
        assert (host.member.status()["data_share"], joiner.member.status()["data_share"]) == (0.375, 0.625)
    finally:
        for m in [joiner.member if joiner else None, host.member]:  # the host last: it holds the store
            if m is not None:
                m.close()
