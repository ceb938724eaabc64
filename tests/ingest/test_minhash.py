"""MinHash LSH: near copies found at 10% word edits, distinct pages not merged, the index
persistent across a restart of the ingestor."""

from __future__ import annotations

import random
from pathlib import Path

import _ingest_samples as samples
import pytest

from crystalline.ingest.document import Document, Spool
from crystalline.ingest.ingestor import Ingestor
from crystalline.ingest.minhash import BANDS, bands_of, collision_probability, jaccard_estimate, signature
from crystalline.ingest.registry import Registry
from crystalline.ingest.settings import IngestSettings
from crystalline.workers.tokenizer import load_tokenizer


def edit(text: str, share: float, seed: int) -> str:
    """``text`` with ``share`` of its words replaced by other words."""
    rng = random.Random(seed)
    words = text.split()
    for i in rng.sample(range(len(words)), int(len(words) * share)):
        words[i] = rng.choice(["lantern", "orchard", "copper", "meadow", "thunder", "pebble"])
    return " ".join(words)


def test_ten_percent_edits_are_found_and_distinct_pages_are_not() -> None:
    found = 0
    for seed in range(20):
        page = samples.prose(seed, 600)
        found += bool(set(enumerate(bands_of(page))) & set(enumerate(bands_of(edit(page, 0.10, seed)))))
    assert found >= 17  # 1 - (1 - s**4)**28 = 0.96 at s = 0.57 (3-gram Jaccard at 10% edited)
    merged = sum(
        bool(
            set(enumerate(bands_of(samples.prose(a, 600))))
            & set(enumerate(bands_of(samples.prose(a + 100, 600))))
        )
        for a in range(20)
    )
    assert merged == 0


def test_signature_estimates_jaccard_and_bands_follow_the_formula() -> None:
    page = samples.prose(7, 600)
    assert jaccard_estimate(signature(page), signature(page)) == 1.0
    assert jaccard_estimate(signature(page), signature(samples.prose(8, 600))) < 0.1
    assert len(bands_of(page)) == BANDS
    assert collision_probability(0.57) == pytest.approx(0.96, abs=0.01)


@pytest.mark.timeout(120)
def test_index_survives_a_restart_and_catches_a_near_copy(tmp_path: Path) -> None:
    settings = IngestSettings(processes=1, min_chars=50, min_words=5, val_fraction=0.0)
    page = samples.prose(42, 600)
    spool = Spool(tmp_path / "spool")
    spool.put(Document("https://example.org/original", page.encode(), "text/plain"))
    with Ingestor(settings, tmp_path / "data", load_tokenizer("bytes"), spool=spool) as ing:
        while ing.run_once():
            pass
        assert ing.stats()["documents"] == 1
    spool.put(Document("https://example.org/copy", edit(page, 0.10, 1).encode(), "text/plain"))
    spool.put(Document("https://example.org/other", samples.prose(43, 600).encode(), "text/plain"))
    with Ingestor(settings, tmp_path / "data", load_tokenizer("bytes"), spool=spool) as ing:
        while ing.run_once():
            pass
        stats = ing.stats()
    assert (stats["documents"], stats["duplicates"]) == (2, 1)
    assert stats["duplicates_by_rule"] == {"minhash": 1}
    registry = Registry(tmp_path / "data" / "registry.sqlite3")
    try:
        (reason,) = registry.db.execute("SELECT reason FROM documents WHERE state = 'duplicate'").fetchone()
        (rows,) = registry.db.execute("SELECT COUNT(*) FROM minhash_bands").fetchone()
    finally:
        registry.close()
    assert "MinHash" in reason and rows == 2 * BANDS


@pytest.mark.timeout(120)
def test_filtered_documents_keep_their_rule_and_lines_are_counted(tmp_path: Path) -> None:
    settings = IngestSettings(processes=1, min_chars=50, min_words=5, val_fraction=0.0)
    spool = Spool(tmp_path / "spool")
    spool.put(
        Document(
            "https://example.org/lorem", (samples.prose(1) + " Lorem ipsum dolor.").encode(), "text/plain"
        )
    )
    spool.put(
        Document(
            "https://example.org/js", (samples.prose(2) + "\nEnable JavaScript.\n").encode(), "text/plain"
        )
    )
    with Ingestor(settings, tmp_path / "data", load_tokenizer("bytes"), spool=spool) as ing:
        while ing.run_once():
            pass
        stats = ing.stats()
    assert (stats["documents"], stats["filtered"]) == (1, 1)
    assert stats["filtered_by_rule"] == {"c4_lorem_ipsum": 1}
    assert stats["lines_removed"] == {"c4_javascript": 1}
