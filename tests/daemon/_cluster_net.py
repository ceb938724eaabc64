"""Several "machines" on one box for the cluster tests: network namespaces joined by veth pairs
to a bridge in a hub namespace, made (and removed) here with iproute2, each running a real
``crystalline run --cluster``; where namespaces are not allowed, distinct loopback addresses
(``kind`` says which ran, and a partition then cannot be made). A member's link can be shaped
(tc's tbf on both of its ends, nft dropping packets on it, a delaying wire in a namespace of its
own between the member and the bridge: tests/daemon/_delay_wire.py, as this kernel has no tc
netem); the shaping goes with the namespaces, and is undone first in case a stray process holds
one."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from _daemon_process import SMALL_MODEL
from _rendezvous_port import free_port, hosted, taken
from _wait import until, until_status

from crystalline.daemon.status_server import request


def _run(*cmd: str, stdin: str | None = None) -> str:
    try:
        return subprocess.run(cmd, input=stdin, check=True, capture_output=True, text=True, timeout=30).stdout
    except subprocess.CalledProcessError as exc:
        exc.add_note(f"its stderr: {exc.stderr.strip()}")
        raise


def _ip(*args: str) -> None:
    _run("ip", *args)


class LinkShapingUnavailable(Exception):
    """This machine cannot shape a link that way; the message says why (a test skips with it)."""


TOOL_PACKAGES = {"tc": "iproute2", "nft": "nftables"}


def _kernel_lacks(option: str) -> bool:
    """True when /proc/config.gz says this kernel was built without ``option``."""
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            return f"# {option} is not set" in f.read()
    except OSError:
        return False


def _refused(what: str, exc: subprocess.CalledProcessError, option: str) -> LinkShapingUnavailable:
    """``what`` refused, in one line: the tool's first line of complaint, and the kernel
    ``option`` when /proc/config.gz says it is missing."""
    said = [line.strip() for line in (exc.stderr or "").splitlines() if line.strip()]
    why = said[0] if said else f"exit status {exc.returncode}"
    if _kernel_lacks(option):
        why = f"kernel without {option} ({why})"
    return LinkShapingUnavailable(f"{what} refused: {why}")


class Machines:
    def __init__(self, count: int, root: Path, loopback: bool = False) -> None:
        """``loopback``: distinct loopback addresses even where namespaces are allowed (what
        reaches the members from this namespace, a browser for one)."""
        self.count = count
        self.root = root
        self.tag = f"cr{os.getpid() % 100000}"
        self.namespaces: list[str] = []
        self._shaped: list[list[str]] = []  # the commands that undo the links' shaping
        self._wires: dict[int, subprocess.Popen[bytes]] = {}  # member -> its delaying wire
        self._hub_ends: dict[int, str] = {}  # member -> its link's end on the bridge, once not b{i}
        self._rates: dict[int, list[str]] = {}  # member -> its link's tbf, to put on a new hub end
        self.kind = "loopback"
        self.addresses = [f"127.0.{os.getpid() % 200 + 1}.{i + 1}" for i in range(count)]
        try:
            if not loopback:
                self._make_namespaces()
                self.kind = "namespaces"
                self.addresses = [f"10.0.0.{i + 1}" for i in range(count)]
        except (subprocess.CalledProcessError, FileNotFoundError, subprocess.TimeoutExpired):
            self._remove_namespaces()
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    # ---- network ----------------------------------------------------------------------------
    def _make_namespaces(self) -> None:
        hub = f"{self.tag}h"
        _ip("netns", "add", hub)
        self.namespaces.append(hub)
        _ip("-n", hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", hub, "link", "set", "br0", "up")
        for i in range(self.count):
            ns = f"{self.tag}m{i}"
            _ip("netns", "add", ns)
            self.namespaces.append(ns)
            _ip("link", "add", f"{self.tag}b{i}", "type", "veth", "peer", "name", f"{self.tag}v{i}")
            _ip("link", "set", f"{self.tag}v{i}", "netns", ns)
            _ip("link", "set", f"{self.tag}b{i}", "netns", hub)
            _ip("-n", hub, "link", "set", f"{self.tag}b{i}", "master", "br0")
            _ip("-n", hub, "link", "set", f"{self.tag}b{i}", "up")
            _ip("-n", ns, "addr", "add", f"10.0.0.{i + 1}/24", "dev", f"{self.tag}v{i}")
            _ip("-n", ns, "link", "set", f"{self.tag}v{i}", "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def _remove_namespaces(self) -> None:
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.namespaces = []

    def prefix(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", f"{self.tag}m{i}"] if self.kind == "namespaces" else []

    def link(self, i: int, up: bool) -> None:
        """Cut machine ``i`` off the network (its only link down), or bring it back."""
        assert self.kind == "namespaces", "a partition needs network namespaces"
        _ip("-n", f"{self.tag}m{i}", "link", "set", f"{self.tag}v{i}", "up" if up else "down")

    # ---- link shaping: tc and nft on member i's link ------------------------------------------
    def shaping_unavailable(self, tool: str) -> str | None:
        """Why a member's link cannot be shaped with ``tool`` (tc or nft) here; None when it can."""
        if self.kind != "namespaces":
            return "shaping a link needs network namespaces, and this machine does not allow them"
        if shutil.which(tool) is None:
            return (
                f"{tool} is not installed (Debian package {TOOL_PACKAGES[tool]}; scripts/bootstrap.sh "
                "installs it when run as root for the tests)"
            )
        return None

    def _ends(self, i: int) -> list[tuple[str, str]]:
        """Both ends of member ``i``'s link (namespace, device): what leaves the member's end is
        what it sends, what leaves the bridge's end is what it receives. The bridge's end is the
        member's veth peer, or once the link is delayed the wire's veth peer (:meth:`delay`)."""
        hub_end = self._hub_ends.get(i, f"{self.tag}b{i}")
        return [(f"{self.tag}m{i}", f"{self.tag}v{i}"), (f"{self.tag}h", hub_end)]

    def _qdisc(self, ns: str, dev: str, spec: list[str]) -> None:
        self._shaped.append(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"])
        _run("tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", *spec)

    def limit_rate(self, i: int, mbit: float) -> None:
        """Member ``i``'s link carries at most ``mbit`` Mbit/s each way (tbf on both ends), with
        a queue of at most 100 ms: what does not fit is dropped, as a slow link's router does;
        LinkShapingUnavailable naming why when tc refuses tbf."""
        burst = max(16_000, int(mbit * 1e6 / 8 / 100))  # 10 ms of traffic, at least a few packets
        self._rates[i] = ["tbf", "rate", f"{mbit}mbit", "burst", str(burst), "latency", "100ms"]
        for ns, dev in self._ends(i):
            self._tbf(ns, dev, self._rates[i])

    def _tbf(self, ns: str, dev: str, spec: list[str]) -> None:
        try:
            self._qdisc(ns, dev, spec)
        except subprocess.CalledProcessError as exc:
            raise _refused("tc tbf", exc, "CONFIG_NET_SCH_TBF") from None

    def qdisc_counts(self, i: int) -> list[dict[str, int]]:
        """The root qdisc of each end of member ``i``'s link (as :meth:`_ends`): the bytes and
        packets it sent, and how often a packet had to wait for the rate (``overlimits``)."""
        counts = []
        for ns, dev in self._ends(i):
            shown = json.loads(_run("tc", "-n", ns, "-s", "-j", "qdisc", "show", "dev", dev, "root"))[0]
            counts.append(
                {"kind": shown["kind"], **{k: shown[k] for k in ("bytes", "packets", "overlimits")}}
            )
        return counts

    def _wire_names(self, i: int) -> tuple[str, str, str]:
        """Member ``i``'s wire: its namespace, its end towards the member (the member's veth
        peer, moved there from the bridge) and its end towards the bridge."""
        return f"{self.tag}w{i}", f"{self.tag}b{i}", f"{self.tag}c{i}"

    def delay(self, i: int, ms: float) -> None:
        """Member ``i``'s link delays every frame by ``ms`` each way, from now (daemons running
        or not): the member's veth peer leaves the bridge for a namespace of its own, where
        tests/daemon/_delay_wire.py forwards between it and a new veth pair to the bridge, whose
        end in the hub is the link's bridge end from then on (a rate limit set before goes onto
        it, as the move took the old end's qdisc). The link is down for the moment that takes
        (well under a second; TCP retransmits). The new pair is made in its two namespaces at
        once, so nothing is ever left in this one, however this fails."""
        assert self.kind == "namespaces", "a delayed link needs network namespaces"
        assert i not in self._wires, f"member {i}'s link is delayed already"
        hub = f"{self.tag}h"
        wire, member_end, bridge_end = self._wire_names(i)
        _ip("netns", "add", wire)
        self.namespaces.append(wire)
        _ip(
            "link",
            "add",
            bridge_end,
            "netns",
            wire,
            "type",
            "veth",
            "peer",
            "name",
            f"{self.tag}d{i}",
            "netns",
            hub,
        )
        _ip("-n", hub, "link", "set", member_end, "netns", wire)
        self._hub_ends[i] = f"{self.tag}d{i}"
        if i in self._rates:
            self._tbf(hub, self._hub_ends[i], self._rates[i])
        _ip("-n", wire, "link", "set", member_end, "up")
        _ip("-n", wire, "link", "set", bridge_end, "up")
        counters = self.root / f"wire{i}.json"
        log = (self.root / f"wire{i}.log").open("ab")
        self._wires[i] = subprocess.Popen(
            [
                "ip", "netns", "exec", wire, sys.executable, str(Path(__file__).with_name("_delay_wire.py")),
                member_end, bridge_end, str(ms), str(counters),
            ],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
        log.close()

        def ready() -> bool:
            wire_proc = self._wires[i]
            assert wire_proc.poll() is None, f"the wire exited ({wire_proc.returncode}): {self._wire_log(i)}"
            return counters.exists()

        until(ready, f"member {i}'s wire forwarding", 30)
        _ip("-n", hub, "link", "set", f"{self.tag}d{i}", "master", "br0")
        _ip("-n", hub, "link", "set", f"{self.tag}d{i}", "up")

    def _wire_log(self, i: int) -> str:
        return (self.root / f"wire{i}.log").read_text(encoding="utf-8", errors="replace")[-2000:]

    def wire_counters(self, i: int) -> dict[str, dict[str, int]]:
        """Member ``i``'s wire so far: ``sent`` (from the member) and ``received`` (towards
        it), each {"frames", "bytes", "dropped", "kernel_seen", "kernel_dropped"} (see
        _delay_wire.py); written by the wire every 0.2 s."""
        _, member_end, bridge_end = self._wire_names(i)
        counts = json.loads((self.root / f"wire{i}.json").read_text(encoding="utf-8"))
        sent, received = counts[f"{member_end}->{bridge_end}"], counts[f"{bridge_end}->{member_end}"]
        return {"sent": sent, "received": received}

    def round_trip_s(self, i: int, address: str) -> float:
        """The shortest of five TCP round trips from machine ``i`` to ``address``: a connect to
        a port nobody listens on there, refused by the reply (SYN out, RST back)."""
        code = (
            "import socket, time\n"
            "seen = []\n"
            "for _ in range(5):\n"
            "    with socket.socket() as s:\n"
            "        s.settimeout(10)\n"
            "        t = time.monotonic()\n"
            "        try:\n"
            f"            s.connect(({address!r}, 1))\n"
            "        except ConnectionRefusedError:\n"
            "            seen.append(time.monotonic() - t)\n"
            "print(min(seen))\n"
        )
        return float(_run(*self.prefix(i), sys.executable, "-c", code))

    def _unwire(self) -> None:
        """Every wire ended: SIGTERM (it writes its counters and exits), SIGKILL after 10 s."""
        for i in list(self._wires):
            proc = self._wires.pop(i)
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)

    def drop_packets(self, i: int, percent: int) -> None:
        """Member ``i``'s link loses ``percent`` % of its packets each way, at random: nft's
        netdev hooks on the member's end (ingress and egress), past both TCP stacks, so the
        loss is the wire's; counted for :meth:`packets_dropped`. LinkShapingUnavailable naming
        why when nft refuses the egress hook (kernels before 5.16, nft before 1.0.1)."""
        ns, dev = self._ends(i)[0]
        rule = f'counter name "seen" numgen random mod 100 < {percent} counter name "dropped" drop'
        chains = "".join(
            f' chain {hook} {{ type filter hook {hook} device "{dev}" priority 0; policy accept; {rule}; }};'
            for hook in ("ingress", "egress")
        )
        self._shaped.append(["ip", "netns", "exec", ns, "nft", "delete", "table", "netdev", "crloss"])
        table = f"table netdev crloss {{ counter seen {{ }}; counter dropped {{ }};{chains} }}"
        try:
            _run("ip", "netns", "exec", ns, "nft", "-f", "-", stdin=table)
        except subprocess.CalledProcessError as exc:
            raise _refused("nft netdev egress", exc, "CONFIG_NETFILTER_EGRESS") from None

    def packets_dropped(self, i: int) -> tuple[int, int]:
        """Packets that crossed member ``i``'s loss rule, and how many of them it dropped."""
        ns, _ = self._ends(i)[0]
        listed = _run("ip", "netns", "exec", ns, "nft", "-j", "list", "counters", "table", "netdev", "crloss")
        counts = {x["counter"]["name"]: x["counter"]["packets"] for x in json.loads(listed)["nftables"][1:]}
        return counts["seen"], counts["dropped"]

    def link_bytes(self, i: int) -> tuple[int, int]:
        """Bytes member ``i`` has sent and received over its link (its end's counters)."""
        ns, dev = self._ends(i)[0]
        stats = json.loads(_run("ip", "-n", ns, "-s", "-j", "link", "show", "dev", dev))[0]["stats64"]
        return stats["tx"]["bytes"], stats["rx"]["bytes"]

    def _unshape(self) -> None:
        for cmd in reversed(self._shaped):
            subprocess.run(cmd, capture_output=True, timeout=30)
        self._shaped = []

    def leftovers(self) -> list[str]:
        """This harness's namespaces that still exist (none once :meth:`close` returned, even
        by raising); what shaped the links was on devices inside them."""
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
        ours = {f"{self.tag}h", *(f"{self.tag}{kind}{i}" for kind in "mw" for i in range(self.count))}
        return [line.split()[0] for line in listed.splitlines() if line.split()[0] in ours]

    def run_in(self, i: int, code: str) -> None:
        subprocess.run([*self.prefix(i), sys.executable, "-c", code], check=True, timeout=60)

    # ---- daemons ----------------------------------------------------------------------------
    def start(self, i: int, port: int, extra: tuple[str, ...] = ()) -> None:
        """Machine ``i``'s daemon, a member of the cluster at machine 0's ``port``, with the
        harness's settings and then ``extra`` (which overrides them): --cluster-timeout-s 5, and
        --cluster-nodes 1:N for the N machines, so a new store's first generation forms as soon
        as all N registered rather than a timeout after the store started (MAX 64 by default)."""
        state, run = self.root / f"m{i}" / "state", self.root / f"m{i}" / "run"
        state.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC"):
            env.pop(key, None)
        cmd = [
            *self.prefix(i), sys.executable, "-m", "crystalline.daemon.cli", "run",
            "--state-dir", str(state), "--runtime-dir", str(run), "--no-crawl", "--http", "off",
            "--workers", "2", *SMALL_MODEL, "--batch-size", "8", "--eval-interval", "100000",
            "--checkpoint-interval-s", "20", "--cluster", f"{self.addresses[0]}:{port}",
            "--cluster-address", self.addresses[i], "--cluster-timeout-s", "5",
            "--cluster-nodes", f"1:{self.count}", *extra,
        ]  # fmt: skip
        log = (self.root / f"m{i}.log").open("ab")
        self.procs[i] = subprocess.Popen(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
        log.close()

    def start_all(
        self, members: Iterable[int], extra: Callable[[int], tuple[str, ...]] = lambda i: ()
    ) -> int:
        """Machine 0 (which hosts the rendezvous point) and the other ``members``, each with
        ``extra(i)``, on a port no other program can take first; that port. In namespaces the
        port is below the kernel's range for local ports chosen by connect and bind(0), in a
        namespace of this test's own: nothing else binds there, and no connection is given it.
        On loopback addresses the port is shared with this machine, so a free one is taken
        (binding port 0), and should another process take it before machine 0 binds it, machine
        0 says so and the members start again on another (``_rendezvous_port.hosted``)."""
        members = sorted(set(members) | {0})

        def start(port: int) -> dict[str, Any]:
            for i in members:
                self.start(i, port, extra(i))
            return self.wait(0, _hosting_or_taken, "the rendezvous point hosted, or its port taken")

        def stop() -> None:
            self.stop_all(members)
            for i in members:
                shutil.rmtree(self.root / f"m{i}")

        return hosted(start, stop, self.rendezvous_port)

    def rendezvous_port(self) -> int:
        """A port for the rendezvous point on machine 0 (see :meth:`start_all`)."""
        if self.kind == "namespaces":
            ranged = _run(*self.prefix(0), "cat", "/proc/sys/net/ipv4/ip_local_port_range")
            low = int(ranged.split()[0])
            return random.randrange(low // 2, low)
        return free_port(self.addresses[0])

    def log(self, i: int) -> str:
        return (self.root / f"m{i}.log").read_text(encoding="utf-8", errors="replace")

    def status(self, i: int, timeout_s: float = 10.0) -> dict[str, Any]:
        proc = self.procs[i]
        assert proc.poll() is None, f"machine {i} exited with {proc.returncode}:\n{self.log(i)[-3000:]}"
        reply = request(self.root / f"m{i}" / "run" / "crystalline.sock", {"cmd": "status"}, timeout_s)
        assert reply["ok"], reply
        data: dict[str, Any] = reply["data"]
        return data

    def wait(
        self,
        i: int,
        ok: Any,
        what: str,
        timeout_s: float = 240,
        record: dict[int, dict[int, str]] | None = None,
    ) -> dict[str, Any]:
        """Member ``i``'s status once ``ok`` holds of it. ``record`` (member -> step -> digest):
        at each try the members in it are read too, and the digests of their statuses added (a
        step's newest): status holds only the last steps' (``RECENT_DIGESTS``), which the tiny
        model steps past in about a second, so a step it has scrolled out of stays here."""

        def status(left: float) -> dict[str, Any]:
            read = {j: self.status(j, left) for j in {i, *(record or {})}}
            for j, steps in (record or {}).items():
                steps.update(digests(read[j]))
            return read[i]

        return until_status(status, ok, f"machine {i}: {what}", timeout_s, show=lambda d: d.get("cluster"))

    def kill(self, i: int) -> None:
        """The machine dies: every process of its daemon at once."""
        proc = self.procs.pop(i)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def stop(self, i: int) -> None:
        self.stop_all([i])

    def stop_all(self, members: Iterable[int] | None = None) -> None:
        """Stop ``members`` (every running machine by default): SIGTERM to all of them at once,
        the rendezvous host (machine 0) too: a member whose store stopped first does not wait
        for it (``Membership.close``). Each is given 90 s, then its process group is killed;
        each is waited for even when one before it raised."""
        chosen = sorted(self.procs if members is None else set(members))
        procs = [self.procs.pop(i) for i in chosen]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 90
        with contextlib.ExitStack() as waits:
            for proc in procs:
                waits.callback(_await, proc, deadline)

    def close(self) -> None:
        """Every daemon stopped, the shaping undone, the wires ended, the namespaces removed:
        each step runs even when one before it raised (a daemon that outlived its deadline),
        which is raised after."""
        with contextlib.ExitStack() as steps:  # run last-in first-out
            steps.callback(self._remove_namespaces)
            steps.callback(self._unwire)
            steps.callback(self._unshape)
            steps.callback(self.stop_all)


def _await(proc: subprocess.Popen[bytes], deadline: float) -> None:
    """``proc`` ended by ``deadline`` (its process group killed if not), and whatever it left
    behind killed."""
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever it left behind


def _hosting_or_taken(status: dict[str, Any]) -> bool:
    """Machine 0 registered with the store it hosts, or says its port was taken."""
    return taken(status) or (status.get("cluster") or {}).get("member") is not None


@contextlib.contextmanager
def machines_on_this_box(count: int, loopback: bool = False) -> Iterator[Machines]:
    """``count`` machines for a test (``loopback``: see :class:`Machines`); on the way out
    (failed or not, a stop that failed too) their daemons stopped, the shaping undone and the
    namespaces removed, which is checked (the qdiscs and nft tables were on devices inside
    them, and go with them)."""
    with tempfile.TemporaryDirectory(prefix="cr-", dir="/tmp") as d:  # AF_UNIX path limit
        m = Machines(count, Path(d), loopback)
        try:
            yield m
        finally:
            try:
                m.close()
            finally:
                assert not m.leftovers(), f"namespaces left behind: {m.leftovers()}"


def digests(status: dict[str, Any]) -> dict[int, str]:
    return {step: d for step, d in status["cluster"]["recent_digests"]}


def agree(machines: Machines, members: list[int], timeout_s: float = 120) -> int:
    """Wait until the members' recent digests share a step; assert they are equal at every
    shared step; the newest shared step."""
    seen: list[dict[int, str]] = []

    def shared() -> tuple[int] | None:  # a tuple: step 0 is a step
        nonlocal seen
        seen = [digests(machines.status(i)) for i in members]
        common = set.intersection(*(set(d) for d in seen))
        for step in common:
            assert len({d[step] for d in seen}) == 1, f"digests differ at step {step}: {seen}"
        return (max(common),) if common else None

    return until(shared, lambda: f"no step shared by all members: {seen}", timeout_s, 0.1)[0]
