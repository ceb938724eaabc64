"""The supervisor <-> control channel (daemon/control_protocol.py) over real ZeroMQ sockets:
a message of the wrong version, over the cap, of an unknown type or missing a field gets a
one-line error, and the channel goes on serving the next good message, at both ends."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from _wait import until_async

from crystalline.daemon import control_protocol as CP
from crystalline.daemon.control_link import SupervisorChannel
from crystalline.daemon.control_process import Control
from crystalline.daemon.status_server import CommandError

pytestmark = pytest.mark.timeout(60)


def raw(**fields: Any) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


BAD = {  # what a peer may send that is not the protocol, and the start of the one-line error
    "wrong version": (raw(v=2, type=CP.REQUEST, id=7, cmd="pause"), "protocol version 2, expected 1"),
    "oversize": (CP.encode(CP.REQUEST, id=8, cmd="pause", pad="x" * CP.MAX_TO_CONTROL), "message of "),
    "unknown type": (CP.encode("RESTART", id=9), "unknown message type 'RESTART'"),
    "not msgpack": (b"\xc1 garbage", "not msgpack"),
    "not a map": (msgpack.packb([1, 2]), "not a map but list"),
    "field missing": (CP.encode(CP.REQUEST, id=10), "REQUEST without a valid 'cmd'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_decode_refuses_with_one_line(case: str) -> None:
    data, start = BAD[case]
    with pytest.raises(CP.ProtocolError) as err:
        CP.decode(data, CP.TO_CONTROL, CP.MAX_TO_CONTROL)
    assert str(err.value).startswith(start) and "\n" not in str(err.value)
    message = msgpack.unpackb(data, raw=False) if case not in ("not msgpack", "oversize") else {}
    expected_id = message.get("id") if isinstance(message, dict) else None
    assert err.value.request_id == expected_id


def test_round_trip_and_the_type_lists() -> None:
    msg = CP.decode(CP.encode(CP.REQUEST, id=1, cmd="checkpoint"), CP.TO_CONTROL, CP.MAX_TO_CONTROL)
    assert msg == {"v": CP.VERSION, "type": CP.REQUEST, "id": 1, "cmd": "checkpoint"}
    with pytest.raises(CP.ProtocolError, match="unknown message type 'REQUEST'"):
        CP.decode(CP.encode(CP.REQUEST, id=1, cmd="x"), CP.TO_SUPERVISOR, CP.MAX_TO_SUPERVISOR)
    with pytest.raises(CP.ProtocolError, match="REPLY without a valid 'id'"):
        CP.decode(CP.encode(CP.REPLY, id=True, ok=True), CP.TO_SUPERVISOR, CP.MAX_TO_SUPERVISOR)
    assert set(CP.FIELDS) == CP.TO_CONTROL | CP.TO_SUPERVISOR


@pytest.fixture
def endpoint() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="ccp-", dir="/tmp") as d:
        yield f"ipc://{Path(d) / 'control.sock'}"


class NoData:
    """Control's data, never read here: these tests serve requests before any training."""

    readers = 1

    def close_ring(self) -> None:
        pass


def test_control_answers_bad_messages_with_one_line_errors_and_keeps_serving(endpoint: str) -> None:
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(endpoint)
    spec = {"endpoint": endpoint, "parent_pid": os.getppid(), "state_dir": "/nonexistent", "train": {},
            "resource_retry_s": 10.0, "database_timeout_s": 15.0}  # fmt: skip
    control = Control(spec, lambda _spec: NoData())  # type: ignore[arg-type, return-value]
    assert set(control.handlers()) == set(CP.COMMANDS)  # the dispatch table covers the protocol
    try:
        control.channel.send(CP.HELLO, pid=os.getpid())
        assert router.poll(10_000)
        ident, hello = router.recv_multipart()
        assert CP.decode(hello, CP.TO_SUPERVISOR, CP.MAX_TO_SUPERVISOR)["pid"] == os.getpid()

        def exchange(data: bytes) -> dict[str, Any]:
            """Send one message, let control serve, return its answer (not a STATUS)."""
            router.send_multipart([ident, data])
            control.serve(0.1)
            while True:
                assert router.poll(10_000), "control did not answer"
                msg = CP.decode(router.recv_multipart()[1], CP.TO_SUPERVISOR, CP.MAX_TO_SUPERVISOR)
                if msg["type"] != CP.STATUS:
                    return msg

        for case in sorted(BAD):
            data, start = BAD[case]
            answer = exchange(data)
            assert answer["type"] == CP.ERROR and answer["error"].startswith(start), (case, answer)
            assert "\n" not in answer["error"]
            if case in ("wrong version", "unknown type", "field missing"):  # its id could be read
                assert answer["id"] == msgpack.unpackb(data)["id"], case
            else:
                assert "id" not in answer, case
            # ... and the channel still serves the protocol
            reply = exchange(CP.encode(CP.REQUEST, id=100, cmd="pause"))
            assert reply == {"v": 1, "type": CP.REPLY, "id": 100, "ok": True, "data": {"training": "paused"}}
            assert control.paused
            control.paused = False

        refused = exchange(CP.encode(CP.REQUEST, id=101, cmd="restart"))
        assert refused["ok"] is False and refused["error"].startswith("control does not handle 'restart'")
        early = exchange(CP.encode(CP.REQUEST, id=102, cmd="checkpoint"))
        assert early == {"v": 1, "type": CP.REPLY, "id": 102, "ok": False, "error": early["error"]}
        assert "not started" in early["error"]
        stop = exchange(CP.encode(CP.REQUEST, id=103, cmd="stop"))
        assert stop["ok"] and control.stopping
    finally:
        control.channel.close()
        router.close(0)
        ctx.term()


def test_the_supervisor_logs_bad_messages_in_one_line_and_keeps_reading(
    endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        channel = SupervisorChannel(endpoint)
        channel.start()
        ctx = zmq.Context()
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(endpoint)
        try:
            dealer.send(CP.encode(CP.HELLO, pid=1))
            dealer.send(raw(v=9, type=CP.STATUS, data={"step": 1}))
            dealer.send(CP.encode(CP.STATUS, data={"step": 2}, pad="x" * CP.MAX_TO_SUPERVISOR))
            dealer.send(CP.encode("GOSSIP", data={}))
            dealer.send(CP.encode(CP.STATUS, data="not a map"))
            dealer.send(CP.encode(CP.STATUS, data={"step": 3}))
            await until_async(lambda: channel.status.get("step") == 3, lambda: str(channel.status), 10, 0.01)
            assert channel.refused == 4 and channel.identity is not None

            # a request whose reply comes back garbled fails at once with the reason
            ask = asyncio.create_task(channel.request("checkpoint", timeout_s=30))
            request = await asyncio.to_thread(dealer.poll, 10_000)
            assert request
            msg = CP.decode(dealer.recv(), CP.TO_CONTROL, CP.MAX_TO_CONTROL)
            assert msg["cmd"] == "checkpoint"
            dealer.send(raw(v=0, type=CP.REPLY, id=msg["id"], ok=True))
            with pytest.raises(CommandError, match="bad reply from control: protocol version 0"):
                await asyncio.wait_for(ask, 10)

            # control's ERROR for a request ends it with control's line
            ask = asyncio.create_task(channel.request("pause", timeout_s=30))
            assert await asyncio.to_thread(dealer.poll, 10_000)
            msg = CP.decode(dealer.recv(), CP.TO_CONTROL, CP.MAX_TO_CONTROL)
            dealer.send(CP.encode(CP.ERROR, id=msg["id"], error="unknown message type 'X'"))
            with pytest.raises(CommandError, match="unknown message type 'X'"):
                await asyncio.wait_for(ask, 10)

            # and a good one still works
            ask = asyncio.create_task(channel.request("resume", timeout_s=30))
            assert await asyncio.to_thread(dealer.poll, 10_000)
            msg = CP.decode(dealer.recv(), CP.TO_CONTROL, CP.MAX_TO_CONTROL)
            dealer.send(CP.encode(CP.REPLY, id=msg["id"], ok=True, data={"training": "running"}))
            assert await asyncio.wait_for(ask, 10) == {"training": "running"}
        finally:
            dealer.close(0)
            ctx.term()
            await channel.close()

    with caplog.at_level("WARNING", logger="crystalline.supervisor"):
        asyncio.run(scenario())
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused a message")]
    assert len(lines) == 5 and all("\n" not in line for line in lines)
    assert lines[0] == "refused a message from control: protocol version 9, expected 1"
