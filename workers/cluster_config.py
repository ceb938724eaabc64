"""What a daemon needs to join a cluster of daemons (``--cluster HOST:PORT``), parsed and checked
without importing the engine (torch, the optional ``crystalline[cluster]`` extra): a daemon
without ``--cluster`` never imports it."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import asdict, dataclass
from typing import Any


class ClusterUnavailable(Exception):
    """This member cannot host the rendezvous point (its port is taken): training waits."""


@dataclass(frozen=True)
class ClusterSettings:
    host: str  # the rendezvous point: the member whose address this is hosts the store
    port: int
    address: str  # the address this member is reached on (its gloo device binds it)
    min_nodes: int = 1  # a group forms only with at least this many members
    max_nodes: int = 64  # members beyond these wait
    timeout_s: float = 10.0  # a member silent this long is dropped; every collective's deadline
    # 0: allreduce every step; H: local steps, and every H an outer step (DiLoCo): the members'
    # mean change since the last outer step, applied with Nesterov momentum (DiLoCo's 0.7, 0.9)
    outer_every: int = 0
    outer_lr: float = 0.7
    outer_momentum: float = 0.9

    @property
    def hosts_store(self) -> bool:
        return self.host == self.address

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_endpoint(value: str, what: str = "--cluster") -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``) with the host resolved to an address; ValueError otherwise."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"{what} must be HOST:PORT, got {value!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"{what}: the port must be a number, got {port!r}") from None
    if not 1 <= number <= 65535:
        raise ValueError(f"{what}: the port must be 1-65535, got {number}")
    return resolve(host, what), number


def resolve(host: str, what: str) -> str:
    """``host`` as an IP address (a name is looked up once, here)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        return str(socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0])
    except (OSError, IndexError) as exc:
        raise ValueError(f"{what}: cannot resolve {host!r}: {exc}") from None


def parse_nodes(value: str) -> tuple[int, int]:
    """``MIN:MAX`` (or one number for both); ValueError otherwise."""
    low, sep, high = value.strip().partition(":")
    try:
        lo, hi = int(low), int(high if sep else low)
    except ValueError:
        raise ValueError(f"--cluster-nodes must be MIN:MAX, got {value!r}") from None
    if not 1 <= lo <= hi:
        raise ValueError(f"--cluster-nodes must satisfy 1 <= MIN <= MAX, got {value!r}")
    return lo, hi


def route_address(host: str, port: int) -> str:
    """The local address this machine reaches ``host`` from (no packet is sent: a UDP connect
    only picks the route)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((host, port))
            return str(sock.getsockname()[0])
    except OSError as exc:
        raise ValueError(f"--cluster: no route to {host} ({exc}); give --cluster-address") from None


def cluster_settings(
    endpoint: str,
    nodes: str,
    address: str,
    timeout_s: float,
    outer_every: int = 0,
) -> ClusterSettings:
    """The settings of ``--cluster`` and its companions; ValueError naming the first bad one."""
    host, port = parse_endpoint(endpoint)
    lo, hi = parse_nodes(nodes)
    own = resolve(address, "--cluster-address") if address else route_address(host, port)
    if timeout_s <= 0:
        raise ValueError(f"--cluster-timeout-s must be positive, got {timeout_s}")
    if outer_every < 0:
        raise ValueError(f"--cluster-outer-every must be 0 (every step) or positive, got {outer_every}")
    return ClusterSettings(host, port, own, lo, hi, timeout_s, outer_every)
