"""The dashboard's server on a real loopback listener, with a hand-written status and commands
(the browser tests in test_dashboard_browser.py run it inside a real daemon)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
import os
import socket
import sqlite3
import stat
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from _wait import until_async
from prometheus_client.parser import text_string_to_metric_families

from crystalline.daemon import dashboard as dashboard_module
from crystalline.daemon.config import parse_bind
from crystalline.daemon.connection_gate import GatedRunner
from crystalline.daemon.dashboard import TOKEN_HEADER, Dashboard, latest_documents, list_checkpoints
from crystalline.daemon.dashboard_command import read_dashboard_file
from crystalline.daemon.metrics_history import MetricsHistory, point_from_status
from crystalline.daemon.status_server import Command, CommandError
from crystalline.ingest.persistent_wal import keep_wal_files
from crystalline.ingest.registry import SCHEMA_VERSION, Record, Registry
from crystalline.ingest.registry_pg import PgRegistry, open_registry

pytestmark = pytest.mark.timeout(60)


def fake_status() -> dict[str, Any]:
    return {
        "state": "running",
        "uptime_s": 12.5,
        "training": {
            "state": "training",
            "step": 40,
            "tokens": 15360,
            "loss": 2.5,
            "bpb": 3.6067,
            "perplexity": 12.1825,
            "val_loss": float("nan"),
            "lr": 1e-3,
            "tokens_per_s": 900.0,
            "workers": [
                {"id": i, "state": "idle", "restarts": i % 2, "compute_ms": 3.0, "wait_ms": 1.0}
                for i in range(12)
            ],
        },
        "crawler": {"fetched": 7, "queued": 3, "errors": 1, "hosts": 2, "by_status": {"2xx": 6, "4xx": 1}},
        "ingest": {
            "documents": 5,
            "failed": 1,
            "failed_by_reason": {"too large": 1},
            "filtered_by_rule": {"too_short": 2, "language": 1},
        },
        "ring": {"slots": 4, "ready": 2},
    }


class Recorder:
    """The daemon's command handlers, recording what reached them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def commands(self) -> dict[str, Command]:
        def handler(name: str) -> Any:
            async def run(req: dict[str, Any]) -> Any:
                self.calls.append((name, req))
                if name == "add-url" and not str(req.get("url", "")).startswith("http"):
                    raise CommandError("add-url needs a URL")
                return {name: "done"}

            return run

        names = ("pause", "resume", "add-url", "checkpoint", "stop")
        return {n: Command(n, handler(n), control=True) for n in names}


class FakeGeneration:
    """The generation process's replies, recording the requests that reached it."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    async def stream(self, fields: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        self.requests.append(fields)
        yield {"text": "<b>generated</b>"}
        yield {"done": True, "tokens": fields["n"], "version": 40}

    async def vocabulary(self) -> dict[str, Any]:
        return {"vocab": 2, "labels": ["a", "b"], "colour": "AP8=", "version": 40}


@contextlib.asynccontextmanager
async def serving(tmp_path: Path) -> AsyncIterator[tuple[Dashboard, Recorder]]:
    rec = Recorder()
    history = MetricsHistory(tmp_path / "history.json")
    history.add(point_from_status(fake_status(), 1000.0), force=True)
    d = Dashboard(
        ("127.0.0.1", 0),
        tmp_path / "run",
        fake_status,
        rec.commands(),
        history,
        tmp_path / "checkpoints",
        functools.partial(Registry, tmp_path / "registry.sqlite3", read_only=True),
        FakeGeneration(),
    )
    (tmp_path / "run").mkdir()
    await d.start()
    assert d.url is not None, d.error
    try:
        yield d, rec
    finally:
        await d.close()


def test_parse_bind() -> None:
    assert parse_bind("127.0.0.1:8470") == ("127.0.0.1", 8470)
    assert parse_bind("[::1]:0") == ("::1", 0)
    assert parse_bind("off") is None
    for bad in ("8470", "localhost:http", "127.0.0.1:70000"):
        with pytest.raises(ValueError, match="--http"):
            parse_bind(bad)


def test_token_file_is_0640_and_read_by_the_command(tmp_path: Path) -> None:
    asyncio.run(_test_token_file_is_0640_and_read_by_the_command(tmp_path))


async def _test_token_file_is_0640_and_read_by_the_command(tmp_path: Path) -> None:
    async with serving(tmp_path) as (d, _rec):
        mode = stat.S_IMODE(os.stat(d.token_path).st_mode)
        assert mode == 0o640
        data = read_dashboard_file(d.token_path.parent)
        assert data["url"] == d.url and data["token"] == d.token


def test_foreign_host_is_refused(tmp_path: Path) -> None:
    asyncio.run(_test_foreign_host_is_refused(tmp_path))


async def _test_foreign_host_is_refused(tmp_path: Path) -> None:
    async with serving(tmp_path) as (d, _rec), aiohttp.ClientSession() as s:
        async with s.get(d.url + "api/status", headers={"Host": "attacker.example:8470"}) as r:
            assert r.status == 403
        async with s.get(d.url + "api/status") as r:
            assert r.status == 200
            assert (await r.json())["training"]["step"] == 40


def test_actions_need_the_token_header_not_a_cookie(tmp_path: Path) -> None:
    asyncio.run(_test_actions_need_the_token_header_not_a_cookie(tmp_path))


async def _test_actions_need_the_token_header_not_a_cookie(tmp_path: Path) -> None:
    async with serving(tmp_path) as (d, rec):
        body = json.dumps({"what": "training"})
        json_type = {"Content-Type": "application/json"}
        async with aiohttp.ClientSession() as s:
            async with s.post(d.url + "api/pause", data=body, headers=json_type) as r:
                assert r.status == 403
            cookie = {**json_type, "Cookie": f"token={d.token}; X-Crystalline-Token={d.token}"}
            async with s.post(d.url + "api/pause", data=body, headers=cookie) as r:
                assert r.status == 403
            async with s.post(
                d.url + "api/pause", data=body, headers={**json_type, TOKEN_HEADER: "wrong"}
            ) as r:
                assert r.status == 403
            assert rec.calls == []
            good = {**json_type, TOKEN_HEADER: d.token}
            async with s.post(d.url + "api/pause", data=body, headers=good) as r:
                assert r.status == 200
                assert await r.json() == {"ok": True, "data": {"pause": "done"}}
            async with s.post(d.url + "api/add-url", data=json.dumps({"url": "ftp://x"}), headers=good) as r:
                assert r.status == 400
                assert "needs a URL" in (await r.json())["error"]
            async with s.post(
                d.url + "api/pause", data="what=training", headers={TOKEN_HEADER: d.token}
            ) as r:
                assert r.status == 400  # a form post is not JSON: refused
        assert rec.calls[0] == ("pause", {"what": "training"})


def test_metrics_parse_as_prometheus_text(tmp_path: Path) -> None:
    asyncio.run(_test_metrics_parse_as_prometheus_text(tmp_path))


async def _test_metrics_parse_as_prometheus_text(tmp_path: Path) -> None:
    async with serving(tmp_path) as (d, _rec):
        async with aiohttp.ClientSession() as s, s.get(d.url + "metrics") as r:
            assert r.status == 200
            text = await r.text()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert families["crystalline_training_steps"].type == "counter"
        assert families["crystalline_training_steps"].samples[0].value == 40
        assert families["crystalline_training_loss"].samples[0].value == 2.5
        assert "crystalline_validation_loss" not in families  # NaN: not yet measured, not exported
        assert families["crystalline_training_bits_per_byte"].samples[0].value == 3.6067
        assert families["crystalline_training_perplexity"].samples[0].value == 12.1825
        assert "crystalline_validation_bits_per_byte" not in families
        restarts = families["crystalline_worker_restarts"].samples
        assert len([x for x in restarts if x.name.endswith("_total")]) == 12
        filtered = {x.labels["reason"]: x.value for x in families["crystalline_ingest_filtered"].samples}
        assert filtered == {"too_short": 2, "language": 1}
        pages = {x.labels["class"]: x.value for x in families["crystalline_crawler_pages"].samples}
        assert pages == {"2xx": 6, "4xx": 1}
        failed = {x.labels["reason"]: x.value for x in families["crystalline_ingest_failed"].samples}
        assert failed == {"too large": 1}


def test_events_push_history_then_status(tmp_path: Path) -> None:
    asyncio.run(_test_events_push_history_then_status(tmp_path))


async def _test_events_push_history_then_status(tmp_path: Path) -> None:
    async with serving(tmp_path) as (d, _rec):
        events: list[tuple[str, Any]] = []
        async with aiohttp.ClientSession() as s, s.get(d.url + "api/events") as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            event = None
            while len(events) < 2:
                line = (await asyncio.wait_for(r.content.readline(), 10)).decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    events.append((event, json.loads(line[6:])))
        assert events[0][0] == "history" and events[0][1]["points"][0]["step"] == 40
        assert events[1][0] == "status" and events[1][1]["training"]["val_loss"] is None  # NaN is not JSON


def test_generate_streams_ndjson(tmp_path: Path) -> None:
    asyncio.run(_test_generate_streams_ndjson(tmp_path))


async def _test_generate_streams_ndjson(tmp_path: Path) -> None:
    async with serving(tmp_path) as (d, _rec):
        headers = {"Content-Type": "application/json", TOKEN_HEADER: d.token}
        async with aiohttp.ClientSession() as s:
            async with s.post(
                d.url + "api/generate", data=json.dumps({"prompt": "x", "n": 5}), headers=headers
            ) as r:
                lines = [json.loads(x) for x in (await r.text()).splitlines()]
            assert lines[0] == {"text": "<b>generated</b>"}
            assert lines[-1]["done"] is True
            assert isinstance(d.generator, FakeGeneration)
            fields = {"prompt": "x", "n": 5, "temperature": 0.8, "top_k": 0, "seed": None}
            assert d.generator.requests == [fields]
            async with s.post(d.url + "api/generate", data=json.dumps({"n": 0}), headers=headers) as r:
                assert r.status == 400


def test_history_is_bounded_and_survives_a_restart(tmp_path: Path) -> None:
    h = MetricsHistory(tmp_path / "h.json", max_points=100)
    for i in range(1000):
        h.add({"t": float(i), "step": float(i), "loss": 1.0 / (i + 1)}, force=True)
    assert len(h.points) <= 100
    assert h.points[-1]["step"] == 999  # the recent past kept at full resolution
    assert h.points[0]["t"] == 0.0  # the distant past thinned, not dropped
    h.maybe_save(force=True)
    again = MetricsHistory(tmp_path / "h.json", max_points=100)
    again.load()
    assert [p["step"] for p in again.points] == [p["step"] for p in h.points]
    (tmp_path / "h.json").write_text("{not json", encoding="utf-8")
    broken = MetricsHistory(tmp_path / "h.json")
    broken.load()
    assert broken.points == []


def test_checkpoints_and_latest_documents(tmp_path: Path) -> None:
    d = tmp_path / "checkpoints" / "step-00000042"
    d.mkdir(parents=True)
    (d / "params.npy").write_bytes(b"x" * 1000)
    (tmp_path / "checkpoints" / "step-00000007").mkdir()
    listed = list_checkpoints(tmp_path / "checkpoints")
    assert [c["step"] for c in listed] == [42, 7]
    assert listed[0]["bytes"] == 1000
    registry = Registry(tmp_path / "r.sqlite3")
    try:
        record_documents(registry)
        docs = latest_documents(registry)
        assert len(docs) == 20 and docs[0]["source"] == "u29"
        assert len(docs[0]["title"]) == 300
        pages = latest_documents(registry, origin="crawl")
        assert [p["source"] for p in pages[:3]] == ["u27", "u24", "u21"] and len(pages) == 10
    finally:
        registry.close()


def record_documents(registry: Registry) -> None:
    """30 documents, u0 .. u29, every third one crawled, each with a 1,000-character title."""
    registry.record(
        [
            Record(f"e{i}", f"d{i}", f"u{i}", "crawl" if i % 3 == 0 else "drop", "done", title="t" * 1000)
            for i in range(30)
        ]
    )


def latest_shown(tmp_path: Path, open_registry: Callable[[], Registry]) -> tuple[list[Any], list[Any]]:
    """The latest documents and pages a dashboard reading through ``open_registry`` shows."""

    async def shown() -> tuple[list[Any], list[Any]]:
        run, commands, history = tmp_path / "run", Recorder().commands(), MetricsHistory(None)
        d = Dashboard(("127.0.0.1", 0), run, fake_status, commands, history, tmp_path / "checkpoints",
                      open_registry, FakeGeneration())  # fmt: skip
        try:
            await d.refresh_files()
            data = d.snapshot()
            return data["ingest"]["latest"], data["crawler"]["latest"]
        finally:
            await d.close()

    return asyncio.run(shown())


def test_the_latest_documents_panel_reads_either_registry_and_survives_one_it_cannot_open(
    tmp_path: Path, pg_url: str
) -> None:
    registry = PgRegistry(pg_url)
    try:
        record_documents(registry)
    finally:
        registry.close()
    docs, pages = latest_shown(
        tmp_path, functools.partial(open_registry, pg_url, tmp_path / "unused.sqlite3", read_only=True)
    )
    assert [d["source"] for d in docs[:2]] == ["u29", "u28"] and len(docs) == 20
    assert [p["source"] for p in pages[:2]] == ["u27", "u24"] and len(docs[0]["title"]) == 300
    assert not (tmp_path / "unused.sqlite3").exists()
    # a registry not created yet: nothing shown, no error, and the reader creates nothing
    missing = tmp_path / "missing" / "r.sqlite3"
    assert latest_shown(tmp_path, functools.partial(Registry, missing, read_only=True)) == ([], [])
    assert not missing.parent.exists()


async def _get_json(s: aiohttp.ClientSession, url: str) -> Any:
    async with s.get(url, timeout=aiohttp.ClientTimeout(total=20)) as r:
        assert r.status == 200, await r.text()
        return await r.json()


def test_concurrent_refreshes_share_one_reader_and_close_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dashboard_module, "FILES_EVERY_S", 0.0)  # every request is due for a read
    asyncio.run(_test_concurrent_refreshes_share_one_reader(tmp_path))


class SlowReader:
    """Opens readers of the 30 documents' registry at ``path`` once ``release`` is set (a
    registry slow to open: a database connecting), recording the readers opened and closed."""

    def __init__(self, path: Path) -> None:
        writer = Registry(path)
        record_documents(writer)
        writer.close()
        self.path = path
        self.opened: list[Registry] = []
        self.closed: list[Registry] = []
        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self) -> Registry:
        self.entered.set()
        if not self.release.wait(30):
            raise TimeoutError("the test never released the reader")
        closed = self.closed

        class Counted(Registry):
            def close(self) -> None:
                closed.append(self)
                super().close()

        self.opened.append(Counted(self.path, read_only=True))
        return self.opened[-1]


async def _test_concurrent_refreshes_share_one_reader(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    reader = SlowReader(path)

    def fds_on_the_registry() -> list[str]:
        links = []
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                links.append(os.readlink(f"/proc/self/fd/{fd}"))
        return [link for link in links if link.startswith(str(path))]

    (tmp_path / "run").mkdir()
    d = Dashboard(("127.0.0.1", 0), tmp_path / "run", fake_status, Recorder().commands(),
                  MetricsHistory(None), tmp_path / "checkpoints", reader, FakeGeneration())  # fmt: skip
    await d.start()
    assert d.url is not None
    try:
        async with aiohttp.ClientSession() as s:
            first = asyncio.create_task(_get_json(s, d.url + "api/status"))
            assert await asyncio.to_thread(reader.entered.wait, 20)
            # while that read is in flight, the others are answered at once with the last lists
            for _ in range(4):
                assert (await _get_json(s, d.url + "api/status"))["ingest"]["latest"] == []
            reader.release.set()
            shown = (await first)["ingest"]["latest"]
            assert [doc["source"] for doc in shown[:2]] == ["u29", "u28"]
            for _ in range(3):  # later reads go through the same reader
                assert len((await _get_json(s, d.url + "api/status"))["crawler"]["latest"]) == 10
        assert len(reader.opened) == 1 and reader.closed == []
        assert fds_on_the_registry()
    finally:
        await d.close()
    assert reader.closed == reader.opened
    assert fds_on_the_registry() == []


def test_a_read_in_flight_at_close_closes_its_reader_when_it_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dashboard_module, "READ_CLOSE_WAIT_S", 0.1)  # close() does not wait it out
    asyncio.run(_test_a_read_in_flight_at_close(tmp_path))


async def _test_a_read_in_flight_at_close(tmp_path: Path) -> None:
    reader = SlowReader(tmp_path / "registry.sqlite3")
    d = Dashboard(("127.0.0.1", 0), tmp_path / "run", fake_status, Recorder().commands(),
                  MetricsHistory(None), tmp_path / "checkpoints", reader, FakeGeneration())  # fmt: skip
    refresh = asyncio.create_task(d.refresh_files())
    assert await asyncio.to_thread(reader.entered.wait, 20)
    await d.close()  # the read goes on: it has deadlines of its own
    assert reader.opened == [] and not refresh.done()
    reader.release.set()
    await asyncio.wait_for(refresh, 20)
    assert len(reader.opened) == 1 and reader.closed == reader.opened
    await d.refresh_files()  # a closed dashboard reads no more
    assert len(reader.opened) == 1


def test_a_read_outliving_the_stops_wait_closes_its_reader_after_the_executor_is_shut_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon's stop (review R16 R1): close() gives up on a read in flight after its wait,
    then the supervisor shuts the loop's executor down, and the read's thread ends later. The
    reader is closed all the same, and the read ends without an exception (there was: RuntimeError
    'cannot schedule new futures after shutdown' from a to_thread of the close, never retrieved)."""
    monkeypatch.setattr(dashboard_module, "READ_CLOSE_WAIT_S", 0.1)  # close() does not wait it out
    asyncio.run(_test_a_read_outliving_the_stops_wait(tmp_path))


async def _test_a_read_outliving_the_stops_wait(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="stop-test")
    loop.set_default_executor(executor)  # the loop's executor, as the supervisor's
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    reader = SlowReader(tmp_path / "registry.sqlite3")
    d = Dashboard(("127.0.0.1", 0), tmp_path / "run", fake_status, Recorder().commands(),
                  MetricsHistory(None), tmp_path / "checkpoints", reader, FakeGeneration())  # fmt: skip
    refresh = asyncio.create_task(d.refresh_files())
    assert await asyncio.to_thread(reader.entered.wait, 20)
    await d.close()
    executor.shutdown(wait=False)  # Supervisor._wait_for_threads, before it waits for the threads
    assert reader.opened == [] and not refresh.done()
    reader.release.set()
    await asyncio.wait_for(refresh, 20)  # raised the RuntimeError before
    assert len(reader.opened) == 1 and reader.closed == reader.opened
    assert unhandled == []


def test_a_registry_the_panel_cannot_read_keeps_the_last_lists_and_status_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(dashboard_module, "FILES_EVERY_S", 0.0)  # every request is due for a read
    with caplog.at_level(logging.INFO, logger="crystalline.dashboard"):
        asyncio.run(_test_a_registry_the_panel_cannot_read(tmp_path))
    lines = [r.getMessage() for r in caplog.records if "latest documents" in r.getMessage()]
    # one line per kind of failure however many reads failed, and again after a read succeeded
    assert len(lines) == 4, lines
    for line, why in zip(lines, ["no such table", "newer than this program's"] * 2, strict=True):
        assert why in line, lines


async def _test_a_registry_the_panel_cannot_read(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    writer = Registry(path)
    record_documents(writer)
    writer.close()

    def newer_crystalline(undo: bool = False) -> None:
        """What a newer crystalline leaves: the documents table renamed, schema version + 1 (its
        writer, like ours, keeps the WAL files)."""
        db = sqlite3.connect(path)
        keep_wal_files(db, path)
        try:
            renamed = ("documents_next", "documents") if undo else ("documents", "documents_next")
            db.execute("ALTER TABLE {} RENAME TO {}".format(*renamed))
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + (0 if undo else 1)}")
            db.commit()
        finally:
            db.close()

    async with serving(tmp_path) as (d, _rec), aiohttp.ClientSession() as s:
        assert d.url is not None
        docs = (await _get_json(s, d.url + "api/status"))["ingest"]["latest"]
        assert len(docs) == 20
        newer_crystalline()
        for _ in range(3):
            data = await _get_json(s, d.url + "api/status")
            assert data["ingest"]["latest"] == docs and len(data["crawler"]["latest"]) == 10
            async with s.get(d.url + "metrics") as r:
                assert r.status == 200
        async with s.get(d.url + "api/events", timeout=aiohttp.ClientTimeout(total=30)) as r:
            statuses = []
            while len(statuses) < 2:  # the stream goes on: two status events, each after a read
                line = (await asyncio.wait_for(r.content.readline(), 10)).decode()
                if line.startswith("data: ") and "ingest" in line:
                    statuses.append(json.loads(line[6:]))
            assert all(status["ingest"]["latest"] == docs for status in statuses)
        # its handler ends (no read of its own left to come)
        await until_async(lambda: d.info()["event_clients"] == 0, "the event stream's end", 10)
        newer_crystalline(undo=True)
        assert (await _get_json(s, d.url + "api/status"))["ingest"]["latest"] == docs
        newer_crystalline()  # failing again after a read succeeded: logged again
        for _ in range(2):
            assert (await _get_json(s, d.url + "api/status"))["ingest"]["latest"] == docs


def test_dashboard_command_prints_the_url_or_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "crystalline.daemon.cli", "dashboard", "--runtime-dir", str(tmp_path)]
    missing = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert missing.returncode == 1
    assert len(missing.stderr.strip().splitlines()) == 1 and "--http" in missing.stderr
    (tmp_path / "dashboard.json").write_text(json.dumps({"url": "http://127.0.0.1:8470/", "token": "abc"}))
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert ok.stdout.strip() == "http://127.0.0.1:8470/#token=abc"


def test_dashboard_command_names_what_it_could_not_read(tmp_path: Path) -> None:
    import subprocess
    import sys

    not_a_dir = tmp_path / "afile"
    not_a_dir.write_text("x")
    cmd = [sys.executable, "-m", "crystalline.daemon.cli", "dashboard", "--runtime-dir", str(not_a_dir)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    # before: 'crystalline: error: [Errno 20] Not a directory: '.../afile/dashboard.json''
    assert done.stderr == f"crystalline: error: cannot read {not_a_dir}/dashboard.json: Not a directory\n"


def test_event_clients_are_capped(tmp_path: Path) -> None:
    asyncio.run(_test_event_clients_are_capped(tmp_path))


async def _test_event_clients_are_capped(tmp_path: Path) -> None:
    from crystalline.daemon.dashboard import MAX_EVENT_CLIENTS

    async with serving(tmp_path) as (d, _rec), aiohttp.ClientSession() as s:
        open_streams = [await s.get(d.url + "api/events") for _ in range(MAX_EVENT_CLIENTS)]
        try:
            for r in open_streams:
                assert r.status == 200
            async with s.get(d.url + "api/events") as refused:
                assert refused.status == 503
            assert d.info()["event_clients"] == MAX_EVENT_CLIENTS
        finally:
            for r in open_streams:
                r.close()


def test_status_summary_names_the_dashboard() -> None:
    from crystalline.daemon.status_command import summary

    assert "dashboard    http://127.0.0.1:8470/" in summary({"http": {"url": "http://127.0.0.1:8470/"}})
    off = summary({"http": {"url": None, "error": "cannot listen on 127.0.0.1:8470: address in use"}})
    assert "dashboard    off: cannot listen on 127.0.0.1:8470" in off
    assert "dashboard" not in summary({"http": {"url": None}})


def test_unwritable_runtime_dir_leaves_a_read_only_dashboard(tmp_path: Path) -> None:
    asyncio.run(_test_unwritable_runtime_dir(tmp_path))


async def _test_unwritable_runtime_dir(tmp_path: Path) -> None:
    d = Dashboard(
        ("127.0.0.1", 0),
        tmp_path / "missing" / "run",  # the token file cannot be written here
        fake_status,
        Recorder().commands(),
        MetricsHistory(None),
        tmp_path / "checkpoints",
        functools.partial(Registry, tmp_path / "registry.sqlite3", read_only=True),
        FakeGeneration(),
    )
    await d.start()
    try:
        assert d.url is not None and d.error is not None and "token file" in d.error
        async with aiohttp.ClientSession() as s, s.get(d.url + "api/status") as r:
            assert r.status == 200
    finally:
        await d.close()


def test_test_suite_variables_are_not_daemon_keys() -> None:
    from crystalline.daemon import cli, config

    run = cli.build_parser().parse_args(["run"])
    env = {"CRYSTALLINE_TEST_ARTIFACTS": "/tmp/a", "CRYSTALLINE_DAEMON_HTTP": "off"}
    assert config.resolve(run, env).daemon.http == "off"
    with pytest.raises(ValueError, match="CRYSTALLINE_TESTS: unknown setting"):
        config.resolve(run, {"CRYSTALLINE_TESTS": "1"})


def test_history_keeps_a_validation_line_per_source_and_documents_show_their_surprise(tmp_path: Path) -> None:
    status = fake_status()
    status["training"]["sources"] = [
        {"source": "example.org", "documents": 4, "val_loss": 2.5},
        {"source": "<script>x</script>", "documents": 1, "val_loss": None},  # drawn as text
    ]
    point = point_from_status(status, 1000.0)
    assert point["val:example.org"] == 2.5 and point["val:<script>x</script>"] is None
    h = MetricsHistory(tmp_path / "h.json")
    h.add(point, force=True)
    h.maybe_save(force=True)
    again = MetricsHistory(tmp_path / "h.json")
    again.load()
    assert again.points[0]["val:example.org"] == 2.5  # the lines survive a restart
    registry = Registry(tmp_path / "r.sqlite3")
    rec = Record("e1", "d1", "https://example.org/a", "crawl", "done", tokens=10, group="example.org")
    registry.record([rec])
    registry.record_surprise([("d1", 3.25)])
    assert latest_documents(registry)[0]["surprise"] == 3.25
    registry.close()


def test_a_body_nested_too_deep_for_the_json_parser_is_a_400(tmp_path: Path) -> None:
    asyncio.run(_test_a_body_nested_too_deep(tmp_path))


async def _test_a_body_nested_too_deep(tmp_path: Path) -> None:
    async with serving(tmp_path) as (d, rec):
        good = {"Content-Type": "application/json", TOKEN_HEADER: d.token}
        deep = '{"prompt": ' + "[" * 5000 + "]" * 5000 + "}"  # within MAX_BODY; RecursionError in json
        async with aiohttp.ClientSession() as s:
            for action in ("api/generate", "api/add-url"):
                async with s.post(d.url + action, data=deep, headers=good) as r:
                    assert r.status == 400
                    assert await r.json() == {
                        "ok": False,
                        "error": "the request body is not JSON: nested too deep",
                    }
        assert rec.calls == []


async def _half_sent(url: str, count: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """``count`` connections each sending a request's first lines and never its end."""
    host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    held = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"GET /api/status HTTP/1.1\r\nHost: {host}:{port}\r\n".encode())
        await writer.drain()
        held.append((reader, writer))
    return held


async def _read_to_eof(reader: asyncio.StreamReader) -> bytes:
    """What the server sent before it closed (30 s at most: the test's own bound)."""
    return await asyncio.wait_for(reader.read(), 30)


@pytest.mark.parametrize("keepalive", ["the gate's", "an hour"])
def test_half_sent_requests_are_closed_at_the_head_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keepalive: str
) -> None:
    """With the runner's own keep-alive timeout (the head deadline) the installed aiohttp (3.14)
    closes a connection whose first head is late by itself, as the gate's sweep does; with an
    hour's, as aiohttp 3.13.0 and older behave (no timer before the first request), only the
    sweep does: this case fails with the sweep a no-op."""
    monkeypatch.setattr(dashboard_module, "REQUEST_HEAD_S", 1.0)
    monkeypatch.setattr(dashboard_module, "MAX_CONNECTIONS", 400)
    if keepalive == "an hour":
        monkeypatch.setattr(
            dashboard_module, "GatedRunner", functools.partial(GatedRunner, keepalive_timeout=3600.0)
        )
    asyncio.run(_test_half_sent_requests_are_closed(tmp_path))


async def _test_half_sent_requests_are_closed(tmp_path: Path) -> None:
    async with serving(tmp_path) as (d, _rec):
        held = await _half_sent(d.url, 300)
        try:
            async with aiohttp.ClientSession() as s, s.get(d.url + "api/status") as r:
                assert r.status == 200  # a good client beside the 300
            answers = await asyncio.gather(*(_read_to_eof(reader) for reader, _w in held))
            assert answers == [b""] * 300  # closed unanswered: the head never came
            async with aiohttp.ClientSession() as s, s.get(d.url) as r:
                assert r.status == 200 and "<html" in (await r.text()).lower()
        finally:
            for _r, writer in held:
                writer.close()


def test_connections_past_the_cap_are_refused_and_one_within_it_is_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dashboard_module, "MAX_CONNECTIONS", 8)
    asyncio.run(_test_connections_past_the_cap(tmp_path))


async def _test_connections_past_the_cap(tmp_path: Path) -> None:
    async with serving(tmp_path) as (d, _rec):
        held = await _half_sent(d.url, 7)  # the cap less one: room for the good client
        try:
            connector = aiohttp.TCPConnector(limit=1)
            async with (
                aiohttp.ClientSession(connector=connector) as s,
                s.get(d.url + "api/events") as events,  # an event stream, within the cap
            ):
                assert events.status == 200
                assert (await events.content.readline()).startswith(b"event: history")
                extra = await _half_sent(d.url, 3)
                answers = await asyncio.gather(*(_read_to_eof(reader) for reader, _w in extra))
                for answer in answers:
                    head, _, body = answer.partition(b"\r\n\r\n")
                    assert head.startswith(b"HTTP/1.1 503 ")
                    assert body == b"too many connections to this dashboard\n"
                assert (await events.content.readline()) != b""  # the stream goes on
            for _r, writer in extra:
                writer.close()
            await asyncio.sleep(0)
            async with aiohttp.ClientSession() as s:
                # the stream's connection closed: its place serves again (once the server saw it go)
                async def served() -> bool:
                    async with s.get(d.url + "api/status") as r:
                        return r.status == 200

                for _ in range(200):
                    with contextlib.suppress(aiohttp.ClientError):
                        if await served():
                            break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("no place came free after the event stream closed")
            assert d.info()["connections_refused"] >= 3
        finally:
            for _r, writer in held:
                writer.close()


async def _read_response(reader: asyncio.StreamReader) -> bytes:
    """One response's head and body (Content-Length), or b"" at the server's close."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    except asyncio.IncompleteReadError:
        return b""
    lines = head.lower().split(b"\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in lines if line.startswith(b"content-length:"))
    return head + await asyncio.wait_for(reader.readexactly(length), 30)


async def _keep_alive_holder(url: str, served: list[int], closed: list[int], stop: asyncio.Event) -> None:
    """A client holding one keep-alive connection by a complete GET every 0.2 s, until ``stop`` or
    the server's close (counted in ``closed``); ``served`` counts its answered requests."""
    host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        while not stop.is_set():
            writer.write(f"GET /api/status HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
            try:
                answer = await _read_response(reader)
            except ConnectionError:
                answer = b""
            if not answer:
                closed.append(1)
                return
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:80]
            served.append(1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
    finally:
        writer.close()


def test_at_the_cap_a_new_client_takes_the_place_of_the_longest_idle_keep_alive_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, one client sending a GET every 0.2 s on each of the cap's connections held them
    all, and every other client got the 503."""
    monkeypatch.setattr(dashboard_module, "MAX_CONNECTIONS", 8)
    asyncio.run(_test_a_new_client_takes_an_idle_place(tmp_path))


async def _test_a_new_client_takes_an_idle_place(tmp_path: Path) -> None:
    async with serving(tmp_path) as (d, _rec):
        served: list[int] = []
        closed: list[int] = []
        stop = asyncio.Event()
        holders = [asyncio.create_task(_keep_alive_holder(d.url, served, closed, stop)) for _ in range(8)]
        try:
            await until_async(lambda: len(served) >= 16, "the 8 holders each served", 30)
            async with aiohttp.ClientSession() as s, s.get(d.url + "api/status") as r:
                assert r.status == 200  # a new connection: it took an idle holder's place
                assert (await r.json())["state"] == "running"
            await until_async(lambda: closed, "a holder's connection closed", 30)
            assert len(closed) == 1
            assert d.info()["connections_refused"] == 0
            assert d.info()["connections_evicted"] == 1
        finally:
            stop.set()
            await asyncio.gather(*holders)


def test_at_the_cap_a_connection_whose_next_head_has_arrived_is_not_taken_for_idle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A keep-alive connection's second request head and a newcomer reach the server in one
    loop turn (the loop was busy): before, the newcomer's accept ran before the request's handler
    had started, the connection counted as idle and was closed with its request unanswered."""
    monkeypatch.setattr(dashboard_module, "MAX_CONNECTIONS", 2)
    asyncio.run(_test_a_next_head_is_not_idle(tmp_path))


async def _test_a_next_head_is_not_idle(tmp_path: Path) -> None:
    async with serving(tmp_path) as (d, _rec):
        host, port = d.url.removeprefix("http://").rstrip("/").rsplit(":", 1)
        get = f"GET /api/status HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
        held = [await asyncio.open_connection(host, int(port)) for _ in range(2)]
        newcomer: socket.socket | None = None
        try:
            for reader, writer in held:  # a first, then b: both idle, a's request the older
                writer.write(get)
                assert (await _read_response(reader)).startswith(b"HTTP/1.1 200 ")
            await asyncio.sleep(0.2)  # both handlers parked for their next request
            (a_reader, a_writer), (b_reader, _b_writer) = held
            # without yielding to the loop: a's next head is in the server's socket buffer and the
            # newcomer in the listen queue, so one select() sees both
            a_writer.write(get)
            newcomer = socket.create_connection((host, int(port)), timeout=30)
            assert (await _read_response(a_reader)).startswith(b"HTTP/1.1 200 ")
            new_reader, new_writer = await asyncio.open_connection(sock=newcomer)
            new_writer.write(get)
            assert (await _read_response(new_reader)).startswith(b"HTTP/1.1 200 ")
            new_writer.close()
            assert await _read_to_eof(b_reader) == b""  # the idle one made room
            assert d.info()["connections_evicted"] == 1
            assert d.info()["connections_refused"] == 0
        finally:
            for _r, w in held:
                w.close()


def test_at_the_cap_with_every_connection_in_a_request_a_new_one_gets_the_503_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request in progress (an event stream, an action's body still coming) is never closed
    for a newcomer: with none idle, the newcomer is refused."""
    monkeypatch.setattr(dashboard_module, "MAX_CONNECTIONS", 8)
    asyncio.run(_test_every_connection_in_a_request(tmp_path))


async def _test_every_connection_in_a_request(tmp_path: Path) -> None:
    async with serving(tmp_path) as (d, _rec):
        host, port = d.url.removeprefix("http://").rstrip("/").rsplit(":", 1)
        busy = []
        for i in range(8):  # seven actions whose bodies never end, one event stream
            reader, writer = await asyncio.open_connection(host, int(port))
            if i == 0:
                writer.write(f"GET /api/events HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
            else:
                writer.write(
                    f"POST /api/pause HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                    f"{TOKEN_HEADER}: {d.token}\r\nContent-Length: 100\r\n\r\n{{".encode()
                )
            await writer.drain()
            busy.append((reader, writer))
        try:
            await until_async(lambda: d.requests >= 8, "the 8 requests reached the dashboard", 30)
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(f"GET /api/status HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
            head, _, body = (await _read_to_eof(reader)).partition(b"\r\n\r\n")
            writer.close()
            assert head.startswith(b"HTTP/1.1 503 ")
            assert body == b"too many connections to this dashboard\n"
            assert d.info()["connections_evicted"] == 0
            assert d.requests == 8
        finally:
            for _r, w in busy:
                w.close()
