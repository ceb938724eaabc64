"""The cluster's allreduce on its own: two real ClusterMembers (gloo over a TCPStore on loopback
addresses), each with a one-process engine, in two threads of this process. Local batches of
different sizes make one step of the global batch; a non-finite gradient on one member makes
both skip."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _rendezvous_port import TRIES, free_port, taken_in
from _wait import until

from crystalline.workers.checkpoint import load_state
from crystalline.workers.cluster_config import ClusterSettings, ClusterUnavailable
from crystalline.workers.engine import LocalEngine, StepAbandoned, StepOutcome
from crystalline.workers.model import GPT, init_params
from crystalline.workers.model_config import ModelConfig
from crystalline.workers.optimizer_config import AdamWConfig
from crystalline.workers.train_config import TrainConfig
from crystalline.workers.trainer import Trainer

pytest.importorskip("torch")
import torch

from crystalline.workers.cluster_member import (
    LONE_START_TIMEOUTS,
    STATE_PROTOCOL,
    ClusterMember,
    StateMismatch,
    digest,
    layout_disagreement,
    state_source,
)

pytestmark = pytest.mark.timeout(300)

CFG = ModelConfig(vocab_size=32, seq_len=8, embed_dim=16, num_layers=1, num_heads=2)


@dataclass
class State:
    step: int = 0
    tokens: int = 0
    skipped_steps: int = 0


def batch(seed: int, count: int) -> np.ndarray:
    return (
        np.random.default_rng(seed)
        .integers(0, CFG.vocab_size, size=(count, CFG.seq_len + 1))
        .astype(np.uint16)
    )


def hosted_members(settings: Callable[[int], list[ClusterSettings]]) -> list[ClusterMember]:
    """Real members of ``settings(port)``, the first hosting the store, on a port free when
    asked; should another process take it first, the host says so (ClusterUnavailable) and
    they are made again on another port, ``TRIES`` times at most."""
    said = ""
    for _ in range(TRIES):
        first, *others = settings(free_port("127.0.0.1"))
        try:
            host = ClusterMember(first)
        except ClusterUnavailable as exc:
            said = str(exc)
            if not taken_in(said):
                raise
            continue
        return [host, *(ClusterMember(x) for x in others)]
    raise AssertionError(f"the rendezvous port was taken {TRIES} times running: {said}")


def two_members(count: int = 2, timeout_s: float = 5.0) -> list[ClusterMember]:
    """Real members on loopback addresses (member 0 hosts the store), a group of ``count``.
    The membership ticks every tenth of ``timeout_s`` and a group forms in about three ticks."""
    return hosted_members(on_loopback(count, count, count, timeout_s))


def on_loopback(count: int, lo: int, hi: int, timeout_s: float) -> Callable[[int], list[ClusterSettings]]:
    """The settings of ``count`` members at 127.0.0.1, .2, ... (the first hosts the store on
    the port given), groups of ``lo`` to ``hi`` members."""
    return lambda port: [
        ClusterSettings("127.0.0.1", port, f"127.0.0.{i + 1}", lo, hi, timeout_s) for i in range(count)
    ]


def in_threads(members: list[ClusterMember], run: Callable[[int], None], close: bool = True) -> None:
    """``run(i)`` for each member in a thread of its own; then the members close (the host last:
    it holds the store) unless ``close`` is False; any error of a thread is raised here."""
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            run(i)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(len(members))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        for m in reversed(members if close else []):
            m.close()
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)


def join(member: ClusterMember, engine: LocalEngine, st: State) -> None:
    """Wait (60 s at most) until the member is in the group and holds its state."""
    for _ in range(600):
        if member.ready(engine, st):
            return
        threading.Event().wait(0.1)
    raise AssertionError(f"no group within 60 s: {member.state}")


def step_together(
    sources: list[Callable[[int], np.ndarray]], poisoned: int | None = None
) -> tuple[list[StepOutcome], list[np.ndarray], list[np.ndarray]]:
    """One step on each member, in threads; (outcomes, published parameters, the gradients the
    updates used). ``poisoned``:
    that member's weights turn to NaN after the group formed (its gradient is not finite)."""
    members = two_members(len(sources))
    model = GPT(CFG)
    params = init_params(model.table, 0)
    outcomes: list[StepOutcome | None] = [None] * len(sources)
    published: list[np.ndarray | None] = [None] * len(sources)
    gradients: list[np.ndarray | None] = [None] * len(sources)

    def run(i: int) -> None:
        engine = LocalEngine(GPT(CFG), AdamWConfig(warmup_steps=0), sources[i], exchange=members[i])
        engine.load_state(params, np.zeros_like(params), np.zeros_like(params))
        join(members[i], engine, State())
        if i == poisoned:
            engine.load_state(np.full_like(params, np.nan), np.zeros_like(params), np.zeros_like(params))
        outcomes[i] = engine.step(0, 1e-2)
        published[i] = engine.params().copy()
        gradients[i] = engine._grad.copy()  # what the exchange left: the global batch's

    in_threads(members, run)
    assert all(o is not None for o in outcomes) and all(p is not None for p in published)
    return (
        [o for o in outcomes if o is not None],
        [p for p in published if p is not None],
        [g for g in gradients if g is not None],
    )


def test_the_groups_state_replaces_the_digest_a_member_recorded_at_the_same_step() -> None:
    """Members that start from parameters of their own (their own --seed) publish step 0 before
    the group forms; the group's state, also of step 0, then replaces that digest in
    recent_digests, so members compared at step 0 agree."""
    members = two_members()
    model = GPT(CFG)
    shown: list[dict[str, Any]] = [{}, {}]

    def run(i: int) -> None:
        engine = LocalEngine(
            GPT(CFG), AdamWConfig(warmup_steps=0), lambda _s: batch(i, 2), exchange=members[i]
        )
        params = init_params(model.table, i + 1)  # parameters of its own
        engine.load_state(params, np.zeros_like(params), np.zeros_like(params))
        st = State()
        members[i].after_step(engine, st)  # what control does before waiting for a group
        join(members[i], engine, st)
        shown[i] = {**members[i].status(), "digest": members[i].digest}

    in_threads(members, run)
    assert shown[0]["digest"] == shown[1]["digest"]  # both hold the group's state
    for s in shown:
        assert s["recent_digests"] == [[0, s["digest"]]], s["recent_digests"]


def test_local_batches_of_different_sizes_make_one_step_of_the_global_batch() -> None:
    a, b = batch(1, 3), batch(2, 5)
    outcomes, published, gradients = step_together([lambda _s: a, lambda _s: b])
    model = GPT(CFG)
    params = init_params(model.table, 0)
    alone = LocalEngine(model, AdamWConfig(warmup_steps=0), lambda _s: np.concatenate([a, b]))
    alone.load_state(params, np.zeros_like(params), np.zeros_like(params))
    whole = np.zeros_like(params)  # the gradient of the mean loss over both batches together
    model.loss_and_grad(params, np.concatenate([a, b]), whole)
    reference = alone.step(0, 1e-2)
    assert published[0].tobytes() == published[1].tobytes()  # every member publishes the same
    assert gradients[0].tobytes() == gradients[1].tobytes()
    np.testing.assert_allclose(gradients[0], whole, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(published[0], alone.params(), atol=1e-5)  # Adam: tiny g, any sign
    for o in outcomes:
        assert o.tokens == reference.tokens == 8 * CFG.seq_len  # the global batch's tokens
        assert o.loss_sum == pytest.approx(reference.loss_sum, rel=1e-5)


def test_a_member_forming_a_generation_says_so_and_gives_up_at_the_clusters_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The generation's other member never forms it (it beats, but never comes: a control busy
    or gone since). The member first says it is forming the generation (no rank, world 0), so
    control can publish that before forming blocks; then it gives up at the cluster's deadline
    naming the rank that did not come, and does not form that generation again."""
    host, absent = two_members(timeout_s=1.0)
    try:
        model = GPT(CFG)
        engine = LocalEngine(model, AdamWConfig(warmup_steps=0), lambda _s: batch(1, 2), exchange=host)
        params = init_params(model.table, 0)
        engine.load_state(params, np.zeros_like(params), np.zeros_like(params))
        st = State()
        for _ in range(600):  # until generation 1 (both members) is out: 60 s at most
            assert not host.ready(engine, st), host.state
            if host.state == "forming generation 1":
                break
            threading.Event().wait(0.1)
        shown = host.status()
        assert (shown["state"], shown["generation"], shown["rank"], shown["world"]) == (
            "forming generation 1", 1, None, 0,
        )  # fmt: skip
        with caplog.at_level("WARNING", logger="crystalline.cluster"):
            assert not host.ready(engine, st)  # forms: the other member never comes
            with absent.membership.lock:
                assert absent.membership.generation is not None
                numbers = [m["number"] for m in absent.membership.generation[1]]
                missing = numbers.index(absent.membership.number)
            why = f"rank(s) [{missing}] did not come within 1 s"
            assert host.state == f"generation 1 failed to form ({why}); waiting for the next"
            assert not host.ready(engine, st)  # not formed again (at most the next is said)
            assert host.state != "forming generation 1" and host.group is None
        tries = [r for r in caplog.records if r.getMessage().startswith("generation 1: ")]
        assert len(tries) == 1, [r.getMessage() for r in tries]
    finally:
        absent.close()
        host.close()


def test_a_non_finite_gradient_on_one_member_skips_the_step_on_both() -> None:
    good = batch(3, 4)
    outcomes, published, _ = step_together([lambda _s: good, lambda _s: good], poisoned=1)
    assert [o.applied for o in outcomes] == [False, False]
    params = init_params(GPT(CFG).table, 0)
    assert published[0].tobytes() == params.tobytes()  # the healthy member kept its weights


def test_state_layouts_that_differ_are_named_in_one_line() -> None:
    assert layout_disagreement([[100, 3, 0], [100, 3, 0]]) is None
    ema = layout_disagreement([[100, 4, 0], [100, 3, 0]])  # --ema-decay on one member only
    assert ema is not None and "\n" not in ema and "state parts (EMA, DiLoCo) [4, 3]" in ema
    outer = layout_disagreement([[100, 5, 4], [100, 5, 8], [100, 5, 4]])
    assert outer is not None and "outer-every [4, 8, 4]" in outer and "parameters" not in outer
    size = layout_disagreement([[100, 3, 0], [64, 3, 0]])
    assert size is not None and "parameters [100, 64]" in size


class _Gathered:
    def wait(self) -> None:
        pass


class _FakeGroup:
    """Rank 0 of two: the other member's gathered row is ``other``; a broadcast is an error
    (the member must refuse before it)."""

    def __init__(self, other: list[int]) -> None:
        self.other = other

    def allgather(self, out: list[list[Any]], inp: list[Any]) -> _Gathered:
        out[0][0].copy_(inp[0])
        header = len(inp[0]) == 2  # the fixed header first: the same version, a row as long
        other = [int(inp[0][0]), len(self.other)] if header else self.other
        out[0][1].copy_(torch.tensor(other, dtype=torch.int64))
        return _Gathered()

    def broadcast(self, *args: object) -> _Gathered:
        raise AssertionError("broadcast of buffers that cannot match")


class _Engine:
    def __init__(self, n: int, ema: bool) -> None:
        self.p = np.zeros(n, dtype=np.float32)
        self.with_ema = ema

    def params(self) -> np.ndarray:
        return self.p

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        return self.p.copy(), self.p.copy()

    def ema(self) -> np.ndarray | None:
        return self.p.copy() if self.with_ema else None


@pytest.mark.parametrize(
    ("ema", "outer_every", "other", "named"),
    [
        (True, 0, [5, 50, 0, 0, 0, -1, 0, 10, 3, 0], "state parts"),  # the other member has no EMA
        (False, 4, [5, 50, 0, 0, 0, -1, 0, 10, 5, 8], "outer-every [4, 8]"),  # DiLoCo every 4 and every 8
        (False, 4, [5, 50, 0, 0, 0, -1, 0, 10, 3, 0], "state parts (EMA, DiLoCo) [5, 3]"),  # DiLoCo on one
    ],
)
def test_members_whose_state_buffers_differ_refuse_before_exchanging_them(
    ema: bool, outer_every: int, other: list[int], named: str
) -> None:
    member = ClusterMember.__new__(ClusterMember)  # no rendezvous: only the state exchange
    member.s = ClusterSettings("127.0.0.1", 1, "127.0.0.1", outer_every=outer_every)
    member.group, member.rank, member.world = _FakeGroup(other), 0, 2
    member.anchor = member.velocity = None
    member.lineage, member.alone_since, member.incumbent = 0, None, False
    with pytest.raises(StateMismatch, match=re.escape(named)):
        member._take_state(_Engine(10, ema), State(step=3))  # type: ignore[arg-type]


class _Membership:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.generation = (7, [{"number": 0}, {"number": 1}])
        self.number, self.registration = 0, 0
        self.failures: list[int] = []

    def unreachable(self) -> str | None:
        return None

    def report_failure(self, generation: int) -> None:
        self.failures.append(generation)


def test_a_refused_generation_shows_why_in_state_and_is_not_formed_again() -> None:
    member = ClusterMember.__new__(ClusterMember)
    member.s = ClusterSettings("127.0.0.1", 1, "127.0.0.1")
    member.membership = membership = _Membership()  # type: ignore[assignment]
    member.group, member.registration, member.given_up, member.anchor = None, 0, -1, None
    member.ended, member.forming = 0, 0  # no generation ended by a member leaving, none forming
    member.lineage, member.alone_since, member.incumbent = 0, None, False
    formed: list[int] = []

    def form(g: int, rank: int, numbers: list[int]) -> bool:
        formed.append(g)
        member.group = _FakeGroup([0, 0, 0, 0, 0, -1, 0, 10, 4, 0])  # the other member keeps an EMA
        member.group_generation, member.rank, member.world = g, rank, len(numbers)
        return True

    member._form = form  # type: ignore[method-assign]
    engine = _Engine(10, ema=False)
    assert not member.ready(engine, State())  # type: ignore[arg-type]
    assert member.state == "forming generation 7" and formed == []  # said first, then formed
    assert not member.ready(engine, State())  # type: ignore[arg-type]
    assert member.state.startswith("refused generation 7: ")
    assert "state parts (EMA, DiLoCo) [3, 4]" in member.state
    assert not member.ready(engine, State())  # type: ignore[arg-type]
    assert formed == [7] and membership.failures == []  # not re-formed: the settings still differ


def in_generation(member: ClusterMember) -> tuple[int, list[dict[str, Any]]]:
    """The newest generation the member's thread has read, once it holds the member's number
    (60 s at most)."""

    def probe() -> tuple[int, list[dict[str, Any]]] | None:
        with member.membership.lock:
            generation, number = member.membership.generation, member.membership.number
        return generation if generation and number in [m["number"] for m in generation[1]] else None

    return until(probe, lambda: f"no generation with this member within 60 s: {member.state}", 60)


def trained(member: ClusterMember, engine: LocalEngine, st: State) -> None:
    """One step of the engine, counted, then what control does after a step."""
    engine.step(st.step, 1e-2)
    st.step += 1
    member.after_step(engine, st)


def test_a_member_resumed_right_after_its_leaving_step_rejoins_and_the_group_steps_again() -> None:
    """crystalline pause on member 1, and resume as soon as its leaving step is done (before
    control ever asks it to leave again, within one tick of the membership thread): it has left
    all the same (the store hears it, under its old number), registers anew, and the next
    generation holds both members, which step again with the same parameters."""
    members = two_members(timeout_s=5.0)
    model = GPT(CFG)
    params = init_params(model.table, 0)
    seen: list[dict[str, Any]] = [{}, {}]

    def run(i: int) -> None:
        m, st = members[i], State()
        engine = LocalEngine(GPT(CFG), AdamWConfig(warmup_steps=0), lambda _s: batch(i, 2), exchange=m)
        engine.load_state(params, np.zeros_like(params), np.zeros_like(params))
        join(m, engine, st)
        first, number = m.group_generation, m.membership.number
        if i == 1:
            assert not m.leave()  # in a group: its next allreduce tells the other member
        trained(m, engine, st)
        assert m.group is None and m.ended == first
        if i == 1:
            assert m.left and m.state.startswith("paused: left the cluster by request")
            m.rejoin()  # resumed at once
        join(m, engine, st)
        trained(m, engine, st)
        seen[i] = {"first": first, "number": number, "again": m.group_generation, "digest": m.digest}
        seen[i]["renumbered"] = m.membership.number != number

    in_threads(members, run)
    assert seen[0]["again"] == seen[1]["again"] > seen[0]["first"] == seen[1]["first"]
    assert seen[0]["digest"] == seen[1]["digest"]
    assert (seen[0]["renumbered"], seen[1]["renumbered"]) == (False, True)  # it registered anew


def test_a_member_paused_while_its_generation_is_published_forms_it_and_leaves_in_its_first_step() -> None:
    """Generation 1 (both members) is out, member 1 has not formed it yet, and it is paused: it
    forms the generation all the same (member 0 is forming it) and says it leaves in the first
    allreduce; both end generation 1 after that step and nothing failed."""
    members = two_members(timeout_s=5.0)
    model = GPT(CFG)
    params = init_params(model.table, 0)
    digests = ["", ""]

    def run(i: int) -> None:
        m, st = members[i], State()
        engine = LocalEngine(GPT(CFG), AdamWConfig(warmup_steps=0), lambda _s: batch(i, 2), exchange=m)
        engine.load_state(params, np.zeros_like(params), np.zeros_like(params))
        if i == 0:
            join(m, engine, st)
            trained(m, engine, st)
            assert m.state == "waiting for generation 2: a member left generation 1"
        else:
            assert in_generation(m)[0] == 1  # out, not formed here yet
            for _ in range(600):  # what control does while paused, 60 s at most
                if m.leave():
                    break
                if m.ready(engine, st):
                    trained(m, engine, st)
                else:
                    threading.Event().wait(0.1)
            assert m.left, m.state
        assert (st.step, m.ended, m.given_up) == (1, 1, -1)
        with m.membership.lock:
            assert m.membership.failed == set()
        digests[i] = m.digest

    in_threads(members, run)
    assert digests[0] == digests[1]


def test_what_a_member_ended_or_gave_up_counts_no_more_once_it_registered_anew() -> None:
    """The hosting member restarted: its new store counts generations from 1 again. A member that
    had ended generation 7 (a member left) and given up generation 5 forms the new store's
    generation 1 instead of sitting out generations 1 to 7."""
    member = ClusterMember.__new__(ClusterMember)
    member.s = ClusterSettings("127.0.0.1", 1, "127.0.0.1")
    member.membership = membership = _Membership()  # type: ignore[assignment]
    member.group, member.registration, member.anchor = None, 0, None
    member.ended, member.given_up, member.forming = 7, 5, 0
    membership.registration = 1  # registered with the new store
    membership.generation = (1, [{"number": 0}, {"number": 1}])
    assert not member.ready(_Engine(10, ema=False), State())  # type: ignore[arg-type]
    assert member.state == "forming generation 1"
    assert (member.ended, member.given_up, member.registration) == (0, -1, 1)


def test_a_leave_the_membership_thread_had_no_tick_for_is_told_before_registering_again() -> None:
    """leave() then rejoin() at once (within one tick of the membership thread): the store still
    hears that the old number left, the member registers under a new one, and the coordinator
    publishes a generation of the host and the new number."""
    host, other = two_members(timeout_s=3.0)
    try:
        in_generation(other)
        old = other.membership.number
        other.membership.leave()
        other.membership.rejoin()
        generation = in_generation(other)  # one that holds its new number
        number = other.membership.number
        assert generation[0] > 1 and number != old
        assert sorted(m["number"] for m in generation[1]) == sorted([host.membership.number, number])
        assert host.membership._coordinator is not None and old in host.membership._coordinator.dead
    finally:
        other.close()
        host.close()


def test_state_source_prefers_the_oldest_lineage_then_the_newest_step() -> None:
    """Of each rank's (lineage, step, alone since: the step a lone start began at, -1 for none,
    incumbent: 0), with no incumbents (a new store's first generation, or after a lone member)."""
    assert state_source([(0, 3, -1, 0), (0, 9, -1, 0), (0, 9, -1, 0)]) == 1  # all afresh: newest step
    assert state_source([(0, 90, -1, 0), (1000, 4, -1, 0)]) == 1  # a restarted member's checkpoint
    assert state_source([(2000, 79, -1, 0), (1000, 36, -1, 0), (1000, 36, -1, 0)]) == 1  # another lineage
    assert state_source([(1000, 50, -1, 0), (1000, 36, -1, 0)]) == 0  # one lineage (a partition healed)


def test_a_lone_start_counts_from_the_checkpoint_it_started_alone_from() -> None:
    """A member that started alone from its checkpoint (a restarted host after the first
    generation's wait, the first of a whole cluster restarted) stays in its lineage, but what it
    holds counts as of the step it started alone from (while that lasts: ``_lone_start``): its
    old peers, who went on, win; among members restarted one after another the newest
    checkpoint wins, its lone steps with it."""
    assert state_source([(1000, 9, 4, 0), (1000, 6, -1, 0)]) == 1  # peers at 6 went on past its 4
    assert state_source([(1000, 9, 7, 0), (1000, 6, -1, 0)]) == 0  # its checkpoint (7) is the newest
    assert state_source([(1000, 9, 6, 0), (1000, 6, -1, 0)]) == 0  # as new: and it stepped on from there
    assert state_source([(1000, 6, -1, 0), (1000, 12, 5, 0), (1000, 8, 7, 0)]) == 2  # two lone starts: 7


def test_a_lone_start_lapses_once_the_member_has_trained_alone_for_a_few_timeouts() -> None:
    """A host that restarted from its checkpoint at 1000 and trains alone counts as of step
    1000 for LONE_START_TIMEOUTS timeouts; after that its steps count as they are (before: for
    ever, so 10000 lone steps gave way to a peer's checkpoint at 1005; review3 finding 3)."""
    member = ClusterMember.__new__(ClusterMember)  # no rendezvous: only the lone start
    member.s = ClusterSettings("127.0.0.1", 1, "127.0.0.1", timeout_s=2.0)
    member.alone_since, member.alone_at = 1000, time.monotonic()
    assert member._lone_start() == 1000 and member.alone_since == 1000
    member.alone_at -= LONE_START_TIMEOUTS * 2.0 + 1  # as if it started alone that long ago
    assert member._lone_start() == -1 and member.alone_since is None
    assert state_source([(1000, 11000, member._lone_start(), 0), (1000, 1005, -1, 0)]) == 0


def test_the_state_of_the_group_that_trained_together_is_not_overwritten_by_another_lineage() -> None:
    """Incumbents (the last group of 2+ on this store, holding its state): their state, or a
    newer step of their lineage; never another lineage's, older or not, nor an older step."""
    pair_and_paused = [(2000, 1000, -1, 1), (2000, 1000, -1, 1), (1000, 100, -1, 0)]  # review3 finding 2
    assert state_source(pair_and_paused) == 0
    assert state_source([(1000, 100, -1, 0), (2000, 990, -1, 1), (2000, 991, -1, 1)]) == 2  # a step settled
    assert state_source([(2000, 40, -1, 1), (2000, 40, -1, 1), (2000, 55, -1, 0)]) == 2  # a newer checkpoint
    assert state_source([(2000, 40, -1, 1), (2000, 40, -1, 1), (0, 99, -1, 0)]) == 0  # a fresh start
    assert state_source([(2000, 40, -1, 1), (1000, 90, 30, 0)]) == 0  # a lone start of another lineage
    # a lone start of theirs counts as of the step it started alone from (review5 finding 5)
    assert state_source([(1000, 1020, -1, 1), (1000, 1020, -1, 1), (1000, 1030, 1000, 0)]) == 0


def test_a_host_with_fewer_than_min_members_publishes_nothing_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """--cluster-nodes 2:2, the host alone: past the first generation's wait (a timeout) its
    coordinator publishes no generation and logs why, once, not at each of the ticks after; a
    second member registering makes the pair's generation."""
    caplog.set_level(logging.INFO, logger="crystalline.cluster")
    (host,) = hosted_members(lambda port: on_loopback(2, 2, 2, 1.0)(port)[:1])
    other: ClusterMember | None = None
    client = host.membership.connect()
    try:

        def said() -> list[str]:
            return [r.getMessage() for r in caplog.records if "fewer than MIN" in r.getMessage()]

        until(said, lambda: "the host never said it has fewer than MIN members", 60)
        number = host.membership.number
        beat = int(client.get(f"hb/{number}"))
        # each beat is one tick of the host's membership thread, its coordinator's tick with it
        until(lambda: int(client.get(f"hb/{number}")) >= beat + 5, lambda: "the host stopped ticking", 60)
        why = "fewer than MIN 2 (--cluster-nodes), no generation until more register"
        assert said() == [f"cluster members [{number}]: {why}"]
        assert int(client.add("gen", 0)) == 0 and host.membership.generation is None
        other = ClusterMember(ClusterSettings("127.0.0.1", host.s.port, "127.0.0.2", 2, 2, 1.0))
        generation = in_generation(host)
        assert generation[0] == 1 and len(generation[1]) == 2 and len(said()) == 1
    finally:
        for member in (other, host):
            if member is not None:
                member.close()


def host_gone(host: ClusterMember) -> None:
    """The hosting member's process is gone: its guard closes every connection and its store's
    server stops with the last reference to it."""
    host.close()
    host.membership._server = None


def test_a_member_whose_host_is_gone_stops_without_waiting_out_the_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The hosting member's process is gone: member 1, cut off, has no one to tell that it
    leaves. Its close says so and its membership thread ends within its try to reach the host
    (a fifth of the deadline: 3 s here), so close returns before the cluster's deadline (15 s
    here). Before, close waited for the thread to tell the store, which it could not (a try of
    the whole deadline to connect, 1.5 ticks + 15 s), then 15 s more: the deadline at least,
    6.5-10 s with the daemons' 5 s, seen in their stops."""
    host, other = two_members(timeout_s=15.0)
    try:
        in_generation(other)
        host_gone(host)
        until(lambda: other.membership.unreachable(), lambda: "member 1 never saw the host go", 60)
        caplog.set_level(logging.INFO, logger="crystalline.cluster")
        closing = threading.Thread(target=other.close)
        closing.start()
        closing.join(timeout=other.s.timeout_s)  # the old close waited out the deadline at least
        assert not closing.is_alive(), "close waited for a rendezvous point that is gone"
        assert not other.membership._thread.is_alive()
        said = [r.getMessage() for r in caplog.records]
        assert any(x.endswith("stopping without telling it that this member leaves") for x in said), said
    finally:
        other.close()  # again: returns at once


def test_a_closing_member_tells_the_store_it_leaves_without_waiting_for_its_next_tick() -> None:
    """close() wakes the membership thread for its last tick: the store hears ``left`` and
    close returns well within one tick (6 s here: a 60 s deadline). Before, the thread told
    the store at its next tick only, so every control's stop waited up to a tick (0.5 s with
    the daemons' 5 s) for it."""
    host, other = two_members(timeout_s=60.0)
    try:
        number = until(lambda: other.membership.number, "member 1 never registered", 60)
        closing = threading.Thread(target=other.close)
        closing.start()
        closing.join(timeout=other.membership.tick_s / 2)
        assert not closing.is_alive(), "close waited for the membership thread's next tick"
        assert not other.membership._thread.is_alive()
        assert host.membership.connect().get(f"hb/{number}") == b"left"
    finally:
        other.close()
        host.close()


@dataclass
class Restarted:
    """A host restarted from its checkpoint of step 1 (a new store, lineage 0), in a group of
    its own at step 1, and member 1, paused since it saw the old host go."""

    host: ClusterMember
    engine: LocalEngine
    state: State
    other: ClusterMember
    other_engine: LocalEngine
    other_state: State


@contextlib.contextmanager
def host_restarted_after(steps: int, settings: Callable[[int], list[ClusterSettings]]) -> Iterator[Restarted]:
    """The host and member 1 (``settings``) step ``steps`` times together; the host's process
    dies, member 1 is cut off and paused (it registers again only on rejoin), and the host is
    restarted from its checkpoint of step 1 and forms a group alone. Both close at the end."""
    params = init_params(GPT(CFG).table, 0)
    host, other = hosted_members(settings)
    engines = [
        LocalEngine(GPT(CFG), AdamWConfig(warmup_steps=0), lambda _s, i=i: batch(i, 2), exchange=m)
        for i, m in enumerate([host, other])
    ]
    states = [State(), State()]
    checkpoint: list[np.ndarray] = []
    restarted: ClusterMember | None = None
    try:

        def together(i: int) -> None:
            engines[i].load_state(params, np.zeros_like(params), np.zeros_like(params))
            join([host, other][i], engines[i], states[i])
            for _ in range(steps):
                trained([host, other][i], engines[i], states[i])
                if i == 0 and states[0].step == 1:
                    checkpoint.extend(x.copy() for x in (engines[0].params(), *engines[0].moments()))

        in_threads([host, other], together, close=False)
        assert states[0].step == states[1].step == steps
        assert host.outer_done == other.outer_done if host.s.outer_every else host.digest == other.digest
        host_gone(host)
        until(lambda: other.membership.unreachable(), lambda: "member 1 never saw the host go", 60)
        assert not other.ready(engines[1], states[1]) and other.state.startswith("paused: cut off")
        assert other.leave()  # cut off: left at once, registers again only on rejoin
        restarted = ClusterMember(host.s)
        engine = LocalEngine(
            GPT(CFG), AdamWConfig(warmup_steps=0), lambda _s: batch(0, 2), exchange=restarted
        )
        engine.load_state(*checkpoint)
        alone = State(step=1)
        join(restarted, engine, alone)
        assert restarted.world == 1
        yield Restarted(restarted, engine, alone, other, engines[1], states[1])
    finally:
        for m in [other, restarted]:
            if m is not None:
                m.close()


def test_a_restarted_host_that_stepped_alone_is_brought_up_to_the_groups_state(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The host and member 1 step together; the host's process dies and is restarted from its
    checkpoint of step 1 (a new store); member 1, cut off meanwhile, is paused (so it does not
    register again), and the restarted host forms a group alone and steps past member 1's step.
    Member 1 resumes: the new group takes member 1's state (the lineage it carried on since the
    first group), not the host's higher step, and both go on from there with the same digest."""
    caplog.set_level(logging.INFO, logger="crystalline.cluster")
    # MIN 1, MAX 2: the first group forms once both are in
    with host_restarted_after(3, on_loopback(2, 1, 2, 3.0)) as r:
        restarted, engine, alone, other = r.host, r.engine, r.state, r.other
        kept = (r.other_state.step, other.digest)
        for _ in range(4):
            trained(restarted, engine, alone)
        assert alone.step == 5 > kept[0]
        other.rejoin()

        def both() -> bool:  # the coordinator's generation of the two, read by the restarted host
            with restarted.membership.lock:
                generation = restarted.membership.generation
            return generation is not None and len(generation[1]) == 2

        until(both, lambda: "no generation of both members within 60 s", 60)
        pair, pair_engines, pair_states = [restarted, other], [engine, r.other_engine], [alone, r.other_state]
        after: list[tuple[int, str | None]] = [(0, None), (0, None)]

        def reunited(i: int) -> None:
            join(pair[i], pair_engines[i], pair_states[i])
            after[i] = (pair_states[i].step, pair[i].digest)
            trained(pair[i], pair_engines[i], pair_states[i])

        in_threads(pair, reunited, close=False)
        assert after == [kept, kept]  # member 1's state, at its step, on both
        assert restarted.digest == other.digest and alone.step == r.other_state.step == kept[0] + 1
        # what the host recorded of its own steps is gone: only the group's steps since it joined
        assert restarted.status()["recent_digests"] == other.status()["recent_digests"][-2:]
        said = "state of step 3 received from rank 1 (this member was at step 5, of a lineage of its own"
        assert said in caplog.text
        first_lineage = other.status()["lineage"]  # the first group's, carried on by member 1
        assert first_lineage > 0 and restarted.status()["lineage"] == first_lineage
        assert restarted.status()["replaced"]["step"] == 5 and other.status()["replaced"] is None
        assert restarted.status()["replaced"]["by_step"] == 3


def test_a_restarted_hosts_first_generation_waits_for_the_members_of_the_store_it_replaced() -> None:
    """MIN 1, MAX 3: a new store's first generation waits one timeout for members, so on the
    first start both members are in generation 1, and when the host's process is restarted
    (from step 0: no checkpoint) member 1, cut off meanwhile, registers with the new store
    within that time, here only after the host has been alone for a few ticks (it was paused
    while cut off and resumes then): the new store's first generation holds both (the host
    never steps alone) and the host is sent member 1's state."""
    model = GPT(CFG)
    params = init_params(model.table, 0)
    members = hosted_members(on_loopback(2, 1, 3, 3.0))
    settings = [m.s for m in members]
    engines = [
        LocalEngine(GPT(CFG), AdamWConfig(warmup_steps=0), lambda _s, i=i: batch(i, 2), exchange=m)
        for i, m in enumerate(members)
    ]
    states = [State(), State()]
    first: list[tuple[int, int]] = []
    try:

        def run(i: int) -> None:
            join(members[i], engines[i], states[i])
            first.append((members[i].group_generation, members[i].world))
            for _ in range(3):
                trained(members[i], engines[i], states[i])

        for e in engines:
            e.load_state(params, np.zeros_like(params), np.zeros_like(params))
        in_threads(members, run, close=False)
        assert first == [(1, 2), (1, 2)]
        kept = (states[1].step, members[1].digest)
        host_gone(members[0])
        until(lambda: members[1].membership.unreachable(), lambda: "member 1 never saw the host go", 60)
        assert not members[1].ready(engines[1], states[1]) and members[1].leave()
        members[0] = ClusterMember(settings[0])
        coordinator = members[0].membership._coordinator
        assert coordinator is not None
        until(lambda: coordinator.last_alive, lambda: "the restarted host never saw itself", 60)
        threading.Event().wait(3 * members[0].membership.tick_s)  # alone and settled: MIN is met
        members[1].rejoin()
        adamw = AdamWConfig(warmup_steps=0)
        engines[0] = LocalEngine(GPT(CFG), adamw, lambda _s: batch(0, 2), exchange=members[0])
        engines[0].load_state(params, np.zeros_like(params), np.zeros_like(params))
        states[0], first = State(), []
        received: list[tuple[int, str | None]] = []

        def again(i: int) -> None:
            join(members[i], engines[i], states[i])
            first.append((members[i].group_generation, members[i].world))
            received.append((states[i].step, members[i].digest))

        in_threads(members, again, close=False)
        assert first == [(1, 2), (1, 2)] and received == [kept, kept]
    finally:
        for m in reversed(members):
            m.close()


def test_under_diloco_a_member_joining_mid_interval_takes_effect_at_the_next_outer_step(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """DiLoCo (an outer step every 4 steps): members 0 and 1 are at step 5 when member 2 joins.
    The generation that adds it only adds a member, so the two go on in their group through
    steps 6-8 (slower than the cluster's deadline in all, each step well within it) and take
    step 8's outer step together; only then do they form the new generation, while member 2
    waits for them past the deadline because they say each step that they are on their way.
    Member 2 is sent step 8's state, no local step is discarded (status ``discarded_steps``),
    nothing fails, and the three agree at the next outer step (12)."""
    caplog.set_level(logging.INFO, logger="crystalline.cluster")
    h, timeout_s, pace_s = 4, 4.0, 1.5  # 3 paced steps: 4.5 s, past the deadline; each 1.5 s
    model = GPT(CFG)
    params = init_params(model.table, 0)

    def diloco(port: int, i: int) -> ClusterSettings:
        return ClusterSettings("127.0.0.1", port, f"127.0.0.{i + 1}", 2, 3, timeout_s, outer_every=h)

    members = hosted_members(lambda port: [diloco(port, 0), diloco(port, 1)])
    engines = [
        LocalEngine(GPT(CFG), AdamWConfig(warmup_steps=0), lambda _s, i=i: batch(i, 2), exchange=m)
        for i, m in enumerate(members)
    ]
    states = [State(), State()]
    try:
        for e in engines:
            e.load_state(params, np.zeros_like(params), np.zeros_like(params))

        def first(i: int) -> None:
            join(members[i], engines[i], states[i])
            for _ in range(5):
                assert members[i].ready(engines[i], states[i])
                trained(members[i], engines[i], states[i])

        in_threads(members, first, close=False)
        old = members[0].group_generation
        assert [s.step for s in states] == [5, 5] and [m.outer_done for m in members] == [4, 4]
        members.append(ClusterMember(diloco(members[0].s.port, 2)))
        engines.append(
            LocalEngine(GPT(CFG), AdamWConfig(warmup_steps=0), lambda _s: batch(2, 2), exchange=members[2])
        )
        engines[2].load_state(params, np.zeros_like(params), np.zeros_like(params))
        states.append(State())
        new = until(
            lambda: all(len(in_generation(m)[1]) == 3 for m in members[:2]) and in_generation(members[0])[0],
            lambda: "no generation of three within 60 s",
            60,
        )
        said: list[set[str]] = [set(), set(), set()]

        def second(i: int) -> None:
            m, engine, st = members[i], engines[i], states[i]
            if i < 2:
                while st.step < 2 * h:  # in the old group to the outer step
                    assert m.ready(engine, st) and m.group_generation == old, m.state
                    said[i].add(m.state)
                    threading.Event().wait(pace_s)
                    trained(m, engine, st)
            for _ in range(600):
                if m.ready(engine, st):
                    break
                said[i].add(m.state)
                threading.Event().wait(0.1)
            assert m.group_generation == new and m.world == 3 and st.step == 2 * h, (m.state, st.step)
            while st.step < 3 * h:
                assert m.ready(engine, st)
                trained(m, engine, st)

        in_threads(members, second, close=False)
        assert all(
            f"generation {new} (members joining) from the next outer step" in " ".join(s) for s in said[:2]
        )
        assert any("finish their interval first" in s for s in said[2]), said[2]
        recent = [dict(m.recent) for m in members]
        assert len({r[3 * h] for r in recent}) == 1, recent  # agreed at the next outer step
        assert len({r[2 * h] for r in recent}) == 1, recent  # step 8's outer step, sent to member 2
        assert [m.status()["discarded_steps"] for m in members] == [0, 0, 0]
        failed = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert not failed, failed
    finally:
        for m in reversed(members):
            m.close()


@pytest.mark.parametrize(("host_at", "other_at", "host_wins"), [(2, 3, False), (4, 3, True)])
def test_of_a_cluster_restarted_member_by_member_the_newest_checkpoint_wins(
    host_at: int, other_at: int, host_wins: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Both restarted from checkpoints of one lineage (``restore_history``), more than a timeout
    apart: the host starts alone after the first generation's wait (a lone start, from its
    checkpoint's step) and steps 3 more; member 1 then comes from a checkpoint of its own. The
    group takes the newest checkpoint's state: member 1's when it is newer than the one the host
    started alone from (the host's lone steps replaced, ``cluster.replaced`` says so), else the
    host's with its lone steps. The lineage stays the one the checkpoints carried."""
    caplog.set_level(logging.INFO, logger="crystalline.cluster")
    lineage = 1_700_000_000_000
    model = GPT(CFG)
    (host,) = hosted_members(lambda port: on_loopback(2, 1, 2, 3.0)(port)[:1])
    other: ClusterMember | None = None
    try:
        engine = LocalEngine(GPT(CFG), AdamWConfig(warmup_steps=0), lambda _s: batch(0, 2), exchange=host)
        engine.load_state(init_params(model.table, 0), *[np.zeros_like(init_params(model.table, 0))] * 2)
        host.restore_history({"lineage": lineage, "alone_since": None})  # an older version's checkpoint
        alone = State(step=host_at)
        join(host, engine, alone)
        assert host.world == 1 and host.status()["lineage"] == lineage
        assert host.history() == {"lineage": lineage} and host.alone_since == host_at  # a lone start
        for _ in range(3):
            trained(host, engine, alone)
        other = ClusterMember(ClusterSettings("127.0.0.1", host.s.port, "127.0.0.2", 1, 2, 3.0))
        theirs = LocalEngine(GPT(CFG), AdamWConfig(warmup_steps=0), lambda _s: batch(1, 2), exchange=other)
        params = init_params(model.table, 1)
        theirs.load_state(params, np.zeros_like(params), np.zeros_like(params))
        other.restore_history({"lineage": lineage})
        states = [alone, State(step=other_at)]
        expected = (host_at + 3, host.digest) if host_wins else (other_at, digest(params, other_at))
        pair, engines = [host, other], [engine, theirs]

        def both() -> bool:
            with host.membership.lock:
                generation = host.membership.generation
            return generation is not None and len(generation[1]) == 2

        until(both, lambda: "no generation of both members within 60 s", 60)
        after: list[tuple[int, str | None]] = [(0, None), (0, None)]

        def reunited(i: int) -> None:
            join(pair[i], engines[i], states[i])
            after[i] = (states[i].step, pair[i].digest)

        in_threads(pair, reunited, close=False)
        assert after == [expected, expected]
        assert [m.history() for m in pair] == [{"lineage": lineage}] * 2
        assert host.alone_since is None and host.incumbent and other.incumbent  # a group of two agreed
        # the host's lone steps gave way (member 1 behind the host is only brought up to date)
        replaced = None if host_wins else {"step": host_at + 3, "by_step": other_at, "lineage": lineage}
        assert (host.status()["replaced"], other.status()["replaced"]) == (replaced, None)
        said = f"(this member was at step {host_at + 3}, started alone from step {host_at}: replaced)"
        assert (said in caplog.text) is not host_wins, caplog.text[-2000:]
    finally:
        for m in [other, host]:
            if m is not None:
                m.close()


def test_a_cluster_history_that_is_not_a_lineage_is_refused_in_one_line() -> None:
    member = ClusterMember.__new__(ClusterMember)  # no rendezvous: only the restore
    for saved in ({"lineage": "x"}, {"lineage": -1}, {"lineage": 2.5}):
        with pytest.raises(ValueError, match="not a lineage") as caught:
            member.restore_history(saved)
        assert "\n" not in str(caught.value)
    member.restore_history({})  # a checkpoint written without --cluster
    assert (member.lineage, member.alone_since, member.restored) == (0, None, True)
    member.restore_history({"lineage": 5, "alone_since": 3})  # an earlier version's: let go
    assert (member.lineage, member.alone_since, member.restored) == (5, None, True)


def test_a_checkpoint_keeps_the_lineage_and_a_restart_resumes_it(tmp_path: Path, corpus_file: Path) -> None:
    """A trainer with a cluster member writes its ``history()`` into the checkpoint's
    state.json; restarted from it (a new process: a new member, a new store), the member holds
    that lineage before any group, and once its first group is itself alone (the first
    generation's wait passed) it is a lone start from the checkpoint's step (this process's
    alone: the checkpoint keeps only the lineage)."""
    cfg = TrainConfig(embed_dim=16, num_layers=1, num_heads=2, seq_len=8, batch_size=2, workers=1)
    first = hosted_members(on_loopback(1, 1, 1, 2.0))[0]
    trainer = Trainer([corpus_file], tmp_path / "ck", cfg, exchange=first)
    try:
        join(first, trainer.engine, trainer.state)
        trainer.train_step()
        first.after_step(trainer.engine, trainer.state)
        lineage = first.lineage  # begun by this first group (its own state, made at start)
        assert lineage > 0 and first.history() == {"lineage": lineage}
        saved = load_state(trainer.checkpoint())
        assert saved["cluster"] == {"lineage": lineage} and saved["step"] == 1
    finally:
        trainer.close()
        first.close()
    again = hosted_members(on_loopback(1, 1, 1, 2.0))[0]
    trainer = Trainer([corpus_file], tmp_path / "ck", cfg, resume=True, exchange=again)
    try:
        assert again.history() == {"lineage": lineage} and again.restored
        join(again, trainer.engine, trainer.state)
        assert again.alone_since == 1 and not again.incumbent and not again.restored
        assert load_state(trainer.checkpoint())["cluster"] == {"lineage": lineage}
    finally:
        trainer.close()
        again.close()


def test_under_diloco_a_member_whose_step_moved_back_takes_the_groups_next_outer_step(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """DiLoCo, outer step every 2: the host and member 1 step to 5 together; the host restarts
    from its checkpoint of step 1 (lineage 0), steps alone to 5 (its outer step 4 done), and is
    sent member 1's state of step 5. Its own outer step counts no more: at step 6 both take the
    outer step (before: the host skipped it as done, its step-8 allreduce met member 1's step-6
    one and member 1's step-8 one timed out), and at step 8 they agree."""
    caplog.set_level(logging.INFO, logger="crystalline.cluster")

    def diloco(port: int) -> list[ClusterSettings]:
        return [
            ClusterSettings("127.0.0.1", port, f"127.0.0.{i + 1}", 1, 2, 3.0, outer_every=2) for i in range(2)
        ]

    with host_restarted_after(5, diloco) as r:
        restarted, engine, alone, other = r.host, r.engine, r.state, r.other
        for _ in range(4):
            trained(restarted, engine, alone)
        assert alone.step == 5 and restarted.outer_done == 4
        other.rejoin()

        def both() -> bool:
            with restarted.membership.lock:
                generation = restarted.membership.generation
            return generation is not None and len(generation[1]) == 2

        until(both, lambda: "no generation of both members within 60 s", 60)
        pair, pair_engines, pair_states = [restarted, other], [engine, r.other_engine], [alone, r.other_state]

        def reunited(i: int) -> None:
            for _ in range(600):  # DiLoCo: the lone host finishes its interval first
                if pair[i].ready(pair_engines[i], pair_states[i]):
                    if pair[i].world == 2:
                        break
                    trained(pair[i], pair_engines[i], pair_states[i])
                else:
                    threading.Event().wait(0.1)
            assert pair[i].world == 2 and pair_states[i].step == 5, (pair_states[i].step, pair[i].state)
            for _ in range(4):
                assert pair[i].ready(pair_engines[i], pair_states[i]), pair[i].state
                trained(pair[i], pair_engines[i], pair_states[i])

        in_threads(pair, reunited, close=False)
        warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert not [w for w in warned if "outer step" in w], warned
        assert alone.step == r.other_state.step == 9 and restarted.outer_done == other.outer_done == 8
        at_8 = [dict(m.recent)[8] for m in (restarted, other)]  # the outer step's: one anchor
        assert at_8[0] == at_8[1]


class _NextVersion(ClusterMember):
    protocol = STATE_PROTOCOL + 1  # a member of a version whose state exchange differs


def test_members_of_different_versions_refuse_their_generation_in_one_line_and_live_on() -> None:
    """A rolling upgrade: two members whose state exchanges differ. Each sends the fixed header
    first, so both refuse the generation in one line and stay alive (before: gloo's allgather of
    rows of different lengths aborted the process with EnforceNotMet)."""
    (host,) = hosted_members(lambda port: on_loopback(2, 1, 2, 3.0)(port)[:1])
    other = _NextVersion(ClusterSettings("127.0.0.1", host.s.port, "127.0.0.2", 1, 2, 3.0))
    members = [host, other]
    params = init_params(GPT(CFG).table, 0)

    def run(i: int) -> None:
        engine = LocalEngine(
            GPT(CFG), AdamWConfig(warmup_steps=0), lambda _s: batch(i, 2), exchange=members[i]
        )
        engine.load_state(params, np.zeros_like(params), np.zeros_like(params))
        for _ in range(600):
            if members[i].ready(engine, State()) or members[i].state.startswith("refused"):
                break
            threading.Event().wait(0.1)
        state = members[i].state
        assert members[i].group is None and state.startswith("refused generation 1: "), state
        assert "members run different versions (state exchange protocol and row length by rank: [[" in state
        assert f"[{STATE_PROTOCOL}, " in state and f"[{STATE_PROTOCOL + 1}, " in state
        assert state.endswith("run the same crystalline version on every member")

    in_threads(members, run)


@pytest.mark.parametrize("pair_shrinks", [False, True], ids=["pair", "host-left-alone"])
def test_a_paused_member_of_an_older_lineage_does_not_overwrite_the_group_that_trained_together(
    caplog: pytest.LogCaptureFixture, pair_shrinks: bool
) -> None:
    """Three members step to 3; member 2 is paused while the host and member 1 are restarted
    from a checkpoint without history (lineage 0: a new lineage once they agree) and step 10
    together. Member 2 resumes with the first, older lineage: the group takes the pair's state
    (they are the incumbents), not member 2's (before: the oldest lineage won and the pair's 10
    steps were replaced by step 3; review3 finding 2). With ``pair_shrinks`` member 1 dies first
    and the host steps on alone: still the incumbent, its state wins (before: a member alone
    was no incumbent, and member 2's step 3 replaced its 12; review5 finding 1)."""
    caplog.set_level(logging.INFO, logger="crystalline.cluster")
    params = init_params(GPT(CFG).table, 0)
    members = hosted_members(on_loopback(3, 1, 3, 3.0))

    def engine_of(m: ClusterMember, i: int) -> LocalEngine:
        return LocalEngine(GPT(CFG), AdamWConfig(warmup_steps=0), lambda _s: batch(i, 2), exchange=m)

    engines = [engine_of(m, i) for i, m in enumerate(members)]
    states = [State(), State(), State()]
    paused = members[2]
    pair: list[ClusterMember] = []
    try:

        def first(i: int) -> None:
            engines[i].load_state(params, np.zeros_like(params), np.zeros_like(params))
            join(members[i], engines[i], states[i])
            for _ in range(3):
                trained(members[i], engines[i], states[i])

        in_threads(members, first, close=False)
        old_lineage = paused.lineage
        checkpoint = [x.copy() for x in (engines[0].params(), *engines[0].moments())]
        members[1].close()
        host_gone(members[0])
        until(lambda: paused.membership.unreachable(), lambda: "member 2 never saw the host go", 60)
        assert not paused.ready(engines[2], states[2]) and paused.leave()
        pair = [ClusterMember(members[0].s), ClusterMember(members[1].s)]
        pair_engines = [engine_of(m, i) for i, m in enumerate(pair)]
        pair_states = [State(step=3), State(step=3)]

        def together(i: int) -> None:
            pair_engines[i].load_state(*checkpoint)
            join(pair[i], pair_engines[i], pair_states[i])
            for _ in range(10):
                trained(pair[i], pair_engines[i], pair_states[i])

        in_threads(pair, together, close=False)
        assert pair[0].lineage == pair[1].lineage != old_lineage and pair[0].incumbent
        trio = [*pair, paused]
        trio_engines, trio_states = [*pair_engines, engines[2]], [*pair_states, states[2]]
        if pair_shrinks:  # member 1 dies; the host notices and steps on alone
            pair[1].close()
            with contextlib.suppress(StepAbandoned):
                trained(pair[0], pair_engines[0], pair_states[0])
            join(pair[0], pair_engines[0], pair_states[0])
            for _ in range(2):
                trained(pair[0], pair_engines[0], pair_states[0])
            assert pair[0].world == 1 and pair[0].incumbent
            del trio[1], trio_engines[1], trio_states[1]
        kept = (pair_states[0].step, pair[0].digest)
        paused.rejoin()

        def three() -> bool:  # each has read it (one that has not would step on in its pair)
            generations = [m.membership.generation for m in trio]  # each a tuple, set whole
            return all(g is not None and len(g[1]) == len(trio) for g in generations)

        until(three, lambda: f"no generation of {len(trio)} within 60 s", 60)
        after: list[tuple[int, str | None]] = [(0, None)] * len(trio)

        def reunited(i: int) -> None:
            join(trio[i], trio_engines[i], trio_states[i])
            after[i] = (trio_states[i].step, trio[i].digest)

        in_threads(trio, reunited, close=False)
        assert after == [kept] * len(trio) and {m.lineage for m in trio} == {pair[0].lineage}
        assert [m.status()["replaced"] for m in trio] == [None] * (len(trio) - 1) + [
            {"step": 3, "by_step": kept[0], "lineage": old_lineage},
        ]
    finally:
        for m in [paused, *pair[::-1]]:
            m.close()
