"""Ingest settings with their defaults, built once and handed to :class:`Ingestor`."""

from __future__ import annotations

from dataclasses import dataclass, field

from .extract import ExtractLimits
from .filters import FilterSettings


@dataclass(frozen=True)
class IngestSettings:
    """Everything ingest can be told; the daemon fills it from its config file and command line."""

    processes: int = 1  # extraction processes (1-2 on a 2-core machine: training needs the rest)
    time_limit_s: float = 120.0  # per document; an overrun kills that extraction only
    memory_limit_mb: int = 2048  # address space per extraction process; 0 for none
    limits: ExtractLimits = field(default_factory=ExtractLimits)
    min_chars: int = 200  # quality filter: shorter documents are counted as filtered
    min_words: int = 30
    filters: FilterSettings = field(default_factory=FilterSettings)  # language, PII, C4/Gopher rules
    val_fraction: float = 0.02  # share of documents (by a hash of the source) held out
    batch_documents: int = 32  # documents per shard at most
    batch_bytes: int = 64 * 1024 * 1024  # input bytes per shard at most (bounds memory)
    drop_settle_s: float = 2.0  # at start, files younger than this wait for their close event
