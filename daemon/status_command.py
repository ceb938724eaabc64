"""`crystalline status`: ask the running daemon what it is doing.

Exit status: 0 healthy, 1 unreachable, 2 degraded or stuck. The verdict is the daemon's own
(the ``health`` object of the reply, computed by ``daemon/health.py``, which also decides the
watchdog's pings): this command prints it and never judges by itself.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from crystalline.exit_status import DEGRADED
from crystalline.exit_status import ERROR as UNREACHABLE
from crystalline.exit_status import OK as HEALTHY

from .status_client import request


def default_socket() -> Path:
    runtime = os.environ.get("RUNTIME_DIRECTORY")
    if runtime:
        return Path(runtime) / "crystalline.sock"
    return Path("state/run/crystalline.sock").absolute()


def verdict(data: dict[str, Any]) -> tuple[int, list[str]]:
    """(exit status, reasons) from the daemon's ``health`` object in a status ``data``."""
    health = data.get("health")
    if not isinstance(health, dict) or not isinstance(health.get("reasons"), list):
        return DEGRADED, ["the daemon's reply has no health verdict"]
    reasons = [str(r) for r in health["reasons"]]
    if health.get("verdict") == "stuck":
        reasons.insert(0, "stuck: the watchdog is no longer fed")
    return (HEALTHY if health.get("verdict") == "ok" else DEGRADED), reasons


def _fmt(x: Any, spec: str = ".4f") -> str:
    if isinstance(x, int | float) and not (isinstance(x, float) and not math.isfinite(x)):
        return format(x, spec)
    return "-"


SYMBOL = {"idle": "o", "computing": "*", "reducing": "+", "updating": "^", "dead": "x", "restarting": "!"}


def ring(workers: list[dict[str, Any]]) -> list[str]:
    """The workers drawn around node zero, clockwise from the top (legend below)."""
    if not workers:
        return ["  (no worker processes: training runs in node zero)"]
    n = len(workers)
    width, height = 44, 9
    grid = [[" "] * width for _ in range(height)]
    cx, cy = width // 2, height // 2
    for i, w in enumerate(workers):
        angle = 2 * math.pi * i / n - math.pi / 2
        x = round(cx + math.cos(angle) * 18)
        y = round(cy + math.sin(angle) * 4)
        label = f"{w['id']:02d}{SYMBOL.get(str(w.get('state')), '?')}"
        for j, ch in enumerate(label):
            if 0 <= x - 1 + j < width:
                grid[y][x - 1 + j] = ch
    center = "[node 0]"
    for j, ch in enumerate(center):
        grid[cy][cx - len(center) // 2 + j] = ch
    lines = ["  " + "".join(row).rstrip() for row in grid]
    lines.append("  " + "  ".join(f"{s} {k}" for k, s in SYMBOL.items()))
    return lines


def _place(rank: Any, world: Any = None) -> str:
    """``rank 1 of 2`` (``rank 1`` without ``world``), or ``not in a group`` for a member in
    none (status's rank null, a member's own info -1: joining, forming, paused, cut off)."""
    if not isinstance(rank, int) or rank < 0:
        return "not in a group"
    return f"rank {rank}" + (f" of {world}" if world is not None else "")


def _replaced(r: dict[str, Any] | None) -> str:
    """This member's own history, replaced by the group's (a restarted host that stepped alone)."""
    if not r:
        return ""
    return f"  own state of step {r.get('step')} replaced by the group's of step {r.get('by_step')}"


def cluster(k: dict[str, Any] | None, digest: str | None) -> list[str]:
    """``--cluster``: this member's place, then one line per member ([] without a cluster)."""
    if not k:
        return []
    mode = f"DiLoCo every {k['outer_every']}" if k.get("outer_every") else "allreduce every step"
    lines = [
        f"cluster      {k.get('state')}  generation {k.get('generation') or '-'}  "
        f"{_place(k.get('rank'), k.get('world'))}  at {k.get('rendezvous')}  {mode}  digest {digest or '-'}"
        + (f"  refused {k['refused_connections']} connections" if k.get("refused_connections") else "")
        + (f"  rendezvous guard {k['guard']}" if k.get("guard") not in (None, "ok") else "")
        + _replaced(k.get("replaced"))
        + (f"  {k['discarded_steps']} local steps discarded" if k.get("discarded_steps") else "")
    ]
    for m in k.get("members") or []:
        lines.append(
            f"  {m.get('address', '?'):<15} {_place(m.get('rank'))}  step {m.get('step', '-')}  "
            f"allreduce {_fmt(m.get('allreduce_ms'), '.1f')} ms {m.get('allreduce_bytes', '-')} B  "
            f"share {_fmt(m.get('data_share'), '.2f')}  {m.get('state', '')}"
        )
    return lines


def vocabulary(v: dict[str, Any] | None) -> list[str]:
    """The learned vocabulary's line (the base preset), or none."""
    if not v:
        return []
    if v.get("learned"):
        text = f"learned, {v.get('vocab_size')} tokens  documents re-tokenized {v.get('derived_documents')}"
    else:
        text = f"not learned yet: learns from the first {v.get('learns_from_bytes')} bytes of training text"
    return [f"vocabulary   {text}" + (f"  error: {v['error']}" if v.get("error") else "")]


def summary(data: dict[str, Any]) -> str:
    t = data.get("training") or {}
    c = data.get("crawler") or {}
    i = data.get("ingest") or {}
    r = data.get("ring") or {}
    lines = [
        f"crystalline  {data.get('state', '?')}  up {_fmt(data.get('uptime_s'), '.0f')} s",
        f"training     step {t.get('step', '-')}  tokens {t.get('tokens', '-')}  loss {_fmt(t.get('loss'))}  "
        f"val {_fmt(t.get('val_loss'))}  {_fmt(t.get('tokens_per_s'), ',.0f')} tok/s  "
        f"params v{t.get('params_version', '-')}  "
        + (
            f"checkpoint @{t['last_checkpoint_step']}"
            if t.get("last_checkpoint_step") is not None
            else "checkpoint none yet"
        ),
        # bits per byte and perplexity beside each loss: models with other tokenizers compare
        f"per byte     loss {_fmt(t.get('bpb'))} bpb (perplexity {_fmt(t.get('perplexity'), '.2f')})  "
        f"val {_fmt(t.get('val_bpb'))} bpb (perplexity {_fmt(t.get('val_perplexity'), '.2f')})"
        + (
            f"  raw weights' val {_fmt(t.get('val_loss_raw'))} ({_fmt(t.get('val_bpb_raw'))} bpb)"
            if t.get("val_loss_raw") is not None
            else ""
        ),
    ]
    trend = t.get("loss_trend") or []
    if trend:
        lines.append("loss trend   " + " ".join(_fmt(x, ".3f") for x in trend[-8:]))
    lines += ring(t.get("workers", []))
    restarts = sum(w.get("restarts", 0) for w in t.get("workers", []))
    lines.append(f"workers      {len(t.get('workers', []))}  restarts {restarts}")
    lines.append(
        f"crawler      fetched {c.get('fetched', '-')}  queued {c.get('queued', '-')}  "
        f"errors {c.get('errors', '-')}  hosts {c.get('host_count', c.get('hosts', '-'))}"
        + (f"  deferred {c['deferred_hosts']}" if c.get("deferred_hosts") else "")
    )
    lines.append(
        f"ingest       documents {i.get('documents', '-')}  failed {i.get('failed', '-')}  "
        f"filtered {i.get('filtered', '-')}  duplicates {i.get('duplicates', '-')}  "
        f"pending {i.get('pending', '-')}  tokens {i.get('tokens', '-')}"
    )
    for label, key in (
        ("filtered", "filtered_by_rule"),
        ("lines cut", "lines_removed"),
        ("pii", "pii_replaced"),
    ):
        counts = i.get(key) or {}
        if counts:
            lines.append(f"  {label:<11}" + "  ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if i.get("blocked"):  # dropped files the daemon may not move: skipped, tried again later
        shown = "; ".join(f"{b.get('name')}: {b.get('reason')}" for b in i.get("blocked_files") or [])
        lines.append(f"  blocked    {i['blocked']}  {shown}".rstrip())
    lines.append(f"ring         slots {r.get('slots', '-')}  ready {r.get('ready', '-')}")
    lines += vocabulary(data.get("vocabulary"))
    lines += cluster(data.get("cluster"), t.get("params_digest"))
    h = data.get("http") or {}
    if h.get("url") or h.get("error"):
        lines.append(f"dashboard    {h.get('url') or 'off: ' + str(h.get('error'))}")
    return "\n".join(lines)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="ask the running daemon what it is doing",
        description="Print the daemon's status: exit 1 if unreachable, 2 if degraded.",
    )
    add_socket_options(p)
    p.add_argument("--json", action="store_true", help="print the data object as JSON")
    p.add_argument("--watch", action="store_true", help="refresh every 2 s until interrupted")
    p.set_defaults(func=run_status_command)


MAX_TIMEOUT_S = 3600.0  # the longest wait status and ctl take (a command is given 120 s)
MIN_TIMEOUT_S = 0.001  # the shortest: below it a missing socket read as "did not reply"


def add_socket_options(p: argparse.ArgumentParser, timeout_s: float = 5.0) -> None:
    """Where the daemon's socket is, and how long to wait for it (status and ctl)."""
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--socket", type=Path, help="the status socket (default: $RUNTIME_DIRECTORY or ./state/run)"
    )
    where.add_argument("--runtime-dir", type=Path, help="the daemon's runtime directory")
    help_text = f"seconds to wait for the daemon, at most {MAX_TIMEOUT_S:g} (default {timeout_s:g})"
    p.add_argument("--timeout", type=_timeout, default=timeout_s, help=help_text)


def _timeout(text: str) -> float:
    """--timeout: a number of seconds from MIN_TIMEOUT_S to MAX_TIMEOUT_S (inf overflowed the
    socket's timeout, nan and 0 or less gave no wait at all, 1e-320 timed out before a missing
    socket's own error)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not MIN_TIMEOUT_S <= value <= MAX_TIMEOUT_S:  # nan too
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds at least {MIN_TIMEOUT_S:g} and at most {MAX_TIMEOUT_S:g}, "
            f"got {text!r}"
        )
    return value


def socket_of(args: argparse.Namespace) -> Path:
    return args.socket or (args.runtime_dir / "crystalline.sock" if args.runtime_dir else default_socket())


def run_status_command(args: argparse.Namespace) -> int:
    path = socket_of(args)
    while True:
        code = _once(path, args)
        if not args.watch:
            return code
        time.sleep(2.0)


def _once(path: Path, args: argparse.Namespace) -> int:
    try:
        reply = request(path, {"cmd": "status"}, timeout_s=args.timeout)
    except (OSError, ValueError) as exc:
        print(f"crystalline: daemon unreachable at {path}: {exc}", file=sys.stderr)
        return UNREACHABLE
    if not reply.get("ok"):
        print(f"crystalline: status failed: {reply.get('error')}", file=sys.stderr)
        return UNREACHABLE
    data = reply.get("data") or {}
    code, reasons = verdict(data)
    if args.json:
        print(json.dumps(data, indent=None if not args.watch else 2))
    else:
        if args.watch:
            print("\033[2J\033[H", end="")
        print(summary(data))
        for reason in reasons:
            print(f"degraded: {reason}")
    sys.stdout.flush()
    return code
