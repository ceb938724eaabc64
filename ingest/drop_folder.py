"""The drop folder: files put into a directory are ingested once and then moved away.

A file counts as complete when it is closed after writing or renamed into the folder
(inotify ``IN_CLOSE_WRITE`` / ``IN_MOVED_TO`` through watchdog), never on creation, so a
half-written file is not read. At start the folder is scanned for what arrived while the
daemon was down; files modified in the last ``settle_s`` seconds are left for their close
event. Every file ends in ``done/`` or in ``failed/`` beside a ``<name>.reason.txt``; nothing
is deleted. A file moved in from outside the folder is seen as created, not moved; it is
taken once its mtime (kept by ``mv``) is ``settle_s`` old. Only the top level is watched;
hidden and partial-download names are ignored.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

log = logging.getLogger("crystalline.ingest.drop_folder")

_PARTIAL_SUFFIXES = (".part", ".partial", ".crdownload", ".tmp", ".download", ".swp")


_MAX_NAME_BYTES = 200  # + "-NNN" + ".reason.txt" stays under NAME_MAX (255)


def _short_name(name: str) -> str:
    """``name`` cut (keeping its extension) to at most ``_MAX_NAME_BYTES`` bytes."""
    if len(os.fsencode(name)) <= _MAX_NAME_BYTES:
        return name
    stem, ext = os.path.splitext(name)
    ext = ext if len(os.fsencode(ext)) <= 16 else ""
    raw = os.fsencode(stem)[: _MAX_NAME_BYTES - len(os.fsencode(ext)) - 1]
    return os.fsdecode(raw).rstrip() + "~" + ext


def _wanted(path: Path) -> bool:
    return not path.name.startswith(".") and not path.name.endswith(_PARTIAL_SUFFIXES)


class _Handler(FileSystemEventHandler):
    def __init__(self, folder: DropFolder) -> None:
        self.folder = folder

    def on_closed(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileClosedEvent) and not event.is_directory:
            self.folder.offer(Path(os.fsdecode(event.src_path)))

    def on_created(self, event: FileSystemEvent) -> None:
        # A file moved in from outside the watched folder arrives as "created" (inotify cannot
        # pair the move); so does one just opened for writing. See DropFolder.settling.
        if isinstance(event, FileCreatedEvent) and not event.is_directory:
            self.folder.settling(Path(os.fsdecode(event.src_path)))

    def on_moved(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileMovedEvent) and not event.is_directory:
            self.folder.offer(Path(os.fsdecode(event.dest_path)))


class DropFolder:
    """Watches ``root``; :meth:`take` hands out complete files, :meth:`finish` moves them away."""

    def __init__(self, root: Path, settle_s: float = 2.0) -> None:
        self.root = Path(root).resolve()
        self.done = self.root / "done"
        self.failed = self.root / "failed"
        for d in (self.root, self.done, self.failed):
            d.mkdir(parents=True, exist_ok=True)
        self.settle_s = settle_s
        self._queue: dict[Path, None] = {}  # ordered set: arrival order, no repeats
        self._settling: dict[Path, None] = {}  # created, not yet closed
        self._lock = threading.Lock()
        self._observer: Observer | None = None  # type: ignore[valid-type]

    def start(self) -> None:
        """Start watching, then scan for files that arrived before (in that order, so none is missed)."""
        observer = Observer()
        observer.schedule(_Handler(self), str(self.root), recursive=False)
        observer.daemon = True
        observer.start()
        self._observer = observer
        self.scan()

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=timeout_s)
            self._observer = None

    def offer(self, path: Path) -> None:
        """Queue ``path`` if it is a file directly in the folder (called from watchdog's thread)."""
        if path.parent != self.root or not _wanted(path):
            return
        with self._lock:
            self._settling.pop(path, None)
            self._queue[path] = None

    def settling(self, path: Path) -> None:
        """Note a created file: it is queued on its close event, or by :meth:`take` once its
        mtime is ``settle_s`` old (a file moved in from elsewhere keeps its old mtime and gets
        no close event)."""
        if path.parent == self.root and _wanted(path):
            with self._lock:
                self._settling[path] = None

    def _promote_settled(self) -> None:
        now = time.time()
        with self._lock:
            candidates = list(self._settling)
        for p in candidates:
            try:
                settled = now - p.stat().st_mtime >= self.settle_s
            except FileNotFoundError:
                with self._lock:
                    self._settling.pop(p, None)
                continue
            if settled:
                self.offer(p)

    def scan(self) -> int:
        """Queue the files already in the folder that have settled, and note the younger ones as
        settling (``take`` queues them once they are ``settle_s`` old, in case their close event
        came before the watch began); returns how many were queued now."""
        now = time.time()
        found = 0
        for p in sorted(self.root.iterdir(), key=lambda p: p.name):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            if not _wanted(p) or p.is_dir():
                continue
            if p.is_symlink():
                self.offer(p)  # take() moves it to failed/ unread
                found += 1
                continue
            if not p.is_file():
                log.info("skipped %r: not a regular file", p.name)  # a FIFO or socket would block
                continue
            if now - st.st_mtime >= self.settle_s:
                self.offer(p)
                found += 1
            else:
                self.settling(p)
        return found

    def pending(self) -> int:
        with self._lock:
            return len(self._queue) + len(self._settling)

    def take(self, max_files: int) -> list[Path]:
        """Up to ``max_files`` queued paths that still exist, oldest first."""
        self._promote_settled()
        out: list[Path] = []
        links: list[Path] = []
        with self._lock:
            for p in list(self._queue):
                if len(out) >= max_files:
                    break
                del self._queue[p]
                if p.is_symlink():
                    links.append(p)
                elif p.is_file():
                    out.append(p)
        for p in links:  # never read through a link: it could point anywhere on the machine
            self.finish(p, "symbolic link: not followed")
        return out

    def _free_name(self, directory: Path, name: str) -> Path:
        """A name in ``directory`` not taken yet, short enough that it and its ``.reason.txt``
        (and a ``-N`` suffix) stay under the file system's 255-byte limit."""
        name = _short_name(name)
        target = directory / name
        n = 1
        while target.exists() or target.with_name(target.name + ".reason.txt").exists():
            stem, dot, ext = name.partition(".")
            target = directory / f"{stem}-{n}{dot}{ext}"
            n += 1
        return target

    def finish(self, path: Path, failed_reason: str | None) -> Path:
        """Move ``path`` to ``done/``, or to ``failed/`` with its reason file; returns the new path."""
        if failed_reason is None:
            target = self._free_name(self.done, path.name)
            os.replace(path, target)
        else:
            target = self._free_name(self.failed, path.name)
            reason = target.with_name(target.name + ".reason.txt")
            tmp = reason.with_name(f".{reason.name}.tmp")
            tmp.write_text(failed_reason.strip() + "\n", encoding="utf-8", errors="backslashreplace")
            os.replace(tmp, reason)
            os.replace(path, target)
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        log.info("%r -> %r", path.name, str(target.relative_to(self.root)))
        return target
