"""`crystalline ctl COMMAND [KEY=VALUE ...]`: send one command to the running daemon's status
socket and print its reply's data as JSON.

Each command's help is its module's docstring in ``daemon/commands/`` (the wire format the
socket takes). ``KEY=VALUE`` pairs become the request's fields; a value that reads as JSON
(``n=50``, ``seed=3``, ``top_k=0``) is taken as such, anything else as a string
(``what=crawl``, ``url=https://example.org/``).

Exit status: 0 done, 1 the daemon is unreachable or refused the command (its one-line error on
stderr). Standard library only, like `crystalline status`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from crystalline.exit_status import ERROR, OK, UsageError

from . import commands
from .status_client import request
from .status_command import add_socket_options, socket_of

# no command's field nests; json's reader and writer give out near 1000 levels, each at a depth
# that varies with the stack it runs on (R19 2: 989-991 deep was read here and overflowed the
# writer in status_client), so a field is held well below both, the daemon's reader included
MAX_NESTING = 64


def fields(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as request fields (ValueError, one line, for a pair without ``=``;
    UsageError for a value nested more than MAX_NESTING deep, ``n=[[[[...``)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{pair!r} is not KEY=VALUE")
        if key == "cmd":
            raise ValueError("the command is named before its fields, not as cmd=")
        too_deep = f"{key}=...: the value is nested more than {MAX_NESTING} levels deep"
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
        except RecursionError:  # deeper than MAX_NESTING all the same
            raise UsageError(too_deep) from None
        if _nesting(out[key]) > MAX_NESTING:
            raise UsageError(too_deep)
    return out


def _nesting(value: Any) -> int:
    """How many lists and objects deep ``value`` is (a scalar: 0), without recursion."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth)
            todo += [(inner, depth + 1) for inner in (item.values() if isinstance(item, dict) else item)]
    return deepest


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "ctl",
        help="send a command to the running daemon (pause, checkpoint, add-url, ...)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_socket_options(p, timeout_s=130.0)  # the socket gives a command 120 s (checkpoint, generate)
    names = p.add_subparsers(dest="ctl_command", required=True, metavar="COMMAND")
    for name in commands.NAMES:
        c = names.add_parser(
            name,
            help=commands.summary(name),
            description=commands.module(name).__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        c.add_argument("fields", nargs="*", metavar="KEY=VALUE", help="the request's fields")
    p.set_defaults(func=run_ctl_command)


def run_ctl_command(args: argparse.Namespace) -> int:
    path = socket_of(args)
    payload = {"cmd": args.ctl_command, **fields(args.fields)}
    try:
        reply = request(path, payload, timeout_s=args.timeout)
    except OSError as exc:
        print(f"crystalline: daemon unreachable at {path}: {exc}", file=sys.stderr)
        return ERROR
    if not reply.get("ok"):
        print(f"crystalline: {args.ctl_command}: {reply.get('error')}", file=sys.stderr)
        return ERROR
    print(json.dumps(reply.get("data"), indent=2))
    return OK
