"""The supervisor's ring service with a real store, socket and segment: the batches of the same
steps are bit-identical across a restarted control and a restarted supervisor while documents
keep arriving, and a take that cannot be served ends at its deadline with the reason."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from crystalline.daemon.ring_service import RingClient, RingServer, ring_endpoint, ring_instance
from crystalline.daemon.visible_steps import BLOCK
from crystalline.shm.segments import list_segments
from crystalline.tokens.token_store import PendingDocument, TokenStore
from crystalline.workers.batch_ring import RingTimeout
from crystalline.workers.checkpoint import MANIFEST
from crystalline.workers.engine import EngineStopped
from crystalline.workers.train_config import TrainConfig

pytestmark = pytest.mark.timeout(120)

CONFIG = TrainConfig(batch_size=4, seq_len=8, seed=5, val_fraction=0.0)
GEOMETRY = {"batch_size": 4, "seq_len": 8, "vocab_size": 256, "slots": 3}


@pytest.fixture
def dirs() -> Iterator[tuple[Path, Path]]:
    with tempfile.TemporaryDirectory(prefix="rs-", dir="/tmp") as d:  # AF_UNIX path limit
        state, run = Path(d) / "state", Path(d) / "run"
        state.mkdir()
        run.mkdir()
        yield state, run


def add(store: TokenStore, name: str, value: int) -> None:
    ids = np.full(40, value, dtype=np.uint16)
    ids[::7] = value + 1  # not all one value, so windows at different starts differ
    store.append([PendingDocument(name, name, f"/s/{name}", "train", ids)])


def take_all(client: RingClient, steps: range) -> dict[int, bytes]:
    out = {}
    for step in steps:
        taken = client.take(step, timeout=30)
        out[step] = client.slots[taken.slot].tobytes()
        client.release(taken.slot)
    return out


def test_same_steps_same_batches_across_control_and_supervisor_restarts(dirs: tuple[Path, Path]) -> None:
    state, run = dirs
    store = TokenStore(state / "tokens", np.uint16)
    add(store, "a", 100)
    server = RingServer(state, state / "tokens", CONFIG, ring_endpoint(run))
    client = RingClient(ring_endpoint(run), GEOMETRY, os.getppid())
    try:
        first = take_all(client, range(0, BLOCK))
        add(store, "b", 200)  # arrives while training: later steps may use it
        server.windows.refresh_s = 0.0  # type: ignore[union-attr]  # see it at once
        first.update(take_all(client, range(BLOCK, 3 * BLOCK)))
        client.close()
        # a restarted control resuming from step 2 gets the same bytes
        client = RingClient(ring_endpoint(run), GEOMETRY, os.getppid())
        assert take_all(client, range(2, 3 * BLOCK)) == {s: first[s] for s in range(2, 3 * BLOCK)}
    finally:
        client.close()
        server.close()
    assert list_segments(ring_instance(state / "checkpoints")) == []
    add(store, "c", 300)  # more documents before the supervisor comes back
    server = RingServer(state, state / "tokens", CONFIG, ring_endpoint(run))
    client = RingClient(ring_endpoint(run), GEOMETRY, os.getppid())
    try:
        again = take_all(client, range(1, 5 * BLOCK))
    finally:
        client.close()
        server.close()
    assert {s: again[s] for s in range(1, 3 * BLOCK)} == {s: first[s] for s in range(1, 3 * BLOCK)}
    # new documents reach the blocks of steps after they arrive (the filler runs a few steps
    # ahead, so the block it had reserved already keeps the documents it was reserved for)
    assert any(b"\xc8\x00" in first[s] for s in range(BLOCK, 3 * BLOCK))  # 200 little-endian
    assert all(b"\x2c\x01" not in first[s] for s in first)  # 300
    assert any(b"\x2c\x01" in again[s] for s in range(4 * BLOCK, 5 * BLOCK))


def test_a_resume_older_than_the_record_keeps_is_cut_anew_and_then_the_same(
    dirs: tuple[Path, Path],
) -> None:
    """The checkpoints the record's floor came from are gone (deleted or damaged), so control
    resumes from a step whose change was dropped: it is cut from the documents there now and
    recorded, and a restart from that step again gets the same bytes."""
    state, run = dirs
    store = TokenStore(state / "tokens", np.uint16)
    add(store, "a", 100)
    floor = state / "checkpoints" / f"step-{2 * BLOCK + 1:08d}"
    floor.mkdir(parents=True)
    (floor / MANIFEST).write_text("{}")  # the oldest kept checkpoint, as the floor sees it
    server = RingServer(state, state / "tokens", CONFIG, ring_endpoint(run))
    client = RingClient(ring_endpoint(run), GEOMETRY, os.getppid())
    try:
        take_all(client, range(0, BLOCK))
        add(store, "b", 200)
        server.windows.refresh_s = 0.0  # type: ignore[union-attr]
        take_all(client, range(BLOCK, 4 * BLOCK))
        assert server.visible.changes[0][0] > 3  # step 0's change is dropped
        client.close()
        client = RingClient(ring_endpoint(run), GEOMETRY, os.getppid())  # control resumes from step 3
        anew = take_all(client, range(3, 2 * BLOCK))
        client.close()
        client = RingClient(ring_endpoint(run), GEOMETRY, os.getppid())  # and again
        assert take_all(client, range(3, 2 * BLOCK)) == anew
    finally:
        client.close()
        server.close()
    assert any(b"\xc8\x00" in anew[s] for s in range(3, 2 * BLOCK))  # cut from the documents now


def test_a_take_without_data_ends_at_its_deadline_saying_why(dirs: tuple[Path, Path]) -> None:
    state, run = dirs
    server = RingServer(state, state / "tokens", CONFIG, ring_endpoint(run))
    client = RingClient(ring_endpoint(run), GEOMETRY, os.getppid())
    try:
        with pytest.raises(
            RingTimeout, match=r"no batch for step 0 within 1 s: the token store has 0 training"
        ):
            client.take(0, timeout=1.0)
    finally:
        client.close()
        server.close()


def test_a_ring_client_without_a_server_gives_up_at_its_deadline(dirs: tuple[Path, Path]) -> None:
    _, run = dirs
    with pytest.raises(RingTimeout, match="did not answer HELLO within 1 s"):
        RingClient(ring_endpoint(run), GEOMETRY, os.getppid(), timeout_s=1.0)


def test_a_ring_client_whose_supervisor_is_gone_stops_during_hello(dirs: tuple[Path, Path]) -> None:
    """The supervisor named as the owner is not this process's parent (killed, control
    re-parented): HELLO ends in EngineStopped within a poll, not a RingTimeout at its deadline."""
    _, run = dirs
    with pytest.raises(EngineStopped, match="the supervisor is gone: HELLO not answered"):
        RingClient(ring_endpoint(run), GEOMETRY, os.getpid(), timeout_s=60.0)
