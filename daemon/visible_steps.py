"""Which store documents each training step was cut from, kept on disk so a restarted control or
a restarted supervisor cuts the same steps from the same documents (bit-identical batches).

The documents visible are a prefix of the store's commit order, so one number per step says
them. They may change only at the first step of a block of ``BLOCK`` steps: when the ring cuts
a step past the recorded ones it reserves the next block for the documents visible now and
writes ``{"through": last step of the block, "changes": [[step, documents], ...]}`` (temp
file, fsync, rename) before the batch is handed out; one write per block, not per step, and a
new document reaches training at most a block later. A step up to ``through`` is cut again
from its recorded documents; a step past it is new. Changes older than the oldest kept
checkpoint are dropped (nothing resumes before it), so the file stays small.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from crystalline.durable import write_atomic

log = logging.getLogger("crystalline.ring")

BLOCK = 8
VERSION = 1


class VisibleSteps:
    """The record in ``path`` (created at the first step cut)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.through = -1
        self.changes: list[tuple[int, int]] = []
        self.write_error: str | None = None  # the last write failed (a full disk)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("version") != VERSION:
                raise ValueError(f"version {data.get('version')!r}")
            self.through = int(data["through"])
            self.changes = [(int(s), int(n)) for s, n in data["changes"]]
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # the steps already cut will be cut from the documents visible now: exact resume
            # is lost for them, training is not
            log.error("%s is unreadable (%s): starting a new record", path, exc)

    def documents_at(self, step: int) -> int | None:
        """The documents step ``step`` was (or, within a reserved block, will be) cut from;
        None for a step past the record."""
        if step > self.through:
            return None
        found = None
        for at, documents in self.changes:
            if at > step:
                break
            found = documents
        return found

    def record(self, step: int, documents: int, floor: int = 0) -> None:
        """Reserve the block from ``step`` (past the record) for ``documents``; ``floor``: the
        oldest step anything may resume from (the oldest kept checkpoint)."""
        if step <= self.through:
            raise ValueError(f"step {step} is recorded already (through {self.through})")
        if not self.changes or self.changes[-1][1] != documents:
            self.changes.append((step, documents))
        keep = [i for i, (at, _) in enumerate(self.changes) if at <= floor]
        if keep:  # the last change at or before the floor still says what the floor step used
            self.changes = self.changes[keep[-1] :]
        self.through = step + BLOCK - 1
        self._write()

    def forget_from(self, step: int) -> None:
        """Drop what was recorded for ``step`` and later (the store lost those documents)."""
        self.changes = [(at, n) for at, n in self.changes if at < step]
        self.through = min(self.through, step - 1)
        self._write()

    def _write(self) -> None:
        """Write the record; a failure (a full disk) is logged, not raised: training goes on,
        and only a restart before the next successful write may cut those steps anew."""
        data = {"version": VERSION, "through": self.through, "changes": self.changes}
        try:
            write_atomic(self.path, json.dumps(data).encode("utf-8"))
        except OSError as exc:
            if self.write_error is None:
                log.error("%s could not be written (%s); training goes on", self.path, exc)
            self.write_error = str(exc)
            return
        if self.write_error is not None:
            log.info("%s written again", self.path)
        self.write_error = None
