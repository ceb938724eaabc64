"""The states of the daemon, of its components and services and of the engine's workers, and
the one way to change them: :func:`transition`, which refuses a jump its machine does not allow.

Standard library only and nothing else of ours: the engine (``crystalline.workers``), the
control process, the supervisor and ``crystalline status`` all import it. A state is a plain
string (it goes into ``status --json`` and the dashboard as it is); what may follow what is
written once here, and a transition that is not in its machine raises
:class:`IllegalTransition`, which is a bug in the caller, never a condition to handle.
Staying in the same state is not a transition and is always allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


class IllegalTransition(RuntimeError):
    """A jump its machine does not allow: a bug in the code that asked for it."""


@dataclass(frozen=True)
class Machine:
    """The states of one kind of thing and, for each, the states that may follow it."""

    name: str
    initial: str
    allowed: Mapping[str, frozenset[str]]

    def __post_init__(self) -> None:
        unknown = {s for targets in self.allowed.values() for s in targets} - set(self.allowed)
        if self.initial not in self.allowed or unknown:
            raise ValueError(f"{self.name}: states {sorted(unknown) or [self.initial]} are not declared")

    @property
    def states(self) -> frozenset[str]:
        return frozenset(self.allowed)


def _machine(name: str, initial: str, allowed: dict[str, tuple[str, ...]]) -> Machine:
    return Machine(name, initial, {state: frozenset(targets) for state, targets in allowed.items()})


def transition(machine: Machine, old: str, new: str) -> str:
    """``new`` when ``machine`` allows ``old`` -> ``new`` (or they are equal); else
    IllegalTransition naming both, since only a bug asks for a jump the machine forbids."""
    if new == old and old in machine.allowed:
        return new
    if new not in machine.allowed.get(old, frozenset()):
        known = "" if old in machine.allowed and new in machine.allowed else " (unknown state)"
        raise IllegalTransition(f"{machine.name}: {old!r} -> {new!r} is not allowed{known}")
    return new


# The daemon as a whole (status ``state``): ``failed`` while the state directory cannot be used
# (the supervisor keeps serving status and tries again).
DAEMON = _machine(
    "daemon",
    "starting",
    {
        "starting": ("running", "failed", "stopping"),
        "failed": ("running", "stopping"),
        "running": ("stopping",),
        "stopping": ("stopped",),
        "stopped": (),
    },
)

# A component the supervisor runs and restarts (crawl, ingest, control), one per
# ``ComponentRunner``: ``backoff`` is the wait before a restart after a failure.
COMPONENT = _machine(
    "component",
    "idle",
    {
        "idle": ("starting", "stopped"),
        "starting": ("running", "backoff", "stopped"),
        "running": ("backoff", "stopped"),
        "backoff": ("starting", "stopped"),
        "stopped": (),
    },
)

# Training, as the control process reports it (status ``training.state``); the supervisor says
# ``restarting`` for a control process that is not running.
TRAINING = _machine(
    "training",
    "starting",
    {
        # ``starting`` -> ``waiting for data`` while control waits for the learned vocabulary
        # (the base preset), then ``failed`` if the trainer cannot start for want of a resource
        "starting": ("training", "waiting for data", "failed", "stopped"),
        "failed": ("training", "stopped"),
        "training": ("waiting for data", "paused", "stopped"),
        "waiting for data": ("training", "failed", "paused", "stopped"),
        "paused": ("training", "stopped"),
        "stopped": (),
    },
)
RESTARTING = "restarting"  # training.state while the supervisor restarts control

# One worker process of the engine, as node zero sees it: ``restarting`` from its start until
# its HELLO, then idle and a phase per barrier; ``dead`` once killed (then started again).
WORKER = _machine(
    "worker",
    "restarting",
    {
        "restarting": ("idle", "dead"),
        "idle": ("computing", "reducing", "updating", "dead"),
        "computing": ("idle", "dead"),
        "reducing": ("idle", "dead"),
        "updating": ("idle", "dead"),
        "dead": ("restarting",),
    },
)

# A service the daemon starts once or on demand: the dashboard's HTTP server (off when not
# configured, failed when it cannot listen) and the generation process (started by the first
# generate, off again after a stop or a failure until the next).
SERVICE = _machine(
    "service",
    "off",
    {
        "off": ("starting",),
        "starting": ("running", "failed", "off"),
        "running": ("off",),
        "failed": ("starting", "off"),
    },
)

MACHINES = (DAEMON, COMPONENT, TRAINING, WORKER, SERVICE)
