"""`crystalline dashboard`: print the running daemon's dashboard URL with its token.

As Jupyter does: the daemon writes ``RUNTIME_DIR/dashboard.json`` (mode 0640: its user and
group) with the URL and a fresh token at each start; this prints ``URL#token=...``. The token is
in the fragment, which a browser never sends to a server; the page keeps it for the tab and
sends it in a header with each action. Standard library only, like `crystalline status`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


def default_runtime_dir() -> Path:
    runtime = os.environ.get("RUNTIME_DIRECTORY")
    return Path(runtime) if runtime else Path("state/run").absolute()


def read_dashboard_file(runtime_dir: Path) -> dict[str, Any]:
    """The URL and token the daemon wrote; OSError or ValueError with a one-line reason."""
    path = runtime_dir / "dashboard.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} does not exist: is the daemon running with its dashboard on (--http)?"
        ) from None
    except OSError as exc:  # a runtime dir that is a file, a file not readable, ...
        raise OSError(f"cannot read {path}: {exc.strerror or exc}") from None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("url"), str)
        or not isinstance(data.get("token"), str)
    ):
        raise ValueError(f"{path} is not a dashboard file written by crystalline")
    return data


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "dashboard",
        help="print the dashboard's URL with its token",
        description="Print the running daemon's dashboard URL with the token that enables its actions.",
    )
    p.add_argument("--runtime-dir", type=Path, help="the daemon's runtime directory (default: ./state/run)")
    p.add_argument("--no-token", action="store_true", help="the read-only URL, without the token")
    p.set_defaults(func=run_dashboard_command)


def run_dashboard_command(args: argparse.Namespace) -> int:
    data = read_dashboard_file(args.runtime_dir or default_runtime_dir())
    url = data["url"] if args.no_token else f"{data['url']}#token={data['token']}"
    print(url)
    sys.stdout.flush()
    return 0
