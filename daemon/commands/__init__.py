"""The status socket's commands, one module each (the pattern of circus' ``commands/``).

A command module has the command's docstring, which is its wire format and its help in
``crystalline ctl --help``, ``CONTROL`` (True: it changes the daemon, so only its own user and
root may send it) and ``async execute(daemon, request)``, which does the work through
:class:`Daemon`, the part of the supervisor a command may touch. It may define
``limit(daemon)``, a share of wall time per uid (``generate``).

Standard library only at import time: ``crystalline ctl`` reads the docstrings without loading
the daemon.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..command_limit import CommandLimit
    from ..config import Settings
    from ..control_link import ControlLink
    from ..crawl_service import CrawlService
    from ..generation_service import GenerationService

NAMES = ("status", "pause", "resume", "add-url", "checkpoint", "generate", "stop")


class CommandError(Exception):
    """A request the daemon understood but cannot honour; its message goes to the client."""


Handler = Callable[[dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True)
class Command:
    name: str
    handler: Handler
    control: bool  # changes the daemon's state: own user and root only
    help: str = ""
    limit: CommandLimit | None = None  # a share of wall time per uid (generate)


class Daemon(Protocol):
    """What a command may use of the supervisor."""

    settings: Settings
    control: ControlLink
    crawl: CrawlService
    generation: GenerationService

    def status(self) -> dict[str, Any]: ...

    def request_stop(self) -> None: ...


def module(name: str) -> ModuleType:
    """The module of command ``name`` (``add-url``: ``commands/add_url.py``)."""
    if name not in NAMES:
        raise KeyError(name)
    return importlib.import_module(f"{__name__}.{name.replace('-', '_')}")


def summary(name: str) -> str:
    """The first line of a command's docstring, less the ``name:`` it starts with."""
    return (module(name).__doc__ or name).strip().splitlines()[0].removeprefix(f"{name}: ")


def bind(daemon: Daemon) -> dict[str, Command]:
    """Every command, its handler bound to ``daemon``."""
    commands = {}
    for name in NAMES:
        m = module(name)
        limit = m.limit(daemon) if hasattr(m, "limit") else None
        handler = functools.partial(m.execute, daemon)
        doc = (m.__doc__ or "").strip()
        commands[name] = Command(name, handler, control=m.CONTROL, help=doc, limit=limit)
    return commands


async def pause_or_resume(daemon: Daemon, request: dict[str, Any], pause: bool) -> Any:
    """pause and resume: of ``"what"``, ``training`` (the default: control, between steps) or
    ``crawl`` (the pass in hand ends; none starts until resume)."""
    what = request.get("what", "training")
    if what == "crawl":
        if pause:
            daemon.crawl.pause()
        else:
            daemon.crawl.resume()
        return {"crawl": "paused" if pause else "running"}
    if what != "training":
        raise CommandError('"what" must be "training" or "crawl"')
    return await daemon.control.request("pause" if pause else "resume")
