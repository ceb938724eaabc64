"""bench/extract_heldout.py: pairing and score.py's scoring on crafted pages, without the network."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
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

    held = bench.SETS["newspaper4k"]
    pages, skipped = bench.distinct(held, held.pairs(tmp_path), {})
    assert [(p.name, p.language) for p in pages] == [("river", "en"), ("weather", "zh")]
    assert skipped == [
        ("front", "no expected text (page title: 'Front page')"),
        ("orphan", "expected text without a page"),
        ("river_copy", "the same HTML as newspaper4k/river"),
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
@pytest.mark.parametrize(
    ("args", "sdist"),
    [
        ([], "newspaper4k-0.9.6"),
        (["--set", "domdown"], "domdown-0.3.6"),
        (["--set", "trafilatura-eval"], "trafilatura-0.9.3"),
    ],
)
def test_without_the_index_one_error_line(tmp_path: Path, args: list[str], sdist: str) -> None:
    env = {**os.environ, "PIP_INDEX_URL": "http://127.0.0.1:1/simple", "PIP_RETRIES": "0", "PIP_TIMEOUT": "2"}
    env.pop("PIP_FIND_LINKS", None)
    out = subprocess.run(
        [sys.executable, str(BENCH), "--cache", str(tmp_path / "cache"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert out.returncode == 1
    pin = sdist.replace("-", "==")
    assert out.stderr.startswith(f"extract_heldout: cannot download {pin} through pip")
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "cache" / f"{sdist}.tar.gz").exists()


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


DEV_PAGE = "<html><body><p>a page the extractor was tuned on</p></body></html>"
MARKDOWN = """---
title: The river
language: "en-GB"
source: "https://example.org/river"
---
# The river rose

The [river](https://example.org/river?ref=x) rose over the _old_ wall ![a photo](https://example.org/p.jpg)
and the farmers moved their __grain__ to <https://example.org/hill>.
- **Hill:** <a href="https://example.org/hill">the hill &amp; its barns</a>

```python
move_grain(to_hill)
```

[![the hill](https://example.org/hill.png)](https://example.org/hill)
"""


def _domdown_tree(top: Path, dev_set: Path) -> None:
    """A crafted tests/real of domdown: one good case, one without Markdown, one with an empty
    body, one without its page and one whose page is the (crafted) dev set's."""
    real = top / "tests" / "real"
    cases = [
        ("river", "<p>the river rose</p>", MARKDOWN),
        ("no_markdown", "<p>a page</p>", None),
        ("empty_body", "<p>another page</p>", "---\ntitle: Nothing\n---\n\n![only an image](x.png)\n"),
        ("no_page", None, "some text"),
        ("tuned_on", DEV_PAGE, "a page the extractor was tuned on"),
    ]
    for name, html, markdown in cases:
        if html is not None:
            _write(real / "html" / f"{name}.html", html)
        if markdown is not None:
            _write(real / "raw" / f"{name}.md", markdown)
    manifest = [{"id": n, "html": f"html/{n}.html", "markdown": f"raw/{n}.md"} for n, _, _ in cases]
    _write(real / "manifest.json", json.dumps({"version": 1, "cases": manifest}))
    _write(top / "tests" / "other" / "left_packed.py", "not unpacked")
    _write(dev_set / "pages" / "tuned-1.html", DEV_PAGE)


def test_markdown_text_keeps_the_words_a_reader_reads() -> None:
    bench = _bench()
    text, language = bench.markdown_text(MARKDOWN)
    assert language == "en"
    # no link or image target (Markdown or <a>), no alt text, no emphasis underscores; an
    # autolink's address and a code block's code are text on the page
    assert " ".join(bench.WORD.findall(text)) == (
        "The river rose The river rose over the old wall and the farmers moved their grain to "
        "https example org hill Hill the hill its barns move_grain to_hill"
    )
    assert "the hill & its barns" in text
    assert bench.markdown_text("no front matter here") == ("no front matter here", "?")


def test_domdown_set_unpacked_offline_and_paired(tmp_path: Path) -> None:
    """A crafted sdist in the cache with its sha256 pinned: only tests/real is unpacked, a case
    without a page or an expected text is left out with the reason, and so is a dev-set page."""
    bench = _bench()
    top = tmp_path / "build" / "domdown-0.3.6"
    dev_set = tmp_path / "dev"
    _domdown_tree(top, dev_set)
    cache = tmp_path / "cache"
    cache.mkdir()
    tarball = cache / "domdown-0.3.6.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(top, arcname="domdown-0.3.6")
    held = dataclasses.replace(bench.SETS["domdown"], sha256=hashlib.sha256(tarball.read_bytes()).hexdigest())

    root = bench.fetch(cache, held)
    assert root == cache / "domdown-0.3.6"
    assert (root / "tests" / "real" / "manifest.json").is_file()
    assert not (root / "tests" / "other").exists()
    pages, skipped = bench.distinct(held, held.pairs(root), bench.dev_pages(dev_set))
    assert [(p.name, p.language) for p in pages] == [("river", "en")]
    assert pages[0].truth == bench.markdown_text(MARKDOWN)[0]
    assert skipped == [
        ("no_markdown", "no expected text (no_markdown.md)"),
        ("empty_body", "no expected text (empty_body.md)"),
        ("no_page", "no page (no_page.html)"),
        ("tuned_on", "the same HTML as dev-set page tuned-1"),
    ]
    assert bench.fetch(cache, held) == root  # unpacked once: the cache is used as it is


def test_a_cached_sdist_with_another_sha256_is_one_error_line(tmp_path: Path) -> None:
    bench = _bench()
    cache = tmp_path / "cache"
    _write(cache / "domdown-0.3.6.tar.gz", "not the pinned tarball")
    with pytest.raises(SystemExit) as exit_:
        bench.fetch(cache, bench.SETS["domdown"])
    message = str(exit_.value.code)
    assert message.startswith(f"extract_heldout: {cache / 'domdown-0.3.6.tar.gz'}: sha256 ")
    assert f"not {bench.SETS['domdown'].sha256}; delete it to fetch again" in message
    assert "\n" not in message
    assert not (cache / "domdown-0.3.6").exists()


@pytest.mark.parametrize("manifest", ["{not json", '{"cases": [{"id": "a"}]}', '{"version": 1}'])
def test_a_broken_manifest_is_one_error_line(tmp_path: Path, manifest: str) -> None:
    bench = _bench()
    _write(tmp_path / "tests" / "real" / "manifest.json", manifest)
    with pytest.raises(SystemExit) as exit_:
        bench.domdown_pairs(tmp_path)
    message = str(exit_.value.code)
    assert message.startswith("extract_heldout: ") and "not a manifest of cases" in message
    assert "\n" not in message


def test_combined_is_scored_over_the_pages_of_all_sets(tmp_path: Path) -> None:
    bench = _bench()
    if not (bench.DEV_SET / "score.py").is_file():
        pytest.skip(f"{bench.DEV_SET}/score.py is not on this machine")
    scorer = bench.load_scorer(bench.DEV_SET)
    html = tmp_path / "page.html"
    one = "the river rose over the old wall and the farmers moved"
    two = "their grain to the hill before the rain came down on the valley"
    pages = {"a": [bench.Page("p", "en", html, one)], "b": [bench.Page("p", "en", html, two)]}
    results = {
        "a": {"predictions": {"ours": {"p": one}}, "seconds": {"ours": {"wall": 1.0, "cpu": 0.5}}},
        "b": {"predictions": {"ours": {"p": ""}}, "seconds": {"ours": {"wall": 3.0, "cpu": 1.5}}},
    }
    combined = bench.combine(scorer, pages, results)
    assert combined["count"] == 2
    assert combined["overall"]["ours"] == scorer.score({"a/p": one, "b/p": two}, {"a/p": one, "b/p": ""})
    assert combined["overall"]["ours"]["recall"] == pytest.approx(0.5)
    assert combined["speed"]["ours"] == {"wall": pytest.approx(0.5), "cpu": pytest.approx(1.0)}


def test_cpu_is_given_with_every_start_up_and_with_none() -> None:
    """crystalline's run paid its start-up (a fresh process), trafilatura's did not (imported
    before its clock): each figure is put both ways, and combined over sets the same way."""
    bench = _bench()
    assert bench.startup_seconds(2.0, 0.5, paid=True) == {"cpu_with_startup": 2.0, "cpu_no_startup": 1.5}
    assert bench.startup_seconds(2.0, 0.5, paid=False) == {"cpu_with_startup": 2.5, "cpu_no_startup": 2.0}
    seconds = {"wall": 1.0, "cpu": 1.0, **bench.startup_seconds(1.0, 0.5, paid=False)}
    results = {s: {"predictions": {"ours": {}}, "seconds": {"ours": seconds}} for s in ("a", "b")}
    pages = {s: [bench.Page("p", "en", Path("p.html"), "the river rose")] for s in ("a", "b")}
    speed = bench.combine(_NoScorer(), pages, results)["speed"]["ours"]  # 2 pages in 2 s, 3 s, 2 s
    assert speed == {"wall": 1.0, "cpu": 1.0, "cpu_with_startup": pytest.approx(2 / 3), "cpu_no_startup": 1.0}


class _NoScorer:
    """score.py's place where only the speeds are looked at."""

    @staticmethod
    def score(_truth: dict[str, str], _pred: dict[str, str]) -> dict[str, float]:
        return {}


@pytest.mark.timeout(300)
def test_start_ups_are_measured_on_fresh_processes_that_work_no_page() -> None:
    """The real commands: crystalline's start-up run loads what a page needs and ends on the
    empty file's error (were that message to change, the run would be one error line, never a
    figure of something else); trafilatura's is its import."""
    bench = _bench()
    startups = bench.measure_startups(runs=1)
    assert startups["crystalline"] > 0
    if importlib.util.find_spec("trafilatura"):
        assert startups["trafilatura"] > 0


def test_snippets_are_matched_as_trafilatura_matches_them() -> None:
    """trafilatura's evaluate_result and calculate_scores: a snippet counts where it is a substring
    of the text as it is; no whitespace or case folding."""
    bench = _bench()
    text = "The river rose over the old wall.\nThe farmers moved  their grain to the hill.\nShare this"
    must = (
        "rose over the old wall",  # found
        "The farmers moved",  # found
        "the wall fell",  # missing
        "wall. The farmers",  # the text breaks the line there: not found
        "moved their grain",  # the text has two spaces there: not found
        "the river rose",  # another case: not found
    )
    must_not = ("Share this", "Subscribe")  # the first leaks, the second does not
    counts = bench.snippet_counts(text, must, must_not)
    assert counts == bench.SnippetCounts(tp=2, fn=4, fp=1, tn=1)
    scores = bench.snippet_scores(counts)
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(2 / 6)
    assert scores["accuracy"] == pytest.approx(3 / 8)
    assert scores["f1"] == pytest.approx(4 / (4 + 1 + 4))
    # nothing extracted: every 'with' snippet missed, every 'without' one rightly absent
    assert bench.snippet_counts("", must, must_not) == bench.SnippetCounts(tp=0, fn=6, fp=0, tn=2)
    assert bench.snippet_scores(bench.SnippetCounts(tn=2)) == {
        "precision": 0.0,
        "recall": 0.0,
        "accuracy": 1.0,
        "f1": 0.0,
    }
    assert counts + counts == bench.SnippetCounts(tp=4, fn=8, fp=2, tn=2)


def test_trafilatura_set_paired_from_the_annotations_and_scored_offline(tmp_path: Path) -> None:
    """Cache pages with an annotation are scored by their snippets (micro over all of them); a page
    without one, an annotation without its page and a dev-set page are listed as left out."""
    bench = _bench()
    cache = tmp_path / "tests" / "cache"
    _write(cache / "river.html", "<html><body><p>The river rose over the old wall.</p></body></html>")
    _write(cache / "hill.html", "<html><body><p>The farmers moved their grain to the hill.</p></body></html>")
    _write(cache / "metadata_only.html", "<html><head><title>Dates</title></head></html>")
    _write(cache / "tuned_on.html", DEV_PAGE)
    _write(tmp_path / "dev" / "pages" / "tuned-1.html", DEV_PAGE)
    annotations = tmp_path / "annotations.json"
    notes = [
        {
            "file": "river.html",
            "url": "https://example.org/r",
            "with": ["river rose", "old wall"],
            "without": ["Share"],
        },
        {
            "file": "hill.html",
            "url": "https://example.org/h",
            "with": ["to the hill"],
            "without": ["Menu", "Login"],
        },
        {"file": "tuned_on.html", "url": "https://example.org/t", "with": ["tuned on"], "without": ["x"]},
        {"file": "gone.html", "url": "https://example.org/g", "with": ["gone"], "without": ["y"]},
    ]
    _write(annotations, json.dumps({"pages": notes}))
    held = bench.SETS["trafilatura-eval"]
    found = bench.trafilatura_pairs(tmp_path, annotations)
    pages, skipped = bench.distinct(held, found, bench.dev_pages(tmp_path / "dev"))
    assert [(p.name, p.must, p.must_not) for p in pages] == [
        ("hill", ("to the hill",), ("Menu", "Login")),
        ("river", ("river rose", "old wall"), ("Share",)),
    ]
    assert skipped == [
        ("metadata_only", "no annotation in trafilatura's evaldata.py"),
        ("gone", "annotation without a page"),
        ("tuned_on", "the same HTML as dev-set page tuned-1"),
    ]
    preds = {"ours": {"river": "The river rose over the old wall. Share", "hill": "Menu Login"}}
    result = bench.measure_snippets(pages, preds)
    assert result["overall"]["ours"] == {
        **bench.snippet_scores(bench.SnippetCounts(tp=2, fn=1, fp=3, tn=0)),
        "tp": 2,
        "fn": 1,
        "fp": 3,
        "tn": 0,
    }
    hill, river = result["pages"]
    assert (hill["snippets"], hill["ours"]["missed"], hill["ours"]["leaked"]) == (
        3,
        ["to the hill"],
        ["Menu", "Login"],
    )
    assert (river["ours"]["f1"], river["ours"]["leaked"]) == (pytest.approx(0.8), ["Share"])


@pytest.mark.parametrize(
    "annotations",
    [
        "{not json",
        '{"pages": [{"file": "a.html"}]}',
        '{"pages": [{"file": "a.html", "with": "one", "without": []}]}',
    ],
)
def test_broken_annotations_are_one_error_line(tmp_path: Path, annotations: str) -> None:
    bench = _bench()
    path = tmp_path / "annotations.json"
    _write(path, annotations)
    with pytest.raises(SystemExit) as exit_:
        bench.trafilatura_pairs(tmp_path, path)
    message = str(exit_.value.code)
    assert message.startswith(f"extract_heldout: {path}: not trafilatura's annotations")
    assert "\n" not in message


def test_the_committed_annotations_are_whole() -> None:
    """bench/data/trafilatura_eval.json: its provenance, one entry per cache page, each with 'with'
    and 'without' snippets and no comments."""
    bench = _bench()
    data = json.loads(bench.ANNOTATIONS.read_text(encoding="utf-8"))
    assert data["source"]["commit"] == "08eb92f03e60a89773aeff9a4644402fea0c3476"
    assert data["source"]["licence"].startswith("Apache-2.0")
    files = [page["file"] for page in data["pages"]]
    assert len(files) == len(set(files)) == 103
    assert all(
        page["with"] and page["without"] and set(page) == {"file", "url", "with", "without"}
        for page in data["pages"]
    )
