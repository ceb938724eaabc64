"""`crystalline extract` in its own process (one process asked for, the default): what it imports,
and the memory limit a pool worker would have."""

from __future__ import annotations

import json
import resource
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import _ingest_samples as samples
import pytest
from _extract_run import run_extract

from crystalline.documents import Document
from crystalline.ingest import pool as pool_module
from crystalline.ingest.extract import Extraction, ExtractLimits
from crystalline.ingest.pool import PoolConfig, extract_in_process

# what `extract` never needs: the trainer, the crawler, shared memory, the token store, the
# daemon's other commands (the status socket client, the dashboard), ZeroMQ, aiohttp, torch
_NEVER = ("crystalline.workers", "crystalline.crawler", "crystalline.shm", "crystalline.tokens", "zmq",
          "aiohttp", "torch")  # fmt: skip

HOSTILE = Path(__file__).resolve().parents[1] / "hostile"

_IMPORTS_SCRIPT = """
import json, sys
from crystalline.daemon import cli

status = cli.main(["extract", "--json", *sys.argv[1:]])
print(json.dumps({"status": status, "modules": sorted(sys.modules)}))
"""


@pytest.mark.timeout(150)
def test_extract_imports_nothing_of_the_daemon_trainer_or_crawler(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    (tmp_path / "a.html").write_text(samples.article_page(), encoding="utf-8")
    (tmp_path / "b.txt").write_text(samples.prose(2, 120), encoding="utf-8")
    files = [str(tmp_path / "a.html"), str(tmp_path / "b.txt")]
    cmd = [sys.executable, "-c", _IMPORTS_SCRIPT, *files]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=cli_env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    *lines, summary = proc.stdout.splitlines()
    assert samples.PARAGRAPHS[0] in json.loads(lines[0])["text"]  # it did extract, in this process
    report = json.loads(summary)
    modules = report["modules"]
    assert report["status"] == 0 and "crystalline.ingest.html_text" in modules
    assert [m for m in modules if m.split(".")[0] in _NEVER or m.startswith(_NEVER)] == []
    daemon = [m for m in modules if m.startswith("crystalline.daemon.")]
    assert daemon == ["crystalline.daemon.cli"]  # no status client, ctl, dashboard, supervisor
    # nor the registry (SQLite, PostgreSQL) or the fingerprints extract does not compute, nor
    # numpy (75-95 ms of CPU: the filters count n-grams without it, token ids come only from a
    # tokenizer)
    unused = ("sqlite3", "numpy", *(f"crystalline.ingest.{n}" for n in ("registry", "minhash", "dedup")))
    assert [m for m in unused if m in modules] == []


@pytest.mark.timeout(150)
def test_a_page_over_the_memory_limit_fails_alone_in_process(tmp_path: Path, cli_env: dict[str, str]) -> None:
    # 8 MB of `word<br>` lines take our extractor ~650 MB: over a 300 MB limit the page fails
    # with a reason and the command goes on to the next file, as a pool worker would.
    big = tmp_path / "big.html"
    big.write_text("<html><body><p>" + "word<br>" * 1_000_000 + "</p></body></html>", encoding="utf-8")
    small = tmp_path / "small.html"
    small.write_text(samples.article_page(), encoding="utf-8")
    extract = [sys.executable, "-m", "crystalline.ingest.command", "extract", "--json"]
    cmd = [*extract, "--memory-limit-mb", "300", str(big), str(small)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=cli_env, timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr
    failed, done = (json.loads(line) for line in proc.stdout.splitlines())
    assert failed["path"] == str(big) and failed["error"] and failed["text"] == ""
    assert done["path"] == str(small) and done["error"] is None and samples.PARAGRAPHS[0] in done["text"]


def test_the_limit_holds_while_documents_are_worked_and_is_lifted_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = pool_module.extract_document
    seen: list[tuple[int, int]] = []

    def extractor(doc: Document, limits: ExtractLimits, kind: str) -> Extraction:
        seen.append(resource.getrlimit(resource.RLIMIT_AS))
        return real(doc, limits, kind)

    monkeypatch.setattr(pool_module, "extract_document", extractor)
    before = resource.getrlimit(resource.RLIMIT_AS)
    docs = [Document(f"/d/{i}.txt", samples.prose(i, 100).encode(), "") for i in range(2)]
    results = dict(extract_in_process(PoolConfig(memory_limit_mb=512, min_words=5), docs))
    assert [r.error for r in results.values()] == ["", ""]
    with open("/proc/self/statm", "rb") as statm:
        mapped = int(statm.read().split()[0]) * resource.getpagesize()
    for soft, hard in seen:  # what this process maps, plus 512 MB (give or take what it mapped since)
        assert hard == before[1] and abs(soft - (mapped + 512 * 2**20)) < 256 * 2**20
    assert resource.getrlimit(resource.RLIMIT_AS) == before
    results = dict(extract_in_process(PoolConfig(memory_limit_mb=0, min_words=5), docs))
    assert seen[-1] == before  # 0: no limit


@pytest.mark.timeout(300)
def test_extract_reads_each_file_when_its_turn_comes(tmp_path: Path, cli_env: dict[str, str]) -> None:
    # 40 files of 8 MB (NUL bytes, sparse on disk; each read whole, then refused as binary): the
    # command's peak RSS over all 40 is about one file's body above its peak over one, in its
    # own process and with a pool of two; read all at once first, they took 320 MB more
    many = tmp_path / "many"
    many.mkdir()
    for i in range(40):
        with open(many / f"{i:02d}.txt", "wb") as f:
            f.truncate(8 * 2**20)
    one = str(many / "00.txt")
    for processes in ("1", "2"):
        single = run_extract(["--processes", processes, one], cli_env)
        every = run_extract(["--processes", processes, str(many)], cli_env)
        assert single.status == every.status == 1
        assert [f["path"] for f in every.files] == [str(many / f"{i:02d}.txt") for i in range(40)]
        assert {f["error"] for f in every.files} == {"binary data, not text"}
        assert every.peak_kb - single.peak_kb < 5 * 8 * 1024, (processes, single.peak_kb, every.peak_kb)


def _gigabyte_flate_pdf() -> bytes:
    """A 1 MB PDF whose content stream inflates to 1 GiB of spaces (its deflate blocks repeat
    once the window is all spaces, so it is made in a moment)."""
    chunk = b" " * 2**20
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = deflate.compress(chunk) + deflate.flush(zlib.Z_SYNC_FLUSH)
    again = deflate.compress(chunk) + deflate.flush(zlib.Z_SYNC_FLUSH)
    adler = 1
    for _ in range(1024):
        adler = zlib.adler32(chunk, adler)
    stream = b"\x78\xda" + first + again * 1023 + deflate.flush() + struct.pack(">I", adler)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 100 60] /Contents 4 0 R >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream",
    ]
    return _pdf_bytes(objects)


def _slow_pdf(pages: int = 500, marks: int = 100_000) -> bytes:
    """``pages`` pages (the default limit) sharing one content stream: a line of text and
    ``marks`` tiny filled squares, which pdfium parses again for every page (~75 ms a page here)."""
    content = b"BT /F1 9 Tf 10 20 Td (Plain words on a page full of tiny marks) Tj ET\n"
    content += b"0 0 1 1 re f\n" * marks
    kids = b" ".join(b"%d 0 R" % (5 + i) for i in range(pages))
    page = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 40] /Contents 4 0 R "
    page += b"/Resources << /Font << /F1 3 0 R >> >> >>"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [" + kids + b"] /Count %d >>" % pages,
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        *[page] * pages,
    ]
    return _pdf_bytes(objects)


def _pdf_bytes(objects: list[bytes]) -> bytes:
    """A PDF of ``objects``, by the hostile corpus's writer (tests/hostile)."""
    sys.path.insert(0, str(HOSTILE))
    try:
        from _hostile_corpus import pdf_bytes
    finally:
        sys.path.remove(str(HOSTILE))
    return pdf_bytes(objects)


def _around(tmp_path: Path, name: str, body: bytes) -> list[str]:
    """An article page, ``name`` holding ``body``, and a text file after it."""
    (tmp_path / "a.html").write_text(samples.article_page(), encoding="utf-8")
    (tmp_path / name).write_bytes(body)
    (tmp_path / "c.txt").write_text(samples.prose(3, 120), encoding="utf-8")
    return [str(tmp_path / n) for n in ("a.html", name, "c.txt")]


def _done(line: dict[str, Any]) -> bool:
    return line["error"] is None and len(line["text"]) > 100


@pytest.mark.timeout(150)
def test_a_pdf_whose_decoder_crashes_fails_alone(tmp_path: Path, cli_env: dict[str, str]) -> None:
    # pdfium ends its process when an allocation fails: here a 1 MB PDF that inflates to 1 GiB,
    # over a 600 MB limit. Worked in extract's own process it ended the command with every
    # file's output (SIGABRT, nothing printed); in its worker it fails alone.
    files = _around(tmp_path, "b.pdf", _gigabyte_flate_pdf())
    run = run_extract(["--memory-limit-mb", "600", *files], cli_env)
    assert (run.status, run.workers) == (1, 2), run.stderr  # the PDF's, then its replacement
    page, pdf, text = run.files
    assert [f["path"] for f in run.files] == files
    assert str(pdf["error"]).startswith("extractor crashed (exit code") and pdf["text"] == ""
    assert _done(page) and samples.PARAGRAPHS[0] in page["text"] and _done(text)


@pytest.mark.timeout(150)
def test_a_pdf_over_the_time_limit_is_stopped_in_its_worker_and_fails_alone(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    # ~35 s of pdfium's parsing against a 3 s limit: its worker is killed and replaced, the page
    # before it and the text after it are done in the command's own process
    files = _around(tmp_path, "b.pdf", _slow_pdf())
    run = run_extract(["--time-limit-s", "3", *files], cli_env)
    assert (run.status, run.workers) == (1, 2), run.stderr  # the PDF's, then its replacement
    page, pdf, text = run.files
    assert pdf["error"] == "extraction timed out after 3s" and pdf["text"] == ""
    assert _done(page) and _done(text)
