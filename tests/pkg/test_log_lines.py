"""A log message is one line: a file named with a line break cannot forge a log line."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from crystalline import exit_status
from crystalline.log_lines import OneLineFormatter


def test_a_dropped_name_with_a_line_break_is_logged_on_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "drop"
    folder.mkdir()
    (folder / "a.txt\nERROR crystalline.supervisor: forged\x1b[2J").write_text("x")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "crystalline.daemon.cli",
            "ingest",
            str(folder),
            "--data-dir",
            str(tmp_path / "d"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    logged = [line for line in out.stderr.splitlines() if "a.txt" in line or "forged" in line]
    assert logged == [
        f"INFO crystalline.ingest: filtered {folder}/a.txt\\nERROR crystalline.supervisor: forged\\x1b[2J: "
        "basic: too short (1 chars < 200)"
    ]


def test_a_traceback_keeps_its_lines_indented_and_cannot_forge_one() -> None:
    formatter = OneLineFormatter("%(levelname)s %(message)s")
    try:
        raise ValueError("inner\nERROR x: forged\r\x1b[2J")
    except ValueError:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "failed:\n%s", ("two\rthree\tfour",), sys.exc_info()
        )
    lines = formatter.format(record).split("\n")
    assert lines[0] == "ERROR failed:\\ntwo\\rthree\tfour"
    assert lines[1] == "  Traceback (most recent call last):"
    assert lines[-2:] == ["  ValueError: inner", "  ERROR x: forged\\r\\x1b[2J"]
    assert all(line.startswith("  ") for line in lines[1:])  # no traceback line reads as a record
    assert formatter.format(record).splitlines() == lines  # nothing else that splitlines() splits on
    assert record.getMessage() == "failed:\ntwo\rthree\tfour"  # the record itself is left as it was


def test_a_stack_is_indented_and_escaped() -> None:
    formatter = OneLineFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "here", (), None)
    record.stack_info = "Stack (most recent call last):\n  File a\nERROR x: forged\x1b[2J"
    lines = formatter.format(record).split("\n")
    assert lines == [
        "INFO here",
        "  Stack (most recent call last):",
        "    File a",
        "  ERROR x: forged\\x1b[2J",
    ]


def test_c1_controls_and_unicode_line_separators_are_escaped() -> None:
    formatter = OneLineFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "a%sb", ("\x85ERROR x: nel\u2028c\u2029d\x9b2J\xa0é",), None
    )
    line = formatter.format(record)
    assert line == "INFO a\\x85ERROR x: nel\\u2028c\\u2029d\\x9b2J\xa0éb"
    assert line.splitlines() == [line]


BIDI_CONTROLS = [0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]


@pytest.mark.parametrize("code", BIDI_CONTROLS, ids=[f"U+{c:04X}" for c in BIDI_CONTROLS])
def test_bidi_controls_are_escaped(code: int) -> None:
    """R20 6: a right-to-left override (or isolate, or mark) in outside text reordered a log
    line, a reason or an error as a terminal shows it."""
    text = f"a{chr(code)}b"
    assert exit_status.one_line(text) == f"a\\u{code:04x}b"
    formatter = OneLineFormatter("%(message)s")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%s", (text,), None)
    assert formatter.format(record) == f"a\\u{code:04x}b"


def test_a_warning_is_logged_on_one_line() -> None:
    code = (
        "import warnings\n"
        "from crystalline.log_lines import log_to_stderr\n"
        "log_to_stderr('%(levelname)s %(name)s: %(message)s')\n"
        "warnings.warn('a.txt\\nERROR x: forged')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    [line] = out.stderr.splitlines()
    assert line.startswith("WARNING py.warnings: <string>:4: UserWarning: a.txt\\nERROR x: forged\\n")


def test_an_internal_errors_traceback_cannot_forge_a_line(capsys: pytest.CaptureFixture[str]) -> None:
    def buggy(_args: argparse.Namespace) -> int:
        raise RuntimeError("boom\nERROR x: forged\x1b[2J")

    assert exit_status.run_command(buggy, argparse.Namespace(debug=False)) == exit_status.SOFTWARE
    lines = capsys.readouterr().err.split("\n")
    assert lines[0] == "  Traceback (most recent call last):"
    assert lines[-3:] == [
        "  ERROR x: forged\\x1b[2J",
        "crystalline: internal error: RuntimeError: boom ERROR x: forged\\x1b[2J",
        "",
    ]
    assert all(line.startswith("  ") for line in lines[:-2])
