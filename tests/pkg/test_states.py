"""crystalline.states: every transition a machine does not list is refused, every listed one
is taken, and the states the engine and control use are the machines' own."""

from __future__ import annotations

import itertools

import pytest

from crystalline.states import (
    COMPONENT,
    DAEMON,
    MACHINES,
    TRAINING,
    WORKER,
    IllegalTransition,
    Machine,
    transition,
)


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.name)
def test_every_jump_the_machine_does_not_list_is_refused(machine: Machine) -> None:
    refused = allowed = 0
    for old, new in itertools.product(sorted(machine.states), repeat=2):
        if old == new:
            assert transition(machine, old, new) == new  # staying is not a jump
        elif new in machine.allowed[old]:
            assert transition(machine, old, new) == new
            allowed += 1
        else:
            with pytest.raises(IllegalTransition, match=f"{machine.name}: '{old}' -> '{new}' is not allowed"):
                transition(machine, old, new)
            refused += 1
    assert allowed > 0 and refused > 0


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.name)
def test_unknown_states_are_refused_both_ways(machine: Machine) -> None:
    with pytest.raises(IllegalTransition, match="unknown state"):
        transition(machine, machine.initial, "error")
    with pytest.raises(IllegalTransition, match="unknown state"):
        transition(machine, "error", machine.initial)
    with pytest.raises(IllegalTransition):
        transition(machine, "error", "error")


def test_a_machine_must_declare_every_state_it_names() -> None:
    with pytest.raises(ValueError, match="not declared"):
        Machine("m", "a", {"a": frozenset({"b"})})
    with pytest.raises(ValueError, match="not declared"):
        Machine("m", "z", {"a": frozenset()})


def test_terminal_states_lead_nowhere() -> None:
    assert DAEMON.allowed["stopped"] == frozenset()
    assert COMPONENT.allowed["stopped"] == frozenset()
    assert TRAINING.allowed["stopped"] == frozenset()
    # a dead worker can only be started again, never put back into a phase
    assert WORKER.allowed["dead"] == frozenset({"restarting"})


def test_the_engine_and_control_use_the_machines_states() -> None:
    from crystalline.workers import engine

    phases = set(engine.PHASE_STATE.values())
    assert {engine.IDLE, engine.DEAD, engine.RESTARTING} | phases == set(WORKER.states)
    assert WORKER.initial == engine.WorkerHandle(0).state
    from crystalline.daemon import status_command

    assert set(status_command.SYMBOL) == set(WORKER.states)


def test_training_takes_the_paths_control_takes() -> None:
    """Control's own sequences: the vocabulary wait (base preset) before the trainer starts,
    then a short resource or training, and a stop from any of them."""
    for path in (
        ["starting", "waiting for data", "failed", "training", "stopped"],
        ["starting", "waiting for data", "training", "waiting for data", "paused", "training"],
        ["starting", "waiting for data", "stopped"],
        ["starting", "failed", "stopped"],
    ):
        state = TRAINING.initial
        for new in path[1:]:
            state = transition(TRAINING, state, new)
    with pytest.raises(IllegalTransition):
        transition(TRAINING, "failed", "waiting for data")  # the vocabulary wait comes first
