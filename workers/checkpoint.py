"""Durable, pickle-free training checkpoints: one directory per step, verified on load.

Layout of ``ROOT/step-00000300/``:

- ``<name>.npy`` for every array the caller gives (``.npy`` format, no pickle);
- ``state.json``: the caller's JSON-serialisable state (step, tokens seen, RNG, configs, ...);
- ``tokenizer.json``: the tokenizer's JSON text, stored as is;
- ``manifest.json``: written last; format version, step, and size + sha256 of every other file.

A checkpoint is built in a ``.tmp-*`` directory inside ROOT, every file and the directory are
fsynced, and only then is it renamed to its final name (and ROOT fsynced), so a crash leaves either
the previous set of checkpoints or the new one, never a half-written ``step-*`` directory. Loading
verifies the manifest before trusting any byte, and ``load_latest`` falls back to an older
checkpoint when the newest one is damaged.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crystalline.durable import DIR_MODE, FILE_MODE, fsync_dir

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "list_checkpoints",
    "load_checkpoint",
    "load_latest",
    "load_state",
    "save_checkpoint",
    "set_aside",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STATE = "state.json"
TOKENIZER = "tokenizer.json"
TMP_PREFIX = ".tmp-"

_STEP_DIR_RE = re.compile(r"^step-(\d{8,})$")
_ARRAY_NAME_RE = re.compile(r"^[a-z0-9_]+$")
_ARRAY_FILE_RE = re.compile(r"^([a-z0-9_]+)\.npy$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class Checkpoint:
    """Everything needed to resume training: arrays, JSON state and the tokenizer's JSON."""

    step: int
    arrays: dict[str, np.ndarray]
    state: dict[str, Any]
    tokenizer_json: str
    path: Path | None = None  # where it was loaded from / saved to


class CheckpointError(Exception):
    """A checkpoint directory is missing, incomplete or corrupt; the message names the path."""


# ----------------------------------------------------------------------------------------------
# Small filesystem helpers


def _step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def _remove(path: Path) -> None:
    """Remove a directory tree, or a plain file/symlink that happens to sit at ``path``."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class _HashingWriter:
    """File wrapper that counts and hashes every byte written, so the manifest needs no re-read."""

    def __init__(self, f: io.BufferedWriter) -> None:
        self._f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes, /) -> int:
        view = memoryview(data)
        self.sha.update(view)
        self.size += view.nbytes
        self._f.write(view)
        return view.nbytes


def _write_file(path: Path, payload: bytes | np.ndarray) -> dict[str, Any]:
    """Write bytes or an array (``.npy``, no pickle) to a new file, fsync it, return size + sha256."""
    # FILE_MODE, not the umask's 0644 from a shell: a checkpoint is the daemon's, not the world's
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE), "wb") as f:
        w = _HashingWriter(f)
        if isinstance(payload, np.ndarray):
            np.lib.format.write_array(w, payload, allow_pickle=False)
        else:
            w.write(payload)
        f.flush()
        os.fsync(f.fileno())
        on_disk = os.fstat(f.fileno()).st_size
    if on_disk != w.size:  # pragma: no cover - would mean the OS lost a write
        raise OSError(f"{path}: wrote {w.size} bytes but file has {on_disk}")
    return {"size": w.size, "sha256": w.sha.hexdigest()}


def _scan_step_dirs(root: Path) -> list[tuple[int, Path]]:
    """All ``step-*`` directories (complete or not) in ``root``, oldest first; [] if root is missing."""
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return []
    except NotADirectoryError as e:
        raise CheckpointError(f"{root}: checkpoint root is not a directory") from e
    found: list[tuple[int, Path]] = []
    for entry in entries:
        m = _STEP_DIR_RE.match(entry.name)
        # Only canonical names (step-%08d), so two dirs can never claim the same step.
        if m and entry.name == _step_dir_name(int(m.group(1))) and entry.is_dir(follow_symlinks=False):
            found.append((int(m.group(1)), Path(entry.path)))
    found.sort()
    return found


# ----------------------------------------------------------------------------------------------
# Public API


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint directories (those with a manifest) under ``root``, oldest step first.

    Temp directories from an interrupted save are never listed. Completeness here is only the
    presence of the manifest; ``load_checkpoint`` does the real verification.
    """
    root = Path(root)
    return [p for _, p in _scan_step_dirs(root) if (p / MANIFEST).is_file()]


def save_checkpoint(root: Path, ckpt: Checkpoint, keep: int = 3) -> Path:
    """Durably write ``ckpt`` to ``root/step-%08d`` and prune to the newest ``keep`` checkpoints.

    Files are written and fsynced in a temp dir, the manifest last, then the dir is renamed into
    place, so a crash at any point never leaves a ``step-*`` directory that looks complete but is
    not. Re-saving an existing step replaces it (old moved aside, new renamed in, old removed).
    Stale ``.tmp-*`` dirs from a crashed save are removed. Sets and returns ``ckpt.path``.
    """
    root = Path(root)
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be an int >= 1, got {keep!r}")
    step = ckpt.step
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"checkpoint step must be an int >= 0, got {step!r}")

    # Validate and serialise everything before touching the disk, so bad input leaves no debris.
    for name, arr in ckpt.arrays.items():
        if not isinstance(name, str) or not _ARRAY_NAME_RE.match(name):
            raise ValueError(f"invalid array name {name!r}: must match [a-z0-9_]+")
        if not isinstance(arr, np.ndarray):
            raise ValueError(f"array {name!r} is a {type(arr).__name__}, not a numpy.ndarray")
        if arr.dtype.hasobject:
            raise ValueError(f"array {name!r} has dtype {arr.dtype} which cannot be saved without pickle")
    if not isinstance(ckpt.state, dict):
        raise ValueError(f"checkpoint state must be a dict, got {type(ckpt.state).__name__}")
    try:
        state_bytes = json.dumps(ckpt.state, indent=2, sort_keys=True).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint state is not JSON-serialisable: {e}") from e
    if not isinstance(ckpt.tokenizer_json, str):
        raise ValueError(f"tokenizer_json must be a str, got {type(ckpt.tokenizer_json).__name__}")
    try:
        tok_bytes = ckpt.tokenizer_json.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"tokenizer_json is not encodable as UTF-8: {e}") from e

    created_root = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    if created_root:
        fsync_dir(root.parent)

    # One process writes checkpoints, so any temp dir already here is debris from a crash.
    for entry in os.scandir(root):
        if entry.name.startswith(TMP_PREFIX):
            _remove(Path(entry.path))

    while True:
        tmp = root / f"{TMP_PREFIX}{_step_dir_name(step)}-{secrets.token_hex(4)}"
        try:
            os.mkdir(tmp, DIR_MODE)
            break
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue

    try:
        files: dict[str, dict[str, Any]] = {}
        for name in sorted(ckpt.arrays):
            files[f"{name}.npy"] = _write_file(tmp / f"{name}.npy", ckpt.arrays[name])
        files[STATE] = _write_file(tmp / STATE, state_bytes)
        files[TOKENIZER] = _write_file(tmp / TOKENIZER, tok_bytes)
        manifest = {"format": FORMAT_VERSION, "step": step, "files": files}
        _write_file(tmp / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8"))
        fsync_dir(tmp)

        final = root / _step_dir_name(step)
        if os.path.lexists(final):
            # Redo of a step: move the old one aside first so a complete copy always exists.
            aside = root / f"{TMP_PREFIX}old-{_step_dir_name(step)}-{secrets.token_hex(4)}"
            os.rename(final, aside)
            os.rename(tmp, final)
            fsync_dir(root)
            _remove(aside)
        else:
            os.rename(tmp, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    # Prune: the checkpoint just written always survives, plus the newest keep-1 of the others.
    others = [p for _, p in _scan_step_dirs(root) if p != final]
    doomed = others[: max(0, len(others) - (keep - 1))]
    for p in doomed:
        _remove(p)
    if doomed:
        fsync_dir(root)

    ckpt.path = final
    return final


def set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint to ``corrupt-<name>`` beside it: kept for inspection, never
    loaded again, and no longer counted among the kept checkpoints."""
    target = path.with_name(f"corrupt-{path.name}")
    n = 1
    while os.path.lexists(target):
        target = path.with_name(f"corrupt-{path.name}-{n}")
        n += 1
    os.rename(path, target)
    fsync_dir(path.parent)
    return target


def _read_verified(path: Path, fname: str, meta: dict[str, Any]) -> bytes:
    """Read one file of a checkpoint and check it against its manifest entry."""
    try:
        data = (path / fname).read_bytes()
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: missing {fname}") from e
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read {fname}: {e.strerror or e}") from e
    if len(data) != meta["size"]:
        raise CheckpointError(
            f"{path}: {fname} is {len(data)} bytes, manifest says {meta['size']} (truncated or altered)"
        )
    if hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise CheckpointError(f"{path}: {fname} sha256 mismatch (corrupt)")
    return data


def _parse_manifest(path: Path) -> tuple[int, dict[str, dict[str, Any]]]:
    """Read and structurally validate ``manifest.json``; return (step, files)."""
    try:
        raw = (path / MANIFEST).read_bytes()
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: missing {MANIFEST} (incomplete checkpoint)") from e
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read {MANIFEST}: {e.strerror or e}") from e
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: {MANIFEST} is not valid JSON: {e}") from e
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path}: {MANIFEST} is not a JSON object")
    version = manifest.get("format")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise CheckpointError(f"{path}: unknown checkpoint format version {version!r}")
    step = manifest.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{path}: {MANIFEST} has invalid step {step!r}")
    m = _STEP_DIR_RE.match(path.name)
    if m and int(m.group(1)) != step:
        raise CheckpointError(f"{path}: {MANIFEST} says step {step} but directory name disagrees")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise CheckpointError(f"{path}: {MANIFEST} has no 'files' object")
    for fname, meta in files.items():
        if fname not in (STATE, TOKENIZER) and not _ARRAY_FILE_RE.match(fname):
            raise CheckpointError(f"{path}: {MANIFEST} lists unexpected file {fname!r}")
        size = meta.get("size") if isinstance(meta, dict) else None
        sha = meta.get("sha256") if isinstance(meta, dict) else None
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise CheckpointError(f"{path}: {MANIFEST} entry for {fname} has invalid size")
        if not isinstance(sha, str) or not _SHA256_RE.match(sha):
            raise CheckpointError(f"{path}: {MANIFEST} entry for {fname} has invalid sha256")
    for required in (STATE, TOKENIZER):
        if required not in files:
            raise CheckpointError(f"{path}: {MANIFEST} does not list {required}")
    return step, files


def load_state(path: Path) -> dict[str, Any]:
    """The verified ``state.json`` of one checkpoint, without reading its arrays (what a run
    was configured with); CheckpointError as ``load_checkpoint`` raises it."""
    path = Path(path)
    _, files = _parse_manifest(path)
    try:
        state = json.loads(_read_verified(path, STATE, files[STATE]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: {STATE} is not valid JSON: {e}") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: {STATE} is not a JSON object")
    return state


def load_checkpoint(path: Path) -> Checkpoint:
    """Load one checkpoint directory, verifying every file's size and sha256 before using it.

    Arrays are parsed with ``numpy.lib.format.read_array(allow_pickle=False)`` (what
    ``np.load`` does for a ``.npy``, without ever accepting a zip or pickle). Anything missing,
    truncated, corrupt or of an unknown format raises ``CheckpointError("<path>: <reason>")``.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory")
    step, files = _parse_manifest(path)

    state = load_state(path)

    tok_raw = _read_verified(path, TOKENIZER, files[TOKENIZER])
    try:
        tokenizer_json = tok_raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: {TOKENIZER} is not valid UTF-8: {e}") from e

    arrays: dict[str, np.ndarray] = {}
    for fname in sorted(files):
        m = _ARRAY_FILE_RE.match(fname)
        if not m:
            continue
        data = _read_verified(path, fname, files[fname])
        try:
            arrays[m.group(1)] = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise CheckpointError(f"{path}: {fname} is not a valid .npy array: {e}") from e

    return Checkpoint(step=step, arrays=arrays, state=state, tokenizer_json=tokenizer_json, path=path)


def load_latest(root: Path, skipped: list[tuple[Path, CheckpointError]] | None = None) -> Checkpoint | None:
    """Load the newest valid checkpoint under ``root``, falling back past damaged ones.

    Returns None when ``root`` is missing or holds no ``step-*`` directory at all. Each damaged
    (or incomplete) newer checkpoint is skipped with a warning naming it and the reason (and
    appended to ``skipped`` as (path, error) when given); if checkpoints exist but none is valid, raises
    ``CheckpointError``.
    """
    root = Path(root)
    candidates = _scan_step_dirs(root)
    if not candidates:
        return None
    first_error: CheckpointError | None = None
    for _, path in reversed(candidates):
        try:
            return load_checkpoint(path)
        except CheckpointError as e:
            log.warning("skipping unusable checkpoint %s", e)
            if skipped is not None:
                skipped.append((path, e))
            if first_error is None:
                first_error = e
    raise CheckpointError(f"{root}: none of {len(candidates)} checkpoint(s) is valid (newest: {first_error})")
