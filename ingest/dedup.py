"""Exact and near-duplicate fingerprints of normalised text.

Exact: SHA-256 of the text. Near: a 64-bit SimHash over word 3-shingles (Charikar; the scheme
Google used for web-page near-duplicates with k = 3 of 64 bits). Two documents within Hamming
distance 3 share at least one of four 16-bit bands (pigeonhole), so the registry finds
candidates by band equality in SQLite instead of comparing against every document.
"""

from __future__ import annotations

import hashlib

import numpy as np

SIMHASH_BITS = 64
BANDS = 4
BAND_BITS = SIMHASH_BITS // BANDS
NEAR_DISTANCE = 3
# A fingerprint of the first 50k words: enough to tell pages apart, bounded for 20 MB documents.
_MAX_WORDS = 50_000
_MASK64 = (1 << 64) - 1


def content_hash(text: str) -> str:
    """Hex SHA-256 of the UTF-8 text: the exact-duplicate key."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def simhash(text: str) -> int:
    """64-bit SimHash of the lower-cased word 3-shingles of ``text`` (unsigned int)."""
    words = text.lower().split(maxsplit=_MAX_WORDS)[:_MAX_WORDS]
    if not words:
        return 0
    shingles = [" ".join(words[i : i + 3]) for i in range(max(len(words) - 2, 1))]
    digests = b"".join(
        hashlib.blake2b(s.encode("utf-8", "replace"), digest_size=8).digest() for s in shingles
    )
    hashes = np.frombuffer(digests, dtype=">u8")
    bits = np.unpackbits(hashes.view(np.uint8).reshape(-1, 8), axis=1)  # MSB first, per shingle
    votes = bits.sum(axis=0, dtype=np.int64) * 2 - len(shingles)
    value = 0
    for bit in votes > 0:
        value = (value << 1) | int(bit)
    return value


def bands(fingerprint: int) -> list[int]:
    """The four 16-bit bands of a fingerprint, most significant first."""
    return [(fingerprint >> (BAND_BITS * (BANDS - 1 - i))) & ((1 << BAND_BITS) - 1) for i in range(BANDS)]


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two fingerprints."""
    return ((a ^ b) & _MASK64).bit_count()


def to_signed(value: int) -> int:
    """An unsigned 64-bit fingerprint as SQLite's signed INTEGER (and back with :func:`to_unsigned`)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def to_unsigned(value: int) -> int:
    return value & _MASK64
