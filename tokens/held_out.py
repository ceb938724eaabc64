"""Which documents validate: one hash-based choice, made by ingest when a document is stored and
by ``crystalline train`` when it splits files, so both hold out the same documents."""

from __future__ import annotations

import hashlib


def held_out(key: str, fraction: float) -> bool:
    """Stable validation choice for a document: a hash of its key (path or URL) below ``fraction``."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction


def held_out_cut(tokens: int, val_fraction: float) -> int:
    """Where one stream of ``tokens`` splits when it is all there is (one file, or a store whose
    documents are all held out): its last ``val_fraction`` validates, what comes before trains."""
    return tokens - round(tokens * val_fraction)
