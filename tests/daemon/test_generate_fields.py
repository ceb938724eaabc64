"""generate's request fields, checked in one place (daemon/generate_fields.py) for the
dashboard's chat, the status socket (and `crystalline ctl generate`) and the generation process:
a field of the wrong type or out of its range is one line naming the field and what it takes
(400 on the dashboard), never an internal error or a traceback in the log, and nothing reaches
the generation process; a good request still generates, from real published parameters, through
a real dashboard, status socket, `crystalline ctl` process and generation process."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from test_generation_process import CONFIG, _model, _publish
from test_generation_process import state_block as state_block

from crystalline.daemon import commands
from crystalline.daemon import generation_process as gp
from crystalline.daemon.config import DaemonConfig, Settings
from crystalline.daemon.dashboard import TOKEN_HEADER, Dashboard
from crystalline.daemon.generation_service import GenerationService
from crystalline.daemon.metrics_history import MetricsHistory
from crystalline.daemon.status_client import request
from crystalline.daemon.status_server import StatusServer
from crystalline.ingest.registry import Registry
from crystalline.shm.blocks import ArrayBlock

pytestmark = pytest.mark.timeout(180)

N = "n must be an integer from 1 to 2000"
TOP_K = "top_k must be an integer from 0 to 65536 (0: all tokens)"
SEED = "seed must be an integer from 0 to 4294967295 or null"
TEMPERATURE = "temperature must be a number from 0 (the likeliest token) to 5.0"

# (the request's fields, the one line they are refused with)
BAD: list[tuple[dict[str, Any], str]] = [
    ({"n": 1e309}, N),  # JSON's 1e309: infinity, which int() overflows on
    ({"n": True}, N),
    ({"n": 2.9}, N),
    ({"n": 2.0}, N),
    ({"n": "5"}, N),
    ({"n": 0}, N),
    ({"n": 2001}, N),
    ({"top_k": -1}, TOP_K),
    ({"top_k": 65537}, TOP_K),
    ({"top_k": 1.5}, TOP_K),
    ({"seed": -1}, SEED),
    ({"seed": 2**32}, SEED),
    ({"seed": 1.0}, SEED),
    ({"seed": "3"}, SEED),
    ({"temperature": float("nan")}, TEMPERATURE),
    ({"temperature": float("inf")}, TEMPERATURE),
    ({"temperature": -1}, TEMPERATURE),
    ({"temperature": 10**400}, TEMPERATURE),  # an int float() overflows on
    ({"temperature": "0.5"}, TEMPERATURE),
    ({"temperature": False}, TEMPERATURE),
    ({"prompt": 3}, "prompt must be a string of at most 4000 characters"),
]

# `crystalline ctl generate KEY=VALUE ...`: a value is read as JSON where it is JSON, else a string
CTL_BAD = [
    ("n=1e309", N),
    ("n=true", N),
    ("n=2.9", N),
    ("n=05", N),  # not JSON: the string "05"
    ("seed=-1", SEED),
    ("top_k=-1", TOP_K),
    ("temperature=nan", TEMPERATURE),  # not JSON: the string "nan"
    ("temperature=NaN", TEMPERATURE),
    ("temperature=Infinity", TEMPERATURE),
    ("temperature=-1", TEMPERATURE),
]


class GenerateOnly:
    """The part of the supervisor the ``generate`` command touches (commands.Daemon)."""

    def __init__(self, settings: Settings, generation: GenerationService) -> None:
        self.settings = settings
        self.generation = generation


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to ~107 bytes: pytest's tmp_path can be longer
    with tempfile.TemporaryDirectory(prefix="cgf-", dir="/tmp") as d:
        yield Path(d)


@asynccontextmanager
async def serving(state_dir: Path, sock: Path) -> AsyncIterator[tuple[str, str, GenerationService]]:
    """A real dashboard and status socket over one real generation service: (the dashboard's
    URL, its token, the service)."""
    settings = Settings(DaemonConfig(state_dir=str(state_dir), generate_burst_s=600.0), CONFIG)
    generation = GenerationService(settings)
    bound = commands.bind(GenerateOnly(settings, generation))
    server = StatusServer(sock, {"generate": bound["generate"]})
    run = state_dir / "run"
    run.mkdir(parents=True)
    dashboard = Dashboard(
        ("127.0.0.1", 0),
        run,
        dict,
        {},
        MetricsHistory(run / "history.json"),
        state_dir / "checkpoints",
        lambda: Registry(state_dir / "registry.sqlite3", read_only=True),
        generation,
    )
    await server.start()
    await dashboard.start()
    try:
        assert dashboard.url is not None, dashboard.error
        yield dashboard.url, dashboard.token, generation
    finally:
        await dashboard.close()
        await server.close()
        await generation.stop()


async def ctl(sock: Path, *pairs: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "crystalline.daemon.cli", "ctl", "--socket", str(sock), "generate", *pairs,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_bad_fields_are_one_line_errors_and_a_good_request_generates(
    state_block: tuple[ArrayBlock, Path], sock_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    block, state_dir = state_block
    _, params = _model()
    _publish(block, 0, params, 7)
    sock = sock_dir / "s.sock"
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        async with serving(state_dir, sock) as (url, token, generation), aiohttp.ClientSession() as s:
            headers = {"Content-Type": "application/json", TOKEN_HEADER: token}
            for fields, line in BAD:
                body = json.dumps({"prompt": "the", **fields})
                async with s.post(url + "api/generate", data=body, headers=headers) as r:
                    assert (r.status, await r.json()) == (400, {"ok": False, "error": line}), fields
                reply = await asyncio.to_thread(request, sock, {"cmd": "generate", **fields}, 30.0)
                assert reply == {"ok": False, "error": line}, fields
            for pair, line in CTL_BAD:
                rc, out, err = await ctl(sock, "prompt=the", pair)
                assert (rc, out, err) == (1, "", f"crystalline: generate: {line}\n"), pair
            assert generation.stats()["starts"] == 0  # none of them reached the generation process

            good = {"prompt": "the", "n": 5, "temperature": 0, "top_k": 3, "seed": 4294967295}
            async with s.post(url + "api/generate", data=json.dumps(good), headers=headers) as r:
                assert r.status == 200
                lines = [json.loads(x) for x in (await r.text()).splitlines()]
            assert lines[-1]["done"] is True and lines[-1]["tokens"] == 5 and lines[-1]["version"] == 7
            page_text = "".join(x.get("text", "") for x in lines)
            reply = await asyncio.to_thread(request, sock, {"cmd": "generate", **good}, 60.0)
            assert reply["ok"] is True and reply["data"]["step"] == 7
            assert reply["data"]["text"] == page_text  # greedy: the same continuation both ways
            rc, out, err = await ctl(sock, "prompt=the", "n=5", "temperature=0", "top_k=3", "seed=4294967295")
            assert (rc, err) == (0, "") and json.loads(out)["text"] == page_text

    asyncio.run(scenario())
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert not any(r.exc_info for r in caplog.records)


def test_the_generation_process_answers_a_bad_field_with_the_same_line(
    state_block: tuple[ArrayBlock, Path],
) -> None:
    """A request that reaches the process unchecked (the supervisor's service streams what it is
    given) is refused with the supervisor's line, not numpy's or int()'s."""
    block, state_dir = state_block
    _, params = _model()
    _publish(block, 0, params, 2)
    generator = gp.Generator(CONFIG, state_dir)
    try:
        sent = [{"id": i, "prompt": "a", **fields} for i, (fields, _) in enumerate(BAD)]
        out = io.StringIO()
        gp.serve(generator, io.StringIO("".join(json.dumps(r) + "\n" for r in sent)), out)
    finally:
        generator.published.close()
    replies = [json.loads(x) for x in out.getvalue().splitlines()]
    assert replies == [{"id": i, "error": line} for i, (_, line) in enumerate(BAD)]
