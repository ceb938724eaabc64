"""Ingest settings with their defaults, built once and handed to :class:`Ingestor`.

The [ingest] table of the settings tree (``crystalline.settings_tree``): each field is a TOML key,
a flag of `crystalline ingest`/`extract` (`crystalline run --ingest-...`) and an environment
variable (``CRYSTALLINE_INGEST_PROCESSES``); the fields of ``limits`` and ``filters`` are keys of
the same table (``[ingest] ocr``, ``languages``, ``quality-rule``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..statement_deadline import STATEMENT_TIMEOUT_S, check_statement_timeout
from .extract import OCR_TIMEOUT_MAX_S, ExtractLimits
from .filters import FilterSettings
from .pool import PoolConfig


@dataclass(frozen=True)
class IngestSettings:
    """Everything ingest can be told; the daemon fills it from its config file and command line."""

    # the registry on PostgreSQL, shared by the ingest of several machines (issue 17)
    database: str = field(
        default="",
        metadata={
            "help": "postgresql://user@host:port/name: the document registry there, shared by several "
            "machines (empty: registry.sqlite3 in the data dir)"
        },
    )
    database_timeout_s: float = field(
        default=STATEMENT_TIMEOUT_S,
        metadata={
            "help": "with --database: seconds the server gives one of ingest's statements before "
            "cancelling it; ingest gives up 2 s later (1-60)"
        },
    )
    # 1-2 on a 2-core machine: training needs the rest
    processes: int = field(default=1, metadata={"help": "extraction processes"})
    time_limit_s: float = field(
        default=120.0,
        metadata={
            "help": "seconds per document; an overrun kills that extraction only",
            "aliases": ("time_limit",),
        },
    )
    memory_limit_mb: int = field(
        default=2048, metadata={"help": "address space per extraction process in MiB (0: none)"}
    )
    limits: ExtractLimits = field(default_factory=ExtractLimits)
    min_chars: int = 200  # quality filter: shorter documents are counted as filtered
    min_words: int = 30  # quality filter: documents with fewer words are counted as filtered
    filters: FilterSettings = field(default_factory=FilterSettings)  # language, PII, C4/Gopher rules
    # share of documents (by a hash of the source) held out: the daemon sets it from [train]
    val_fraction: float = field(default=0.02, metadata={"internal": True})
    batch_documents: int = field(default=32, metadata={"help": "documents per shard at most"})
    # bounds memory
    batch_bytes: int = field(default=64 * 1024 * 1024, metadata={"help": "input bytes per shard at most"})
    drop_settle_s: float = field(
        default=2.0,
        metadata={"help": "at start, drop-folder files younger than this wait for their close event"},
    )

    def pool_config(self, tokenizer_json: str = "") -> PoolConfig:
        """How the extraction pool runs these settings (``tokenizer_json``: "" does not tokenize)."""
        return PoolConfig(
            processes=self.processes,
            time_limit_s=self.time_limit_s,
            memory_limit_mb=self.memory_limit_mb,
            limits=self.limits,
            min_chars=self.min_chars,
            min_words=self.min_words,
            filters=self.filters,
            tokenizer_json=tokenizer_json,
        )

    def validate(self) -> None:
        """Raise ValueError naming the first absurd setting."""
        for name in ("processes", "batch_documents", "batch_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.time_limit_s > 0 or self.memory_limit_mb < 0 or self.drop_settle_s < 0:
            raise ValueError("time-limit-s must be positive, memory-limit-mb and drop-settle-s not negative")
        check_statement_timeout(self.database_timeout_s)
        ocr_s = self.limits.ocr_timeout_s
        if not 0 < ocr_s <= OCR_TIMEOUT_MAX_S:  # nan fails both comparisons
            most = OCR_TIMEOUT_MAX_S
            raise ValueError(f"ocr-timeout-s must be more than 0 and at most {most:g} s, got {ocr_s:g}")
