"""The daemon's settings: the tree of `crystalline run` (and `crystalline config`).

Four tables (crystalline.settings_tree): ``[daemon]`` (``DaemonConfig`` below: directories,
socket, dashboard), ``[crawl]`` (``CrawlSettings``, shared with `crystalline crawl`),
``[ingest]`` (``IngestSettings``, shared with `crystalline ingest`) and ``[train]``
(``TrainConfig``, shared with `crystalline train`). Each key is a TOML key, an environment
variable (``CRYSTALLINE_TRAIN_EMBED_DIM``) and a flag: ``--embed-dim`` and ``--state-dir`` for
the daemon's and the training keys, ``--crawl-concurrency`` and ``--ingest-processes`` for the
others. ``run``'s own defaults are in ``RUN_DEFAULTS``. Under systemd the directories default to
``$STATE_DIRECTORY`` and ``$RUNTIME_DIRECTORY``; otherwise to ``./state`` and ``./state/run``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..crawler.settings import CrawlSettings
from ..ingest.settings import IngestSettings
from ..postgres import check_database_url
from ..settings_tree import Resolved, Tree, add_config_flag, table
from ..workers.cluster_config import ClusterSettings, cluster_settings
from ..workers.presets import adopt_checkpoint
from ..workers.train_config import TrainConfig
from .command_limit import BURST_S
from .health import CONTROL_SILENT_S

DAY_S = 86400.0
# the stop's budget: the crawl's wait, ingest's 15 s and the vocabulary's (what is left) run one
# after the other by stop_budget.STOP_S = 35 s (control's final checkpoint beside them), inside
# the unit's TimeoutStopSec=60 (supervisor.py, Supervisor._stop; README, "Stopping")
CRAWL_STOP_MAX_S = 20.0
# the daemon's durations in seconds: more than 0, at most this (finite: inf and nan are refused)
SECONDS_MAX = {
    "checkpoint_interval_s": DAY_S,
    "status_interval_s": DAY_S,
    "control_silent_s": DAY_S,
    "crawl_stop_s": CRAWL_STOP_MAX_S,
    "resource_retry_s": DAY_S,
    "generate_burst_s": DAY_S,
}


@dataclass(frozen=True)
class DaemonConfig:
    """What `crystalline run` needs beyond crawl, ingest and training."""

    state_dir: str = field(default="", metadata={"help": "state directory ($STATE_DIRECTORY, else ./state)"})
    runtime_dir: str = field(
        default="", metadata={"help": "status socket's directory ($RUNTIME_DIRECTORY, else <state-dir>/run)"}
    )
    inbox: str = field(default="", metadata={"help": "the drop folder (default: <state-dir>/inbox)"})
    no_crawl: bool = field(default=False, metadata={"help": "do not crawl (the drop folder only)"})
    database: str = field(
        default="",
        metadata={
            "help": "postgresql://user@host:port/name: the frontier and the document registry there, "
            "shared with the daemons of other machines (empty: SQLite in the state directory; "
            "[crawl] and [ingest] database override it)"
        },
    )
    checkpoint_interval_s: float = field(default=300.0, metadata={"help": "seconds between checkpoints"})
    status_interval_s: float = field(
        default=10.0, metadata={"help": "seconds between STATUS= lines to systemd"}
    )
    control_silent_s: float = field(
        default=CONTROL_SILENT_S,
        metadata={
            "help": "a control process that reports nothing for this long is stuck: health says "
            "so and the watchdog is no longer fed (systemd restarts the service); longer than "
            "one training step"
        },
    )
    crawl_stop_s: float = field(
        default=15.0,
        metadata={
            "help": "at stop, how long the crawl gets to end its fetches and close (at most 20: "
            "then ingest gets 15 s and the vocabulary what is left of the stop's 35 s; "
            "control's final checkpoint runs beside them); a crawl still running then is left "
            "to end with the process (an error in status)"
        },
    )
    resource_retry_s: float = field(
        default=10.0,
        metadata={
            "help": "a resource training lacks (/dev/shm, open files, the cluster, the batch "
            "ring) is tried again this often (room freed in /dev/shm: at once)"
        },
    )
    generate_burst_s: float = field(
        default=BURST_S,
        metadata={
            "help": "seconds of generate a user may take at once, before its share of the "
            "daemon's time (a tenth per user, a quarter for all) applies"
        },
    )
    no_samples: bool = field(
        default=False, metadata={"help": "do not copy the bundled sample documents into a fresh inbox"}
    )
    socket_mode: str = field(default="0660", metadata={"help": "the status socket's mode (octal)"})
    http: str = field(
        default="127.0.0.1:8470",
        metadata={"help": "the dashboard's HOST:PORT (port 0: any free one), or off"},
    )
    cluster: str = field(
        default="",
        metadata={
            "help": "HOST:PORT of the rendezvous point: train one model with the daemons of other "
            "machines (torch.distributed gloo; pip install crystalline[cluster]); the member whose "
            "cluster-address is HOST hosts it. Empty: this machine alone"
        },
    )
    cluster_nodes: str = field(
        default="1:64",
        metadata={"help": "MIN:MAX members: a group forms with at least MIN, at most MAX train"},
    )
    cluster_address: str = field(
        default="",
        metadata={"help": "the address this machine is reached on (default: its route to --cluster)"},
    )
    cluster_timeout_s: float = field(
        default=10.0,
        metadata={"help": "a member silent this long is dropped; also every collective's deadline"},
    )
    cluster_outer_every: int = field(
        default=0,
        metadata={
            "help": "0: allreduce the gradients every step; H: slow links: local steps, and every H "
            "an outer step averaging the members' change with Nesterov momentum (DiLoCo)"
        },
    )

    def validate(self) -> None:
        """Raise ValueError naming the first bad value."""
        try:
            int(self.socket_mode, 8)
        except ValueError:
            raise ValueError(
                f"socket-mode must be an octal mode such as 0660, got {self.socket_mode!r}"
            ) from None
        parse_bind(self.http)
        if self.database:
            check_database_url(self.database)
        self.cluster_settings()
        for key, most in SECONDS_MAX.items():
            value, name = getattr(self, key), key.replace("_", "-")
            if not 0 < value <= most:  # nan fails both comparisons
                raise ValueError(f"{name} must be more than 0 and at most {most:g} s, got {value:g}")

    def cluster_settings(self) -> ClusterSettings | None:
        """``--cluster`` and its companions, checked (None without ``--cluster``)."""
        if not self.cluster:
            return None
        return cluster_settings(
            self.cluster,
            self.cluster_nodes,
            self.cluster_address,
            self.cluster_timeout_s,
            self.cluster_outer_every,
        )


# `crystalline run`'s own defaults, shown by its --help and `crystalline config`
RUN_DEFAULTS = {
    "train": {
        "preset": "small",  # a state directory that holds checkpoints keeps its own (workers/presets.py)
        "max_steps": 1 << 62,  # a daemon trains until it is stopped
        # so no decay ever comes: the peak after warmup, and the weights' moving average serves
        # (README, "A run that never ends": bench/served_weights.py)
        "schedule": "stable",
        "ema_decay": 0.99,  # the best of 0.99-0.999 in bench/served_weights.py (README)
        "workers": 12,  # node zero and its 12 workers
        # 4 sequences per worker: at 1 (batch 12) the 12 workers run at 1.13x one core, at 4 at
        # 1.71x (bench/engine_scaling.py)
        "batch_size": 48,
    },
    "crawl": {"warc_max_bytes": 10 * 1024**3},  # a daemon's WARC files are kept to 10 GiB
}


def settings_tree() -> Tree:
    """The tables `crystalline run` reads; the crawl's data directory is the state directory's."""
    return Tree(
        {
            "daemon": table("daemon", DaemonConfig),
            "crawl": table("crawl", CrawlSettings),
            "ingest": table("ingest", IngestSettings),
            "train": table("train", TrainConfig),
        },
        defaults=RUN_DEFAULTS,
        exclude={"crawl": ("data_dir",)},
        prefixed=("crawl", "ingest"),
    )


@dataclass(frozen=True)
class Settings:
    daemon: DaemonConfig
    train: TrainConfig
    crawl: CrawlSettings = field(default_factory=CrawlSettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` and one flag per key of the tree, with run's defaults in the help."""
    add_config_flag(parser, "[daemon], [crawl], [ingest] and [train] tables")
    settings_tree().add_flags(parser)


def resolve_tree(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Resolved:
    """Every value of the tree and where it came from (`crystalline config`); a state directory
    with checkpoints keeps the model, batches and optimizer it was trained with, unless a key is
    given explicitly (workers/presets.py)."""
    env = os.environ if env is None else env
    resolved = settings_tree().resolve(args, env, getattr(args, "config", None))
    state_dir = Settings(resolved.tables["daemon"], resolved.tables["train"]).state_dir
    return adopt_checkpoint(resolved, state_dir / "checkpoints")


def resolve(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    """Defaults < run's defaults < file (--config or CRYSTALLINE_CONFIG) < environment < flags.
    The crawl's frontier goes to ``<state-dir>/crawl`` (and a relative WARC directory under the
    state directory); ingest holds out the share of documents that [train] val-fraction says;
    [daemon] database is the crawl's and ingest's unless their own tables name one."""
    tables = resolve_tree(args, env).tables
    s = Settings(tables["daemon"], tables["train"], tables["crawl"], tables["ingest"])
    warc = s.crawl.warc_dir
    crawl = replace(
        s.crawl,
        data_dir=s.state_dir / "crawl",
        warc_dir=s.state_dir / warc if warc else None,
        database=s.crawl.database or s.daemon.database,
    )
    ingest = replace(
        s.ingest, val_fraction=s.train.val_fraction, database=s.ingest.database or s.daemon.database
    )
    from ..tokens.learned_vocab import LEARNED, vocab_path  # numpy: not for the parser or a usage error

    train = s.train
    if train.tokenizer == LEARNED:  # the state directory's vocabulary (tokens/learned_vocab.py)
        train = replace(train, tokenizer=str(vocab_path(s.state_dir)))
    return replace(s, crawl=crawl, ingest=ingest, train=train)


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
