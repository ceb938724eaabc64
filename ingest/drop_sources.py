"""The drop folder with its sub-folders: each first-level sub-folder is a source of its own.

Files dropped at the top of the drop folder are the source ``inbox``; a file dropped in
``<inbox>/<name>/`` is the source ``<name>`` (issue 13: validation loss and surprise are
reported per source). Each sub-folder is a :class:`DropFolder` of its own, with its own
``done/``, ``failed/`` and private ``.ingesting/``, so everything the drop folder guarantees
(claims by rename, links refused, nothing lost at a crash) holds there unchanged. Only one
level: a folder inside a sub-folder, however deep it goes, is left where it is (nothing in it
is read), listed in status with why (``blocked``: ``docs/nested/``) and logged once.

A sub-folder is taken only when it belongs to the daemon's user and is not writable by its
group or others without the sticky bit (the rule the README gives the inbox: otherwise whoever
may write there could move or replace what others dropped, and its ``done/`` and ``failed/``);
another, and one the daemon may not list or make ``done/`` in, is left alone, listed in status
(``blocked``: ``name/`` and why) and logged once, and tried again at each discovery, while the
rest of the drop folder is taken. Sub-folders are looked for at start and then every
``discover_s`` while files are taken, at most :data:`MAX_SUB_FOLDERS` of them (each holds
descriptors, an inotify watch and a thread); a sub-folder deleted or replaced is let go, and
its files left in its ``.ingesting/`` are taken when it comes back.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path

from .drop_folder import CLAIMS, Claimed, DropFolder, readable

log = logging.getLogger("crystalline.ingest.drop_sources")

MAX_SUB_FOLDERS = 32
_RESERVED = frozenset({"done", "failed", CLAIMS})
# a folder inside a sub-folder: left where it is, shown in status (blocked) and logged once
NESTED = "a folder inside a drop sub-folder: not read (sub-folders are one level deep)"


class DropSources:
    """The top drop folder and one :class:`DropFolder` per trusted sub-folder, taken from in
    turn; a claimed file's ``group`` names the sub-folder it came from ("" at the top)."""

    def __init__(
        self, root: Path, settle_s: float = 2.0, rescan_s: float = 30.0, discover_s: float = 5.0
    ) -> None:
        self.top = DropFolder(root, settle_s, rescan_s)
        self.root = self.top.root
        self.settle_s, self.rescan_s, self.discover_s = settle_s, rescan_s, discover_s
        self.subs: dict[str, DropFolder] = {}
        self._refused: dict[str, str] = {}  # sub-folders left alone, and why (logged once)
        self._discovered_at = float("-inf")
        self._started = False
        self._turn = 0  # which folder take_one starts with, so no source starves the others

    def _folder(self, item: Claimed) -> DropFolder:
        return self.subs[item.group] if item.group else self.top

    # -- sub-folders ----------------------------------------------------------------------

    def _trusted(self, name: str, st: os.stat_result) -> str | None:
        """Why the sub-folder ``name`` is left alone, or None to take it."""
        if st.st_uid != os.geteuid():
            return "it does not belong to the daemon's user"
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            return "it is writable by others without the sticky bit"
        return None

    def discover(self, let_go: bool = True) -> int:
        """Open the sub-folders that appeared and, with ``let_go`` (between batches, when none
        of their files is in flight), let go of those that went; returns how many are open."""
        self._discovered_at = time.monotonic()
        for name, folder in list(self.subs.items()):
            if let_go and not folder.intact():
                log.warning("drop sub-folder %s is gone or was replaced: let go", readable(name))
                folder.close()
                del self.subs[name]
        try:
            names = sorted(os.listdir(self.root))
        except OSError as e:
            log.warning("cannot list the drop folder %s: %s", self.root, e.strerror)
            return len(self.subs)
        refused: dict[str, str] = {}
        for name in names:
            if name in self.subs or name in _RESERVED or name.startswith(".") or ".untrusted-" in name:
                continue
            try:
                st = os.stat(self.root / name, follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISDIR(st.st_mode):
                continue
            why = self._trusted(name, st)
            if why is None and len(self.subs) >= MAX_SUB_FOLDERS:
                why = f"the drop folder has {MAX_SUB_FOLDERS} sub-folders already"
            opened: DropFolder | None = None
            if why is None:
                try:  # one we may not list, or not make done/ in: that sub-folder alone is refused
                    opened = DropFolder(self.root / name, self.settle_s, self.rescan_s, NESTED)
                except OSError as e:
                    why = f"it cannot be used as a drop folder ({e.strerror or e})"
            if opened is None:
                refused[name] = why or ""
                if self._refused.get(name) != why:
                    log.warning("drop sub-folder %s left alone: %s", readable(name), why)
                continue
            self.subs[name] = opened
            if self._started:
                opened.start()
            log.info("drop sub-folder %s: the source %s", readable(name), readable(name))
        self._refused = refused  # tried again at each discovery; one gone is forgotten
        return len(self.subs)

    # -- the DropFolder interface the ingestor uses -----------------------------------------

    def start(self) -> None:
        """Start watching (the ingestor calls it between batches: a no-op but for sub-folders
        that came or went)."""
        self._started = True
        self.top.start()
        if time.monotonic() - self._discovered_at >= self.discover_s:
            self.discover()
        for folder in self.subs.values():
            folder.start()

    def take_one(self) -> Claimed | None:
        """The next claimed file, from the top and each sub-folder in turn."""
        if time.monotonic() - self._discovered_at >= self.discover_s:
            self.discover(let_go=False)  # files of this batch may be in flight
        order: list[tuple[str, DropFolder]] = [("", self.top), *self.subs.items()]
        self._turn = (self._turn + 1) % len(order)
        for group, folder in order[self._turn :] + order[: self._turn]:
            item = folder.take_one()
            if item is not None:
                item.group = group
                return item
        return None

    def put_back(self, items: list[Claimed]) -> None:
        for item in reversed(items):  # each goes to the front of its folder's claims
            self._folder(item).put_back([item])

    def put_back_all(self) -> None:
        for folder in (self.top, *self.subs.values()):
            folder.put_back_all()

    def finish(self, item: Claimed, failed_reason: str | None) -> Path:
        return self._folder(item).finish(item, failed_reason)

    def pending(self) -> int:
        return sum(folder.pending() for folder in (self.top, *self.subs.values()))

    def blocked(self) -> list[tuple[str, str]]:
        """What waits unread in the drop folder, with why: files that could not be claimed,
        sub-folders left alone (``name/``), and each sub-folder's own (``name/file``, ``name/folder/``)."""
        out = list(self.top.blocked())
        out.extend((f"{readable(name)}/", why) for name, why in self._refused.items())
        for name, folder in self.subs.items():
            out.extend((f"{readable(name)}/{n}", reason) for n, reason in folder.blocked())
        return out

    def intact(self) -> bool:
        """Whether the top folder is intact (sub-folders come and go: see :meth:`discover`)."""
        return self.top.intact()

    def reopen(self) -> None:
        self.top.reopen()

    def close(self) -> None:
        for folder in self.subs.values():
            folder.close()
        self.subs.clear()
        self.top.close()
