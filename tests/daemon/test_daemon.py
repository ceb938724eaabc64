"""`crystalline run` end to end: real processes, a notify socket of our own, the status socket."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _daemon_process import SMALL_MODEL, NotifyListener, group_survivors, wait_daemon
from _daemon_process import daemon_status as status
from _wait import until

from crystalline.daemon.status_server import request
from crystalline.shm.segments import list_segments
from crystalline.workers.trainer import engine_instance

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

SMALL = [
    *SMALL_MODEL,
    "--batch-size",
    "12",
    "--eval-interval",
    "25",
    "--eval-windows",
    "16",
    "--checkpoint-interval-s",
    "5",
]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="cd-", dir="/tmp") as d:  # AF_UNIX path limit
        yield Path(d)


def start(state: Path, run: Path, notify: NotifyListener) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ,
        NOTIFY_SOCKET=str(notify.path),
        WATCHDOG_USEC="2000000",
        OMP_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
    )
    env.pop("WATCHDOG_PID", None)
    cmd = [
        sys.executable,
        "-m",
        "crystalline.daemon.cli",
        "run",
        "--state-dir",
        str(state),
        "--runtime-dir",
        str(run),
        "--no-crawl",
        "--workers",
        "12",
        *SMALL,
    ]
    # its own process group, so that stop() can see whether any child outlived it
    return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, start_new_session=True)


def wait_for_step(run: Path, above: int, timeout_s: float, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    return wait_daemon(
        run,
        proc,
        lambda d: d["training"]["step"] > above,
        f"training did not pass step {above}",
        timeout_s,
        0.5,
    )


def wait_for_ingest(run: Path, files: int, timeout_s: float, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    """Status once nothing is pending and ``files`` dropped files are accounted for."""

    def done(data: dict[str, Any]) -> bool:
        ingest = data["ingest"]
        handled = sum(ingest.get(k, 0) for k in ("documents", "duplicates", "filtered", "failed"))
        return bool(ingest.get("pending") == 0 and handled >= files)

    what = f"ingest did not account for {files} files"
    return wait_daemon(run, proc, done, what, timeout_s, 0.5, show=lambda d: d.get("ingest"))


def stop(proc: subprocess.Popen[bytes], notify: NotifyListener) -> int:
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    assert notify.seen("STOPPING=1")
    assert group_survivors(proc.pid) == [], "the daemon exited leaving children behind"
    return code


def test_run_ready_status_stop_and_resume(short_dir: Path) -> None:
    state, run = short_dir / "state", short_dir / "run"
    notify = NotifyListener(short_dir / "notify")
    proc = start(state, run, notify)
    try:
        notify.wait_for("READY=1", 180, proc)
        data = wait_for_step(run, 5, 240, proc)  # training starts once the first batch is stored
        t = data["training"]
        # a run that never ends: the stable schedule, served through the weights' moving average;
        # bits per byte and perplexity beside the loss (bytes: bpb = loss / ln 2)
        assert t["schedule"] == "stable" and t["ema_decay"] > 0, t
        assert t["bpb"] == pytest.approx(t["loss"] / math.log(2)), t
        assert t["perplexity"] == pytest.approx(math.exp(t["loss"])), t
        workers = data["training"]["workers"]
        assert len(workers) == 12 and all(w["state"] not in ("dead", "restarting") for w in workers)
        assert len({w["pid"] for w in workers}) == 12
        # the engine's per-worker compute and barrier-wait times of the last step reach status
        assert all(isinstance(w["compute_ms"], float) and w["compute_ms"] > 0 for w in workers), workers
        assert all(isinstance(w["wait_ms"], float) and w["wait_ms"] >= 0 for w in workers), workers
        data = wait_for_ingest(run, 43, 240, proc)  # every bundled sample accounted for
        # sonnet-18.html and sonnet-18-scan.png hold one sonnet: MinHash keeps one, counts the other
        assert data["ingest"]["documents"] >= 40 and data["ingest"]["failed"] == 0
        assert data["ingest"]["tokens"] > 0
        pings = notify.seen("WATCHDOG=1")  # the watchdog is fed while training progresses (every 1 s)
        until(lambda: notify.seen("WATCHDOG=1") > pings, "no WATCHDOG=1 within 2.5 s", 2.5, 0.1)

        # the CLI: readable summary and --json, exit 0 when healthy
        cli = [sys.executable, "-m", "crystalline.daemon.cli", "status", "--runtime-dir", str(run)]
        out = subprocess.run(cli, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert "[node 0]" in out.stdout and "ingest" in out.stdout
        out = subprocess.run([*cli, "--json"], capture_output=True, text=True, timeout=30)
        assert json.loads(out.stdout)["training"]["step"] > 0
        # the verdict the CLI exited 0 by and the watchdog was fed by is the reply's
        assert json.loads(out.stdout)["health"] == {"verdict": "ok", "watchdog": True, "reasons": []}
        # the status socket's counters are reported: each request counts, none was refused
        before, after = status(run)["socket"], status(run)["socket"]
        assert after["requests"] > before["requests"] > 0 and after["refused_connections"] == 0
        # crystalline ctl: a command module's reply, and a refusal in one line
        ctl = [sys.executable, "-m", "crystalline.daemon.cli", "ctl", "--runtime-dir", str(run)]
        out = subprocess.run([*ctl, "checkpoint"], capture_output=True, text=True, timeout=90)
        assert out.returncode == 0, out.stderr
        assert (state / "checkpoints" / Path(json.loads(out.stdout)["path"]).name).is_dir()
        out = subprocess.run(
            [*ctl, "add-url", "url=ftp://example.org/"], capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 1 and out.stderr.startswith("crystalline: add-url: ")
        assert len(out.stderr.strip().splitlines()) == 1

        reply = request(
            run / "crystalline.sock", {"cmd": "generate", "prompt": "ROMEO:", "n": 20, "seed": 3}, 60
        )
        assert reply["ok"] and len(reply["data"]["text"]) > 0
        services = status(run)
        assert services["generation"]["state"] == "running" and services["generation"]["pid"] > 0
        assert services["http"]["state"] in ("running", "failed"), services["http"]  # 8470 may be taken
        assert services["crawler"]["state"] == "off" and services["ingest"]["state"] == "running"
        reply = request(run / "crystalline.sock", {"cmd": "no-such-command"})
        assert reply["ok"] is False

        step_before_stop = status(run)["training"]["step"]
        assert stop(proc, notify) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    checkpoints = sorted((state / "checkpoints").glob("step-*"))
    assert checkpoints, "no checkpoint written on stop"
    assert (checkpoints[-1] / "ema.npy").is_file()  # the checkpoint keeps the average it serves
    final_step = int(checkpoints[-1].name.split("-")[1])
    assert final_step >= step_before_stop
    assert list_segments(engine_instance(state / "checkpoints")) == []  # /dev/shm is clean
    assert not (run / "crystalline.sock").exists()

    # a second start resumes at (or past) the checkpointed step
    notify2 = NotifyListener(short_dir / "notify2")
    proc = start(state, run, notify2)
    try:
        notify2.wait_for("READY=1", 180, proc)
        data = wait_for_step(run, final_step, 240, proc)
        assert data["training"]["step"] > final_step
        # the checkpoint's record of the data (train documents) held against the intact store
        assert "checkpoint_warnings" not in data["training"], data["training"]
        assert stop(proc, notify2) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
        notify2.close()
    assert list_segments(engine_instance(state / "checkpoints")) == []


def test_status_cli_exit_code_when_unreachable(short_dir: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "crystalline.daemon.cli", "status", "--runtime-dir", str(short_dir)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1
    assert "unreachable" in out.stderr and len(out.stderr.strip().splitlines()) == 1
