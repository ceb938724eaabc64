"""The daemon's configuration: one flat set of keys, defaults < TOML file < environment < CLI.

Every key is a field of ``DaemonConfig`` (the daemon's own) or of ``TrainConfig`` (the model
and training knobs, shared with `crystalline train`); each is also a CLI flag (``--embed-dim``)
and an environment variable (``CRYSTALLINE_EMBED_DIM``). Under systemd the directories default
to ``$STATE_DIRECTORY`` and ``$RUNTIME_DIRECTORY``; otherwise to ``./state`` and ``./state/run``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..crawler.settings import CrawlSettings, parse_host_revisit
from ..workers.train_config import TrainConfig, read_toml

ENV_PREFIX = "CRYSTALLINE_"
_CRAWL = CrawlSettings()


@dataclass(frozen=True)
class DaemonConfig:
    """What `crystalline run` needs beyond the training knobs."""

    state_dir: str = ""  # "" : $STATE_DIRECTORY, else ./state
    runtime_dir: str = ""  # "" : $RUNTIME_DIRECTORY, else <state_dir>/run
    inbox: str = ""  # "" : <state_dir>/inbox
    seed_url: tuple[str, ...] = ()
    no_crawl: bool = False
    allowed_domain: tuple[str, ...] = ()
    crawl_delay: float = 1.0  # seconds between requests to one host (at least)
    crawl_concurrency: int = 8
    crawl_allow_private: bool = False  # let the crawl reach loopback/private addresses (tests, soak)
    # the frontier's bounds (crawler/settings.py says why these sizes; 0: no cap)
    crawl_max_links_per_page: int = _CRAWL.max_links_per_page
    crawl_max_queued_per_host: int = _CRAWL.max_queued_per_host
    crawl_max_queued: int = _CRAWL.max_queued
    crawl_robots_per_minute: int = _CRAWL.robots_per_minute
    # revisits (crawler/schedule.py): a stored page comes back after an interval within these
    # bounds, revisits get this share of requests while new URLs wait; requests per host per day
    crawl_min_revisit: float = _CRAWL.min_revisit
    crawl_max_revisit: float = _CRAWL.max_revisit
    crawl_host_revisit: tuple[str, ...] = ()  # HOST=MIN:MAX, a host's bounds in place of those two
    crawl_revisit_share: float = _CRAWL.revisit_share
    crawl_max_fetches_per_host_per_day: int = 0
    crawl_max_listed_per_host_per_day: int = 0  # new URLs from sitemaps and feeds per host per day
    crawl_no_sitemaps: bool = False
    crawl_warc_dir: str = ""  # "" : no WARC; a relative path is under the state directory
    crawl_warc_max_bytes: int = 10 * 1024**3  # WARC retention: the oldest files go past this (0: keep all)
    user_agent: str = "crystalline/0.1 (+https://example.invalid/crystalline)"
    checkpoint_interval_s: float = 300.0
    status_interval_s: float = 10.0  # STATUS= lines to systemd
    no_samples: bool = False  # do not copy the bundled sample documents into a fresh inbox
    # ingest filters (ingest/filters.py): languages to keep (ISO 639; none: all), the language
    # score they need, e-mail/IP placeholders, and NAME=VALUE thresholds of ingest/quality_rules.py
    languages: tuple[str, ...] = ()
    language_min_score: float = 0.65
    no_pii: bool = False
    quality_rule: tuple[str, ...] = ()
    socket_mode: str = "0660"
    http: str = "127.0.0.1:8470"  # the dashboard's HOST:PORT (port 0: any free one), or "off"


@dataclass(frozen=True)
class Settings:
    daemon: DaemonConfig
    train: TrainConfig

    @property
    def state_dir(self) -> Path:
        return Path(self.daemon.state_dir or os.environ.get("STATE_DIRECTORY", "") or "state").absolute()

    @property
    def runtime_dir(self) -> Path:
        value = self.daemon.runtime_dir or os.environ.get("RUNTIME_DIRECTORY", "")
        return Path(value).absolute() if value else self.state_dir / "run"

    @property
    def inbox(self) -> Path:
        return Path(self.daemon.inbox).absolute() if self.daemon.inbox else self.state_dir / "inbox"

    @property
    def socket_path(self) -> Path:
        return self.runtime_dir / "crystalline.sock"

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self.daemon), **self.train.to_dict()}


def _all_fields() -> dict[str, tuple[str, Any]]:
    """key -> (which dataclass, default)."""
    out: dict[str, tuple[str, Any]] = {}
    for owner, instance in (("daemon", DaemonConfig()), ("train", TrainConfig())):
        for f in fields(instance):
            out[f.name] = (owner, getattr(instance, f.name))
    return out


FIELDS = _all_fields()


def _convert(name: str, value: Any, source: str) -> Any:
    _, default = FIELDS[name]
    kind = type(default)
    try:
        if kind is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(str(v).strip() for v in items if str(v).strip())
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(text)
        if kind is float and isinstance(value, int | float | str) and not isinstance(value, bool):
            return float(value)
        if kind is int and isinstance(value, int | str) and not isinstance(value, bool):
            return int(value)
        if kind is str:
            return str(value)
    except ValueError:
        pass
    raise ValueError(f"{source}: {name.replace('_', '-')} must be a {kind.__name__}, got {value!r}")


def from_file(path: Path) -> dict[str, Any]:
    """Keys from a TOML file: top level or under [daemon] / [train], dashes or underscores."""
    data = read_toml(path)
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("daemon", "train") and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    out = {}
    for key, value in flat.items():
        name = key.replace("-", "_")
        if name not in FIELDS:
            raise ValueError(f"{path}: unknown option {key!r}")
        out[name] = _convert(name, value, str(path))
    return out


def from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out = {}
    for key, value in env.items():
        # CRYSTALLINE_TEST_* belong to the test suite (CRYSTALLINE_TEST_ARTIFACTS), not the daemon
        if (
            key.startswith(ENV_PREFIX)
            and key != ENV_PREFIX + "CONFIG"
            and not key.startswith(ENV_PREFIX + "TEST_")
        ):
            name = key[len(ENV_PREFIX) :].lower()
            if name not in FIELDS:
                raise ValueError(f"environment: unknown variable {key}")
            out[name] = _convert(name, value, key)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per key; defaults are None so only what was given overrides."""
    parser.add_argument(
        "--config", type=Path, help="TOML file with any of the options (env: CRYSTALLINE_CONFIG)"
    )
    for name, (_owner, default) in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(
                flag,
                dest=name,
                action="store_const",
                const=True,
                default=None,
                help=f"(env {ENV_PREFIX}{name.upper()})",
            )
        elif isinstance(default, tuple):
            parser.add_argument(
                flag,
                dest=name,
                action="append",
                default=None,
                metavar="VALUE",
                help=f"repeatable (env {ENV_PREFIX}{name.upper()}, comma-separated)",
            )
        else:
            parser.add_argument(
                flag,
                dest=name,
                default=None,
                metavar=type(default).__name__.upper(),
                help=f"default {default!r} (env {ENV_PREFIX}{name.upper()})",
            )


def resolve(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    """Defaults < file (--config or CRYSTALLINE_CONFIG) < environment < command line."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    config_path = args.config or (
        Path(env[ENV_PREFIX + "CONFIG"]) if env.get(ENV_PREFIX + "CONFIG") else None
    )
    if config_path is not None:
        values.update(from_file(config_path))
    values.update(from_env(env))
    for name in FIELDS:
        given = getattr(args, name, None)
        if given is not None:
            values[name] = _convert(name, given, "--" + name.replace("_", "-"))
    daemon = {k: v for k, v in values.items() if FIELDS[k][0] == "daemon"}
    train = {k: v for k, v in values.items() if FIELDS[k][0] == "train"}
    train.setdefault("max_steps", 1 << 62)  # a daemon trains until it is stopped
    train.setdefault("workers", 12)  # node zero and its 12 workers
    # 4 sequences per worker: at 1 (batch 12) the 12 workers run at 1.13x one core, at 4 at
    # 1.71x (bench/engine_scaling.py)
    train.setdefault("batch_size", 48)
    settings = Settings(DaemonConfig(**daemon), TrainConfig(**train))
    settings.train.validate()
    if settings.daemon.crawl_concurrency < 1 or settings.daemon.crawl_delay < 0:
        raise ValueError("crawl-concurrency must be >= 1 and crawl-delay >= 0")
    for cap in (
        "crawl_max_links_per_page",
        "crawl_max_queued_per_host",
        "crawl_max_queued",
        "crawl_robots_per_minute",
        "crawl_max_fetches_per_host_per_day",
        "crawl_max_listed_per_host_per_day",
        "crawl_warc_max_bytes",
    ):
        if getattr(settings.daemon, cap) < 0:
            raise ValueError(f"{cap.replace('_', '-')} must be >= 0 (0: no cap)")
    d = settings.daemon
    if not 0 <= d.crawl_min_revisit <= d.crawl_max_revisit or not 0 <= d.crawl_revisit_share <= 1:
        raise ValueError(
            "crawl-min-revisit must be >= 0 and <= crawl-max-revisit, crawl-revisit-share in [0, 1]"
        )
    for spec in d.crawl_host_revisit:
        parse_host_revisit(spec)  # ValueError naming a bad entry
    int(settings.daemon.socket_mode, 8)  # ValueError on garbage
    from ..ingest.quality_rules import FilterRules

    FilterRules().with_overrides(settings.daemon.quality_rule)  # ValueError naming a bad rule
    parse_bind(settings.daemon.http)  # ValueError on garbage
    return settings


def parse_bind(value: str) -> tuple[str, int] | None:
    """The dashboard's ``--http``: ``HOST:PORT`` (``[v6]:PORT``) or ``off``; ValueError otherwise."""
    text = value.strip()
    if text.lower() in ("off", "no", "none", ""):
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"--http must be HOST:PORT or off, got {value!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"--http: the port must be a number, got {port!r}") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"--http: the port must be 0-65535, got {number}")
    return host, number
