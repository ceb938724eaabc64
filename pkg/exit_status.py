"""The exit statuses of every ``crystalline`` subcommand and the one path an error takes to
the user: one line on stderr (``crystalline: error: ...``), the traceback only with ``--debug``.

The README's table lists the statuses. This module imports nothing but the standard library:
``crystalline status`` runs through it and must stay light (tests/daemon/test_status_footprint.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn

from .log_lines import escaped, indented, log_to_stderr

OK = 0
ERROR = 1  # an error the user can act on: a missing file, a bad value, a daemon unreachable
DEGRADED = 2  # `crystalline status`: the daemon answers but is unhealthy
USAGE = 64  # a bad command line (EX_USAGE of sysexits.h); argparse's own is 2, taken by DEGRADED
SOFTWARE = 70  # a bug: an exception no user input explains (EX_SOFTWARE), printed with its traceback
INTERRUPTED = 130  # SIGINT (128 + 2); a crawl stopped by SIGTERM exits 143 (128 + 15)
BROKEN_PIPE = 141  # stdout closed early (`crystalline tokenize ... | head`), 128 + SIGPIPE

# Errors a user can cause besides ValueError and OSError, as (module, class). Looked up in
# sys.modules, never imported: an exception of a class exists only once its module is loaded,
# and importing the trainer here would make `crystalline status` heavy.
USER_ERROR_CLASSES = (
    ("crystalline.workers.trainer", "TrainingError"),
    ("crystalline.workers.checkpoint", "CheckpointError"),
)


class UsageError(ValueError):
    """A bad setting: an unknown key or a value out of range, from a config file, the
    environment or a flag (its message names which). Exits ``USAGE``."""


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors exit ``USAGE``; its subparsers are of this class
    too (argparse makes them of the parent's type)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(USAGE, f"{self.prog}: error: {message}\n")


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is something the user can fix (a bad file, value, or state on disk)."""
    if isinstance(exc, ValueError | OSError):  # TokenizerError is a ValueError
        return True
    for module_name, class_name in USER_ERROR_CLASSES:
        module = sys.modules.get(module_name)
        if module is not None and isinstance(exc, getattr(module, class_name)):
            return True
    return False


def one_line(exc: BaseException | str) -> str:
    """The error as one line: its message (or class name), an OSError's file name in front,
    its white space runs one space, its other control characters escaped. A text from outside
    (a tool's stderr) is made one line the same way ("" stays "")."""
    if isinstance(exc, str):
        text = exc
    else:
        text = str(exc) or type(exc).__name__
        if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
            text = f"{exc.filename}: {text}"
    return escaped(" ".join(text.split()))


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a subcommand's ``func`` and turn what escapes it into an exit status: a user error
    is one line and ``ERROR``; ``--debug`` (``args.debug``) re-raises it with its traceback; a
    bug keeps its traceback (it is the bug report) and exits ``SOFTWARE``."""
    try:
        return int(func(args))
    except KeyboardInterrupt:
        print("crystalline: interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:
        # the reader is gone: point stdout at /dev/null so the interpreter's final flush is quiet
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return BROKEN_PIPE
    except Exception as exc:
        if getattr(args, "debug", False):
            raise
        if isinstance(exc, UsageError):
            print(f"crystalline: error: {one_line(exc)}", file=sys.stderr)
            return USAGE
        if is_user_error(exc):
            print(f"crystalline: error: {one_line(exc)}", file=sys.stderr)
            return ERROR
        print(indented(traceback.format_exc().rstrip("\n")), file=sys.stderr)  # lines as the log's
        print(f"crystalline: internal error: {type(exc).__name__}: {one_line(exc)}", file=sys.stderr)
        return SOFTWARE


def main(parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    """Parse ``argv`` (a usage error exits ``USAGE``), set up logging on stderr (``--debug``:
    DEBUG, else INFO) and run the chosen subcommand's ``func`` through :func:`run_command`."""
    args = parser.parse_args(argv)
    log_to_stderr("%(levelname)s %(name)s: %(message)s", logging.DEBUG if args.debug else logging.INFO)
    return run_command(args.func, args)
