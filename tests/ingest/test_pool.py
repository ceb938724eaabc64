"""The extraction pool: results for every document, a runaway killed without losing others."""

from __future__ import annotations

import _ingest_samples as samples
import pytest

from crystalline.documents import Document
from crystalline.ingest.pool import ExtractionPool, PoolConfig
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
    slow = samples.image_bytes(samples.render_text(samples.OCR_LINES * 4), "PNG")
    docs = [Document("/d/a.txt", samples.prose(10, 100).encode(), ""), Document("/d/slow.png", slow, "")]
    docs += [Document(f"/d/{i}.txt", samples.prose(i, 100).encode(), "") for i in range(3)]
    # OCR of this image takes well over 20 ms; plain text takes a fraction of that.
    with ExtractionPool(PoolConfig(processes=1, time_limit_s=0.02, min_words=5)) as pool:
        results = dict(pool.map(docs))
        assert pool.restarts >= 1
    assert "timed out" in results[1].error
    assert sum(1 for r in results.values() if not r.error and r.chars > 0) >= 1
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
