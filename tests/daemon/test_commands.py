"""The status socket's commands, one module each in daemon/commands/: each docstring is the
command's wire format and its `crystalline ctl` help (checked on the real command line); the
commands run against a real daemon in tests/daemon/test_daemon.py."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from crystalline.daemon import commands
from crystalline.daemon.config import DaemonConfig
from crystalline.daemon.ctl_command import fields
from crystalline.exit_status import UsageError

pytestmark = pytest.mark.timeout(120)


def ctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crystalline.daemon.cli", "ctl", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("name", commands.NAMES)
def test_each_command_module_documents_its_wire_format(name: str) -> None:
    m = commands.module(name)
    doc = m.__doc__ or ""
    assert doc.startswith(f"{name}: ") and "Request:" in doc and "Reply:" in doc
    assert f'"cmd": "{name}"' in doc
    assert isinstance(m.CONTROL, bool)
    operators_only = "Only for the daemon's own user and root." in doc
    assert operators_only == m.CONTROL  # the docstring says who may send it, as the server checks


def test_bind_builds_every_command_with_its_docstring_as_help() -> None:
    class Unused:  # bind only takes the handlers' target and its settings; no handler is called here
        settings = SimpleNamespace(daemon=DaemonConfig(generate_burst_s=3.0))

    bound = commands.bind(Unused())  # type: ignore[arg-type]
    assert tuple(bound) == commands.NAMES
    for name, command in bound.items():
        assert command.name == name and command.help == (commands.module(name).__doc__ or "").strip()
    assert bound["status"].limit is None
    generate = bound["generate"].limit
    assert generate is not None and generate.burst_s == 3.0  # [daemon] generate-burst-s
    with pytest.raises(KeyError):
        commands.module("restart")


def test_ctl_help_lists_every_command_and_shows_its_docstring() -> None:
    out = ctl("--help")
    assert out.returncode == 0, out.stderr
    listed = " ".join(out.stdout.split())  # argparse wraps the summaries
    for name in commands.NAMES:
        assert f"{name} {commands.summary(name)}" in listed, name
    for name in commands.NAMES:
        out = ctl(name, "--help")
        assert out.returncode == 0, out.stderr
        for line in (commands.module(name).__doc__ or "").strip().splitlines():
            assert line.rstrip() in out.stdout, (name, line)


def test_fields_read_json_values_and_strings() -> None:
    assert fields(["what=crawl", "n=50", "seed=3", "temperature=0.5", "prompt=ROMEO:"]) == {
        "what": "crawl",
        "n": 50,
        "seed": 3,
        "temperature": 0.5,
        "prompt": "ROMEO:",
    }
    assert fields(["url=https://example.org/?a=b"]) == {"url": "https://example.org/?a=b"}
    for bad in ("crawl", "=x", "cmd=stop"):
        with pytest.raises(ValueError):
            fields([bad])


def test_a_value_nested_too_deep_is_a_one_line_usage_error() -> None:
    deep = "[" * 50_000
    with pytest.raises(UsageError, match=r"^n=\.\.\.: the value is nested more than 64 levels deep$"):
        fields(["prompt=x", f"n={deep}"])
    out = ctl("--socket", "/nonexistent/crystalline.sock", "generate", f"n={deep}")
    assert out.returncode == 64  # a usage error, before any connection
    said = "crystalline: error: n=...: the value is nested more than 64 levels deep"
    assert out.stderr.splitlines() == [said]
    assert fields(["n=" + "[" * 64 + "]" * 64, 'o={"a": [[{}]]}'])["o"] == {"a": [[{}]]}  # at the bound
    with pytest.raises(UsageError, match="more than 64 levels"):
        fields(['n={"a": ' + "[" * 64 + "]" * 64 + "}"])


def test_ctl_errors_are_one_line() -> None:
    out = ctl("--socket", "/nonexistent/crystalline.sock", "status")
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1
    assert "unreachable" in out.stderr
    out = ctl("--socket", "/nonexistent/crystalline.sock", "pause", "crawl")
    assert out.returncode == 1 and out.stderr.strip().splitlines()[-1].endswith("'crawl' is not KEY=VALUE")
    out = ctl("restart")
    assert out.returncode == 64 and "invalid choice: 'restart'" in out.stderr  # a usage error
