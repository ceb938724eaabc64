"""A log message is one line: a file named with a line break cannot forge a log line."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

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


def test_a_traceback_keeps_its_lines() -> None:
    formatter = OneLineFormatter("%(levelname)s %(message)s")
    try:
        raise ValueError("inner")
    except ValueError:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "failed:\n%s", ("two\rthree\tfour",), sys.exc_info()
        )
    lines = formatter.format(record).splitlines()
    assert lines[0] == "ERROR failed:\\ntwo\\rthree\tfour"
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: inner"
    assert record.getMessage() == "failed:\ntwo\rthree\tfour"  # the record itself is left as it was
