"""bench/extract_heldout.py: pairing and score.py's scoring on crafted pages, without the network."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "extract_heldout.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("extract_heldout", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["extract_heldout"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_pairs_and_scores_two_crafted_pages(tmp_path: Path) -> None:
    bench = _bench()
    if not (bench.DEV_SET / "score.py").is_file():
        pytest.skip(f"{bench.DEV_SET}/score.py is not on this machine")
    scorer = bench.load_scorer(bench.DEV_SET)
    data = tmp_path / "tests" / "data"
    english = "the river rose over the old wall and the farmers moved their grain to the hill"
    comma, stop = "\uff0c", "\u3002"  # the ideographic comma and full stop
    chinese = f"今天北京天气很好{comma}我们去公园散步{stop}明天可能下雨{comma}记得带伞{stop}"
    _write(data / "html" / "river.html", f"<html><body><p>{english}</p></body></html>")
    _write(data / "txt" / "river.txt", english)
    _write(data / "html" / "weather.html", f"<html><body><p>{chinese}</p></body></html>")
    _write(data / "metadata" / "weather.json", json.dumps({"language": "zh", "text": chinese}))
    _write(data / "html" / "river_copy.html", f"<html><body><p>{english}</p></body></html>")  # river's bytes
    _write(data / "txt" / "river_copy.txt", "another reading")
    _write(data / "html" / "front.html", "<html><head><title>Front page</title></head></html>")
    _write(data / "txt" / "orphan.txt", "a text without its page")
    _write(tmp_path / "tests" / "conftest.py", '("river", "https://example.org/river", "en"),')

    pages, skipped = bench.pairs(data)
    assert [(p.name, p.language) for p in pages] == [("river", "en"), ("weather", "zh")]
    assert skipped == [
        ("front", "no expected text (page title: 'Front page')"),
        ("river_copy", "the same HTML as river"),
        ("orphan", "expected text without a page"),
    ]
    # ours: all of the English page plus four extra words; only the second clause of the Chinese page
    half = chinese.split(comma, 1)[1]
    preds = {"ours": {"river": english + " subscribe to our newsletter", "weather": half}}
    result = bench.measure(scorer, pages, preds)
    river, weather = result["pages"]
    words = len(english.split())
    assert river["ours"]["recall"] == 1.0
    assert river["ours"]["precision"] == pytest.approx((words - 3) / (words + 4 - 3))
    # \w+ keeps a Chinese clause whole: four clause tokens in the truth (one shingle), three of them
    # extracted (fewer than four: one shingle of the three), so the two do not match at all
    clause_chars = len(chinese) - 4  # less two commas and two full stops
    assert weather["chars_per_token"] == pytest.approx(round(clause_chars / 4, 1))
    assert (weather["ours"]["precision"], weather["ours"]["recall"]) == (0.0, 0.0)
    assert result["languages"]["zh"]["ours"] == scorer.score({"weather": chinese}, preds["ours"])
    overall = result["overall"]["ours"]
    assert overall == scorer.score({"river": english, "weather": chinese}, preds["ours"])
    assert overall["recall"] == pytest.approx(0.5)


@pytest.mark.timeout(120)
def test_without_the_index_one_error_line(tmp_path: Path) -> None:
    env = {**os.environ, "PIP_INDEX_URL": "http://127.0.0.1:1/simple", "PIP_RETRIES": "0", "PIP_TIMEOUT": "2"}
    env.pop("PIP_FIND_LINKS", None)
    out = subprocess.run(
        [sys.executable, str(BENCH), "--cache", str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert out.returncode == 1
    assert out.stderr.startswith("extract_heldout: cannot download newspaper4k==0.9.6 through pip")
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "cache" / "newspaper4k-0.9.6.tar.gz").exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("script", "error"),
    [
        (None, "no crystalline console script next to"),
        ('printf \'{"path": "%s", "te\' "$3"; kill -9 $$', 'crystalline extract printed \'{"path"'),
        ("echo 'Traceback (most recent call last):'", "crystalline extract printed 'Traceback"),
        ("echo '[1, 2]'", "crystalline extract printed '[1, 2]'"),
        ("exec sleep 30", "crystalline extract ran past 1 s"),
        ("echo 'it broke' >&2; exit 3", "crystalline extract (exit 3) gave 0 of 1 pages: it broke"),
    ],
)
def test_a_broken_extract_run_is_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str | None, error: str
) -> None:
    """`crystalline extract` missing, dying mid-output, printing what is not a page's JSON line,
    running past its time or failing: one line naming it (exit 1), no traceback."""
    bench = _bench()
    page = tmp_path / "river.html"
    _write(page, "<html><body><p>the river rose over the old wall</p></body></html>")
    if script is not None:
        _write(tmp_path / "bin" / "crystalline", f"#!/bin/sh\n{script}\n")
        (tmp_path / "bin" / "crystalline").chmod(0o755)
    monkeypatch.setattr(bench.sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setattr(bench, "EXTRACT_TIMEOUT_S", 1)
    with pytest.raises(SystemExit) as exit_:
        bench.run_crystalline([bench.Page("river", "en", page, "the river rose")])
    message = str(exit_.value.code)
    assert message.startswith("extract_heldout: ") and error in message and "\n" not in message
