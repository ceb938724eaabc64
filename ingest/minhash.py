"""MinHash signatures and LSH bands of normalised text (FineWeb's scheme, other parameters).

A document is the set of its word 3-grams (lower case, punctuation kept). Each 3-gram is
hashed to 32 bits (BLAKE2b) and put through 112 universal hash functions ``(a*x + b) mod p``
with ``p = 2**61 - 1``; the minimum of each is the signature. The 112 values are cut into 28
bands of 4 rows and each band is hashed to one 63-bit integer: two documents whose 3-gram sets
have Jaccard similarity ``s`` share at least one band with probability ``1 - (1 - s**4)**28``.

Why not FineWeb's word 5-grams in 14 bands x 8 rows (threshold ~0.75)? A page with 10% of its
words changed at random keeps 0.9**5 = 59% of its 5-grams, Jaccard 0.42, found with
probability 0.014: FineWeb's setting catches near-verbatim copies only. With 3-grams the same
page has Jaccard 0.57 and 28x4 finds it with probability 0.96 (0.999 at 5% edits, 0.31 at
20%), at the price of candidates between unrelated pages of Jaccard 0.2 (4%) and 0.3 (20%);
unrelated prose sits near 0.01 (0.00001). bench/near_dup.py measures both settings. The bands are what the
registry stores and looks up (a table with an index), so the index grows by one row per band
as each document arrives and survives restarts with the registry. bench/near_dup.py measures
recall against word edits and the cost per document.
"""

from __future__ import annotations

import hashlib

import numpy as np

NGRAM = 3
BANDS = 28
ROWS = 4
PERMUTATIONS = BANDS * ROWS
SEED = 1
#: The parameters as stored beside the index: bands computed under others cannot be compared.
PARAMS = f"words{NGRAM}-bands{BANDS}x{ROWS}-seed{SEED}"
_PRIME = np.uint64((1 << 61) - 1)
# A fingerprint of the first 100k words: the Gopher rules remove longer documents by default.
_MAX_WORDS = 100_000

_rng = np.random.default_rng(SEED)
# a, b < 2**32 and x < 2**32 keep a*x + b below 2**64: exact uint64 arithmetic, no overflow.
_A = _rng.integers(1, 1 << 32, size=PERMUTATIONS, dtype=np.uint64)
_B = _rng.integers(0, 1 << 32, size=PERMUTATIONS, dtype=np.uint64)


def shingle_hashes(text: str, ngram: int = NGRAM) -> np.ndarray:
    """32-bit hashes of the distinct word ``ngram``-grams of ``text`` (one n-gram if shorter)."""
    words = text.lower().split(maxsplit=_MAX_WORDS)[:_MAX_WORDS]
    if not words:
        return np.zeros(0, dtype=np.uint64)
    grams = {" ".join(words[i : i + ngram]) for i in range(max(len(words) - ngram + 1, 1))}
    digests = b"".join(hashlib.blake2b(g.encode("utf-8", "replace"), digest_size=4).digest() for g in grams)
    return np.frombuffer(digests, dtype="<u4").astype(np.uint64)


def signature(text: str, ngram: int = NGRAM) -> np.ndarray:
    """The 112 MinHash values of ``text`` (uint64); all ``p`` for empty text."""
    hashes = shingle_hashes(text, ngram)
    if hashes.size == 0:
        return np.full(PERMUTATIONS, _PRIME, dtype=np.uint64)
    sig = np.full(PERMUTATIONS, _PRIME, dtype=np.uint64)
    # chunks bound memory: 112 x 4096 values at a time
    for start in range(0, hashes.size, 4096):
        v = hashes[start : start + 4096, None] * _A + _B
        # x mod (2**61 - 1) for x < 2**64 without a division: fold the high bits back in once
        # (the result is < 2**61 + 8), then subtract p where it is still p or more
        v = (v & _PRIME) + (v >> np.uint64(61))
        v -= _PRIME * (v >= _PRIME)
        np.minimum(sig, v.min(axis=0), out=sig)
    return sig


def band_keys(sig: np.ndarray, bands: int = BANDS, rows: int = ROWS) -> list[int]:
    """One signed 63-bit key per band (SQLite INTEGER), the band's number mixed in."""
    keys = []
    for band in range(bands):
        part = sig[band * rows : (band + 1) * rows].astype("<u8").tobytes()
        digest = hashlib.blake2b(part, digest_size=8, person=b"band%02d" % band).digest()
        keys.append(int.from_bytes(digest, "little") >> 1)
    return keys


def bands_of(text: str) -> list[int]:
    """The LSH band keys of ``text``: what the registry stores and looks up."""
    return band_keys(signature(text))


def jaccard_estimate(a: np.ndarray, b: np.ndarray) -> float:
    """Share of equal MinHash values: an unbiased estimate of the 5-gram Jaccard similarity."""
    return float(np.mean(a == b))


def collision_probability(similarity: float, bands: int = BANDS, rows: int = ROWS) -> float:
    """Chance that two documents of n-gram Jaccard ``similarity`` share at least one band."""
    return 1.0 - (1.0 - similarity**rows) ** bands
