"""A Debian root file system booted with systemd as PID 1 in ``systemd-nspawn``, for testing the
unit under a real systemd.

The root file system is made once with debootstrap from this machine's configured Debian mirror
and cached under ``/var/cache/crystalline-test`` (``CRYSTALLINE_TEST_CACHE`` overrides), keyed by
a hash of ``pyproject.toml``, the unit and the package list: it holds the OS, tesseract and a pip
cache warmed with the project's dependencies, so the install inside takes seconds. It is built in
a temporary directory and renamed into place, so a killed build never leaves a half cache. Boots
use ``--volatile=overlay``: everything a test writes goes to a tmpfs and the cache stays pristine.

This machine may have no systemd as PID 1, so nspawn runs with ``--register=no --keep-unit`` in
a cgroup of its own (one under the current cgroup of every mounted hierarchy), and commands run
inside through ``nsenter`` into the container's PID 1.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from _wait import until

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("CRYSTALLINE_TEST_CACHE", "/var/cache/crystalline-test"))
PACKAGES = [
    "systemd",
    "systemd-sysv",
    "dbus",
    "passwd",
    "procps",
    "git",
    "ca-certificates",
    "python3",
    "python3-venv",
    "tesseract-ocr",
    "tesseract-ocr-eng",
]
# Host files pip needs inside (this machine's index settings and CA certificates), bound read-only.
HOST_FILES = [
    "/etc/pip.conf",
    "/root/.config/pip/pip.conf",
    "/etc/ssl/certs/ca-certificates.crt",
]
BUILD_TIMEOUT_S = 1200


def missing_requirement() -> str | None:
    """Why a real-systemd test cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn, debootstrap, cgroups)"
    for tool in ("systemd-nspawn", "debootstrap", "nsenter", "git"):
        if shutil.which(tool) is None:
            return (
                f"{tool} is missing (scripts/bootstrap.sh installs systemd-container and debootstrap as root)"
            )
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlayfs (needed by systemd-nspawn --volatile=overlay)"
    if not _cgroup_mounts():
        return "no cgroup file system is mounted"
    return None


def debian_mirror() -> tuple[str, str]:
    """(mirror URL, suite) from this machine's apt sources and os-release."""
    suite = "bookworm"
    osr = Path("/etc/os-release")
    if osr.exists():
        m = re.search(r"^VERSION_CODENAME=(\w+)", osr.read_text(), re.M)
        if m:
            suite = m.group(1)
    texts = [p.read_text() for p in sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))]
    uris = [u for t in texts for line in re.findall(r"^URIs:\s*(.+)$", t, re.M) for u in line.split()]
    lists = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]
    for p in lists:
        if p.exists():
            uris += re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", p.read_text(), re.M)
    for uri in uris:
        if "security" not in uri and uri.rstrip("/").endswith("/debian"):
            return uri, suite
    return "http://deb.debian.org/debian", suite


def cache_key() -> str:
    h = hashlib.sha256()
    for name in ("pyproject.toml", "systemd/crystalline.service"):
        h.update((REPO / name).read_bytes())
    h.update(" ".join([*PACKAGES, *debian_mirror()]).encode())
    return h.hexdigest()[:16]


def source_snapshot(dest: Path) -> Path:
    """A git repository at ``dest`` holding the working tree as it is now (tracked and untracked,
    not ignored files), so that the container clones what is being tested, committed or not."""
    names = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for raw in names:
        rel = raw.decode()
        src = REPO / rel
        if rel and src.is_file():  # a deleted file is still listed as tracked
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    git = ["git", "-c", "user.name=crystalline-test", "-c", "user.email=test@invalid"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "working tree under test"], cwd=dest, check=True)
    return dest


def _cgroup_mounts() -> list[Path]:
    """The directory of this process's cgroup in every mounted cgroup hierarchy."""
    mine: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        mine[controllers] = path
    dirs = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, where, fstype, options = line.split()[:4]
        if fstype == "cgroup2":
            dirs.append(Path(where + mine.get("", "/")))
        elif fstype == "cgroup":
            opts = options.split(",")
            key = next((k for k in mine if k and set(k.split(",")) <= set(opts)), None)
            if key is not None:
                dirs.append(Path(where + mine[key]))
    return dirs


def _remove_cgroup(d: Path) -> None:
    for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        sub.rmdir()
    d.rmdir()


class Container:
    """A booted container; :meth:`sh` runs a shell command inside it."""

    def __init__(self, proc: subprocess.Popen[bytes], pid1: int, log: Path) -> None:
        self.proc, self.pid1, self.log = proc, pid1, log

    def sh(
        self, script: str, check: bool = True, timeout: float = 300, user: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"]
        env += [f"{k}={v}" for k, v in os.environ.items() if k.startswith("PIP_")]
        as_user = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups"] if user else []
        home = [f"HOME=/home/{user}"] if user else ["HOME=/root"]
        cmd = [
            "nsenter",
            "-t",
            str(self.pid1),
            "-a",
            "env",
            "-i",
            *env,
            *home,
            *as_user,
            "bash",
            "-c",
            script,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(
                f"in the container, {script!r} exited {out.returncode}:\n{out.stdout}{out.stderr}"
            )
        return out


@contextmanager
def booted(root: Path, binds: dict[Path, str], workdir: Path, volatile: bool = True) -> Iterator[Container]:
    """Boot ``root`` (read-only under a tmpfs overlay unless ``volatile`` is False) with
    ``binds`` (host path -> container path) mounted read-only; yields once systemd says the
    system is up."""
    name = f"crystalline-test-{os.getpid()}"
    cgroups = [d / name for d in _cgroup_mounts()]
    for d in cgroups:
        d.mkdir(exist_ok=True)
        for knob in ("cpuset.cpus", "cpuset.mems"):  # a v1 cpuset takes no task until they are set
            if (d / knob).exists() and not (d / knob).read_text().strip():
                (d / knob).write_text((d.parent / knob).read_text())
    args = ["systemd-nspawn", "-D", str(root), "-b", "--register=no", "--keep-unit"]
    args += [f"--machine={name}", "--console=read-only", *(["--volatile=overlay"] if volatile else [])]
    binds = dict(binds)
    binds.update({Path(f): f for f in HOST_FILES if Path(f).is_file()})
    args += [f"--bind-ro={host}:{inside}" for host, inside in binds.items()]
    procs = " ".join(str(d / "cgroup.procs") for d in cgroups)
    launcher = f'set -e; for f in {procs}; do echo $$ > "$f"; done; exec "$@"'
    log = workdir / "boot.log"
    env = dict(os.environ, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="1")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["sh", "-c", launcher, "sh", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    try:
        pid1 = _wait_for_init(proc, log)
        box = Container(proc, pid1, log)
        state = ""

        def settled() -> bool:
            # "offline" or "Failed to connect to bus" until systemd listens on its private socket
            # (seen in CI: systemctl ran before that and said "offline"), then --wait waits the boot out
            nonlocal state
            ran = box.sh("systemctl is-system-running --wait", check=False, timeout=120)
            state = (ran.stdout + ran.stderr).strip()
            return state in ("running", "degraded", "maintenance", "stopping")

        until(settled, lambda: f"the container did not boot ({state}): {log.read_text()[-3000:]}", 120)
        assert state in ("running", "degraded"), (  # degraded: some unit a container lacks failed
            f"the container did not boot ({state}): {log.read_text()[-3000:]}"
        )
        yield box
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to power off
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for d in cgroups:
            _remove_cgroup_when_empty(d)


def _remove_cgroup_when_empty(d: Path) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            _remove_cgroup(d)
            return
        except OSError:
            if time.monotonic() > deadline:
                return  # left for the next run's cleanup; the name carries this process's pid
            time.sleep(0.2)


def _wait_for_init(proc: subprocess.Popen[bytes], log: Path) -> int:
    """The host PID of the container's PID 1 (a descendant of nspawn whose NSpid ends in 1)."""

    def init() -> int | None:
        assert proc.poll() is None, f"systemd-nspawn exited {proc.returncode}: {log.read_text()[-3000:]}"
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                text = status.read_text()
            except OSError:
                continue
            nspid = re.search(r"^NSpid:\s+(.+)$", text, re.M)
            if nspid and len(nspid.group(1).split()) > 1 and nspid.group(1).split()[-1] == "1":
                pid = int(status.parent.name)
                # nspawn's inner child is PID 1 before it sets up the mounts and execs systemd
                if text.startswith("Name:\tsystemd\n") and _descends_from(pid, proc.pid):
                    return pid
        return None

    return until(init, lambda: f"the container's init did not start: {log.read_text()[-3000:]}", 60, 0.1)


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat[stat.rindex(")") + 2 :].split()[1])
    return False


def cached_rootfs() -> Path:
    """The cached root file system for the current key, built now if missing."""
    CACHE.mkdir(parents=True, exist_ok=True)
    final = CACHE / f"rootfs-{cache_key()}"
    if final.is_dir():
        return final
    for old in CACHE.iterdir():  # other keys' file systems and killed builds
        if old.name.startswith(("rootfs-", "build-")):
            shutil.rmtree(old, ignore_errors=True)
    build = Path(tempfile.mkdtemp(prefix="build-", dir=CACHE))
    root = build / "root"
    mirror, suite = debian_mirror()
    subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", suite, str(root), mirror],
        check=True,
        capture_output=True,
        timeout=BUILD_TIMEOUT_S,
    )
    _warm_pip_cache(build, root)
    os.rename(root, final)
    shutil.rmtree(build)
    return final


def _warm_pip_cache(build: Path, root: Path) -> None:
    """Install the project's dependencies once into a throwaway venv inside ``root``, leaving
    the downloads in root's pip cache for every later install."""
    src = source_snapshot(Path(tempfile.mkdtemp(dir=build)))
    with booted(root, {src: "/srv/crystalline-src"}, build, volatile=False) as box:
        box.sh(
            "git clone -q /srv/crystalline-src /tmp/warm-src && python3 -m venv /tmp/warm"
            " && /tmp/warm/bin/pip install --quiet '/tmp/warm-src[dev]'",
            timeout=BUILD_TIMEOUT_S,
        )
        box.sh("rm -rf /tmp/warm /tmp/warm-src")
