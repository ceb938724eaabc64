"""MinHash signatures, LSH bands and the verification of candidates (FineWeb's scheme, other parameters).

A document is the set of its word 3-grams (lower case, punctuation kept). Each 3-gram is
hashed to 32 bits (BLAKE2b) and put through 112 multiply-shift hash functions
``((a*x + b) mod 2**64) >> 32`` (a odd, a and b random 64-bit); the minimum of each is the
signature, 112 uint32 values (448 bytes). The values are cut into 28 bands of 4 rows and each
band is hashed to one 63-bit integer: two documents whose 3-gram sets have Jaccard similarity
``s`` share at least one band with probability ``1 - (1 - s**4)**28``.

Why not FineWeb's word 5-grams in 14 bands x 8 rows (threshold ~0.75)? A page with 10% of its
words changed at random keeps 0.9**5 = 59% of its 5-grams, Jaccard 0.42, found with
probability 0.014: FineWeb's setting catches near-verbatim copies only. With 3-grams the same
page has Jaccard 0.57 and 28x4 finds it with probability 0.96 (0.999 at 5% edits, 0.31 at
20%). The price is candidates between distinct pages: 4% of pairs at Jaccard 0.2, 20% at 0.3,
57% at 0.41 (pages of one site sharing boilerplate, two articles quoting the same passage). So a
band is only a candidate: :func:`similarity` estimates the Jaccard similarity from the two full
signatures (the share of equal values; standard error ``sqrt(s(1-s)/112)``, 0.047 at 0.57) and
only an estimate of :data:`THRESHOLD` or more is a near duplicate. bench/near_dup.py measures
recall and false merges before and after this check.

The first family, ``(a*x + b) mod (2**61 - 1)`` with a, b and x below 2**32, wrapped at most
eight times around the prime: nearly monotonic in x, its 112 minima were strongly correlated
(the estimate's spread was 0.20 instead of 0.047): its bands found 76% of 10%-edited copies
and 12% of distinct pairs at Jaccard 0.2, and its signatures could not verify anything.
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
PARAMS = f"words{NGRAM}-bands{BANDS}x{ROWS}-seed{SEED}-mulshift32"
#: Estimated 3-gram Jaccard similarity from which an LSH candidate is a near duplicate
#: (bench/near_dup.py, 400 pages and 1000 pairs per row). A copy with 10% of its words changed
#: sits at 0.57 (standard error 0.047): 96% found, before the check and after it (the bands are
#: the limit). Distinct pages sharing half their paragraphs (Jaccard 0.30) are candidates 20% of
#: the time and never merged; at 0.41 (19 of 30 paragraphs shared) 57% are candidates and 16%
#: merged, at 0.51 80%. A copy with 20% of its words changed (0.34) is as similar as two
#: distinct pages and is kept (2% merged, 34% before): keeping a near copy costs a little
#: repeated training, merging a distinct page loses it.
THRESHOLD = 0.45
#: Bytes of a stored signature: PERMUTATIONS little-endian uint32 values.
SIGNATURE_BYTES = PERMUTATIONS * 4
# A fingerprint of the first 100k words bounds the cost of a long book (War and Peace has
# 560k); copies of a book share their beginning as much as the rest.
_MAX_WORDS = 100_000

_rng = np.random.default_rng(SEED)
# multiply-shift (Dietzfelbinger): x < 2**32, a and b 64-bit, arithmetic modulo 2**64 (numpy's
# uint64 wraps), the high 32 bits of the sum are the hash
_A = _rng.integers(0, 1 << 63, size=PERMUTATIONS, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
_B = _rng.integers(0, 1 << 63, size=PERMUTATIONS, dtype=np.uint64)
_EMPTY = np.uint32(0xFFFFFFFF)


def shingle_hashes(text: str, ngram: int = NGRAM) -> np.ndarray:
    """32-bit hashes of the distinct word ``ngram``-grams of ``text`` (one n-gram if shorter)."""
    words = text.lower().split(maxsplit=_MAX_WORDS)[:_MAX_WORDS]
    if not words:
        return np.zeros(0, dtype=np.uint64)
    grams = {" ".join(words[i : i + ngram]) for i in range(max(len(words) - ngram + 1, 1))}
    digests = b"".join(hashlib.blake2b(g.encode("utf-8", "replace"), digest_size=4).digest() for g in grams)
    return np.frombuffer(digests, dtype="<u4").astype(np.uint64)


def signature(text: str, ngram: int = NGRAM) -> np.ndarray:
    """The 112 MinHash values of ``text`` (uint32); all ``2**32 - 1`` for empty text."""
    hashes = shingle_hashes(text, ngram)
    sig = np.full(PERMUTATIONS, _EMPTY, dtype=np.uint32)
    # chunks bound memory: 112 x 4096 values at a time
    with np.errstate(over="ignore"):
        for start in range(0, hashes.size, 4096):
            v = (hashes[start : start + 4096, None] * _A + _B) >> np.uint64(32)
            np.minimum(sig, v.min(axis=0).astype(np.uint32), out=sig)
    return sig


def band_keys(sig: np.ndarray, bands: int = BANDS, rows: int = ROWS) -> list[int]:
    """One signed 63-bit key per band (SQLite INTEGER), the band's number mixed in."""
    keys = []
    for band in range(bands):
        part = sig[band * rows : (band + 1) * rows].astype("<u4").tobytes()
        digest = hashlib.blake2b(part, digest_size=8, person=b"band%02d" % band).digest()
        keys.append(int.from_bytes(digest, "little") >> 1)
    return keys


def bands_of(text: str) -> list[int]:
    """The LSH band keys of ``text``: what the registry stores and looks up."""
    return band_keys(signature(text))


def fingerprint(text: str) -> tuple[list[int], bytes]:
    """The band keys and the packed signature of ``text`` (one signature computed)."""
    sig = signature(text)
    return band_keys(sig), pack(sig)


def pack(sig: np.ndarray) -> bytes:
    """A signature as stored: :data:`SIGNATURE_BYTES` bytes, little-endian uint32."""
    return np.asarray(sig, dtype="<u4").tobytes()


def unpack(blob: bytes) -> np.ndarray | None:
    """A stored signature, or None when ``blob`` is not one (missing, or another size)."""
    if len(blob) != SIGNATURE_BYTES:
        return None
    return np.frombuffer(blob, dtype="<u4")


def jaccard_estimate(a: np.ndarray, b: np.ndarray) -> float:
    """Share of equal MinHash values: an unbiased estimate of the 3-gram Jaccard similarity."""
    return float(np.mean(a == b))


def similarity(a: bytes, b: bytes) -> float | None:
    """The estimated Jaccard similarity of two packed signatures; None if either is not one."""
    sa, sb = unpack(a), unpack(b)
    if sa is None or sb is None:
        return None
    return jaccard_estimate(sa, sb)


def collision_probability(similarity: float, bands: int = BANDS, rows: int = ROWS) -> float:
    """Chance that two documents of n-gram Jaccard ``similarity`` share at least one band."""
    return 1.0 - (1.0 - similarity**rows) ** bands
