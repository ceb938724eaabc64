"""The supervisor's stop: a real daemon whose ingest stop raises (injected by
``_failing_ingest_stop.py``) still has control write its final checkpoint and exit, says what
failed in one log line, cleans up (status socket, ring and engine segments, processes) and exits
0; and a SIGTERM after the ``stop`` command is the stop's first signal, not a second one (it
does not hurry control out of its final checkpoint)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from _daemon_process import group_survivors, start_small_daemon, wait_daemon
from conftest import make_corpus

from crystalline.daemon.ring_service import ring_instance
from crystalline.daemon.status_server import request
from crystalline.shm.segments import list_segments
from crystalline.workers.checkpoint import list_checkpoints
from crystalline.workers.trainer import engine_instance

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
FAILING_INGEST_STOP = str(Path(__file__).with_name("_failing_ingest_stop.py"))
STUCK_INGEST_CLOSE = str(Path(__file__).with_name("_stuck_ingest_close.py"))
HELD_CRAWL_THREAD = str(Path(__file__).with_name("_held_crawl_thread.py"))
IDLE_CRAWL_THREAD = str(Path(__file__).with_name("_idle_crawl_thread.py"))
CRAWL_EXTRA = ("--crawl-allow-private-addresses", "--crawl-no-sitemaps", "--crawl-stop-s", "2")


def _stopped_daemon(
    tmp_path: Path,
    program: tuple[str, ...],
    stop: Callable[[subprocess.Popen[bytes], Path], None],
    extra: tuple[str, ...] = (),
) -> list[str]:
    """Start a daemon running ``program`` on a small corpus (no periodic checkpoint, so the one on
    disk at the end is the final one), let it train, ``stop`` it, and check that it exited 0 with
    a final checkpoint at or past the step it had reached and cleaned up everything it made
    (socket, shared-memory segments, processes): its log's lines."""
    log_path = tmp_path / "daemon.log"
    state, run = tmp_path / "state", tmp_path / "run"
    (state / "inbox").mkdir(parents=True)
    (state / "inbox" / "doc.txt").write_text(make_corpus(20_000, seed=1), encoding="utf-8")
    args = ["--checkpoint-interval-s", "86400", "--checkpoint-interval", "1000000000", *extra]
    crawl = "--crawl-stop-s" in extra
    with log_path.open("wb") as log_file:
        proc, notify = start_small_daemon(tmp_path, args, crawl=crawl, stderr=log_file, program=program)
    try:
        step = wait_daemon(run, proc, lambda d: d["training"]["step"] > 0, "the daemon training", 180)
        step = step["training"]["step"]
        assert list_checkpoints(state / "checkpoints") == []
        stop(proc, run)
        assert proc.wait(timeout=120) == 0, log_path.read_text(errors="replace").splitlines()[-30:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
    lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    assert any("control exited (status 0)" in line for line in lines), lines[-30:]
    final = list_checkpoints(state / "checkpoints")
    assert len(final) == 1 and int(final[0].name.removeprefix("step-")) >= step, final
    assert lines[-1].endswith("crystalline.supervisor: stopped"), lines[-30:]
    assert not (run / "crystalline.sock").exists()  # the socket closed (and removed)
    # /dev/shm is clean: the supervisor's ring and the engine's segments were unlinked
    assert list_segments(ring_instance(state / "checkpoints")) == []
    assert list_segments(engine_instance(state / "checkpoints")) == []
    assert group_survivors(proc.pid) == [], "the daemon left processes behind"
    return lines


def test_a_failing_stop_step_is_logged_and_the_rest_of_the_stop_still_runs(tmp_path: Path) -> None:
    def sigterm(proc: subprocess.Popen[bytes], _run: Path) -> None:
        proc.send_signal(signal.SIGTERM)

    lines = _stopped_daemon(tmp_path, (FAILING_INGEST_STOP,), sigterm)
    failed = [line for line in lines if "stop: ingest's stop failed" in line]
    said = "RuntimeError: injected: ingest's stop failed"
    assert len(failed) == 1 and failed[0].endswith(said), lines[-30:]


def test_a_thread_the_stop_leaves_working_is_given_up_on_at_exit_s_and_the_daemon_exits(
    tmp_path: Path,
) -> None:
    """Ingest's close never returns (injected): the stop cuts its wait (7 s), goes on, and at
    EXIT_S (10 s here) exits without the thread, saying so in one line, instead of waiting for it
    in asyncio.run's executor shutdown (which has no deadline on 3.11) past TimeoutStopSec."""

    def sigterm(proc: subprocess.Popen[bytes], _run: Path) -> None:
        proc.send_signal(signal.SIGTERM)

    lines = _stopped_daemon(tmp_path, (STUCK_INGEST_CLOSE,), sigterm)
    assert any("stop: closing ingest was out of the stop's time" in line for line in lines), lines[-30:]
    given_up = [line for line in lines if "thread(s) still working" in line]
    assert len(given_up) == 1 and "exiting without them" in given_up[0], lines[-30:]


def test_a_thread_the_crawl_loop_holds_is_given_up_on_at_exit_s_and_the_daemon_exits(tmp_path: Path) -> None:
    """The crawl runs its own loop in a daemon thread; a thread of that loop's executor is held at
    the stop (injected: a WARC append on a hung disk). The interpreter's exit joins every
    executor's threads with no deadline, and only the supervisor loop's were waited for: the
    daemon would wait for that thread past TimeoutStopSec (here: the hour it is held). Now it is
    waited for until EXIT_S (6 s here) like the others, named in the one line, and the daemon
    exits 0."""

    lines = _stopped_daemon(tmp_path, (HELD_CRAWL_THREAD,), _add_url_then_sigterm, CRAWL_EXTRA)
    assert any("the crawl did not stop within 2 s" in line for line in lines), lines[-30:]
    given_up = [line for line in lines if "thread(s) still working" in line]
    assert len(given_up) == 1 and "(crystalline-crawl-thread_0)" in given_up[0], lines[-30:]


def test_a_crawl_given_up_on_whose_loop_has_only_idle_threads_exits_without_waiting_for_them(
    tmp_path: Path,
) -> None:
    """The crawl ignores the stop (injected) after its loop used its executor once, as every
    page's parse does: the stop gives it up after crawl-stop-s. Its loop's executor was never
    shut down, so its idle thread counted as one the exit joins and the stop waited for it until
    EXIT_S, logging it as still working (review R15 D1). Now the stop shuts that executor down
    when it gives the crawl up: the idle thread ends, and the daemon exits with no such line."""
    lines = _stopped_daemon(tmp_path, (IDLE_CRAWL_THREAD,), _add_url_then_sigterm, CRAWL_EXTRA)
    assert any("the crawl did not stop within 2 s" in line for line in lines), lines[-30:]
    assert not any("thread(s) still working" in line for line in lines), lines[-30:]


def _add_url_then_sigterm(proc: subprocess.Popen[bytes], run: Path) -> None:
    closed = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{closed.getsockname()[1]}/"
    closed.close()  # nothing listens: the pass fails at once, the crawl thread runs on
    reply = request(run / "crystalline.sock", {"cmd": "add-url", "url": url})
    assert reply["ok"], reply
    proc.send_signal(signal.SIGTERM)


def test_a_signal_after_the_stop_command_is_the_first_signal_not_a_second(tmp_path: Path) -> None:
    def command_then_sigterm(proc: subprocess.Popen[bytes], run: Path) -> None:
        assert request(run / "crystalline.sock", {"cmd": "stop"}, 30.0)["data"] == {"daemon": "stopping"}
        proc.send_signal(signal.SIGTERM)  # e.g. systemctl stop during `crystalline stop`'s stop

    lines = _stopped_daemon(tmp_path, ("-m", "crystalline.daemon.cli"), command_then_sigterm)
    assert any("signal 15: stopping" in line for line in lines), lines[-30:]
    hurried = [line for line in lines if "second signal" in line]
    assert hurried == [], hurried


def test_the_stop_completes_with_dashboard_peers_that_never_read(tmp_path: Path) -> None:
    """The dashboard's close (aiohttp's, CLOSE_S; the stop's 54 s worst case adds CUT_S) ends with real
    peers holding connections open that never read nor answer (an event stream, a connection
    that sent nothing): the stop goes on past it to the end, and the peers get EOF."""
    peers: list[socket.socket] = []

    def peers_then_sigterm(proc: subprocess.Popen[bytes], run: Path) -> None:
        url = json.loads((run / "dashboard.json").read_text(encoding="utf-8"))["url"]
        host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
        for head in (f"GET /api/events HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode(), b""):
            peer = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # what it is sent backs up
            peer.connect((host, int(port)))
            peer.sendall(head)
            peers.append(peer)
        wait_daemon(run, proc, lambda d: d["http"]["event_clients"] >= 1, "the event stream served", 60)
        proc.send_signal(signal.SIGTERM)

    lines = _stopped_daemon(
        tmp_path, ("-m", "crystalline.daemon.cli"), peers_then_sigterm, ("--http", "127.0.0.1:0")
    )
    assert not any("aiohttp's close did not end" in line for line in lines), lines[-30:]
    for peer in peers:
        peer.settimeout(60)
        while peer.recv(65536):  # what was sent, then EOF
            pass
        peer.close()
