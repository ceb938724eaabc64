"""Ingest throughput: MB/s of HTML from the spool to durable tokens in the store (byte tokenizer,
with registry commits and fsyncs), and OCR pages/s of rendered text images, for 1 and 2 pool
processes. Figures only; nothing is asserted.

    .venv/bin/python bench/ingest_speed.py [--pages 200] [--ocr-pages 12]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "ingest"))

import _ingest_samples as samples
from extract_quality import page

from crystalline.documents import Document, Spool
from crystalline.ingest.ingestor import Ingestor
from crystalline.ingest.pool import ExtractionPool, PoolConfig
from crystalline.ingest.settings import IngestSettings
from crystalline.tokens.tokenizer import load_tokenizer


def html_to_tokens(n_pages: int, processes: int) -> None:
    rng = random.Random(processes)
    with tempfile.TemporaryDirectory() as tmp:
        spool = Spool(Path(tmp) / "spool", max_pending=n_pages + 1)
        size = 0
        for i in range(n_pages):
            html, _ = page(i % 8, rng)
            html = html.replace(
                "<body>", "<body>" + "<div class='x'><span>filler</span></div>" * 400
            )  # ~ real sizes
            body = html.encode()
            size += len(body)
            spool.put(Document(f"https://bench.example/{i}", body, "text/html", "utf-8"))
        settings = IngestSettings(processes=processes, min_chars=100, min_words=10)
        with Ingestor(settings, Path(tmp) / "data", load_tokenizer("bytes"), spool=spool) as ing:
            t = time.perf_counter()
            while ing.run_once():
                pass
            dt = time.perf_counter() - t
            stats = ing.stats()
    print(f"HTML -> tokens, {processes} process(es): {size / dt / 1e6:6.2f} MB/s of HTML, "
          f"{n_pages / dt:6.1f} pages/s ({size / n_pages / 1024:.0f} KB/page, {stats['tokens']} tokens, "
          f"{stats['documents']} stored)")  # fmt: skip


def ocr_pages(n: int, processes: int) -> None:
    lines = samples.OCR_LINES * 8  # ~ 24 lines of text per page
    png = samples.image_bytes(samples.render_text(lines), "PNG")
    docs = [Document(f"/bench/{i}.png", png, "") for i in range(n)]
    with ExtractionPool(PoolConfig(processes=processes, min_chars=10, min_words=2)) as pool:
        list(pool.map(docs[:processes]))  # warm the workers (start-up is not OCR time)
        t = time.perf_counter()
        results = list(pool.map(docs))
        dt = time.perf_counter() - t
    ok = sum(1 for _, r in results if not r.error)
    print(f"OCR, {processes} process(es): {n / dt:5.2f} pages/s ({ok}/{n} ok, 24-line page, 28 px text)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=200)
    ap.add_argument("--ocr-pages", type=int, default=12)
    args = ap.parse_args()
    for processes in (1, 2):
        html_to_tokens(args.pages, processes)
    for processes in (1, 2):
        ocr_pages(args.ocr_pages, processes)


if __name__ == "__main__":
    main()
