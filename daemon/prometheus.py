"""``/metrics``: the daemon's status in the Prometheus text format.

A custom collector reads the same status dict the socket serves (one source of truth) at each
scrape; names are ``crystalline_*`` in base units, counters end in ``_total``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _gauge(name: str, doc: str, value: Any, unit: str = "") -> Iterator[Metric]:
    v = _num(value)
    if v is not None:
        g = GaugeMetricFamily(name, doc, unit=unit)
        g.add_metric([], v)
        yield g


def _counter(name: str, doc: str, value: Any) -> Iterator[Metric]:
    v = _num(value)
    if v is not None:
        c = CounterMetricFamily(name, doc)
        c.add_metric([], v)
        yield c


def _labelled_counter(name: str, doc: str, label: str, values: Any) -> Iterator[Metric]:
    c = CounterMetricFamily(name, doc, labels=[label])
    if isinstance(values, dict):
        for key, value in sorted(values.items()):
            v = _num(value)
            if v is not None:
                c.add_metric([str(key)], v)
    yield c


class StatusCollector(Collector):
    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        s = self.status()
        t = s.get("training") or {}
        c = s.get("crawler") or {}
        i = s.get("ingest") or {}
        yield from _gauge("crystalline_uptime_seconds", "Seconds since the daemon started", s.get("uptime_s"))
        yield from _counter("crystalline_training_steps", "Training steps taken", t.get("step"))
        yield from _counter("crystalline_training_tokens", "Tokens trained on", t.get("tokens"))
        yield from _gauge(
            "crystalline_training_loss", "Training loss of the last step (nats/token)", t.get("loss")
        )
        yield from _gauge(
            "crystalline_validation_loss", "Validation loss of the last evaluation", t.get("val_loss")
        )
        for name, key, what in (
            ("training_bits_per_byte", "bpb", "Training loss of the last step in bits per byte"),
            ("training_perplexity", "perplexity", "Perplexity of the last step's batch"),
            (
                "validation_bits_per_byte",
                "val_bpb",
                "Validation loss of the last evaluation in bits per byte",
            ),
            ("validation_perplexity", "val_perplexity", "Validation perplexity of the last evaluation"),
            ("validation_raw_loss", "val_loss_raw", "Validation loss of the raw weights (the EMA serves)"),
            ("validation_raw_bits_per_byte", "val_bpb_raw", "Validation bits per byte of the raw weights"),
        ):
            yield from _gauge("crystalline_" + name, what, t.get(key))
        yield from _gauge("crystalline_learning_rate", "Learning rate of the last step", t.get("lr"))
        yield from _gauge(
            "crystalline_training_tokens_per_second", "Training throughput", t.get("tokens_per_s")
        )
        yield from _counter(
            "crystalline_training_skipped_steps", "Steps skipped (non-finite)", t.get("skipped_steps")
        )
        yield from _gauge(
            "crystalline_generation_cpu_share_ratio",
            "CPU time of the generation process over the last minute, per core",
            (s.get("generation") or {}).get("cpu_share"),
        )
        workers = t.get("workers") or []
        restarts = CounterMetricFamily(
            "crystalline_worker_restarts", "Restarts per worker", labels=["worker"]
        )
        compute = GaugeMetricFamily(
            "crystalline_worker_compute_seconds", "Last step's compute per worker", labels=["worker"]
        )
        for w in workers:
            wid = str(w.get("id"))
            if _num(w.get("restarts")) is not None:
                restarts.add_metric([wid], float(w["restarts"]))
            if _num(w.get("compute_ms")) is not None:
                compute.add_metric([wid], float(w["compute_ms"]) / 1000.0)
        yield restarts
        yield compute
        yield from _counter(
            "crystalline_control_restarts", "Control process restarts", t.get("control_restarts")
        )
        if _num(t.get("checkpoint_age_s")) is not None:
            yield from _gauge(
                "crystalline_checkpoint_age_seconds", "Age of the newest checkpoint", t["checkpoint_age_s"]
            )
        yield from _gauge(
            "crystalline_checkpoint_duration_seconds", "Last checkpoint's write", t.get("last_checkpoint_s")
        )
        yield from _counter("crystalline_crawler_pages_fetched", "Pages fetched this run", c.get("fetched"))
        yield from _counter("crystalline_crawler_pages_stored", "Pages stored this run", c.get("stored"))
        yield from _counter("crystalline_crawler_errors", "Failed fetches this run", c.get("errors"))
        yield from _labelled_counter(
            "crystalline_crawler_pages",
            "Requests by HTTP status class (error: no response)",
            "class",
            c.get("by_status"),
        )
        yield from _gauge("crystalline_crawler_queued_urls", "URLs queued in the frontier", c.get("queued"))
        hosts = _hosts(c.get("host_count", c.get("hosts")))  # "hosts" is the per-host table
        yield from _gauge("crystalline_crawler_hosts", "Hosts known to the frontier", hosts)
        yield from _counter("crystalline_ingest_documents", "Documents ingested", i.get("documents"))
        yield from _counter(
            "crystalline_ingest_duplicates", "Documents dropped as duplicates", i.get("duplicates")
        )
        yield from _labelled_counter(
            "crystalline_ingest_failed",
            "Documents that failed ingest, by kind of reason",
            "reason",
            i.get("failed_by_reason"),
        )
        yield from _labelled_counter(
            "crystalline_ingest_filtered", "Documents filtered, by rule", "reason", i.get("filtered_by_rule")
        )
        yield from _gauge(
            "crystalline_ingest_pending_documents", "Documents waiting for ingest", i.get("pending")
        )
        yield from _counter("crystalline_ingest_tokens", "Tokens in the token store", i.get("tokens"))
        ring = s.get("ring") or {}
        yield from _gauge("crystalline_ring_ready_slots", "Batch ring slots ready", ring.get("ready"))


def _hosts(value: Any) -> Any:
    return len(value) if isinstance(value, list | dict) else value


def render(status: Callable[[], dict[str, Any]]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(status))
    return generate_latest(registry)
