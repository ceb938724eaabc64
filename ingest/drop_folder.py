"""The drop folder: files put into a directory are ingested once and then moved away.

A file counts as complete when it is closed after writing or renamed into the folder (inotify
``IN_CLOSE_WRITE`` / ``IN_MOVED_TO``), never on creation, so a half-written file is not read; a
file that only shows up as created (a hard link, or an event lost) is taken once its mtime is
``settle_s`` old. At start, when inotify's queue overflows, and every ``rescan_s`` when the
folder's mtime moved, the folder is listed again, so no file is stranded by a lost event. Only
the top level is watched; hidden and partial-download names are ignored, directories left alone
(with a ``folder_reason``, as in a sub-folder of :class:`DropSources`, each is listed by
:meth:`DropFolder.blocked` with that reason and logged once).

A file is *claimed* before it is read: renamed (through directory descriptors) into the private
``.ingesting/`` (mode 0700, the daemon's own), then opened there with ``O_NOFOLLOW |
O_NONBLOCK`` and checked with ``fstat``. Whoever can write to the inbox cannot touch what is in
``.ingesting/``, so what is read, hashed and moved on is one fixed file: a symbolic link swapped
in at the last moment is claimed as the link and refused, never followed. Symbolic links,
FIFOs, sockets, devices and hard links (a file with more than one name) are refused
unopened. A file that cannot be moved into ``.ingesting/`` for a reason of its own (another
user's file in a sticky-bit inbox: EPERM; a mount point: EBUSY) stays where it is, is listed by
:meth:`DropFolder.blocked` and tried again with backoff, while the others go on; only errors
about the whole folder (a full or read-only disk, out of descriptors) stop a batch, which is
then retried. ``done/`` and ``failed/`` must be ours and writable by us alone, or they are
renamed aside and made anew. Every claimed file ends in ``done/`` or in
``failed/`` beside a ``<name>.reason.txt`` (its first line the reason, then the name in
readable form); nothing is deleted. Files left in ``.ingesting/`` by a crash are taken first at
the next start. Names are handled as the bytes the file system holds (``os.fsdecode``'s
surrogate escapes); :func:`readable` gives the form for logs, reasons and the registry.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import stat
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from crystalline.documents import sql_text as readable  # one escaping for logs, reasons and the registry

from .file_read import KINDS, read_at_most
from .inotify import GONE, IN_CLOSE_WRITE, IN_CREATE, IN_ISDIR, IN_MOVED_TO, IN_Q_OVERFLOW, DirectoryWatch

log = logging.getLogger("crystalline.ingest.drop_folder")

_PARTIAL_SUFFIXES = (".part", ".partial", ".crdownload", ".tmp", ".download", ".swp")
_MAX_NAME_BYTES = 200  # + "-NNN" + ".reason.txt" stays under NAME_MAX (255)
CLAIMS = ".ingesting"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# Errors about the whole folder (or this process), not about one file: the batch fails and is
# retried. Any other error claiming a file (EPERM from a sticky inbox, EBUSY from a mount
# point, ELOOP, ENAMETOOLONG, EXDEV...) is that file's alone: it is skipped and retried later.
FOLDER_ERRORS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EMFILE, errno.ENFILE, errno.ENOMEM}
)
# Out of descriptors or memory for a moment: the file goes back, never to failed/.
_SHORTAGE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})
UNMOVABLE_RETRY_S = 10.0  # first retry of a file that could not be claimed; doubles each time
UNMOVABLE_MAX_RETRY_S = 600.0


def _short_name(name: str) -> str:
    """``name`` cut (keeping its extension) to at most ``_MAX_NAME_BYTES`` bytes."""
    if len(os.fsencode(name)) <= _MAX_NAME_BYTES:
        return name
    stem, ext = os.path.splitext(name)
    ext = ext if len(os.fsencode(ext)) <= 16 else ""
    raw = os.fsencode(stem)[: _MAX_NAME_BYTES - len(os.fsencode(ext)) - 1]
    return os.fsdecode(raw).rstrip() + "~" + ext


def _wanted(name: str) -> bool:
    return bool(name) and not name.startswith(".") and not name.endswith(_PARTIAL_SUFFIXES)


def file_key_of(st: os.stat_result) -> str:
    """Identity of a file (device, inode, size, mtime, ctime): the same key later means the same
    unchanged file. ctime is set by the kernel on every change and rename, so a reused inode
    never matches an old key."""
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def _hard_link(links: int) -> str:
    """The refusal of a file with more than one name. Without fs.protected_hardlinks, anyone
    who can write to the inbox may link in a file they cannot read (root's, or the daemon's own
    token file) and have it ingested, then reproduced by ``generate``; the owner cannot tell such
    a link from a real drop (root's files are root's), so every hard link is refused."""
    return f"hard link ({links} names): not read; copy the file into the folder instead"


def _exists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


@dataclass
class Claimed:
    """A file moved into ``.ingesting/``: open (``fd``, regular, not a link) or refused unread."""

    name: str  # its name in the inbox and in .ingesting/ (file system bytes, fs-decoded)
    fd: int  # -1 when refused
    st: os.stat_result  # fstat of fd, or lstat of the refused entry
    refusal: str | None = None
    group: str = ""  # the sub-folder of the drop folder it was claimed from ("": the top; DropSources)
    resumed: bool = False  # in .ingesting/ before this claim (a crash's or a stop's, or put back)

    @property
    def label(self) -> str:
        return readable(self.name)

    @property
    def file_key(self) -> str:
        """Identity of this very file as it sits in ``.ingesting/`` (see :func:`file_key_of`)."""
        return file_key_of(self.st)

    def read(self, limit: int) -> bytes:
        """The file's bytes from its descriptor, at most ``limit + 1`` (more means too large);
        the descriptor is closed then, as nothing reads it again (a batch claims up to
        ``batch_documents`` files and would otherwise hold a descriptor for each)."""
        try:
            return read_at_most(self.fd, self.st.st_size, limit)
        finally:
            self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass
class _Unmovable:
    """A name in the inbox that could not be claimed: why, and when to try again."""

    reason: str
    retry_at: float  # time.monotonic()
    delay_s: float


class DropFolder:
    """Watches ``root``; :meth:`take_one` claims complete files, :meth:`finish` moves them away."""

    def __init__(
        self, root: Path, settle_s: float = 2.0, rescan_s: float = 30.0, folder_reason: str | None = None
    ) -> None:
        self.root = Path(root).resolve()
        # why a folder found in this one is not read (listed by blocked(), logged once); None: its
        # folders are accounted for elsewhere (DropSources takes the top's as sources)
        self.folder_reason = folder_reason
        self._folders: dict[str, None] = {}  # folders found by the last scan, left alone
        self.done = self.root / "done"
        self.failed = self.root / "failed"
        self.claims = self.root / CLAIMS
        self.settle_s = settle_s
        self.rescan_s = rescan_s
        self._lock = threading.Lock()
        self._queue: dict[str, None] = {}  # names in the inbox, arrival order, no repeats
        self._settling: dict[str, None] = {}  # created, not yet closed
        self._blocked: dict[str, None] = {}  # a file of that name is being ingested: after it
        self._unmovable: dict[str, _Unmovable] = {}  # could not be claimed: skipped, retried later
        self._opening: set[str] = set()  # taken from the queues, not yet in _inflight
        self._claimed: deque[str] = deque()  # in .ingesting/, to hand out (put back, or a crash's)
        self._inflight: dict[str, Claimed] = {}  # handed out, not finished
        self._rescan = threading.Event()  # set on a queue overflow
        self._scanned_at = float("-inf")  # monotonic time of the last scan
        self._scan_mtime = (0, 0.0)  # the folder's mtime (ns) at the last scan, and time.time() then
        self.overflows = 0
        self.event_errors = 0  # watch events whose handling failed (logged once)
        self._watch: DirectoryWatch | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._fds: tuple[int, int, int, int] | None = None
        try:
            self._open_dirs()
        except BaseException:  # a folder we may not open or write: nothing of ours stays open
            os.close(self._wake_r)
            os.close(self._wake_w)
            raise

    # -- directories -----------------------------------------------------------------------

    def _open_dirs(self) -> None:
        """Create and open the inbox, ``done/``, ``failed/`` and ``.ingesting/``. A sub-folder
        replaced by a link or a file, one not ours or writable by group or others (an inbox
        writer could plant links in it), or a ``.ingesting/`` not private to us, is renamed
        aside (and then handled as a dropped entry or left alone), never used."""
        self.root.mkdir(parents=True, exist_ok=True)
        root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        subs: list[int] = []
        try:
            for name in ("done", "failed", CLAIMS):
                subs.append(self._subdir(root_fd, name, private=name == CLAIMS))
        except BaseException:
            for fd in (root_fd, *subs):
                os.close(fd)
            raise
        self._fds = (root_fd, subs[0], subs[1], subs[2])

    def _subdir(self, root_fd: int, name: str, private: bool) -> int:
        for _ in range(3):
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o700 if private else 0o755, dir_fd=root_fd)
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=root_fd)
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                fd = -1
            if fd >= 0:
                st = os.fstat(fd)
                if st.st_uid == os.geteuid() and not st.st_mode & (0o077 if private else 0o022):
                    return fd
                os.close(fd)
            aside = f"{name}.untrusted-{time.time_ns()}"
            log.warning("%s/%s is not a directory of ours: renamed to %s", self.root, name, aside)
            os.rename(name, aside, src_dir_fd=root_fd, dst_dir_fd=root_fd)
        raise OSError(errno.EEXIST, f"cannot make {self.root / name} a directory of ours")

    def _dirs(self) -> tuple[int, int, int, int]:
        if self._fds is None:
            self._open_dirs()
        assert self._fds is not None
        return self._fds

    def _close_dirs(self) -> None:
        if self._fds is not None:
            for fd in self._fds:
                os.close(fd)
            self._fds = None

    def intact(self) -> bool:
        """Whether the inbox and its sub-folders are still the directories we hold open (someone
        may delete them, or move one aside and put another in its place)."""
        if self._fds is None:
            return False
        for path, fd in zip((self.root, self.done, self.failed, self.claims), self._fds, strict=True):
            try:
                st = os.stat(path, follow_symlinks=False)
            except OSError:
                return False
            held = os.fstat(fd)
            if not stat.S_ISDIR(st.st_mode) or (st.st_dev, st.st_ino) != (held.st_dev, held.st_ino):
                return False
        return True

    def reopen(self) -> None:
        """After the folder was deleted or replaced: create it again, watch it again (the same
        inotify instance and thread), forget what was queued in the old one, and scan."""
        with self._lock:
            inflight = list(self._inflight.values())
            self._queue.clear()
            self._settling.clear()
            self._blocked.clear()
            self._claimed.clear()
            self._inflight.clear()
        for c in inflight:
            c.close()
        self._close_dirs()
        self._open_dirs()
        if self._watch is not None:
            self._watch.watch(str(self.root))
        self.scan()

    # -- watching --------------------------------------------------------------------------

    def start(self) -> None:
        """Start watching (once: a second call does nothing), then scan for what arrived before."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._dirs()
        if self._watch is None:
            self._watch = DirectoryWatch()
        self._watch.watch(str(self.root))
        with contextlib.suppress(BlockingIOError):  # a wake-up left by an earlier stop
            while os.read(self._wake_r, 64):
                pass
        self._stopping.clear()
        self._thread = threading.Thread(target=self._watch_loop, name="drop-folder-watch", daemon=True)
        self._thread.start()
        self.scan()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop watching; the folder can still be scanned, taken from and finished."""
        if self._thread is not None:
            self._stopping.set()
            with contextlib.suppress(BlockingIOError):  # the pipe is full of wake-ups already
                os.write(self._wake_w, b"x")
            self._thread.join(timeout=timeout_s)
            if self._thread.is_alive():
                log.warning("drop folder watch thread did not stop within %gs", timeout_s)
            self._thread = None
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    def close(self) -> None:
        """Stop watching and close every descriptor (files handed out and not finished stay in
        ``.ingesting/`` and are taken again at the next start)."""
        self.stop()
        with self._lock:
            inflight = list(self._inflight.values())
            self._inflight.clear()
        for c in inflight:
            c.close()
        self._close_dirs()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def _watch_loop(self) -> None:
        watch = self._watch
        assert watch is not None
        while not self._stopping.is_set():
            try:
                events = watch.read(1.0, self._wake_r)
            except OSError as e:  # not expected; keep the thread (the periodic rescan covers)
                log.error("reading drop folder events failed: %s", e)
                self._stopping.wait(1.0)
                continue
            for ev in events:
                try:
                    self._on_event(ev.mask, ev.name)
                except OSError as e:  # a stat refused (EACCES, ELOOP): the thread must live on
                    self.event_errors += 1
                    if self.event_errors == 1:  # once: a steady cause would flood the log
                        log.warning("a drop folder event could not be handled (the rescan covers): %s", e)
                    self._rescan.set()

    def _on_event(self, mask: int, raw_name: bytes) -> None:
        if mask & IN_Q_OVERFLOW:
            self.overflows += 1
            log.warning("inotify queue overflowed: events lost, the drop folder will be rescanned")
            self._rescan.set()
        elif mask & GONE:
            self._rescan.set()  # the ingestor sees the folder is not intact and reopens it
        elif raw_name and not mask & IN_ISDIR:
            name = os.fsdecode(raw_name)
            if mask & (IN_CLOSE_WRITE | IN_MOVED_TO):
                self.offer(name)
            elif mask & IN_CREATE:
                self.settling(name)

    def offer(self, name: str) -> None:
        """Queue ``name``, a complete file in the inbox (from the watch thread or a scan)."""
        if not _wanted(name):
            return
        with self._lock:
            self._settling.pop(name, None)
            self._queue[name] = None

    def settling(self, name: str) -> None:
        """Note a created file: queued on its close event, or by :meth:`take_one` once its mtime
        is ``settle_s`` old. Anything but a regular file (a link, a FIFO) is queued at once: it
        is refused without being read, so there is nothing to wait for."""
        if not _wanted(name):
            return
        try:  # by path: this runs on the watch thread, which never touches the descriptors
            st = os.stat(os.path.join(self.root, name), follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return
        if not stat.S_ISREG(st.st_mode):
            if not stat.S_ISDIR(st.st_mode):
                self.offer(name)
            return
        with self._lock:
            if name not in self._queue:
                self._settling[name] = None

    def _promote_settled(self) -> None:
        with self._lock:
            candidates = list(self._settling)
        if not candidates:
            return
        root_fd = self._dirs()[0]
        now = time.time()
        for name in candidates:
            try:
                settled = now - os.stat(name, dir_fd=root_fd, follow_symlinks=False).st_mtime >= self.settle_s
            except FileNotFoundError:
                with self._lock:
                    self._settling.pop(name, None)
                continue
            if settled:
                self.offer(name)

    def scan(self) -> int:
        """List ``.ingesting/`` (a crash's leftovers, taken first) and the inbox: settled files,
        links, FIFOs, sockets and devices are queued; younger files wait as settling (their
        close event may have come before the watch began). Returns how many were queued."""
        root_fd, _done, _failed, claims_fd = self._dirs()
        with self._lock:
            # _opening: a name take_one has popped but not yet registered (claimed into
            # .ingesting/ a moment ago): listed here, it would be handed out twice
            known = set(self._claimed) | set(self._inflight) | self._opening
            self._claimed.extend(n for n in sorted(os.listdir(claims_fd)) if n not in known)
        self._scan_mtime = (os.fstat(root_fd).st_mtime_ns, time.time())
        self._scanned_at = time.monotonic()
        now = time.time()
        found = 0
        folders: dict[str, None] = {}
        for name in sorted(os.listdir(root_fd)):
            if not _wanted(name):
                continue
            try:
                st = os.stat(name, dir_fd=root_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                if name not in ("done", "failed") and ".untrusted-" not in name:
                    folders[name] = None
                continue
            if not stat.S_ISREG(st.st_mode) or now - st.st_mtime >= self.settle_s:
                self.offer(name)
                found += 1
            else:
                with self._lock:
                    if name not in self._queue:
                        self._settling[name] = None
        if self.folder_reason is not None:
            for name in sorted(folders.keys() - self._folders.keys()):
                log.warning("%s/%s/ left alone: %s", self.root, readable(name), self.folder_reason)
        with self._lock:
            self._folders = folders
        return found

    def _maybe_rescan(self) -> None:
        """Rescan after an overflow, and every ``rescan_s`` if the folder changed since the last
        scan (or so close to it that a change in the same timestamp tick could hide)."""
        if self._rescan.is_set():
            self._rescan.clear()
            self.scan()
            return
        if time.monotonic() - self._scanned_at < self.rescan_s:
            return
        self._scanned_at = time.monotonic()
        mtime_ns, scanned = self._scan_mtime
        now_mtime = os.fstat(self._dirs()[0]).st_mtime_ns
        if now_mtime != mtime_ns or scanned - mtime_ns / 1e9 < 1.0:
            self.scan()

    # -- taking and finishing ---------------------------------------------------------------

    def pending(self) -> int:
        """Files really waiting: in the inbox (not hidden, not a directory) or in ``.ingesting/``."""
        count = 0
        for directory in (self.root, self.claims):
            try:
                with os.scandir(directory) as it:
                    for entry in it:
                        if directory == self.claims or (
                            _wanted(entry.name) and not entry.is_dir(follow_symlinks=False)
                        ):
                            count += 1
            except OSError:
                continue
        return count

    def take_one(self) -> Claimed | None:
        """Claim the next complete file (a crash's or a put-back claim first), or None. A file
        that cannot be claimed for a reason of its own (another user's in a sticky inbox, a
        mount point) is skipped and retried later (see :meth:`blocked`); only an error about
        the whole folder (a full disk, out of descriptors) raises."""
        self._maybe_rescan()
        self._promote_settled()
        self._retry_unmovable()
        root_fd, _done, _failed, claims_fd = self._dirs()
        while True:
            with self._lock:
                if self._claimed:
                    name = self._claimed.popleft()
                    fresh = False
                elif self._queue:
                    name = next(iter(self._queue))
                    del self._queue[name]
                    fresh = True
                else:
                    return None
                if fresh and (name in self._inflight or _exists(name, claims_fd)):
                    self._blocked[name] = None  # same name still being ingested: after it
                    continue
                unmovable = self._unmovable.get(name)
                if fresh and unmovable is not None and unmovable.retry_at > time.monotonic():
                    continue  # not yet: _retry_unmovable queues it again when its time comes
                self._opening.add(name)
            item = None
            try:
                item = self._claim(name, fresh, root_fd, claims_fd)
            finally:
                with self._lock:
                    self._opening.discard(name)
                    if item is not None:
                        self._inflight[name] = item
            if item is not None:
                item.resumed = not fresh
                return item

    def _claim(self, name: str, fresh: bool, root_fd: int, claims_fd: int) -> Claimed | None:
        """Move ``name`` into ``.ingesting/`` (when ``fresh``) and open it there; None when it is
        gone or could not be moved."""
        if fresh:
            try:
                os.rename(name, name, src_dir_fd=root_fd, dst_dir_fd=claims_fd)
            except FileNotFoundError:
                with self._lock:
                    self._unmovable.pop(name, None)
                return None  # removed by its owner meanwhile
            except OSError as e:
                if e.errno in FOLDER_ERRORS:
                    self.offer(name)  # still in the inbox: not forgotten when the batch is retried
                    raise
                self._cannot_move(name, e)
                return None
            with self._lock:
                if self._unmovable.pop(name, None) is not None:
                    log.info("%s could be claimed after all", readable(name))
        try:
            return self._open_claimed(name, claims_fd)
        except OSError:
            with self._lock:
                self._claimed.appendleft(name)  # in .ingesting/: handed out again first
            raise

    def _cannot_move(self, name: str, e: OSError) -> None:
        """Note a file that could not be claimed; logged the first time, retried with backoff."""
        reason = f"cannot be moved into {CLAIMS}/ ({e.strerror})"
        with self._lock:
            old = self._unmovable.get(name)
            delay = UNMOVABLE_RETRY_S if old is None else min(old.delay_s * 2, UNMOVABLE_MAX_RETRY_S)
            self._unmovable[name] = _Unmovable(reason, time.monotonic() + delay, delay)
        if old is None or old.reason != reason:
            log.warning("%s %s: skipped, tried again later", readable(name), reason)

    def _retry_unmovable(self) -> None:
        """Queue again the unmovable names whose retry time has come (and forget the gone)."""
        now = time.monotonic()
        with self._lock:
            due = [n for n, u in self._unmovable.items() if u.retry_at <= now and n not in self._queue]
        for name in due:
            self.offer(name)

    def blocked(self) -> list[tuple[str, str]]:
        """Files in the inbox that could not be claimed: (readable name, reason), oldest first;
        then, with a ``folder_reason``, the folders the last scan found and left alone
        (``name/``)."""
        with self._lock:
            out = [(readable(n), u.reason) for n, u in self._unmovable.items()]
            if self.folder_reason is not None:
                out.extend((readable(n) + "/", self.folder_reason) for n in self._folders)
            return out

    def take(self, max_files: int) -> list[Claimed]:
        """Up to ``max_files`` claimed files (see :meth:`take_one`)."""
        out: list[Claimed] = []
        while len(out) < max_files and (item := self.take_one()) is not None:
            out.append(item)
        return out

    @staticmethod
    def _open_claimed(name: str, claims_fd: int) -> Claimed | None:
        try:
            st = os.stat(name, dir_fd=claims_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        kind = KINDS.get(stat.S_IFMT(st.st_mode))
        if kind == "symbolic link":
            return Claimed(name, -1, st, "symbolic link: not followed")
        if kind is not None:
            return Claimed(name, -1, st, f"{kind}: not a regular file, not opened")
        if st.st_nlink > 1:  # see _hard_link
            return Claimed(name, -1, st, _hard_link(st.st_nlink))
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=claims_fd)
        except OSError as e:
            if e.errno in _SHORTAGE_ERRORS:  # this process's trouble, not the file's: retried
                raise
            return Claimed(name, -1, st, f"cannot open: {e.strerror}")
        fst = os.fstat(fd)
        if not stat.S_ISREG(fst.st_mode) or (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            os.close(fd)
            return Claimed(name, -1, st, "changed while being opened")
        if fst.st_nlink > 1:
            os.close(fd)
            return Claimed(name, -1, fst, _hard_link(fst.st_nlink))
        return Claimed(name, fd, fst)

    def put_back(self, items: list[Claimed]) -> None:
        """Return claimed files not finished (a batch cut short or failed): handed out again first."""
        with self._lock:
            for c in reversed(items):
                if self._inflight.pop(c.name, None) is None:
                    continue
                c.close()
                self._claimed.appendleft(c.name)

    def put_back_all(self) -> None:
        with self._lock:
            items = list(self._inflight.values())
        self.put_back(items)

    def _free_name(self, dir_fd: int, name: str) -> str:
        """A name in the directory of ``dir_fd`` not taken yet, short enough that it and its
        ``.reason.txt`` (and a ``-N`` suffix) stay under the file system's 255-byte limit."""
        name = _short_name(name)
        target = name
        n = 1
        while _exists(target, dir_fd) or _exists(target + ".reason.txt", dir_fd):
            stem, dot, ext = name.partition(".")
            target = f"{stem}-{n}{dot}{ext}"
            n += 1
        return target

    @staticmethod
    def _write_reason(dir_fd: int, name: str, text: str) -> None:
        """Write ``name`` atomically through a new file of a random name (O_EXCL: never an
        entry someone put there, never through a link)."""
        tmp = f".reason-{secrets.token_hex(8)}.tmp"
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd
        )
        try:
            try:
                data = memoryview(text.encode("utf-8", "backslashreplace"))
                while data:  # a short write (a file size limit) is followed by its error
                    data = data[os.write(fd, data) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise

    def finish(self, item: Claimed, failed_reason: str | None) -> Path:
        """Move a claimed file to ``done/``, or to ``failed/`` with its reason file; returns the
        new path."""
        _root, done_fd, failed_fd, claims_fd = self._dirs()
        dir_fd, directory = (done_fd, self.done) if failed_reason is None else (failed_fd, self.failed)
        target = self._free_name(dir_fd, item.name)
        if failed_reason is not None:
            text = f"{failed_reason.strip()}\nfile: {readable(target)} (dropped as {item.label})\n"
            try:
                self._write_reason(dir_fd, target + ".reason.txt", text)
            except OSError as e:  # this file's reason alone: it still goes (the registry has it)
                if e.errno in FOLDER_ERRORS:
                    raise
                log.warning("reason file for %s not written (%s): %s", item.label, e.strerror, failed_reason)
        os.rename(item.name, target, src_dir_fd=claims_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)
        with self._lock:
            self._inflight.pop(item.name, None)
            item.close()
            if item.name in self._blocked:  # a file of the same name waited for this one
                del self._blocked[item.name]
                self._queue[item.name] = None
        log.info("%s -> %s/%s", item.label, directory.name, readable(target))
        return directory / target
