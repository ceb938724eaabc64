"""The dashboard's curves: a bounded history of the daemon's figures that survives restarts.

One point every ``interval_s`` (step, tokens, loss, validation loss and that of each source,
learning rate, tokens/s, pages fetched, documents ingested), taken from the status the socket serves. At most
``max_points`` are kept: when full, the older half is thinned to every second point, so the
recent past stays at full resolution and the distant past at a coarser one (a week at 5 s a
point would be 120,000 points; 2,000 cover it with the last hours fine-grained). The history is
written atomically to the state directory and read back at the next start.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("crystalline.dashboard")

FIELDS = ("step", "tokens", "loss", "val_loss", "lr", "tokens_per_s", "pages", "documents")
SOURCE_PREFIX = "val:"  # a point's validation loss of one source ("val:<source>", training.sources)
MAX_SOURCES = 16  # per point (control scores at most 16 sources an evaluation)
MAX_POINTS = 2000
INTERVAL_S = 5.0
SAVE_EVERY_S = 60.0
MAX_FILE_BYTES = 8 * 1024 * 1024  # a history file larger than this is not ours: ignored


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def point_from_status(status: dict[str, Any], now: float) -> dict[str, float | None]:
    """The figures of one status reply (the same dict `crystalline status --json` prints)."""
    training = status.get("training") or {}
    crawler = status.get("crawler") or {}
    ingest = status.get("ingest") or {}
    return {
        "t": round(now, 3),
        "step": _number(training.get("step")),
        "tokens": _number(training.get("tokens")),
        "loss": _number(training.get("loss")),
        "val_loss": _number(training.get("val_loss")),
        "lr": _number(training.get("lr")),
        "tokens_per_s": _number(training.get("tokens_per_s")),
        "pages": _number(crawler.get("fetched")),
        "documents": _number(ingest.get("documents")),
        **source_losses(training.get("sources")),
    }


def source_losses(lines: Any) -> dict[str, float | None]:
    """``{"val:<source>": validation loss}`` of status' ``training.sources`` (or of a saved
    point's keys), at most ``MAX_SOURCES``."""
    if isinstance(lines, dict):  # a saved point
        pairs = [(k, v) for k, v in lines.items() if isinstance(k, str) and k.startswith(SOURCE_PREFIX)]
    elif isinstance(lines, list):
        pairs = [
            (SOURCE_PREFIX + str(line["source"]), line.get("val_loss"))
            for line in lines
            if isinstance(line, dict) and "source" in line
        ]
    else:
        return {}
    return {k: _number(v) for k, v in pairs[:MAX_SOURCES]}


class MetricsHistory:
    def __init__(
        self, path: Path | None, max_points: int = MAX_POINTS, interval_s: float = INTERVAL_S
    ) -> None:
        if max_points < 4:
            raise ValueError(f"max_points must be at least 4, got {max_points}")
        self.path = path
        self.max_points = max_points
        self.interval_s = interval_s
        self.points: list[dict[str, float | None]] = []
        self._last_add = 0.0
        self._last_save = time.monotonic()
        self._dirty = False

    def load(self) -> None:
        """Read the saved history; a missing, oversized or malformed file starts an empty one."""
        if self.path is None:
            return
        try:
            if self.path.stat().st_size > MAX_FILE_BYTES:
                log.warning("%s is larger than %d bytes: starting a new history", self.path, MAX_FILE_BYTES)
                return
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("cannot read the metrics history %s (%s): starting a new one", self.path, exc)
            return
        raw = data.get("points") if isinstance(data, dict) else None
        if not isinstance(raw, list):
            log.warning("%s holds no list of points: starting a new history", self.path)
            return
        points = []
        for p in raw:
            if isinstance(p, dict) and _number(p.get("t")) is not None:
                points.append(
                    {"t": float(p["t"]), **{k: _number(p.get(k)) for k in FIELDS}, **source_losses(p)}
                )
        self.points = points
        while len(self.points) > self.max_points:
            self._thin()

    def _thin(self) -> None:
        half = len(self.points) // 2
        self.points = self.points[:half:2] + self.points[half:]

    def due(self) -> bool:
        """Whether the next :meth:`add` would keep a point."""
        return time.monotonic() - self._last_add >= self.interval_s

    def add(self, point: dict[str, float | None], force: bool = False) -> bool:
        """Append ``point`` when ``interval_s`` has passed since the last one; True if added."""
        now = time.monotonic()
        if not force and now - self._last_add < self.interval_s:
            return False
        self._last_add = now
        self.points.append(point)
        if len(self.points) > self.max_points:
            self._thin()
        self._dirty = True
        return True

    def maybe_save(self, force: bool = False) -> None:
        """Write the history when it changed and ``SAVE_EVERY_S`` passed (or ``force``)."""
        if self.path is None or not self._dirty:
            return
        if not force and time.monotonic() - self._last_save < SAVE_EVERY_S:
            return
        self._last_save = time.monotonic()
        try:
            self.save()
        except OSError as exc:  # a full or read-only disk: the curves stay in memory
            log.warning("cannot write the metrics history %s: %s", self.path, exc)

    def save(self) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        data = json.dumps({"version": 1, "points": self.points}, separators=(",", ":"))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._dirty = False
