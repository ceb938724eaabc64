"""Results handed out in input order, with work kept from running too far ahead of the oldest
result not yet handed out: ``ExtractionPool.map(in_order=True)``, where each result is held
until those of the documents before it came."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class InputOrder(Generic[T]):
    """Takes ``(index, item)`` pairs in any order (indexes 0, 1, 2, ... each once) and releases
    them in index order, holding back an item until those before it came. ``ahead`` bounds what
    is held: :meth:`may_take` allows the work for an index only while it is less than ``ahead``
    past the oldest index not yet released, so at most ``ahead - 1`` items are ever held."""

    def __init__(self, ahead: int) -> None:
        if ahead < 1:
            raise ValueError(f"ahead must be at least 1, got {ahead}")
        self.ahead = ahead
        self._held: dict[int, T] = {}
        self._next = 0  # the index to release next

    def may_take(self, index: int) -> bool:
        """Whether the work for ``index`` (the next one after those taken) may start now."""
        return index < self._next + self.ahead

    def release(self, index: int, item: T) -> list[tuple[int, T]]:
        """``item`` came for ``index``: the items now due, in index order (none while an
        earlier one has not come)."""
        if index < self._next or index in self._held:
            raise ValueError(f"an item for index {index} came twice")
        self._held[index] = item
        due = []
        while self._next in self._held:
            due.append((self._next, self._held.pop(self._next)))
            self._next += 1
        return due

    def finish(self) -> None:
        """The end of the work: raise if an item is still held, its earlier index never having
        come (a lost index would otherwise drop the items behind it without a word)."""
        if self._held:
            held, missing = len(self._held), self._next
            raise RuntimeError(f"{held} results held back at the end of the work: index {missing} never came")
