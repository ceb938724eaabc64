"""A worker process: forward/backward on its rows of a ring slot, its share of the reduction
and of the AdamW update, driven by control's messages.

Started by control as ``python -m crystalline.workers.worker SPEC_JSON`` with BLAS pinned to
one thread in its environment (12 workers on 2 cores must not each spawn a BLAS thread per
core). It writes only its own gradient row and the parameter/optimizer slice control hands it
for the current step, and never the buffers of the published version, so a phase can be redone
by another incarnation after a crash.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from typing import Any

import numpy as np
import zmq

from crystalline.log_lines import log_to_stderr
from crystalline.shm.blocks import ArrayBlock

from . import protocol as P
from .ema import decay_at, ema_step
from .micro_batch import accumulated_grad
from .model import GPT
from .model_config import ModelConfig
from .optimizer import hybrid_step, update_plan
from .optimizer_config import AdamWConfig

log = logging.getLogger("crystalline.worker")

POLL_MS = 500  # how often an idle worker checks that its parent is still alive


class Worker:
    """State of one worker incarnation; ``handle`` serves one request."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.index: int = spec["worker"]
        self.parent_pid: int = spec["parent_pid"]
        self.model = GPT(ModelConfig(**spec["model"]))
        self.adamw = AdamWConfig(**spec["adamw"])
        self.size = self.model.num_params
        self.state = ArrayBlock.attach(spec["state_block"])
        self.grads = ArrayBlock.attach(spec["grads_block"])
        self.ring = ArrayBlock.attach(spec["ring_block"])
        s = self.state.arrays
        self.params, self.m, self.v, self.gsum = s["params"], s["adam_m"], s["adam_v"], s["gsum"]
        self.ema = s.get("ema")  # the weights' moving average, when the run keeps one
        self.row = self.grads.arrays["rows"][self.index, : self.size]
        self.rows = self.grads.arrays["rows"][:, : self.size]
        self.slots = self.ring.arrays["slots"]
        self.decay_mask = self.model.table.decay_mask()
        self.plan = update_plan(self.model.table.specs, self.adamw)
        self._scratch = (np.empty(self.size, np.float32), np.empty(self.size, np.float32))
        self.micro_batch: int = spec.get("micro_batch", 0)

    def close(self) -> None:
        del self.params, self.m, self.v, self.ema, self.gsum, self.row, self.rows, self.slots
        for block in (self.state, self.grads, self.ring):
            block.close()

    def handle(self, msg: dict[str, Any]) -> bytes:
        kind = msg["type"]
        seq = msg["seq"]
        if kind == P.COMPUTE:
            t0 = time.perf_counter()
            lo, hi = msg["rows"]
            if hi > lo:
                windows = self.slots[msg["slot"], lo:hi]
                # the scratch buffers are free outside the update
                loss_sum, tokens = accumulated_grad(
                    self.model, self.params[msg["src"]], windows, self.row, self._scratch[0],
                    self.micro_batch, scale=msg["scale"],
                )  # fmt: skip
            else:
                self.row[...] = 0.0  # no rows this step: contribute nothing to the sum
                loss_sum, tokens = 0.0, 0
            finite = bool(np.isfinite(loss_sum))
            return P.encode(
                P.DONE,
                step=msg["step"],
                seq=seq,
                loss_sum=loss_sum,
                tokens=tokens,
                finite=finite,
                compute_s=time.perf_counter() - t0,
            )
        if kind == P.REDUCE:
            lo, hi = msg["lo"], msg["hi"]
            out = self.gsum[lo:hi]
            # rows are summed in worker order whoever does it, so a redo gives the same bits
            np.copyto(out, self.rows[0, lo:hi])
            for r in range(1, self.rows.shape[0]):
                out += self.rows[r, lo:hi]
            sq = float(np.dot(out, out))
            if "update" in msg:  # speculative: right whenever control finds no clipping needed
                self._update(lo, hi, **msg["update"])
            return P.encode(P.REDUCED, step=msg["step"], seq=seq, sq=sq)
        if kind == P.UPDATE:
            self._update(msg["lo"], msg["hi"], msg["src"], msg["dst"], msg["lr"], msg["t"], msg["coef"])
            return P.encode(P.UPDATED, step=msg["step"], seq=seq)
        return P.encode(P.ERROR, seq=seq, reason=f"unknown request {kind!r}")

    def _update(self, lo: int, hi: int, src: int, dst: int, lr: float, t: int, coef: float) -> None:
        """AdamW (and Muon on the whole matrices it owns) on slice [lo, hi), then the moving
        average of the slice's new weights: reads buffer ``src`` and ``gsum``, writes buffer
        ``dst`` only, so it can be redone (with another ``coef``) until control publishes ``dst``."""
        hybrid_step(
            self.plan,
            lo,
            hi,
            (self.params[src], self.m[src], self.v[src]),
            self.gsum,
            self.decay_mask,
            (self.params[dst], self.m[dst], self.v[dst]),
            self._scratch,
            t,
            lr,
            self.adamw,
            coef,
        )
        if self.ema is not None:
            ema_step(self.ema[src, lo:hi], self.params[dst, lo:hi], decay_at(t, self.adamw.ema_decay),
                     self.ema[dst, lo:hi], self._scratch[0][: hi - lo])  # fmt: skip


def serve(spec: dict[str, Any]) -> int:
    """Connect, say HELLO, serve requests until STOP or the parent is gone."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, P.identity(spec["worker"]))
    sock.connect(spec["endpoint"])
    worker = Worker(spec)
    try:
        sock.send(P.encode(P.HELLO, worker=worker.index, pid=os.getpid(), incarnation=spec["incarnation"]))
        while True:
            if not sock.poll(POLL_MS):
                if os.getppid() != worker.parent_pid:
                    log.warning("worker %d: control is gone, exiting", worker.index)
                    return 1
                continue
            try:
                msg = P.decode(sock.recv())
            except P.ProtocolError as exc:
                log.warning("worker %d: dropping bad message: %s", worker.index, exc)
                continue
            if msg["type"] == P.STOP:
                return 0
            sock.send(worker.handle(msg))
    finally:
        worker.close()
        sock.close(0)
        ctx.term()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    spec = json.loads(args[0])
    # Ctrl-C reaches the whole process group; control decides when workers stop (STOP)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    log_to_stderr(f"%(levelname)s worker-{spec['worker']:02d}: %(message)s")
    return serve(spec)


if __name__ == "__main__":
    sys.exit(main())
