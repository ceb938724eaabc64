"""One machine's seat in a cluster of daemons: the inter-node allreduce of hierarchical data
parallelism, on torch.distributed's gloo backend (imported only with ``--cluster``).

On each machine node zero sums its workers' gradients in shared memory as before; then
``exchange`` (the engine's one hook, after the local reduce and before the optimizer) allreduces
that machine's token-weighted gradient with the other machines', so every member applies the
same mean gradient of the global batch (the sum of the local ones) and publishes the same
parameters (``digest``).

Membership, on c10d's TCPStore at ``--cluster HOST:PORT`` (hosted by the member whose
``--cluster-address`` is HOST: the store on a private loopback port, ``rendezvous_guard`` on
HOST:PORT in front of it): a background thread registers (a number from the store's
counter ``seq``), beats (``hb/<n>``) and publishes what status shows (``info/<n>``). On the
hosting member the same thread coordinates: a member whose beat has not moved for
``timeout_s`` is dropped (``dead/<n>``), a member that left says so (``left``), a collective
that failed is reported (``fail/<g>``); each change, with at least MIN members, publishes
generation ``g`` (``gen/<g>``: the members in rank order, at most MAX; then the counter ``gen``).
torch.distributed cannot shrink a process group, so each generation is a new gloo group on the
store prefix ``g<g>/``, formed within the cluster's deadline (``_form``) and at most once per
member (one that failed here waits for the next; status says ``forming generation g`` before
forming blocks), and before its first step the group agrees on the state: the member
``state_source`` picks (the group that held it, else the oldest lineage, then the highest step)
broadcasts its parameters, moments and moving average, so a member that joins or comes back,
a restarted host too, starts from the current state and a step some members published and
others did not is settled. A new store's first generation waits one timeout (or for MAX).
A member that cannot reach the store (cut off, or the host is gone) pauses and says so,
registers anew once it answers, and is brought up to date by the next generation. A member
paused by request (``leave``) says so in its next allreduce, so every member ends the
generation after that step, then tells the store it left; ``rejoin`` registers it anew.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist

from ..exit_status import one_line
from .cluster_config import ClusterSettings, ClusterUnavailable
from .engine import StepAbandoned, StepEngine
from .rendezvous_guard import HANDSHAKE, RendezvousGuard, host_store

log = logging.getLogger("crystalline.cluster")

RECENT_DIGESTS = 64
ARRIVAL_POLL_S = 0.2  # forming a generation: how often the wait for its members asks why to go on
ARRIVAL_LOOK_S = 0.05  # and how often it looks whether they are here
GLOO_CONNECT_WAITS = 5  # gloo's pair waits this many times the group's timeout to connect
FRESH = 2**62  # a state no group has agreed on yet ranks after every lineage (state_source)
LONE_START_TIMEOUTS = 6  # a lone start counts from its checkpoint's step this many timeouts at most
STORE_ERRORS = (RuntimeError, OSError, ValueError)  # DistStoreError/DistNetworkError are RuntimeErrors
# cut off: each try to reach the rendezvous point again waits this share of the cluster's deadline
# (a second at least, the deadline at most): a slow link still gets through, and a stop then waits
# no longer than the try in hand
RECONNECT_SHARE = 0.2


class TrainerState(Protocol):
    step: int
    tokens: int
    skipped_steps: int


def digest(params: np.ndarray, step: int) -> str:
    """The published parameters and their step, hashed (equal on every member after a step)."""
    h = hashlib.sha256(np.ascontiguousarray(params).tobytes())
    h.update(str(step).encode())
    return h.hexdigest()[:16]


def ring_wire_bytes(payload: int, members: int) -> int:
    """Bytes one member sends in a ring allreduce of ``payload`` bytes: reduce-scatter plus
    all-gather, each (n-1)/n of the payload."""
    return 0 if members < 2 else 2 * (members - 1) * payload // members


class Membership:
    """The background thread: registration, heartbeat, info, and (on the host) coordination."""

    def __init__(self, settings: ClusterSettings, info: Callable[[], dict[str, Any]]) -> None:
        self.s = settings
        self.info = info
        self.tick_s = max(0.1, settings.timeout_s / 10)
        self.reconnect_s = min(settings.timeout_s, max(1.0, settings.timeout_s * RECONNECT_SHARE))
        self.lock = threading.Lock()
        self.number: int | None = None
        self.registration = 0  # moves each time this member registers (again)
        self.generation: tuple[int, list[dict[str, Any]]] | None = None
        self.members: list[dict[str, Any]] = []  # the current generation's, with their info
        self.cut_off: str | None = None
        self.answered = time.monotonic()  # when the store last answered a whole tick
        self.failed: set[int] = set()  # generations whose collective failed here, to report
        self.leaving = False  # closing: say so and end the thread
        self.away = False  # left by request (crystalline pause) until rejoin()
        self.leaves = 0  # leave() calls; the thread tells the store of each (``told``), even
        self.told = 0  # when rejoin() came before its tick: the next registration is a new number
        self._stop = threading.Event()  # ends the thread at once; leaving, after telling the store
        self._server: dist.TCPStore | None = None
        self.guard: RendezvousGuard | None = None
        if settings.hosts_store:  # the server lives as long as this process
            self._host()
        self._coordinator = Coordinator(settings) if settings.hosts_store else None
        self._thread = threading.Thread(target=self._run, name="cluster-membership", daemon=True)
        self._thread.start()

    def _host(self) -> None:
        """c10d's store on a private loopback port, and the guard on the public HOST:PORT in
        front of it (``workers/rendezvous_guard.py``); then a real client through the guard, so
        a torch whose client opens differently fails here, in one line."""
        where = f"{self.s.host}:{self.s.port}"
        try:  # OSError: the port is taken; RuntimeError: the store or the client through the guard
            self._server, self.guard = host_store((self.s.host, self.s.port), self.s.timeout_s)
            self.connect()
        except (OSError, RuntimeError) as exc:
            why = one_line(exc)[:200]
            if self.guard is not None:
                self.guard.close()
                if self.guard.refused:
                    why = (
                        f"the guard refused torch {torch.__version__}'s own TCPStore client "
                        f"({self.guard.last_refusal}): its handshake is not c10d's {HANDSHAKE.hex(' ')}"
                    )
            raise ClusterUnavailable(f"cannot host the rendezvous point {where}: {why}") from None
        store_port = self.guard.upstream[1]
        log.info("rendezvous point %s: c10d's store on 127.0.0.1:%d behind the guard", where, store_port)

    def connect(self, within_s: float | None = None) -> dist.TCPStore:
        """A client of the rendezvous point, its calls bounded by the cluster's deadline; the
        connection itself waited for ``within_s`` at most (default: that deadline)."""
        client = dist.TCPStore(
            self.s.host,
            self.s.port,
            None,
            False,
            timeout=timedelta(seconds=self.s.timeout_s if within_s is None else within_s),
            wait_for_workers=False,
            use_libuv=False,
        )
        if within_s is not None:
            client.set_timeout(timedelta(seconds=self.s.timeout_s))
        return client

    def _run(self) -> None:
        client: dist.TCPStore | None = None
        registered = False
        beat = 0
        while not self._stop.wait(self.tick_s) or self.leaving:
            try:
                if client is None:
                    if self.leaving:  # a new connection holds no number to tell the store of
                        return
                    # cut off: tries of a fifth of the deadline, so a stop never waits one out
                    within = None if self.cut_off is None else self.reconnect_s
                    client, registered = self.connect(within), False
                with self.lock:
                    away, leaves = self.away, self.leaves
                if registered and (leaves != self.told or self.leaving):  # the coordinator drops it at once
                    client.set(f"hb/{self.number}", "left")
                    registered = False
                    log.info("told the cluster that member %s left", self.number)
                self.told = leaves  # a leave while not registered: the store had no number to drop
                if self.leaving:
                    return
                if away:
                    if self._coordinator is not None:  # the store's host keeps coordinating
                        self._coordinator.tick(client)
                    self.answered = time.monotonic()
                    continue
                if not registered:
                    self._register(client)
                    registered = True
                assert self.number is not None
                beat += 1
                client.set(f"hb/{self.number}", str(beat))
                client.set(f"info/{self.number}", json.dumps(self.info()))
                if client.check([f"dead/{self.number}"]):
                    log.warning("the cluster dropped this member (%s): registering again", self.number)
                    client = None
                    continue
                with self.lock:
                    failed, self.failed = self.failed, set()
                for g in failed:
                    client.add(f"fail/{g}", 1)
                if self._coordinator is not None:
                    self._coordinator.tick(client)
                self._follow(client)
                self.answered = time.monotonic()
            except STORE_ERRORS as exc:
                client = None
                with self.lock:
                    if self.cut_off is None:
                        log.warning(
                            "cut off from the rendezvous point %s:%d (%s): paused until it answers",
                            self.s.host, self.s.port, one_line(exc)[:200],
                        )  # fmt: skip
                    self.cut_off = f"cut off from the rendezvous point {self.s.host}:{self.s.port}"

    def _register(self, client: dist.TCPStore) -> None:
        number = int(client.add("seq", 1))
        client.set(f"hb/{number}", "0")
        with self.lock:
            self.number = number
            self.registration += 1
            self.generation = None
            if self.cut_off is not None:
                log.info("the rendezvous point answers again: registered as member %d", number)
            self.cut_off = None
        log.info("registered with the cluster at %s:%d as member %d", self.s.host, self.s.port, number)

    def _follow(self, client: dist.TCPStore) -> None:
        """Read the newest generation and the info of its members."""
        g = int(client.add("gen", 0))
        with self.lock:
            current = self.generation
        if g and (current is None or current[0] != g):
            members = json.loads(client.get(f"gen/{g}"))["members"]
            with self.lock:
                if self.away or self.leaves != self.told:  # left meanwhile: none until it registers again
                    return
                self.generation = (g, members)
            current = (g, members)
        if current is None:
            return
        shown = []
        for m in current[1]:
            key = f"info/{m['number']}"
            info = json.loads(client.get(key)) if client.check([key]) else {}
            shown.append({**m, **info})
        with self.lock:
            self.members = shown

    def unreachable(self) -> str | None:
        """Why the rendezvous point counts as out of reach (None: it answers). A store call on a
        link that went dead may block past its timeout, so a silent thread counts too."""
        with self.lock:
            if self.cut_off is not None:
                return self.cut_off
        silent = time.monotonic() - self.answered
        if silent > self.s.timeout_s:
            return f"cut off from the rendezvous point {self.s.host}:{self.s.port} ({silent:.0f} s silent)"
        return None

    def leave(self) -> None:
        """Left by request: the thread tells the store (``hb/<n>`` ``left``) and stops beating;
        the store's host, if this is it, goes on coordinating."""
        with self.lock:
            self.away, self.generation = True, None
            self.leaves += 1

    def rejoin(self) -> None:
        """Register again (a new member number) at the next tick, after telling the store of
        the leave if it has not yet."""
        with self.lock:
            self.away = False

    def report_failure(self, generation: int) -> None:
        with self.lock:
            self.failed.add(generation)

    def close(self) -> None:
        """The thread, woken for its last tick at once (not a ``tick_s`` later), tells the store
        that this member leaves and ends. Cut off
        from the rendezvous point (the host is gone, or the link), there is no one to tell: the
        thread ends at once, or after the try to reach it that it is in (``reconnect_s``). Not yet
        known to be cut off (a link gone silent: a store call in hand waits out the deadline), it
        waits for the thread's last tick as for any other."""
        self.leaving = True
        self._stop.set()
        cut_off = self.unreachable()
        if cut_off is None:
            self._thread.join(timeout=self.tick_s * 3 + self.s.timeout_s)
        else:
            log.info("%s: stopping without telling it that this member leaves", cut_off)
        self._thread.join(timeout=self.s.timeout_s)
        if self.guard is not None:
            self.guard.close()


class Arrival:
    """This member's arrival at generation ``g``'s group: it said it is here (``g<g>/here/<rank>``)
    and waits for the others, each wait bounded."""

    def __init__(self, generation: int, store: dist.TCPStore, rank: int) -> None:
        self.generation, self.store = generation, store
        self.prefixed = dist.PrefixStore(f"g{generation}/", store)
        self.prefixed.set(f"here/{rank}", "1")
        self.said: dict[int, str] = {}  # rank -> the step it last said it is finishing its interval at
        self.moved = 0.0  # when one of them last said a newer step
        self.opened = time.monotonic()  # the others are waited for ``timeout_s`` from here

    def missing(self, world: int, wait_s: float) -> list[int]:
        """The ranks not here after waiting up to ``wait_s`` for all of them, asked every
        ``ARRIVAL_LOOK_S`` (c10d's own wait logs each timeout: this one is asked every few)."""
        keys = [f"here/{r}" for r in range(world)]
        deadline = time.monotonic() + wait_s
        while not self.prefixed.check(keys):
            if time.monotonic() >= deadline:
                return [r for r in range(world) if not self.prefixed.check([f"here/{r}"])]
            time.sleep(ARRIVAL_LOOK_S)
        return []

    def finishing(self, missing: list[int], timeout_s: float) -> bool:
        """Whether one of the ``missing`` ranks said within ``timeout_s`` that it is on its way
        (stepping toward the outer step it finishes first, at a newer step each time)."""
        now = time.monotonic()
        for r in missing:
            key = f"finishing/{r}"
            said = self.prefixed.get(key).decode() if self.prefixed.check([key]) else ""
            if said and said != self.said.get(r):
                self.said[r], self.moved = said, now
        return bool(self.said) and now - self.moved < timeout_s


class Coordinator:
    """On the member that hosts the store: who is alive, and the generations.

    A new generation goes out when the living members changed and stayed so for a tick (members
    arriving together make one generation, not one each), or when the current generation's
    collective failed, but not before every member has given up its attempts at the previous
    ones (twice the timeout after publishing): a member still blocked in forming an older
    generation would otherwise make each newer one time out in turn. The store's first
    generation waits one timeout after the store started, unless MAX members registered: a
    restarted host's survivors register again meanwhile, and the host does not train alone.
    Fewer than MIN living members (settled) publish nothing; the log says so once per change."""

    def __init__(self, settings: ClusterSettings) -> None:
        self.s = settings
        self.seen: dict[int, tuple[str, float]] = {}  # number -> (last beat, when it moved)
        self.dead: set[int] = set()
        self.published: list[int] = []
        self.published_at = 0.0
        self.last_alive: list[int] = []
        self.too_few: list[int] | None = None  # the living members last logged as fewer than MIN
        self.generation = 0
        self.opened = time.monotonic()  # the store's start: see tick's grace

    def tick(self, client: dist.TCPStore) -> None:
        now = time.monotonic()
        for n in range(1, int(client.add("seq", 0)) + 1):
            if n in self.dead:
                continue
            beat = client.get(f"hb/{n}").decode() if client.check([f"hb/{n}"]) else ""
            if n not in self.seen or self.seen[n][0] != beat:
                self.seen[n] = (beat, now)
            last, moved = self.seen[n]
            if last == "left" or now - moved > self.s.timeout_s:
                why = "left" if last == "left" else f"silent for {now - moved:.1f} s"
                log.warning("cluster member %d %s: dropped", n, why)
                self.dead.add(n)
                client.set(f"dead/{n}", why)
        alive = sorted(n for n in self.seen if n not in self.dead)[: self.s.max_nodes]
        settled, self.last_alive = alive == self.last_alive, alive
        failed = (
            self.generation > 0
            and now - self.published_at > 2 * self.s.timeout_s
            and client.check([f"fail/{self.generation}"])
        )
        # a new store's first generation waits a timeout (or for MAX members): members of the
        # store it replaces (its host restarted) register first, rather than the host alone
        if not self.generation and now - self.opened < self.s.timeout_s and len(alive) < self.s.max_nodes:
            return
        if len(alive) >= self.s.min_nodes and settled and (alive != self.published or failed):
            self.generation += 1
            members = []
            for n in alive:
                info = json.loads(client.get(f"info/{n}")) if client.check([f"info/{n}"]) else {}
                members.append({"number": n, "address": info.get("address", "?")})
            client.set(f"gen/{self.generation}", json.dumps({"members": members}))
            client.add("gen", 1)
            self.published, self.published_at, self.too_few = alive, now, None
            log.info(
                "cluster generation %d: members %s%s",
                self.generation, alive, " (a collective failed)" if failed else "",
            )  # fmt: skip
        elif settled and len(alive) < self.s.min_nodes and alive != self.too_few:  # once per change
            self.too_few = alive
            log.info(
                "cluster members %s: fewer than MIN %d (--cluster-nodes), no generation until more register",
                alive, self.s.min_nodes,
            )  # fmt: skip


#: What the state buffers members exchange depend on, besides the step counters gathered
#: before them: the parameters per part, the number of parts (parameters, two moments, the
#: moving average with --ema-decay, DiLoCo's anchor and momentum) and --cluster-outer-every
#: (whether and when the outer step's allreduce runs).
LAYOUT = ("parameters", "state parts (EMA, DiLoCo)", "outer-every")


#: The state exchange's version, in the fixed header every member sends first (two int64: this
#: and the length of its row). Raise it whenever what follows the header changes: gloo aborts
#: the process on an allgather of rows of different lengths, so members of different versions
#: must find out from a header whose size never changes.
STATE_PROTOCOL = 3


class StateMismatch(RuntimeError):
    """Members whose state buffers cannot match: the group is refused, not re-formed."""


def layout_disagreement(layouts: list[list[int]]) -> str | None:
    """One line naming what the members' state layouts (one :data:`LAYOUT` row per rank)
    disagree on, or None when they all match."""
    differ = [
        f"{name} {[row[i] for row in layouts]}"
        for i, name in enumerate(LAYOUT)
        if len({row[i] for row in layouts}) > 1
    ]
    if not differ:
        return None
    return (
        f"members' training settings differ (by rank: {'; '.join(differ)}): "
        "give every member the same model, ema-decay and cluster-outer-every"
    )


def _replaced_why(own: int, lineage: int, alone_since: int | None) -> str:
    """What the received state replaced, for the log line: a history of this member's own."""
    if own and own != lineage:
        return ", of a lineage of its own: replaced"
    return f", started alone from step {alone_since}: replaced" if alone_since is not None else ""


def state_source(held: list[tuple[int, int, int, int]]) -> int:
    """The rank whose state a new group takes, of each rank's (lineage, step, alone since,
    incumbent). Incumbents (1) are the members of a group of two or more formed on this store
    that hold its state, also once they go on alone (a member registered anew, after a pause, a
    cut or a restart, is not one): when there are any, the state is theirs or, of the same
    lineage, a newer step's (a newer checkpoint of that history; a lone start's counted as of
    the step it started alone from); a member of another lineage (one paused or cut off while
    they went on, a restart from a checkpoint without history) never overwrites them. With
    none (a new store's first generation, or a lone start): the oldest lineage,
    then the newest step, then the lowest rank. A lineage is the state's history since a group
    first agreed on a process's own state (parameters it made at start; 0 until then), named
    by when that was (ms); it passes with the state and is kept with the checkpoint
    (``history``). A member that started alone from its checkpoint (its first group one member:
    the first generation's wait passed without its peers) counts as of the step it started
    alone from (``alone since``, -1 for none) for ``LONE_START_TIMEOUTS`` timeouts at most
    (``_lone_start``): a restarted host that stepped alone just before its old peers came back
    does not beat the state they carried on past its checkpoint, while one that trained alone
    longer keeps what it trained if that is the newer step. Within a lineage (a partition
    healed, a member restarted) the newest step wins: the most training since the history
    they share."""

    def newest(r: int) -> tuple[int, int, int]:  # a lone start counts as of the step it started from
        _, step, alone, _ = held[r]
        return (-(alone if alone >= 0 else step), -step, r)

    incumbents = [r for r, x in enumerate(held) if x[3]]
    if incumbents:
        ours = held[incumbents[0]][0]
        return min((r for r, x in enumerate(held) if x[0] == ours), key=newest)
    return min(range(len(held)), key=lambda r: (held[r][0] or FRESH, *newest(r)))


class ClusterMember:
    """What control and the engine use: ``ready`` between steps, ``exchange`` inside one."""

    protocol = STATE_PROTOCOL  # the state exchange's version this member speaks

    def __init__(self, settings: ClusterSettings) -> None:
        self.s = settings
        self.group: Any = None  # the gloo group of ``group_generation``
        self.group_generation = 0
        self.registration = 0
        self.rank = -1
        self.world = 0
        self.state = "joining"
        self.step = 0
        self.last_ms = 0.0
        self.last_bytes = 0
        self.payload_bytes = 0
        self.share = 0.0  # this member's tokens / the global batch's, last step
        self.reforms = 0
        self.forming = 0  # the generation ``state`` says this member is forming (said, then formed)
        # a generation not formed again: refused (the members' settings differ, see
        # layout_disagreement), or its group failed here (the coordinator publishes the next)
        self.given_up = -1
        self.leaving = False  # crystalline pause: the next allreduce tells the others
        self.left = False  # and then it has left, until resume
        self.ended = 0  # the newest generation that ended because a member left
        self.lineage = 0  # the state's history (state_source): 0 until a group agrees on it
        self.alone_since: int | None = None  # a lone start's step (state_source), until a group agrees
        self.alone_at = 0.0  # when it began (monotonic): it lapses LONE_START_TIMEOUTS later
        self.restored = False  # the state is a checkpoint's, not yet agreed on by a group
        self.incumbent = False  # in the last group of 2+ on this store, holding its state (state_source)
        self.digest: str | None = None
        # the digests of the last steps, so members can be compared at a step they all passed
        self.recent: deque[tuple[int, str]] = deque(maxlen=RECENT_DIGESTS)
        self._buffer: np.ndarray | None = None
        self.outer_done = -1  # the step of the last outer step (DiLoCo)
        self.local_tokens = 0  # tokens since it
        self.anchor: np.ndarray | None = None  # DiLoCo: the parameters of the last outer step
        self.velocity: np.ndarray | None = None  # and the outer momentum
        self.interval_start: int | None = None  # DiLoCo: the step of the anchor a group agreed on
        self.discarded = 0  # DiLoCo: local steps of this member replaced by a new group's state
        self.replaced: dict[str, int] | None = None  # this member's own lineage, replaced: where
        self.group_numbers: list[int] = []  # the member numbers of ``group_generation``
        self._arrival: Arrival | None = None  # the generation this member said it is here for
        self._finishing: tuple[int, int] = (0, -1)  # (generation, step) last said while finishing
        self.join_seen = 0  # DiLoCo: a generation adding members to this group, seen here
        # asked between the looks for a generation's members (control serves its requests);
        # True: the daemon stops, and the generation is waited for no more
        self.while_forming: Callable[[], bool] = lambda: False
        torch.set_num_threads(1)
        self.membership = Membership(settings, self._info)

    def _info(self) -> dict[str, Any]:
        return {
            "address": self.s.address,
            "pid": os.getpid(),
            "rank": self.rank,
            "step": self.step,
            "state": self.state,
            "allreduce_ms": round(self.last_ms, 3),
            "allreduce_bytes": self.last_bytes,
            "data_share": round(self.share, 4),
            "params_digest": self.digest,
        }

    # ---- between steps ------------------------------------------------------------------------
    def ready(self, engine: StepEngine, st: TrainerState) -> bool:
        """True when this member may step: it is in the newest generation's group and holds
        the group's state. Otherwise it tries to get there (forming the group, receiving the
        state) and says in ``state`` why not."""
        m = self.membership
        cut_off = m.unreachable()
        with m.lock:
            generation, number, registration = m.generation, m.number, m.registration
        if cut_off is not None:
            self._drop_group(f"paused: {cut_off}")
            return False
        if registration != self.registration:  # registered anew: any group is gone
            self._registered_anew(registration)
        if generation is None or all(x["number"] != number for x in generation[1]):
            self.state = (
                "waiting to join" if generation is None else f"waiting for generation {generation[0] + 1}"
            )
            return False
        g, members = generation
        if g <= self.ended:  # every member of it ended it at the same step: no failure to wait for
            self.state = f"waiting for generation {g + 1}: a member left generation {g}"
            return False
        if self.group is not None and g == self.group_generation:
            return True
        numbers = [x["number"] for x in members]
        if self.group is not None and self._finishing_interval(g, numbers, numbers.index(number), st.step):
            return True
        if g == self.given_up:  # state says why (refused, or failed here)
            return False
        if self.forming != g:  # say so first: control publishes it before forming blocks
            self._drop_group(f"forming generation {g}")
            self.forming = g
            return False
        try:
            if not self._form(g, numbers.index(number), numbers):
                return False
            self._take_state(engine, st)
        except StateMismatch as exc:  # every member saw the same layouts: all refuse
            log.error("generation %d refused: %s", g, exc)
            self._drop_group(f"refused generation {g}: {exc}")
            self.given_up = g
            return False
        except RuntimeError as exc:
            why = one_line(exc)[:300]
            log.warning("generation %d: %s", g, why)
            self._give_up(g, f"generation {g} failed to form ({why}); waiting for the next")
            return False
        self.state = "leaving by request after the next allreduce" if self.leaving else "training"
        self.reforms += 1
        return True

    def _registered_anew(self, registration: int) -> None:
        """Any group is gone, and what this member ended or gave up counts no more: its new
        number is only in newer generations, or the store is new (the hosting member restarted)
        and counts generations from 1 again."""
        self.registration = registration
        self.ended, self.given_up = 0, -1
        self.incumbent = False  # a new number (or a new store): its state is no group's here
        self._drop_group("joining")

    def _drop_group(self, state: str) -> None:
        self.group = None
        self.state = state
        self.forming = 0
        self._arrival = None
        self.join_seen = 0

    def _finishing_interval(self, g: int, numbers: list[int], rank: int, step: int) -> bool:
        """DiLoCo: True while this member goes on in its group until the next outer step, because
        generation ``g`` only adds members to it (a join, a resume): every member of the group
        does the same (none dropped out), so the interval's outer step is taken together and no
        member's local steps are lost. That outer step's allreduce says a member saw the join,
        so all end the group after the same outer step (members that see it at different steps
        agree there: none leaves a group another still steps in). Its joiners wait for it
        (``_form``), told each step
        (``g<g>/finishing/<rank>``) that this member is alive and on its way. A generation that
        drops a member (a death, a leave) is formed at once, as it is without DiLoCo. A member
        paused meanwhile goes on too: the interval's outer step says it leaves."""
        if not self.s.outer_every or not set(self.group_numbers) <= set(numbers):
            return False
        self.join_seen = g  # the next outer step's allreduce says so: every member ends the group there
        self.state = f"training: generation {g} (members joining) from the next outer step"
        if self._finishing != (g, step):
            self._finishing = (g, step)
            with contextlib.suppress(*STORE_ERRORS):  # out of reach: the next ready() pauses (unreachable)
                dist.PrefixStore(f"g{g}/", self._store).set(f"finishing/{rank}", str(step))
        return True

    def _give_up(self, g: int, state: str) -> None:
        """Generation ``g`` failed here (forming it, or a collective): it is not formed again
        (its keys on the store are spent), and the coordinator, told, publishes the next."""
        self._drop_group(state)
        self.given_up = g
        self.membership.report_failure(g)

    def _form(self, g: int, rank: int, numbers: list[int]) -> bool:
        """The gloo group of generation ``g``, every wait in it bounded by the cluster's deadline;
        True once formed. First every member says it is here (``g<g>/here/<rank>``, waited for
        ``timeout_s``); a member not here yet that says it is finishing its interval
        (``_finishing_interval``) is waited for (False: ``ready`` is asked again) as long as it
        says so for a newer step within ``timeout_s``. Every ``ARRIVAL_POLL_S`` of that wait
        control serves its requests (``while_forming``), and the wait ends (False) once the
        daemon stops or a newer generation is out (a member of this one left or died since it
        was published): neither waits out the timeout for a member that will not come. Then
        gloo connects them. gloo waits five
        times its timeout for a connection (its "initial connect"), so the group is made with a
        fifth of the deadline and then given the whole deadline for its collectives: a member
        that died since the generation was published (a kill) costs ``timeout_s``, not five of it."""
        world = len(numbers)
        if self._arrival is None or self._arrival.generation != g:
            self._arrival = Arrival(g, self.membership.connect(), rank)
        arrival = self._arrival
        while missing := arrival.missing(world, ARRIVAL_POLL_S):
            if arrival.finishing(missing, self.s.timeout_s):
                self.state = f"forming generation {g}: rank(s) {missing} finish their interval first"
                return False
            if self.while_forming() or self._superseded(g):
                return False
            if time.monotonic() - arrival.opened >= self.s.timeout_s:
                raise RuntimeError(f"rank(s) {missing} did not come within {self.s.timeout_s:g} s")
        options = dist.ProcessGroupGloo._Options()  # type: ignore[attr-defined]
        options._timeout = timedelta(seconds=self.s.timeout_s / GLOO_CONNECT_WAITS)
        options._devices = [dist.ProcessGroupGloo.create_device(hostname=self.s.address)]
        self.group = dist.ProcessGroupGloo(arrival.prefixed, rank, world, options)
        self.group._set_default_timeout(timedelta(seconds=self.s.timeout_s))
        self._store = arrival.store  # the group's store client lives as long as the group
        self.group_generation, self.rank, self.world, self.group_numbers = g, rank, world, numbers
        self._arrival = None
        log.info("generation %d formed: rank %d of %d", g, rank, world)
        return True

    def _superseded(self, g: int) -> bool:
        """Whether the newest generation the membership knows is no longer ``g``."""
        with self.membership.lock:
            newest = self.membership.generation
        return newest is None or newest[0] != g

    def _take_state(self, engine: StepEngine, st: TrainerState) -> None:
        """Agree on the state: the holder that ``state_source`` picks (the incumbents', else the
        oldest lineage, then the newest step) sends its parameters, moments and moving average;
        the others load them, its step and its lineage."""
        params = engine.params()
        m, v = engine.moments()
        ema = engine.ema()
        parts = [params, m, v] + ([ema] if ema is not None else [])
        # DiLoCo: the anchor and the outer momentum travel too (added below)
        layout = [params.size, len(parts) + (2 if self.s.outer_every else 0), self.s.outer_every]
        now_ms = round(time.time() * 1000)
        alone = self._lone_start()
        mine = torch.tensor(
            [st.step, st.tokens, st.skipped_steps, self.lineage, now_ms, alone, self.incumbent, *layout],
            dtype=torch.int64,
        )
        self._agree_on_protocol(len(mine))
        every = [torch.zeros(len(mine), dtype=torch.int64) for _ in range(self.world)]
        self.group.allgather([every], [mine]).wait()
        disagreement = layout_disagreement([[int(n) for n in x[7:]] for x in every])
        if disagreement is not None:  # the broadcast below would not match: refuse before it
            raise StateMismatch(disagreement)
        source = state_source([(int(x[3]), int(x[0]), int(x[5]), int(x[6])) for x in every])
        if self.s.outer_every:
            if self.anchor is None or self.velocity is None:
                self.anchor, self.velocity = params.copy(), np.zeros_like(params)
            parts += [self.anchor, self.velocity]
        buffer = torch.from_numpy(np.concatenate(parts))
        opts = dist.BroadcastOptions()
        opts.rootRank = source
        self.group.broadcast([buffer], opts).wait()
        held = buffer.numpy().reshape(len(parts), params.size)
        # a lineage starts (the source's clock) when a group first agrees on a process's own state
        own, self.lineage = self.lineage, int(every[source][3]) or int(every[source][4])
        if self.s.outer_every:
            self.anchor, self.velocity = held[-2].copy(), held[-1].copy()
            self.local_tokens = 0
        before = st.step
        # its own history gave way: a lineage of its own, or what it stepped since starting alone
        forked = own != self.lineage or self.alone_since is not None
        if self.rank != source:
            engine.load_state(held[0], held[1], held[2], held[3] if ema is not None else None)
            st.step, st.tokens, st.skipped_steps = (int(x) for x in every[source][:3])
            if forked:  # the digests it recorded are of a history now replaced
                self.recent.clear()
            if own and forked:
                self.replaced = {"step": before, "by_step": st.step, "lineage": own}
            if self.interval_start is not None and before > self.interval_start:
                self.discarded += before - self.interval_start  # its local steps since the last agreement
            log.info(
                "state of step %d received from rank %d (this member was at step %d%s)",
                st.step, source, before,
                _replaced_why(own, self.lineage, self.alone_since),
            )  # fmt: skip
        if self.world > 1:  # a group agreed on it: no longer a lone start's
            self.alone_since = None
        elif self.restored and self.alone_since is None:  # a lone start from its checkpoint
            self.alone_since, self.alone_at = st.step, time.monotonic()
        self.restored = False
        # a member of a group of two or more stays one of its incumbents while it goes on alone on
        # this store (its peers paused or died): registering anew (a pause, a cut, a restart) ends it
        self.incumbent = self.world > 1 or self.incumbent
        if self.s.outer_every:  # a state of step s holds its outer step: the next is the group's
            self.interval_start = self.outer_done = st.step
        self._finishing = (0, -1)  # what it said while finishing an interval was of its old group
        self.published(engine.params(), st.step)

    def _lone_start(self) -> int:
        """The step this member started alone from (``state_source``), -1 for none: once it has
        trained alone for ``LONE_START_TIMEOUTS`` timeouts, what it trained counts as its own."""
        if (
            self.alone_since is not None
            and time.monotonic() - self.alone_at > LONE_START_TIMEOUTS * self.s.timeout_s
        ):
            log.info(
                "alone since step %d for over %d timeouts: its steps count as they are",
                self.alone_since, LONE_START_TIMEOUTS,
            )  # fmt: skip
            self.alone_since = None
        return -1 if self.alone_since is None else self.alone_since

    def _agree_on_protocol(self, row: int) -> None:
        """The fixed header first (``STATE_PROTOCOL``, the row's length): StateMismatch in one
        line when members run different versions, before any collective whose size depends on it."""
        mine = torch.tensor([self.protocol, row], dtype=torch.int64)
        every = [torch.zeros(2, dtype=torch.int64) for _ in range(self.world)]
        self.group.allgather([every], [mine]).wait()
        if len({tuple(int(n) for n in x) for x in every}) > 1:
            by_rank = [[int(n) for n in x] for x in every]
            raise StateMismatch(
                f"members run different versions (state exchange protocol and row length by rank: "
                f"{by_rank}): run the same crystalline version on every member"
            )

    def history(self) -> dict[str, int | None]:
        """What a checkpoint keeps of the cluster: the state's lineage (``state_source``)."""
        return {"lineage": self.lineage}

    def restore_history(self, saved: dict[str, Any]) -> None:
        """The state was loaded from a checkpoint whose ``history()`` is ``saved`` ({} from a
        checkpoint written without --cluster: a lineage of its own then). ValueError in one line
        for a lineage that is not what ``history`` writes. Checkpoints of earlier versions also
        kept ``alone_since``: read and let go (a lone start is this process's, and bounded)."""
        lineage = saved.get("lineage", 0)
        if type(lineage) is not int or lineage < 0:
            raise ValueError(f"the checkpoint's cluster history is not a lineage: {saved!r}"[:300])
        self.lineage, self.alone_since, self.restored = lineage, None, True

    # ---- inside a step --------------------------------------------------------------------------
    def exchange(self, grad: np.ndarray, loss_sum: float, tokens: int, nbytes: int) -> tuple[float, int, int]:
        """Replace ``grad`` (this machine's mean gradient over its ``tokens``) in place by the
        mean over every member's tokens; return the global loss sum, tokens and bytes. StepAbandoned
        when the group broke (nothing of the step is published; the next generation settles)."""
        if self.group is None:
            raise StepAbandoned(f"no cluster group ({self.state})")
        if self.s.outer_every:  # DiLoCo: local steps; the outer step averages
            self.local_tokens += tokens
            return loss_sum, tokens, nbytes
        n = grad.size
        if self._buffer is None or self._buffer.size != n + 4:
            self._buffer = np.zeros(n + 4, dtype=np.float32)
        buf = self._buffer
        np.multiply(grad, np.float32(tokens), out=buf[:n])
        buf[n], buf[n + 1], buf[n + 2], buf[n + 3] = tokens, loss_sum, nbytes, self.leaving
        started = time.perf_counter()
        try:
            self.group.allreduce([torch.from_numpy(buf)]).wait()
        except RuntimeError as exc:
            g = self.group_generation
            self._give_up(g, f"allreduce of generation {g} failed; waiting for the next")
            raise StepAbandoned(f"allreduce failed: {one_line(exc)[:200]}") from None
        self.last_ms = (time.perf_counter() - started) * 1000
        self.payload_bytes = buf.nbytes
        self.last_bytes = ring_wire_bytes(buf.nbytes, self.world)
        total = float(buf[n])
        self.share = tokens / total if total > 0 else 0.0
        np.divide(buf[:n], np.float32(total), out=grad)
        self._end_if_left(buf[n + 3])
        return float(buf[n + 1]), round(total), round(float(buf[n + 2]))

    def _end_if_left(self, leaving: float, joining: float = 0.0) -> None:
        """After an allreduce: members that pause said so in it (its last number), so every
        member ends this generation after the same step and waits for the next, which the
        coordinator publishes as soon as they have told the store. DiLoCo's outer step also
        says whether members saw a generation that adds members (``_finishing_interval``):
        then too every member ends this one there, and forms that one."""
        if leaving <= 0 and joining <= 0:
            return
        g = self.ended = self.group_generation
        if leaving > 0:
            log.info("generation %d ends after this step: %d member(s) leave by request", g, round(leaving))
        else:
            log.info("generation %d ends after this outer step: members join", g)
        if self.leaving:  # its own flag: it has left (a resume right after it registers anew)
            self._left_by_request()
        else:
            why = "a member left" if leaving > 0 else "members join"
            self._drop_group(f"waiting for generation {g + 1}: {why} generation {g}")

    def after_step(self, engine: StepEngine, st: TrainerState) -> None:
        """Between steps: DiLoCo's outer step when one is due, then the digest of what this
        member serves."""
        due = self.s.outer_every and st.step > 0 and st.step % self.s.outer_every == 0
        if due and self.group is not None and self.outer_done != st.step:
            try:
                self._outer_step(engine, st.step)
            except RuntimeError as exc:
                g = self.group_generation
                log.warning("outer step %d failed: %s", st.step, one_line(exc)[:200])
                self._give_up(g, f"outer step of generation {g} failed; waiting for the next")
        self.published(engine.params(), st.step)

    def _outer_step(self, engine: StepEngine, step: int) -> None:
        """The members' token-weighted mean change since the anchor (the pseudo-gradient),
        applied to the anchor with Nesterov momentum; every member then holds the result."""
        assert self.anchor is not None and self.velocity is not None
        params = engine.params()
        n = params.size
        buf = np.empty(n + 3, dtype=np.float32)
        np.subtract(self.anchor, params, out=buf[:n])
        buf[:n] *= np.float32(self.local_tokens)
        buf[n], buf[n + 1], buf[n + 2] = self.local_tokens, self.leaving, self.join_seen > 0
        started = time.perf_counter()
        self.group.allreduce([torch.from_numpy(buf)]).wait()
        self.last_ms = (time.perf_counter() - started) * 1000
        self.payload_bytes = buf.nbytes
        self.last_bytes = ring_wire_bytes(buf.nbytes, self.world)
        total = float(buf[n])
        self.share = self.local_tokens / total if total > 0 else 0.0
        delta = buf[:n] / np.float32(total)
        mu, lr = np.float32(self.s.outer_momentum), np.float32(self.s.outer_lr)
        self.velocity *= mu
        self.velocity += delta
        self.anchor -= lr * (delta + mu * self.velocity)
        m, v = engine.moments()  # the inner optimizer's state stays each member's own
        engine.load_state(self.anchor, m, v, engine.ema())
        self.outer_done, self.local_tokens, self.interval_start = step, 0, step
        self._end_if_left(buf[n + 1], buf[n + 2])

    def published(self, params: np.ndarray, step: int) -> None:
        """After a step, or the group's state received: the digest of what this member now
        serves. State received at a step this member had recorded (its own step 0, a rejoin)
        replaces that step's digest."""
        self.step = step
        self.digest = digest(params, step)
        if self.recent and self.recent[-1][0] == step:
            self.recent.pop()
        self.recent.append((step, self.digest))

    # ---- pause and resume ---------------------------------------------------------------------
    def leave(self) -> bool:
        """``crystalline pause``: leave the cluster cleanly; True once left. While this member is
        in a group it takes one more step (with DiLoCo: up to the next outer step), whose
        allreduce tells the others, and every member ends the generation after that step (no
        collective waits for it, none fails); then the store hears that it left, the coordinator
        drops it at once and the others form the next generation without it. A generation with
        this member in it that is published but not yet formed here is formed first (the others
        are forming it: leaving at once would fail it), and its first allreduce tells them."""
        if self.left:
            return True
        if self.group is not None or self._due() is not None:
            self.leaving = True
            self.state = "leaving by request after the next allreduce"
            return False
        self._left_by_request()
        return True

    def _due(self) -> int | None:
        """The generation with this member in it that the others form or are about to (published,
        not formed here, neither ended nor given up), or None; None too while cut off."""
        m = self.membership
        cut_off = m.unreachable()
        with m.lock:
            generation, number, registration = m.generation, m.number, m.registration
        if cut_off is not None or generation is None or all(x["number"] != number for x in generation[1]):
            return None
        if registration != self.registration:
            self._registered_anew(registration)
        g = generation[0]
        return g if g > self.ended and g != self.given_up else None

    def _left_by_request(self) -> None:
        self.leaving, self.left = False, True
        self.membership.leave()
        self._drop_group("paused: left the cluster by request (resume rejoins)")
        log.info("left the cluster by request (paused)")

    def rejoin(self) -> None:
        """``crystalline resume``: register again; the next generation brings this member up
        to date (the newest state is sent to it before its first step). A leave not yet said in
        an allreduce is called off."""
        self.leaving = False
        if self.left:
            self.left = False
            self.membership.rejoin()
            self._drop_group("joining")
            log.info("rejoining the cluster (resumed)")

    # ---- status -----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        m = self.membership
        with m.lock:
            members, number, generation = list(m.members), m.number, m.generation
        return {
            "rendezvous": f"{self.s.host}:{self.s.port}",
            "address": self.s.address,
            "hosts_rendezvous": self.s.hosts_store,
            "member": number,
            "state": self.state,
            "generation": generation[0] if generation else None,
            "rank": self.rank if self.group is not None else None,
            "world": self.world if self.group is not None else 0,
            "nodes": {"min": self.s.min_nodes, "max": self.s.max_nodes},
            "outer_every": self.s.outer_every,
            "reforms": self.reforms,
            "lineage": self.lineage,  # ms of the state's first agreement (state_source); 0: none yet
            "replaced": self.replaced,  # {step, by_step, lineage}: its own history gave way, once
            "discarded_steps": self.discarded,  # DiLoCo: local steps lost to a re-formation
            # the hosting member: connections its rendezvous guard closed (garbage, silent, over the cap)
            "refused_connections": m.guard.refused if m.guard is not None else None,
            "guard": m.guard.health if m.guard is not None else None,  # ok / down: why
            "allreduce_payload_bytes": self.payload_bytes,
            "data_share": round(self.share, 4),
            "recent_digests": [list(x) for x in self.recent],
            "members": members,
        }

    def close(self) -> None:
        self.group = None
        self.membership.close()
