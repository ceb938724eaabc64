"""The hostile corpus through the real ingest path (DropFolder -> Ingestor -> pool processes):
every file ends in done/ or failed/ beside a reason, nothing is left behind, the pool survives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from _hostile_corpus import drop_corpus, many_page_pdf

from crystalline.documents import Document
from crystalline.ingest.drop_folder import DropFolder
from crystalline.ingest.extract import ExtractLimits, extract_document
from crystalline.ingest.ingestor import Ingestor
from crystalline.ingest.settings import IngestSettings
from crystalline.tokens.tokenizer import load_tokenizer

SETTINGS = IngestSettings(processes=1, time_limit_s=60.0, min_chars=50, min_words=5, drop_settle_s=0.0,
                          batch_documents=8, limits=ExtractLimits(max_bytes=32 * 1024 * 1024))  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_every_hostile_file_ends_done_or_failed_with_a_reason(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    corpus = drop_corpus()
    for name, body in corpus.items():
        (inbox / name).write_bytes(body)
    secret = tmp_path / "secret.txt"
    secret.write_text("a private file outside the inbox " * 20)
    os.symlink(secret, inbox / "link-to-secret.txt")
    os.mkfifo(inbox / "a-fifo")  # reading it would block forever
    folder = DropFolder(inbox, settle_s=0.0)
    with Ingestor(SETTINGS, tmp_path / "data", load_tokenizer("bytes"), drop_folder=folder) as ing:
        folder.scan()
        for _ in range(len(corpus) + 5):
            if not ing.run_once():
                break
        stats = ing.stats()
    done = {p.name for p in folder.done.iterdir()}
    failed = {p.name for p in folder.failed.iterdir() if not p.name.endswith(".reason.txt")}
    reasons = {
        p.name[: -len(".reason.txt")] for p in folder.failed.iterdir() if p.name.endswith(".reason.txt")
    }
    left = {p.name for p in inbox.iterdir() if p.name not in ("done", "failed", ".ingesting")}
    assert left == set() and os.listdir(inbox / ".ingesting") == []
    assert failed == reasons  # every failure has its reason file
    assert len(done) + len(failed) == len(corpus) + 2  # + the symlink and the FIFO
    assert stats["failed"] == len(failed)  # the link and the FIFO are recorded, unread
    assert (folder.failed / "link-to-secret.txt").is_symlink() and secret.exists()
    assert "symbolic link" in (folder.failed / "link-to-secret.txt.reason.txt").read_text()
    assert (folder.failed / "a-fifo.reason.txt").read_text().startswith("FIFO")  # never opened
    for name in (
        "ok-control.txt",
        "zip-in.pdf",
        "ten-thousand-pages.pdf",
        "name with spaces\nand newline.txt",
    ):
        assert name in done, name
    assert any(n.startswith("xxxx") and n.endswith(".txt") for n in done)  # the 244-byte name, cut
    for name in (
        "empty.txt",
        "random-bytes.html",
        "fake.png",
        "png-bomb.png",
        "truncated.pdf",
        "cyclic-pages.pdf",
    ):
        assert name in failed, name
    assert stats["pending"] == 0


def test_ten_thousand_page_pdf_is_cut_with_a_reason() -> None:
    doc = Document("many.pdf", many_page_pdf(10_000), "application/pdf")
    ex = extract_document(doc, ExtractLimits(max_pages=200))
    assert ex.pages == 200 and ex.truncated and ex.truncated_reason == "read 200 of 10000 pages"
    assert "tiny pages" in ex.text
