"""Main-text extraction on a second held-out set: newspaper4k's test pages, crystalline vs trafilatura.

The pages are real news pages (CNN, Time, Wired, cleveland.com, fox13, Yonhap; Arabic, Chinese,
Japanese, Thai, Spanish, Latvian, Burmese) shipped in the source distribution of newspaper4k
0.9.6 on PyPI, fetched through pip into a cache directory (pinned version, the tarball's sha256
checked by pip and again here). Each page's expected text is newspaper4k's own output
(``tests/data/txt/NAME.txt``, else ``text`` of ``tests/data/metadata/NAME.json``): one more
reader's choice, not gold, so this set measures and is never tuned on. Pages without an
expected text (front pages, redirect stubs, a feed) and pages whose HTML repeats another's are
listed as skipped, with the reason.

Scoring is the development set's own ``score.py`` (imported from ``--dev-set``): word 4-gram
shingles over ``\\w+`` tokens, per-page precision and recall, means over pages, F1 of the means.
``\\w+`` does not split Chinese or Japanese (no spaces between words), so on those pages a token
is a whole clause (the ``ch/tok`` column) and one differing character loses every shingle that
clause is in: the same rule as the dev set, stricter there than on spaced scripts (Thai and
Burmese are cut at their vowel signs, which ``\\w`` does not match).

Side by side in the same run: ``crystalline extract --json`` over all pages (the shipped path end
to end: start-up, extraction, JSON; under ``taskset -c CPU`` to one CPU when taskset exists), and
trafilatura in this process with score.py's settings (``trafilatura.extract(bytes)``, defaults).
pages/s are of wall and CPU time (the command's children for crystalline, this process for
trafilatura; crystalline's include its start-up); per page, trafilatura's milliseconds.

    .venv/bin/python bench/extract_heldout.py [--cache DIR] [--dev-set DIR] [--json]
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
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

SDIST = "newspaper4k-0.9.6.tar.gz"
PIN = "newspaper4k==0.9.6"
SHA256 = "a3f2f0e017dddb6f1019ee77aaa8980e13e6ecea0b949abc7167aae4770d2d0e"
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
DATA = "newspaper4k-0.9.6/tests/data"
CACHE = Path.home() / ".cache" / "crystalline" / "extract-heldout"
DEV_SET = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "extraction-dev"
WORD = re.compile(r"\w+", re.UNICODE)  # score.py's tokens, for the chars/token column only
# conftest.py's (name, url, language) triples: the language of pages without metadata
LANG_TRIPLE = re.compile(r'\(\s*"([\w.]+)",\s*(?:\(\s*(?:"[^"]*"\s*)+\)|"[^"]*"),\s*"([a-z]{2})",?\s*\)')


@dataclass
class Page:
    name: str
    language: str
    html: Path
    truth: str


EXTRACT_TIMEOUT_S = 600  # crystalline extract over all the pages


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(cache: Path) -> Path:
    """The sdist's tests/data folder under ``cache``, downloaded through pip and unpacked once."""
    data = cache / DATA
    if data.is_dir():
        return data
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / SDIST
    if not tarball.is_file():
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            req = Path(tmp) / "requirements.txt"
            req.write_text(f"{PIN} --hash=sha256:{SHA256}\n")
            got = subprocess.run(
                [*PIP_DOWNLOAD, "-r", str(req), "-d", tmp],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            if got.returncode or not (Path(tmp) / SDIST).is_file():
                last = (got.stderr.strip().splitlines() or ["no output"])[-1]
                raise SystemExit(f"extract_heldout: cannot download {PIN} through pip (no network?): {last}")
            os.replace(Path(tmp) / SDIST, tarball)
    if (digest := _sha256(tarball)) != SHA256:
        raise SystemExit(
            f"extract_heldout: {tarball}: sha256 {digest}, not {SHA256}; delete it to fetch again"
        )
    with tempfile.TemporaryDirectory(dir=cache) as tmp, tarfile.open(tarball) as tar:
        wanted = (DATA + "/", "newspaper4k-0.9.6/tests/conftest.py")
        members = [m for m in tar.getmembers() if m.name.startswith(wanted)]
        tar.extractall(tmp, members=members, filter="data")
        os.makedirs(cache / "newspaper4k-0.9.6", exist_ok=True)
        os.replace(Path(tmp) / "newspaper4k-0.9.6" / "tests", cache / "newspaper4k-0.9.6" / "tests")
    return data


def pairs(data: Path) -> tuple[list[Page], list[tuple[str, str]]]:
    """Each page with its expected text, and (name, why) for every page or text left out."""
    conftest = data.parent / "conftest.py"
    languages = dict(LANG_TRIPLE.findall(conftest.read_text(encoding="utf-8"))) if conftest.is_file() else {}
    pages: list[Page] = []
    skipped: list[tuple[str, str]] = []
    seen: dict[bytes, str] = {}
    for html in sorted((data / "html").glob("*.html")):
        name = html.name[: -len(".html")]
        meta_path = data / "metadata" / f"{name}.json"
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
        txt = data / "txt" / f"{name}.txt"
        truth = txt.read_text(encoding="utf-8") if txt.is_file() else meta.get("text") or ""
        digest = hashlib.sha256(html.read_bytes()).digest()
        if not truth.strip():
            title = re.search(rb"<title[^>]*>([^<]*)", html.read_bytes(), re.I)
            shown = title.group(1).decode("utf-8", "replace").strip()[:60] if title else "no <title>"
            skipped.append((name, f"no expected text (page title: {shown!r})"))
        elif digest in seen:
            skipped.append((name, f"the same HTML as {seen[digest]}"))
        else:
            seen[digest] = name
            pages.append(Page(name, meta.get("language") or languages.get(name, "?"), html, truth))
    for txt in sorted((data / "txt").glob("*.txt")):
        if not (data / "html" / f"{txt.stem}.html").is_file():
            skipped.append((txt.stem, "expected text without a page"))
    return pages, skipped


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
    program = Path(sys.executable).with_name("crystalline")
    if not os.access(program, os.X_OK):
        raise SystemExit(f"extract_heldout: no crystalline console script next to {sys.executable}")
    command = [str(program), "extract", "--json", *(str(p.html) for p in pages)]
    if shutil.which("taskset"):
        command = ["taskset", "-c", str(min(os.sched_getaffinity(0))), *command]
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=EXTRACT_TIMEOUT_S, check=False)
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


def _prf(m: dict[str, float]) -> str:
    return f"{m['f1']:.3f} {m['precision']:.3f} {m['recall']:.3f}"


def print_tables(result: dict[str, Any], labels: list[str]) -> None:
    heads = "  ".join(f"{label + ' F1 P R':<19s}" for label in labels)
    print(f"{result['count']} pages scored, {len(result['skipped'])} left out")
    for name, why in result["skipped"]:
        print(f"  skipped {name}: {why}")
    print(f"\n{'overall':14s}{'F1':>6s}{'precision':>10s}{'recall':>7s}{'pages/s wall':>13s}{'CPU':>7s}")
    for label in labels:
        m, speed = result["overall"][label], result["speed"][label]
        print(
            f"{label:14s}{m['f1']:6.3f}{m['precision']:10.3f}{m['recall']:7.3f}{speed['wall']:13.1f}{speed['cpu']:7.1f}"
        )
    print(f"\n{'language':14s}{heads}  pages")
    for lang, row in result["languages"].items():
        cells = "  ".join(f"{_prf(row[label]):<19s}" for label in labels)
        print(f"{lang:14s}{cells}  {row['pages']:5d}")
    print(f"\n{'page':20s}{'lang':5s}{'chars':>7s} {'ch/tok':>6s}  {heads}  trafilatura ms")
    for row in sorted(result["pages"], key=lambda r: r[labels[0]]["f1"]):
        cells = "  ".join(f"{_prf(row[label]):<19s}" for label in labels)
        ms = f"{row['trafilatura_ms']:8.1f}" if "trafilatura_ms" in row else ""
        head = f"{row['name']:20s}{row['language']:5s}{row['truth_chars']:7d} {row['chars_per_token']:6.1f}"
        print(f"{head}  {cells}  {ms}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=CACHE, help=f"the sdist and its pages (default {CACHE})")
    ap.add_argument("--dev-set", type=Path, default=DEV_SET, help=f"score.py's folder (default {DEV_SET})")
    ap.add_argument("--json", action="store_true", help="one JSON object instead of the tables")
    args = ap.parse_args()
    scorer = load_scorer(args.dev_set)
    pages, skipped = pairs(fetch(args.cache))
    if not pages:
        raise SystemExit(f"extract_heldout: {args.cache}: no page with an expected text")
    texts, wall, cpu = run_crystalline(pages)
    preds = {"crystalline": texts}
    speed = {"crystalline": {"wall": len(pages) / wall, "cpu": len(pages) / cpu}}
    per_page: dict[str, float] = {}
    if importlib.util.find_spec("trafilatura"):
        preds["trafilatura"], wall, cpu, per_page = run_trafilatura(pages)
        speed["trafilatura"] = {"wall": len(pages) / wall, "cpu": len(pages) / cpu}
    result = measure(scorer, pages, preds)
    for row in result["pages"]:
        if row["name"] in per_page:
            row["trafilatura_ms"] = per_page[row["name"]]
    result.update(count=len(pages), skipped=skipped, speed=speed, cpu_pinned=bool(shutil.which("taskset")))
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print_tables(result, list(preds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
