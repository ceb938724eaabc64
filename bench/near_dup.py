"""Near-duplicate detection and the quality filters, measured (issue 11).

1. MinHash recall: copies of a page with 1%, 5%, 10% and 20% of words replaced at random, found
   or not, for our setting (word 3-grams, 28 bands x 4 rows) before verification (a shared LSH
   band) and after it (a shared band and an estimated Jaccard >= minhash.THRESHOLD), FineWeb's
   (word 5-grams, 14 x 8, a shared band), and SimHash (distance <= 3) side by side.
   False merges: pairs of distinct pages of 30 paragraphs sharing k of them, so that their
   3-gram Jaccard is about 0.2, 0.3, 0.4 or 0.5 (k = 11, 15, 19, 22; the 3-grams across
   paragraph boundaries differ), merged before and after.
2. Cost per document: MinHash signature + bands, SimHash, and the whole filter pipeline.
3. What the default filters remove from the bundled samples and the extraction dev set's
   expected texts, by rule (documents and lines).

Run: .venv/bin/python bench/near_dup.py [--pages 200]
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "ingest"))

import _ingest_samples as samples  # noqa: E402

from crystalline.documents import Document  # noqa: E402
from crystalline.ingest import minhash  # noqa: E402
from crystalline.ingest.dedup import NEAR_DISTANCE, hamming, simhash  # noqa: E402
from crystalline.ingest.extract import ExtractLimits, extract_document  # noqa: E402
from crystalline.ingest.filters import judge  # noqa: E402
from crystalline.ingest.normalize import normalize_text  # noqa: E402

DEV = ROOT.parent / "shared" / "data" / "extraction-dev" / "truth.json"
REPLACEMENTS = ["lantern", "orchard", "copper", "meadow", "thunder", "pebble", "saddle", "violet"]


def edit(text: str, share: float, rng: random.Random) -> str:
    words = text.split()
    for i in rng.sample(range(len(words)), round(len(words) * share)):
        words[i] = rng.choice(REPLACEMENTS)
    return " ".join(words)


def keys(text: str, ngram: int, bands: int, rows: int) -> set[tuple[int, int]]:
    sig = minhash.signature(text, ngram)
    return set(enumerate(minhash.band_keys(sig, bands, rows)))


def verdicts(a: str, b: str) -> dict[str, bool]:
    """Whether ``b`` is taken for a near duplicate of ``a`` under each setting."""
    sa, sb = minhash.signature(a), minhash.signature(b)
    banded = bool(set(enumerate(minhash.band_keys(sa))) & set(enumerate(minhash.band_keys(sb))))
    return {
        "3-gram 28x4 bands": banded,
        "+ verified": banded and minhash.jaccard_estimate(sa, sb) >= minhash.THRESHOLD,
        "FineWeb 5-gram 14x8": bool(keys(a, 5, 14, 8) & keys(b, 5, 14, 8)),
        "SimHash d<=3": hamming(simhash(a), simhash(b)) <= NEAR_DISTANCE,
    }


def recall(pages: list[str], rng: random.Random) -> None:
    print(f"MinHash recall on {len(pages)} pages of ~600 words (share of edited copies found),")
    print(f"verification threshold {minhash.THRESHOLD:g} (estimated 3-gram Jaccard)")
    names = list(verdicts("a b c", "a b c"))
    print(f"{'edited':>8} {'Jaccard':>8}  " + "  ".join(f"{name:>19}" for name in names))
    for share in (0.01, 0.05, 0.10, 0.20):
        found = dict.fromkeys(names, 0)
        similarity = 0.0
        for page in pages:
            copy = edit(page, share, rng)
            similarity += jaccard(page, copy)
            for name, hit in verdicts(page, copy).items():
                found[name] += hit
        cells = "  ".join(f"{found[name] / len(pages):>19.2f}" for name in names)
        print(f"{share:>8.0%} {similarity / len(pages):>8.2f}  {cells}")


def jaccard(a: str, b: str) -> float:
    """The exact Jaccard similarity of the word 3-gram sets (as minhash.shingle_hashes sees them)."""
    ga, gb = set(minhash.shingle_hashes(a).tolist()), set(minhash.shingle_hashes(b).tolist())
    return len(ga & gb) / max(len(ga | gb), 1)


def false_merges(pairs: int) -> None:
    names = ["3-gram 28x4 bands", "+ verified", "FineWeb 5-gram 14x8", "SimHash d<=3"]
    print(f"False merges on {pairs} pairs of distinct 600-word pages sharing k of 30 paragraphs")
    print(f"{'target':>8} {'k':>3} {'Jaccard':>8}  " + "  ".join(f"{name:>19}" for name in names))
    for target, shared in ((0.2, 11), (0.3, 15), (0.4, 19), (0.5, 22)):
        merged = dict.fromkeys(names, 0)
        similarity = 0.0
        for seed in range(pairs):
            a, b = samples.sharing_pages(seed, shared)
            similarity += jaccard(a, b)
            for name, hit in verdicts(a, b).items():
                merged[name] += hit
        cells = "  ".join(f"{merged[name] / pairs:>19.3f}" for name in names)
        print(f"{target:>8.1f} {shared:>3} {similarity / pairs:>8.2f}  {cells}")
    unrelated = sum(verdicts(samples.prose(a, 600), samples.prose(a + 1, 600))["3-gram 28x4 bands"]
                    for a in range(pairs))  # fmt: skip
    print(f"unrelated pages sharing a band: {unrelated}/{pairs}")


def cost(pages: list[str]) -> None:
    words = sum(len(p.split()) for p in pages) / len(pages)
    for label, fn in (
        ("MinHash bands + sig", minhash.fingerprint),
        ("SimHash", simhash),
        ("all filters (judge)", lambda t: judge(t, {})),
    ):
        start = time.process_time()
        for p in pages:
            fn(p)
        ms = (time.process_time() - start) / len(pages) * 1000
        print(f"cost per document ({words:.0f} words): {label:<20} {ms:6.2f} ms CPU")


def shares(label: str, texts: list[str]) -> None:
    docs: collections.Counter[str] = collections.Counter()
    lines: collections.Counter[str] = collections.Counter()
    langs: collections.Counter[str] = collections.Counter()
    total_lines = 0
    for text in texts:
        v = judge(text, {})
        total_lines += sum(1 for line in text.split("\n") if line.strip())
        docs[v.problem.split(":", 1)[0] if v.problem else "kept"] += 1
        lines.update({k: n for k, n in v.edits.items() if not k.startswith("pii_")})
        langs[v.language] += 1
    print(f"{label}: {len(texts)} documents, " + ", ".join(f"{k} {n}" for k, n in docs.most_common()))
    removed = ", ".join(f"{k} {n}" for k, n in lines.most_common()) or "none"
    print(f"  lines removed of {total_lines}: {removed}; languages: {dict(langs.most_common(6))}")


def sample_texts() -> list[str]:
    out = []
    for path in sorted((ROOT / "daemon" / "samples").iterdir()):
        doc = Document(str(path), path.read_bytes(), "")
        out.append(extract_document(doc, ExtractLimits()).text)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--pairs", type=int, default=1000, help="pairs of pages per false-merge row")
    args = parser.parse_args()
    rng = random.Random(0)
    pages = [samples.prose(seed, 600) for seed in range(args.pages)]
    recall(pages, rng)
    false_merges(args.pairs)
    cost(pages[:50])
    shares("bundled samples (default rules)", sample_texts())
    if DEV.exists():
        truth = json.loads(DEV.read_text(encoding="utf-8"))
        shares("extraction dev set, expected texts", [normalize_text(t) for t in truth.values()])


if __name__ == "__main__":
    main()
