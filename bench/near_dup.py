"""Near-duplicate detection and the quality filters, measured (issue 11).

1. MinHash recall: copies of a page with 1%, 5%, 10% and 20% of words replaced at random, found
   or not (a shared LSH band), for our setting (word 3-grams, 28 bands x 4 rows) and FineWeb's
   (word 5-grams, 14 x 8), and SimHash (distance <= 3) side by side; distinct pages merged.
2. Cost per document: MinHash signature + bands, SimHash, and the whole filter pipeline.
3. What the default filters remove from the bundled samples and the extraction dev set's
   expected texts, by rule (documents and lines).

Run: .venv/bin/python bench/near_dup.py [--pages 200]
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "ingest"))

import _ingest_samples as samples  # noqa: E402

from crystalline.ingest import minhash  # noqa: E402
from crystalline.ingest.dedup import NEAR_DISTANCE, hamming, simhash  # noqa: E402
from crystalline.ingest.document import Document  # noqa: E402
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


def recall(pages: list[str], rng: random.Random) -> None:
    settings = {"ours 3-gram 28x4": (3, 28, 4), "FineWeb 5-gram 14x8": (5, 14, 8)}
    print(f"MinHash recall on {len(pages)} pages of ~600 words (share of edited copies found)")
    print(f"{'edited':>8}  " + "  ".join(f"{name:>20}" for name in settings) + f"  {'SimHash d<=3':>13}")
    for share in (0.01, 0.05, 0.10, 0.20):
        found = dict.fromkeys(settings, 0)
        sim = 0
        for page in pages:
            copy = edit(page, share, rng)
            for name, (n, b, r) in settings.items():
                found[name] += bool(keys(page, n, b, r) & keys(copy, n, b, r))
            sim += hamming(simhash(page), simhash(copy)) <= NEAR_DISTANCE
        cells = "  ".join(f"{found[name] / len(pages):>20.2f}" for name in settings)
        print(f"{share:>8.0%}  {cells}  {sim / len(pages):>13.2f}")
    merged = {name: 0 for name in settings}
    for a, b in itertools.pairwise(pages):
        for name, (n, bb, r) in settings.items():
            merged[name] += bool(keys(a, n, bb, r) & keys(b, n, bb, r))
    print("distinct pages merged: " + ", ".join(f"{k} {v}/{len(pages) - 1}" for k, v in merged.items()))


def cost(pages: list[str]) -> None:
    words = sum(len(p.split()) for p in pages) / len(pages)
    for label, fn in (
        ("MinHash bands", minhash.bands_of),
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
    args = parser.parse_args()
    rng = random.Random(0)
    pages = [samples.prose(seed, 600) for seed in range(args.pages)]
    recall(pages, rng)
    cost(pages[:50])
    shares("bundled samples (default rules)", sample_texts())
    if DEV.exists():
        truth = json.loads(DEV.read_text(encoding="utf-8"))
        shares("extraction dev set, expected texts", [normalize_text(t) for t in truth.values()])


if __name__ == "__main__":
    main()
