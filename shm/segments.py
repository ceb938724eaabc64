"""Named POSIX shared-memory segments, with lifetimes we manage ourselves.

Naming
    Every segment of a daemon instance is called ``crystalline-<instance>-<what>``
    (:func:`segment_name`). Neither part may contain ``-``, so a name parses back
    unambiguously and :func:`sweep` can find the leftovers of one instance -- and only
    of that instance -- after a killed run.

Lifetime (who unlinks)
    The process that *creates* a segment owns it: it unlinks it on a clean stop
    (:meth:`Segment.unlink`; the mapping stays valid until :meth:`Segment.close`).
    Processes that *attach* only ever close. A run that is killed leaves its segments
    behind; the next start calls :func:`sweep` for its instance before creating any.

The resource tracker (cpython #82300)
    On Python < 3.13, ``SharedMemory(name=...)`` registers the segment with
    ``multiprocessing.resource_tracker`` even when it merely attaches; the tracker then
    unlinks the segment -- and prints "leaked shared_memory objects" -- when the
    processes sharing that tracker exit, which destroys a segment another process owns.
    ``track=False`` only exists from 3.13. Since lifetimes are managed explicitly here
    (owner unlinks, :func:`sweep` at start), *no* segment is ever tracked, created or
    attached:

    * on >= 3.13 we pass ``track=False``;
    * on < 3.13 the registration is suppressed while ``SharedMemory.__init__`` runs
      (``resource_tracker.register`` is swapped, under a lock, for a filter that drops
      exactly this segment's registration and forwards everything else). The common
      recipe -- register, then ``resource_tracker.unregister`` right after -- is used
      only as a fallback should the registration ever bypass the filter: worker
      processes started with the ``spawn`` method share their parent's tracker, and
      when several attach at once the REGISTER/UNREGISTER messages interleave, so the
      tracker gets an UNREGISTER for a name it no longer holds and prints a KeyError
      traceback (measured: 12 workers attaching concurrently produced a dozen of them).
      Never registering also means no tracker process is started on our account;
    * unlinking calls ``shm_unlink`` directly instead of ``SharedMemory.unlink()``,
      which on < 3.13 would send an UNREGISTER for a name that was never registered.

Space (/dev/shm is a tmpfs)
    ``ftruncate`` on a tmpfs allocates nothing: a mapping larger than the free space is
    created fine and the process dies of SIGBUS on the first page that finds no room, far
    from the cause (a control process in a restart loop, "exited with status -7").
    :func:`check_space` compares the free space with the segments' sizes before any is
    created, and :meth:`Segment.create` reserves every page with ``posix_fallocate``, so a
    shortage is :class:`SharedMemoryFull` -- naming the directory and the size needed -- at
    creation, never a signal later (even if something else fills /dev/shm meanwhile).

Views
    ``close()`` fails while numpy arrays (or other exports) over :attr:`Segment.buf` are
    alive; the error names the segment and says what to do. :class:`~.blocks.ArrayBlock`
    drops its own views before closing.
"""

from __future__ import annotations

import _posixshmem
import errno
import gc
import os
import re
import sys
import threading
from collections.abc import Mapping
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from types import TracebackType

__all__ = [
    "PREFIX",
    "SHM_DIR",
    "Segment",
    "SharedMemoryFull",
    "check_space",
    "free_bytes",
    "list_segments",
    "parse_segment_name",
    "segment_name",
    "sweep",
    "unlink_segment",
]

PREFIX = "crystalline"
SHM_DIR = Path("/dev/shm")
MAX_NAME_LENGTH = 200

_PART = re.compile(r"[A-Za-z0-9_.]+")
_NAME = re.compile(rf"{PREFIX}-([A-Za-z0-9_.]+)-([A-Za-z0-9_.]+)")


def _check_part(kind: str, value: str) -> None:
    if not isinstance(value, str) or _PART.fullmatch(value) is None:
        raise ValueError(f"segment {kind} must match [A-Za-z0-9_.]+ (no '-'), got {value!r}")


def segment_name(instance: str, what: str) -> str:
    """``crystalline-<instance>-<what>``; both parts match ``[A-Za-z0-9_.]+``, total <= 200 chars."""
    _check_part("instance", instance)
    _check_part("what", what)
    name = f"{PREFIX}-{instance}-{what}"
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"segment name longer than {MAX_NAME_LENGTH} characters: {name!r}")
    return name


def parse_segment_name(name: str) -> tuple[str, str] | None:
    """``(instance, what)`` of a name made by :func:`segment_name`, else None."""
    match = _NAME.fullmatch(name)
    if match is None or len(name) > MAX_NAME_LENGTH:
        return None
    return match.group(1), match.group(2)


def _check_shm_name(name: str) -> None:
    if not isinstance(name, str) or not name or "/" in name or "\0" in name or len(name) > 255:
        raise ValueError(f"invalid shared memory segment name: {name!r}")


# --- space --------------------------------------------------------------------------------

_PAGE = os.sysconf("SC_PAGE_SIZE")


class SharedMemoryFull(OSError):
    """The shared-memory file system has no room for the segments (a one-line message);
    ``need``: the bytes that did not fit in ``directory`` when ``free`` were free (0: unknown)."""

    def __init__(
        self, message: str, need: int = 0, free: int | None = None, directory: Path = SHM_DIR
    ) -> None:
        super().__init__(message)
        self.errno = errno.ENOSPC
        self.need, self.free, self.directory = need, free, directory

    def room_now(self) -> bool:
        """Whether space was freed since, enough for what did not fit (False when unknown):
        whoever waits for room may try again now rather than at its next interval."""
        free = free_bytes(self.directory)
        return bool(self.need) and free is not None and free >= self.need and free > (self.free or 0)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def free_bytes(directory: Path = SHM_DIR) -> int | None:
    """Bytes an unprivileged process may still allocate in ``directory``; None if unknown."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _advice(directory: Path) -> str:
    return (
        f"free space in {directory} or enlarge it (mount -o remount,size=... {directory}; "
        "docker run --shm-size), or run fewer workers or a smaller model"
    )


def check_space(sizes: Mapping[str, int], directory: Path = SHM_DIR) -> None:
    """SharedMemoryFull unless ``directory`` has room for segments of ``sizes`` (name -> bytes).

    Call before creating a set of segments that only work together: the error then names the
    total needed instead of whichever segment happened to be last.
    """
    need = sum(-(-size // _PAGE) * _PAGE for size in sizes.values())
    free = free_bytes(directory)
    if free is not None and need > free:
        raise SharedMemoryFull(
            f"{directory} has {_mib(free)} free but the shared memory needs {_mib(need)} "
            f"({', '.join(sorted(sizes))}): {_advice(directory)}",
            need,
            free,
            directory,
        )


def _reserve(shm: SharedMemory, name: str, size: int) -> None:
    """Allocate every page of a new segment now (ENOSPC here instead of SIGBUS on first touch)."""
    fd = getattr(shm, "_fd", -1)
    if fd < 0:
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return  # not a tmpfs (no reservation possible): check_space is all there is
        if exc.errno != errno.ENOSPC:
            raise
        free = free_bytes(SHM_DIR)
        raise SharedMemoryFull(
            f"{SHM_DIR} has no room for the {_mib(size)} segment {name!r}"
            f"{f' ({_mib(free)} free)' if free is not None else ''}: {_advice(SHM_DIR)}",
            size,
            free,
        ) from None


# --- resource tracker handling (see the module docstring) ---------------------------------

_REGISTER_LOCK = threading.Lock()


def _open(name: str, create: bool, size: int) -> SharedMemory:
    """``SharedMemory`` that the resource tracker never hears about."""
    if sys.version_info >= (3, 13):
        return SharedMemory(name=name, create=create, size=size, track=False)
    skipped: list[str] = []
    with _REGISTER_LOCK:
        original = resource_tracker.register

        def register(rname: str, rtype: str) -> None:
            if rtype == "shared_memory" and rname.lstrip("/") == name:
                skipped.append(rname)
                return
            original(rname, rtype)

        resource_tracker.register = register  # type: ignore[assignment]
        try:
            shm = SharedMemory(name=name, create=create, size=size)
        finally:
            resource_tracker.register = original
    if not skipped:  # registered by a path the filter did not see: take it back
        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    return shm


def unlink_segment(name: str) -> bool:
    """Unlink segment ``name`` (no leading slash); True if it existed. Never tells the tracker."""
    _check_shm_name(name)
    try:
        _posixshmem.shm_unlink("/" + name)
    except FileNotFoundError:
        return False
    return True


def _close_or_restore(shm: SharedMemory) -> None:
    """``shm.close()``, but leave ``shm`` usable when it raises BufferError.

    numpy wraps the buffer it is given in a memoryview of its own, so with arrays alive
    ``SharedMemory.close()`` releases ``shm.buf`` fine and then fails on the mmap, leaving
    ``buf`` None on a still-open mapping. Put a fresh ``buf`` back so the segment (and the
    views of an ArrayBlock) can be used again and close retried once the views are gone.
    """
    try:
        shm.close()
    except BufferError:
        mapping = getattr(shm, "_mmap", None)
        if getattr(shm, "_buf", "absent") is None and mapping is not None and not mapping.closed:
            shm._buf = memoryview(mapping)  # type: ignore[attr-defined]
        raise


# --- Segment -------------------------------------------------------------------------------


class Segment:
    """One named shared-memory block; use :meth:`create` or :meth:`attach`.

    The creator owns the segment and calls :meth:`unlink` on a clean stop; attachers only
    :meth:`close`. Leaving a ``with`` block closes (it never unlinks).
    """

    __slots__ = ("_created", "_name", "_shm", "_size")

    def __init__(self, shm: SharedMemory, *, created: bool) -> None:
        self._shm: SharedMemory | None = shm
        self._name = shm.name.lstrip("/")
        self._size = shm.size
        self._created = created

    @classmethod
    def create(cls, name: str, size: int) -> Segment:
        """A new zero-filled segment of ``size`` bytes, every page allocated; FileExistsError if
        ``name`` exists, :class:`SharedMemoryFull` (and nothing left behind) if it does not fit."""
        _check_shm_name(name)
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"segment size must be a positive int, got {size!r}")
        shm = _open(name, True, size)
        try:
            _reserve(shm, name, size)
        except BaseException:
            shm.close()
            unlink_segment(name)
            raise
        return cls(shm, created=True)

    @classmethod
    def attach(cls, name: str) -> Segment:
        """Map the existing segment ``name``; FileNotFoundError if it does not exist."""
        _check_shm_name(name)
        try:
            shm = _open(name, False, 0)
        except ValueError as exc:  # mmap of a zero-length segment
            raise ValueError(f"shared memory segment {name!r} is empty: {exc}") from exc
        return cls(shm, created=False)

    @property
    def name(self) -> str:
        """The segment's name, without the leading slash."""
        return self._name

    @property
    def size(self) -> int:
        """Size of the mapping in bytes."""
        return self._size

    @property
    def created(self) -> bool:
        """True in the process that created (and so owns) the segment."""
        return self._created

    @property
    def closed(self) -> bool:
        return self._shm is None

    @property
    def buf(self) -> memoryview:
        """The writable mapping. Every export of it must be gone before :meth:`close`."""
        if self._shm is None:
            raise ValueError(f"shared memory segment {self._name!r} is closed")
        buf = self._shm.buf
        assert buf is not None
        return buf

    def close(self) -> None:
        """Unmap (idempotent). BufferError, naming the segment, while views of :attr:`buf` live."""
        shm = self._shm
        if shm is None:
            return
        try:
            _close_or_restore(shm)
        except BufferError:
            gc.collect()  # views kept only by reference cycles
            try:
                _close_or_restore(shm)
            except BufferError as exc:
                raise BufferError(
                    f"cannot close shared memory segment {self._name!r}: numpy arrays or other "
                    "views of its buffer are still alive; delete every view (and any dict or "
                    "object holding one) before close()"
                ) from exc
        self._shm = None

    def unlink(self) -> None:
        """Remove the name (idempotent: already gone is fine). Open mappings stay valid."""
        unlink_segment(self._name)

    def __enter__(self) -> Segment:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._shm is None else f"{self._size} bytes"
        role = "created" if self._created else "attached"
        return f"<Segment {self._name!r} {role}, {state}>"


# --- leftovers -----------------------------------------------------------------------------


def list_segments(instance: str | None = None, directory: Path = SHM_DIR) -> list[str]:
    """Sorted names in ``directory`` made by :func:`segment_name` (for ``instance`` if given)."""
    if instance is not None:
        _check_part("instance", instance)
    try:
        entries = [entry.name for entry in Path(directory).iterdir()]
    except FileNotFoundError:
        return []
    names = []
    for entry in entries:
        parsed = parse_segment_name(entry)
        if parsed is not None and (instance is None or parsed[0] == instance):
            names.append(entry)
    return sorted(names)


def sweep(instance: str, directory: Path = SHM_DIR) -> list[str]:
    """Unlink every ``crystalline-<instance>-*`` segment left in ``directory``; return their names.

    Call at start, before creating segments: anything found belongs to a killed run of the
    same instance. Other instances' segments are never touched.
    """
    removed = []
    for name in list_segments(instance, directory):
        try:
            (Path(directory) / name).unlink()
        except FileNotFoundError:  # raced with another sweeper
            continue
        removed.append(name)
    return removed
