"""``--cluster`` and its companions as the settings tree reads them: good values give the
control process's cluster spec, bad ones a one-line usage error naming the key; without
``--cluster`` nothing of torch is imported by the daemon's modules."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from crystalline.daemon import config
from crystalline.exit_status import UsageError


def settings(argv: list[str]) -> config.Settings:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return config.resolve(parser.parse_args(argv), env={})


def test_cluster_flags_give_the_members_settings() -> None:
    s = settings(["--cluster", "127.0.0.1:29500", "--cluster-address", "127.0.0.1", "--cluster-nodes", "2:5",
                  "--cluster-outer-every", "8"])  # fmt: skip
    c = s.daemon.cluster_settings()
    assert c is not None
    assert (c.host, c.port, c.address, c.min_nodes, c.max_nodes, c.outer_every) == (
        "127.0.0.1", 29500, "127.0.0.1", 2, 5, 8,
    )  # fmt: skip
    assert c.hosts_store
    assert settings([]).daemon.cluster_settings() is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--cluster", "no-port"], "HOST:PORT"),
        (["--cluster", "127.0.0.1:http"], "port must be a number"),
        (["--cluster", "127.0.0.1:0"], "1-65535"),
        (["--cluster", "127.0.0.1:29500", "--cluster-nodes", "3:2"], "MIN <= MAX"),
        (["--cluster", "127.0.0.1:29500", "--cluster-nodes", "two"], "MIN:MAX"),
        (["--cluster", "127.0.0.1:29500", "--cluster-timeout-s", "0"], "positive"),
        (["--cluster", "127.0.0.1:29500", "--cluster-outer-every", "-1"], "0 (every step)"),
    ],
)
def test_bad_cluster_values_are_one_line_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError) as caught:
        settings(argv)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_without_cluster_the_daemon_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "import crystalline.daemon.cli, crystalline.daemon.control_process, crystalline.daemon.supervisor\n"
        "import crystalline.workers.trainer\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
