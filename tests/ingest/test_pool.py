"""The extraction pool: results for every document, a runaway killed without losing others."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict

import _ingest_samples as samples
import pytest

from crystalline.documents import Document
from crystalline.ingest import extract as extract_module
from crystalline.ingest import pool as pool_module
from crystalline.ingest.extract import Extraction, ExtractLimits
from crystalline.ingest.pool import ExtractionPool, PoolClosed, PoolConfig, extract_in_process
from crystalline.tokens.tokenizer import load_tokenizer


@pytest.mark.timeout(60)
def test_every_document_gets_one_result_with_tokens() -> None:
    docs = [Document(f"/d/{i}.txt", (f"document {i} " + samples.prose(i, 80)).encode(), "") for i in range(5)]
    docs.append(Document("/d/bad.bin", bytes(range(256)) * 4, ""))
    config = PoolConfig(processes=2, tokenizer_json=load_tokenizer("bytes").to_json(), min_words=5)
    with ExtractionPool(config) as pool:
        results = dict(pool.map(docs))
    assert sorted(results) == list(range(6))
    assert results[5].error == "binary data, not text"
    for i in range(5):
        assert results[i].ids.dtype.name == "uint16" and len(results[i].ids) == results[i].chars


@pytest.mark.timeout(60)
def test_runaway_extraction_is_killed_and_others_finish() -> None:
    # OCR of this page takes half a minute or more; a text takes milliseconds, even the first in
    # a new worker, which imports its extractors then (with a 20 ms limit, as before, a loaded
    # machine failed every text that way)
    docs = [
        Document("/d/a.txt", samples.prose(10, 100).encode(), ""),
        Document("/d/slow.png", samples.slow_scan(), ""),
    ]
    docs += [Document(f"/d/{i}.txt", samples.prose(i, 100).encode(), "") for i in range(3)]
    with ExtractionPool(PoolConfig(processes=1, time_limit_s=3.0, min_words=5)) as pool:
        results = dict(pool.map(docs))
        assert pool.restarts == 1
    assert results[1].error == "extraction timed out after 3s"
    assert all(not r.error and r.chars > 0 for i, r in results.items() if i != 1)
    assert len(results) == 5


@pytest.mark.timeout(60)
def test_fingerprints_are_left_out_when_not_wanted() -> None:
    # crystalline extract asks for none: the text is the same, the hashes are not computed.
    docs = [Document(f"/d/{i}.txt", samples.prose(i, 120).encode(), "") for i in range(2)]
    with ExtractionPool(PoolConfig(processes=1, min_words=5)) as pool:
        full = dict(pool.map(docs, want_text=True))
        bare = dict(pool.map(docs, want_text=True, fingerprint=False))
    for i in range(2):
        assert full[i].content_hash and full[i].minhash and full[i].simhash
        assert not bare[i].content_hash and not bare[i].minhash and bare[i].simhash == 0
        assert bare[i].text == full[i].text and bare[i].verdicts == full[i].verdicts


@pytest.mark.timeout(120)
def test_in_process_gives_what_the_pool_gives() -> None:
    # crystalline extract on one CPU: the same work and replies, no worker process
    docs = [Document(f"/d/{i}.txt", (f"document {i} " + samples.prose(i, 80)).encode(), "") for i in range(3)]
    docs.append(Document("/d/a.html", samples.article_page().encode(), ""))
    docs.append(Document("/d/bad.bin", bytes(range(256)) * 4, ""))
    docs.append(Document("/d/empty.txt", b"", ""))
    config = PoolConfig(processes=1, tokenizer_json=load_tokenizer("bytes").to_json(), min_words=5)
    for options in ({}, {"want_text": True, "apply_filters": False, "fingerprint": False}):
        with ExtractionPool(config) as pool:
            pooled = dict(pool.map(docs, **options))
        here = list(extract_in_process(config, docs, **options))
        assert [i for i, _ in here] == list(range(len(docs)))
        for i, result in here:
            assert repr(result) == repr(pooled[i])
    assert here[4][1].error == "binary data, not text" and here[5][1].error == "empty file (0 bytes)"


@pytest.mark.timeout(120)
def test_each_document_is_sniffed_once_where_it_is_routed_and_in_a_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # extract_in_process sniffs a document's kind to route it (here or to its worker) and
    # passes the kind down; a worker told no kind sniffs it once, whether extraction fails or not
    sniffed: list[str] = []
    real = extract_module.sniff_kind

    def counted(body: bytes, content_type: str = "", name: str = "") -> str:
        sniffed.append(name)
        return real(body, content_type, name)

    monkeypatch.setattr(extract_module, "sniff_kind", counted)
    monkeypatch.setattr(pool_module, "sniff_kind", counted)
    docs = [*_texts("a"), Document("/d/a.html", samples.article_page().encode(), "")]
    docs += [Document("/d/empty.txt", b"", ""), Document("/d/bad.bin", bytes(range(256)) * 4, "")]
    scan = samples.image_bytes(samples.render_text(samples.OCR_LINES), "PNG")
    docs.append(Document("/d/scan.png", scan, ""))
    results = dict(extract_in_process(PoolConfig(min_words=5), docs, want_text=True))
    assert sorted(sniffed) == sorted(doc.source for doc in docs)
    assert [results[i].kind for i in range(5)] == ["text", "html", "text", "text", "image"]
    assert results[2].error == "empty file (0 bytes)" and "brown fox" in results[4].text
    config_json = json.dumps(asdict(PoolConfig(min_words=5)))
    for i, doc in enumerate(docs[:4]):  # what a worker does with a document not sniffed, and told
        sniffed.clear()
        untold = pool_module._work(
            config_json, pool_module._TaskOptions(want_text=True).header(doc), doc.body, None
        )
        assert sniffed == [doc.source]
        sniffed.clear()
        told = pool_module._TaskOptions(want_text=True, kind=results[i].kind).header(doc)
        assert pool_module._work(config_json, told, doc.body, None) == untold  # the kind it was told
        assert sniffed == []


@pytest.mark.timeout(60)
def test_in_process_time_limit_and_extractor_errors_fail_one_document(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = pool_module.extract_document

    def extractor(doc: Document, limits: ExtractLimits, kind: str) -> Extraction:
        if doc.source == "/d/slow.txt":
            time.sleep(30)
        if doc.source == "/d/broken.txt":
            raise KeyError("no such node")
        return real(doc, limits, kind)

    monkeypatch.setattr(pool_module, "extract_document", extractor)
    before = signal.getsignal(signal.SIGALRM)
    names = ("a", "slow", "broken", "b")
    docs = [Document(f"/d/{name}.txt", samples.prose(i, 100).encode(), "") for i, name in enumerate(names)]
    started = time.monotonic()
    results = dict(extract_in_process(PoolConfig(time_limit_s=0.5, min_words=5), docs, want_text=True))
    assert time.monotonic() - started < 10
    assert results[1].error == "extraction timed out after 0.5s"
    assert results[2].error == "extractor error (KeyError: 'no such node')"
    assert not results[0].error and not results[3].error and results[3].chars > 0
    assert signal.getsignal(signal.SIGALRM) == before and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_an_extractor_errors_text_reaches_the_reason_on_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def extractor(doc: Document, limits: ExtractLimits, kind: str) -> Extraction:
        raise ValueError("bad\x00xref\x1b[2J\nERROR forged")  # a library's message with the file's bytes

    monkeypatch.setattr(pool_module, "extract_document", extractor)
    doc = Document("/d/a.txt", samples.prose(0, 100).encode(), "")
    [(_, result)] = extract_in_process(PoolConfig(min_words=5), [doc], want_text=True)
    assert result.error == "extractor error (ValueError: bad\\x00xref\\x1b[2J ERROR forged)"


def _counted(docs: list[Document], taken: list[int]) -> Iterator[Document]:
    """``docs``, noting in ``taken`` how many were asked for so far."""
    for doc in docs:
        taken.append(1)
        yield doc


@pytest.mark.timeout(60)
def test_map_takes_a_document_only_when_a_worker_is_free() -> None:
    # a body is held from when the pool takes its document to when it is sent, so the pool
    # takes at most one document per worker beyond those whose results are out
    docs = [Document(f"/d/{i}.txt", samples.prose(i, 100).encode(), "") for i in range(12)]
    taken: list[int] = []
    with ExtractionPool(PoolConfig(processes=2, min_words=5)) as pool:
        results = pool.map(_counted(docs, taken), want_text=True)
        out = [(index, len(taken), result) for index, result in results]
    assert sorted(index for index, _, _ in out) == list(range(12))
    for n, (index, taken_then, result) in enumerate(out):
        assert taken_then <= n + 2, (n, taken_then)  # those out before, and the two workers'
        assert not result.error and result.text.split()[0] == samples.prose(index, 100).split()[0]


@pytest.mark.timeout(60)
def test_map_in_input_order_runs_at_most_twice_the_workers_ahead_of_the_oldest() -> None:
    # the first document (OCR of a large image) is slow and the eleven texts after it quick: in
    # input order their results wait for it, and the workers wait rather than run further ahead
    slow = samples.image_bytes(samples.render_text(samples.OCR_LINES * 4), "PNG")
    docs = [Document("/d/slow.png", slow, "")]
    docs += [Document(f"/d/{i}.txt", samples.prose(i, 100).encode(), "") for i in range(1, 12)]
    taken: list[int] = []
    with ExtractionPool(PoolConfig(processes=2, min_words=5)) as pool:
        results = pool.map(_counted(docs, taken), want_text=True, in_order=True)
        out = [(index, len(taken), result) for index, result in results]
    assert [index for index, _, _ in out] == list(range(12))
    for index, taken_then, result in out:
        assert taken_then <= index + 4, (index, taken_then)  # twice the two workers
        assert not result.error and result.source == docs[index].source
    assert out[0][2].kind == "image" and "brown fox jumps" in out[0][2].text


def _slow_image() -> Document:
    """A document whose OCR takes well over what a short text takes."""
    return Document("/d/slow.png", samples.image_bytes(samples.render_text(samples.OCR_LINES * 4), "PNG"), "")


def _texts(*names: str) -> list[Document]:
    return [Document(f"/d/{name}.txt", samples.prose(i, 100).encode(), "") for i, name in enumerate(names)]


@pytest.mark.timeout(120)
def test_a_map_closed_with_a_document_in_flight_leaves_the_next_map_only_its_own_results() -> None:
    with ExtractionPool(PoolConfig(processes=2, min_words=5)) as pool:
        assert len(list(pool.map(_texts("w1", "w2")))) == 2  # both workers up and ready
        abandoned = pool.map([_slow_image(), *_texts("quick")], want_text=True)
        index, first = next(abandoned)
        assert (index, first.source) == (1, "/d/quick.txt")  # the image is still being read
        abandoned.close()
        docs = _texts("a", "b")
        out = list(pool.map(docs, want_text=True))
    assert sorted((i, r.source) for i, r in out) == [(0, "/d/a.txt"), (1, "/d/b.txt")]
    assert all(not r.error and r.text.split()[0] == docs[i].body.decode().split()[0] for i, r in out)


@pytest.mark.timeout(120)
def test_a_map_whose_documents_raise_mid_stream_leaves_the_pool_clean() -> None:
    def failing() -> Iterator[Document]:
        yield _slow_image()
        raise OSError("read failed")

    with ExtractionPool(PoolConfig(processes=2, min_words=5)) as pool:
        assert len(list(pool.map(_texts("w1", "w2")))) == 2  # both ready: the image goes out first
        with pytest.raises(OSError, match="read failed"):
            list(pool.map(failing()))
        out = list(pool.map(_texts("a"), want_text=True))
    assert [(i, r.source, r.error) for i, r in out] == [(0, "/d/a.txt", "")]


@pytest.mark.timeout(120)
def test_in_process_extraction_closed_after_an_image_leaves_no_worker_behind() -> None:
    # the image goes to the one worker extract_in_process starts; the map that ran it is over
    # before its result is yielded, and closing the whole run stops that worker
    run = extract_in_process(PoolConfig(processes=1, min_words=5), [_slow_image(), *_texts("a")])
    index, result = next(run)
    assert (index, result.kind) == (0, "image") and not result.error
    assert len(multiprocessing.active_children()) == 1
    run.close()
    assert multiprocessing.active_children() == []


@pytest.mark.timeout(60)
def test_close_kills_every_worker_that_does_not_end_when_its_pipe_closes() -> None:
    # stopped workers cannot read their pipe's end: close gives them all one grace together,
    # kills every straggler, and reaps them
    pool = ExtractionPool(PoolConfig(processes=3, min_words=5))
    assert len(list(pool.map(_texts("a", "b", "c")))) == 3  # all three up and ready
    workers = [w.process for w in pool._workers]
    for process in workers:
        assert process.pid is not None
        os.kill(process.pid, signal.SIGSTOP)
    pool.close()
    assert [p.exitcode for p in workers] == [-signal.SIGKILL] * 3
    assert multiprocessing.active_children() == []


@pytest.mark.timeout(120)
def test_a_pool_cut_under_a_running_map_ends_it_at_once_starts_no_process_and_fails_no_document() -> None:
    # review R11 D1: the daemon's stop closed the pool while a batch still mapped in its thread;
    # the documents in flight came back "extractor crashed", and the map started new workers.
    # Review R12: close from another thread is not supported (it raced the map: ValueError);
    # cut is the one call from another thread, and it kills the workers at a document (R1)
    pool = ExtractionPool(PoolConfig(processes=2, min_words=5))
    results: list[tuple[int, str]] = []
    raised: list[BaseException] = []
    first = threading.Event()

    def batch() -> None:
        try:
            for index, result in pool.map([_slow_image() for _ in range(40)]):
                results.append((index, result.error))
                first.set()
        except BaseException as e:
            raised.append(e)
            first.set()

    thread = threading.Thread(target=batch)
    thread.start()
    assert first.wait(100)
    pool.cut()
    thread.join(60)
    assert not thread.is_alive()
    assert [type(e) for e in raised] == [PoolClosed]
    assert results and all(error == "" for _, error in results)
    assert len(results) < 40  # the map stopped; its other documents got no result
    pool.close()  # by the map's thread, as Ingestor's batch does
    assert multiprocessing.active_children() == []
    with pytest.raises(PoolClosed):
        list(pool.map(_texts("after")))
    assert multiprocessing.active_children() == []
