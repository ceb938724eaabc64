"""The settings tree of `crystalline run`: defaults < run's defaults < file < environment < flags,
per table; old spellings; one-line errors naming the source; `crystalline config`."""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import re
import subprocess
import sys
import tomllib
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import pytest

from crystalline import settings_tree
from crystalline.daemon import cli, config
from crystalline.exit_status import USAGE, UsageError

EXAMPLE = Path(__file__).resolve().parents[2] / "systemd" / "crystalline.toml"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return parser.parse_args(argv)


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crystalline.daemon.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# (table, key, file value (TOML), env value, flag, flag value, expected default, file, env, flag)
PRECEDENCE = [
    ("daemon", "status_interval_s", "2.5", "3", "--status-interval-s", "4", 10.0, 2.5, 3.0, 4.0),
    ("crawl", "concurrency", "3", "5", "--crawl-concurrency", "7", 16, 3, 5, 7),
    ("crawl", "user_agent", '"a/1"', "b/2", "--crawl-user-agent", "c/3", None, "a/1", "b/2", "c/3"),
    ("ingest", "language_min_score", "0.5", "0.6", "--ingest-language-min-score", "0.7", 0.65, 0.5, 0.6, 0.7),
    ("ingest", "ocr", "false", "true", "--ingest-no-ocr", None, True, False, True, False),
    ("train", "embed_dim", "64", "96", "--embed-dim", "32", 128, 64, 96, 32),
    ("train", "workers", "3", "4", "--workers", "5", 12, 3, 4, 5),  # run's own default: 12
]


def value_of(s: config.Settings, table: str, key: str) -> Any:
    if table == "ingest" and key == "language_min_score":
        return s.ingest.filters.language_min_score
    if table == "ingest" and key == "ocr":
        return s.ingest.limits.ocr
    return getattr(getattr(s, table), key)


@pytest.mark.parametrize("row", PRECEDENCE, ids=[f"{r[0]}.{r[1]}" for r in PRECEDENCE])
def test_precedence_per_table(tmp_path: Path, row: tuple[Any, ...]) -> None:
    table, key, in_file, in_env, flag, flag_value, default, by_file, by_env, by_flag = row
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[{table}]\n{key.replace('_', '-')} = {in_file}\n", encoding="utf-8")
    var = f"CRYSTALLINE_{table.upper()}_{key.upper()}"
    argv = [flag] if flag_value is None else [flag, flag_value]
    dashed = key.replace("_", "-")

    defaults = config.resolve(parse([]), {})
    if default is not None:
        assert value_of(defaults, table, key) == default
    filed = config.resolve_tree(parse(["--config", str(cfg)]), {})
    assert value_of(config.resolve(parse(["--config", str(cfg)]), {}), table, key) == by_file
    assert filed.report()[table][dashed]["source"] == "file"
    assert filed.report()[table][dashed]["where"] == str(cfg)
    env = {var: in_env}
    assert value_of(config.resolve(parse(["--config", str(cfg)]), env), table, key) == by_env
    assert config.resolve_tree(parse(["--config", str(cfg)]), env).report()[table][dashed]["where"] == var
    flagged = config.resolve_tree(parse(["--config", str(cfg), *argv]), env)
    assert value_of(config.resolve(parse(["--config", str(cfg), *argv]), env), table, key) == by_flag
    assert flagged.report()[table][dashed] == {"value": by_flag, "source": "flag", "where": flag}


def test_runs_own_defaults_and_their_source() -> None:
    report = config.resolve_tree(parse([]), {}).report()
    assert report["train"]["workers"] == {"value": 12, "source": "command", "where": ""}
    assert report["train"]["batch-size"]["value"] == 48
    assert report["train"]["num-layers"] == {"value": 4, "source": "preset", "where": "small"}
    assert report["train"]["min-lr"] == {"value": 1e-4, "source": "default", "where": ""}
    assert report["crawl"]["warc-max-bytes"]["value"] == 10 * 1024**3
    assert "data-dir" not in report["crawl"]  # the daemon's is <state-dir>/crawl


def test_crawl_and_ingest_are_placed_under_the_state_directory(tmp_path: Path) -> None:
    s = config.resolve(
        parse(["--state-dir", str(tmp_path), "--crawl-warc-dir", "warc", "--val-fraction", "0.25"]), {}
    )
    assert s.crawl.data_dir == tmp_path / "crawl"
    assert s.crawl.warc_dir == tmp_path / "warc"
    assert s.ingest.val_fraction == 0.25  # ingest holds out what [train] says
    assert config.resolve(parse([]), {}).crawl.warc_dir is None


def test_config_file_from_the_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train]\nworkers = 3\n")
    s = config.resolve(parse([]), {"CRYSTALLINE_CONFIG": str(cfg)})
    assert s.train.workers == 3


def test_directories_follow_systemd_then_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path / "run"))
    s = config.resolve(parse([]), {})
    assert s.state_dir == tmp_path / "state"
    assert s.socket_path == tmp_path / "run" / "crystalline.sock"
    assert s.inbox == tmp_path / "state" / "inbox"
    s = config.resolve(parse(["--state-dir", str(tmp_path / "x")]), {})
    assert s.state_dir == tmp_path / "x"


def test_repeatable_and_comma_separated_lists(tmp_path: Path) -> None:
    argv = ["--crawl-start-url", "https://a.example/", "--crawl-start-url", "https://b.example/"]
    s = config.resolve(parse(argv), {})
    assert s.crawl.start_url == ("https://a.example/", "https://b.example/")
    s = config.resolve(parse([]), {"CRYSTALLINE_CRAWL_ALLOWED_DOMAINS": "a.example, b.example"})
    assert s.crawl.allowed_domains == ("a.example", "b.example")
    cfg = tmp_path / "c.toml"
    cfg.write_text('[ingest]\nquality-rule = ["gopher_max_words=100000"]\nlanguages = ["en", "de"]\n')
    s = config.resolve(parse(["--config", str(cfg)]), {})
    assert s.ingest.filters.rules.gopher_max_words == 100000
    assert s.ingest.filters.languages == ("en", "de")


# ---- old spellings: read as before, each with a one-line deprecation notice -------------------


def test_old_flat_file_env_and_flags_mean_what_they_meant(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = tmp_path / "old.toml"
    old.write_text(
        'workers = 3\n[daemon]\ncrawl-delay = 2.5\nseed-url = ["https://a.example/"]\ncrawl-concurrency = 4\n'
        'crawl-no-sitemaps = true\nno-pii = true\nlanguages = ["en"]\nuser-agent = "x/1"\n'
        'quality-rule = ["gopher_max_words=9"]\ncrawl-max-queued = 70\nhttp = "off"\n'
        "[train]\nembed-dim = 64\n",
        encoding="utf-8",
    )
    new = tmp_path / "new.toml"
    new.write_text(
        '[crawl]\nmin-delay = 2.5\nstart-url = ["https://a.example/"]\nconcurrency = 4\nsitemaps = false\n'
        'user-agent = "x/1"\nmax-queued = 70\n[ingest]\npii = false\nlanguages = ["en"]\n'
        'quality-rule = ["gopher_max_words=9"]\n[daemon]\nhttp = "off"\n'
        "[train]\nembed-dim = 64\nworkers = 3\n",
        encoding="utf-8",
    )
    with caplog.at_level(logging.WARNING, "crystalline.settings"):
        from_old = config.resolve(parse(["--config", str(old)]), {})
    assert from_old == config.resolve(parse(["--config", str(new)]), {})
    notices = [r.getMessage() for r in caplog.records]
    assert f"{old}: [daemon] crawl-delay is deprecated: use [crawl] min-delay" in notices
    assert f"{old}: [daemon] no-pii is deprecated: use [ingest] pii (the opposite value)" in notices
    assert f"{old}: workers is deprecated: use [train] workers" in notices

    caplog.clear()
    old_env = {"CRYSTALLINE_EMBED_DIM": "64", "CRYSTALLINE_CRAWL_ALLOW_PRIVATE": "1",
               "CRYSTALLINE_SEED_URL": "https://a.example/", "CRYSTALLINE_CRAWL_DELAY": "0",
               "CRYSTALLINE_CRAWL_NO_SITEMAPS": "1"}  # fmt: skip
    new_env = {"CRYSTALLINE_TRAIN_EMBED_DIM": "64", "CRYSTALLINE_CRAWL_ALLOW_PRIVATE_ADDRESSES": "1",
               "CRYSTALLINE_CRAWL_START_URL": "https://a.example/", "CRYSTALLINE_CRAWL_MIN_DELAY": "0",
               "CRYSTALLINE_CRAWL_SITEMAPS": "0"}  # fmt: skip
    with caplog.at_level(logging.WARNING, "crystalline.settings"):
        assert config.resolve(parse([]), old_env) == config.resolve(parse([]), new_env)
    assert "CRYSTALLINE_CRAWL_DELAY is deprecated: use CRYSTALLINE_CRAWL_MIN_DELAY" in caplog.messages

    caplog.clear()
    old_flags = ["--seed-url", "https://a.example/", "--crawl-allow-private", "--crawl-delay", "0",
                 "--no-pii", "--languages", "en", "--allowed-domain", "a.example", "--user-agent", "x/1",
                 "--quality-rule", "gopher_max_words=9", "--language-min-score", "0.5"]  # fmt: skip
    new_flags = ["--crawl-start-url", "https://a.example/", "--crawl-allow-private-addresses",
                 "--crawl-min-delay", "0", "--ingest-no-pii", "--ingest-languages", "en",
                 "--crawl-allowed-domains", "a.example", "--crawl-user-agent", "x/1",
                 "--ingest-quality-rule", "gopher_max_words=9",
                 "--ingest-language-min-score", "0.5"]  # fmt: skip
    with caplog.at_level(logging.WARNING, "crystalline.settings"):
        assert config.resolve(parse(old_flags), {}) == config.resolve(parse(new_flags), {})
    assert "--seed-url is deprecated: use --crawl-start-url" in caplog.messages
    assert "--no-pii is deprecated: use --ingest-no-pii" in caplog.messages
    assert "--crawl-allow-private is deprecated: use --crawl-allow-private-addresses" in caplog.messages


def test_example_file_is_current_and_documents_http_and_its_off_switch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    with caplog.at_level(logging.WARNING, "crystalline.settings"):
        s = config.resolve(parse(["--config", str(EXAMPLE)]), {})
    assert caplog.messages == []  # no old spelling in the example
    assert s.daemon.http == "127.0.0.1:8470"
    assert s.crawl.concurrency == settings_tree.table("crawl", type(s.crawl)).keys["concurrency"].default
    for line, bind in (('# http = "127.0.0.1:8470"', ("127.0.0.1", 8470)), ('# http = "off"', None)):
        assert line in text  # the commented default, and how to turn it off
        cfg = tmp_path / "c.toml"
        cfg.write_text(text.replace(line, line[2:]), encoding="utf-8")
        assert config.parse_bind(config.resolve(parse(["--config", str(cfg)]), {}).daemon.http) == bind


@pytest.mark.parametrize(
    ("table_name", "key"),
    [("daemon", "database"), ("crawl", "database"), ("crawl", "database-timeout-s"),
     ("ingest", "database"), ("ingest", "database-timeout-s")],
)  # fmt: skip
def test_example_file_lists_the_database_keys_commented_with_their_defaults(
    tmp_path: Path, table_name: str, key: str
) -> None:
    """Each database key is in its table of the example, commented out; uncommented, it gives
    the key's default (so the file shows what the daemon does without it)."""
    text = EXAMPLE.read_text(encoding="utf-8")
    tables = re.split(r"^\[(\w+)\]$", text, flags=re.M)
    section = dict(zip(tables[1::2], tables[2::2], strict=True))[table_name]
    lines = [line for line in section.splitlines() if line.startswith(f"# {key} = ")]
    every = text.splitlines()
    assert len(lines) == 1 and every.count(lines[0]) == 1, (table_name, key, lines)
    every[every.index(lines[0])] = lines[0][2:]
    cfg = tmp_path / "c.toml"
    cfg.write_text("\n".join(every), encoding="utf-8")
    resolved = config.resolve(parse(["--config", str(cfg)]), {})
    default = config.resolve(parse([]), {})
    name = key.replace("-", "_")
    assert getattr(getattr(resolved, table_name), name) == getattr(getattr(default, table_name), name)


# ---- one-line errors naming the source, the key and what is allowed ----------------------------

BOUND = "must be more than 0 and at most"  # a duration: finite, bounded (daemon/config.py)
DB_BOUND = "must be at least 1 and at most 60 s"  # a statement's deadline (crystalline.postgres)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[crawl]\nconcurency = 3\n", "{path}: unknown key [crawl] concurency (did you mean concurrency"),
        ("[crawl]\nzzz = 3\n", "{path}: unknown key [crawl] zzz (keys: start-url, "),
        ("[daemon]\nbogus = 1\n", "{path}: unknown key [daemon] bogus (keys: state-dir, runtime-dir, "),
        # the daemon puts the frontier under the state directory: a data-dir would be dropped (R19 1)
        ('[crawl]\ndata-dir = "/srv/x"\n', "{path}: unknown key [crawl] data-dir (did you mean warc-dir"),
        ("bogus = 1\n", "{path}: unknown setting 'bogus' (expected [TABLE] KEY in a file"),
        ("[trian]\nworkers = 1\n", "{path}: unknown table [trian] (tables: daemon, crawl, ingest, train)"),
        ('[crawl]\nconcurrency = "many"\n', "{path}: [crawl] concurrency must be an integer, got 'many'"),
        ('[train]\ninit = "spiral"\n', "{path}: [train] init must be one of normal, lattice, got 'spiral'"),
        ("[ingest]\npii = 1\n", "{path}: [ingest] pii must be true or false, got 1"),
        ('[ingest]\nquality-rule = ["gopher_bogus=1"]\n', "{path}: [ingest] quality-rule must be a list of"),
        ('[crawl]\nhost-revisit = ["a.example=9:1"]\n', "{path}: [crawl] host-revisit must be a list of"),
        ("[crawl]\nconcurrency = 0\n", "[crawl] concurrency must be at least 1 (set by file {path})"),
        ("[train]\nnum-heads = 3\n", "(set by preset small, file {path})"),  # embed-dim: the preset's
        (
            '[daemon]\nsocket-mode = "rw"\n',
            "[daemon] socket-mode must be an octal mode such as 0660, got 'rw'",
        ),
        ("[daemon]\ncrawl-stop-s = inf\n", f"crawl-stop-s {BOUND} 20 s, got inf (set by file {{path}})"),
        ("[daemon]\ncrawl-stop-s = nan\n", "{path}: [daemon] crawl-stop-s must be a number, got nan"),
        ("[daemon]\ncrawl-stop-s = 45\n", f"crawl-stop-s {BOUND} 20 s, got 45 (set by file {{path}})"),
        ("[daemon]\nresource-retry-s = 1e12\n", f"resource-retry-s {BOUND} 86400 s, got 1e+12 (set"),
        ("[daemon]\ncontrol-silent-s = inf\n", f"control-silent-s {BOUND} 86400 s, got inf (set"),
        ("[daemon]\ngenerate-burst-s = -inf\n", f"generate-burst-s {BOUND} 86400 s, got -inf (set"),
        # the database's statement deadline: 1-60 s (crystalline.postgres), finite
        ("[crawl]\ndatabase-timeout-s = 0.5\n", f"[crawl] database-timeout-s {DB_BOUND}, got 0.5 (set by"),
        ("[ingest]\ndatabase-timeout-s = inf\n", f"[ingest] database-timeout-s {DB_BOUND}, got inf (set by"),
        ("[ingest]\ndatabase-timeout-s = nan\n", "{path}: [ingest] database-timeout-s must be a number"),
        # tesseract's deadline per image: 0 or less, or inf, would give it none of its own
        ("[ingest]\nocr-timeout-s = 0\n", f"[ingest] ocr-timeout-s {BOUND} 3600 s, got 0 (set by file"),
        ("[ingest]\nocr-timeout-s = -5\n", f"[ingest] ocr-timeout-s {BOUND} 3600 s, got -5 (set by"),
        ("[ingest]\nocr-timeout-s = inf\n", f"[ingest] ocr-timeout-s {BOUND} 3600 s, got inf (set by"),
        ("[ingest]\nocr-timeout-s = nan\n", "{path}: [ingest] ocr-timeout-s must be a number"),
    ],
)
def test_bad_file_values_name_the_file_and_the_key(tmp_path: Path, body: str, message: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(body, encoding="utf-8")
    with pytest.raises(UsageError) as err:
        config.resolve(parse(["--config", str(cfg)]), {})
    assert message.format(path=cfg) in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CRYSTALLINE_CRAWL_CONCURENCY": "3"},
         "CRYSTALLINE_CRAWL_CONCURENCY: unknown key [crawl] concurency"),
        ({"CRYSTALLINE_CRAWL_DATA_DIR": "/srv/x"},
         "CRYSTALLINE_CRAWL_DATA_DIR: unknown key [crawl] data-dir"),
        ({"CRYSTALLINE_TESTS": "1"}, "CRYSTALLINE_TESTS: unknown setting 'CRYSTALLINE_TESTS'"),
        ({"CRYSTALLINE_DAEMON_NO_CRAWL": "maybe"},
         "CRYSTALLINE_DAEMON_NO_CRAWL: [daemon] no-crawl must be true or false, got 'maybe'"),
        ({"CRYSTALLINE_TRAIN_EMBED_DIM": "big"},
         "CRYSTALLINE_TRAIN_EMBED_DIM: [train] embed-dim must be an integer, got 'big'"),
        ({"CRYSTALLINE_CRAWL_MAX_QUEUED": "-5"}, "(set by env CRYSTALLINE_CRAWL_MAX_QUEUED)"),
        ({"CRYSTALLINE_CRAWL_HOST_REVISIT": "a.example=600:60"},
         "CRYSTALLINE_CRAWL_HOST_REVISIT: [crawl] host-revisit must be a list of strings, "
         "got 'a.example=600:60' (host-revisit 'a.example=600:60': the minimum must not be "),
    ],
)  # fmt: skip
def test_bad_environment_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError) as err:
        config.resolve(parse([]), env)
    assert message in str(err.value)


def test_test_suite_variables_are_not_settings() -> None:
    s = config.resolve(parse([]), {"CRYSTALLINE_TEST_ARTIFACTS": "/tmp/a", "CRYSTALLINE_DAEMON_HTTP": "off"})
    assert s.daemon.http == "off"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--crawl-concurrency", "x"],
            "--crawl-concurrency: [crawl] concurrency must be an integer, got 'x'",
        ),
        (
            ["--crawl-concurrency", "0"],
            "[crawl] concurrency must be at least 1 (set by flag --crawl-concurrency)",
        ),
        (["--num-heads", "3"], "(set by preset small, flag --num-heads)"),
        (["--http", "8470"], "--http must be HOST:PORT or off"),
        (["--crawl-min-revisit", "-1"], "(set by flag --crawl-min-revisit)"),
        (
            ["--crawl-stop-s", "0"],
            f"[daemon] crawl-stop-s {BOUND} 20 s, got 0 (set by flag --crawl-stop-s)",
        ),
        # durations are finite and bounded: inf would overflow the crawl's join at stop
        (["--crawl-stop-s", "inf"], f"[daemon] crawl-stop-s {BOUND} 20 s, got inf (set by"),
        (["--crawl-stop-s", "21"], f"[daemon] crawl-stop-s {BOUND} 20 s, got 21 (set by"),
        (["--crawl-stop-s", "nan"], "--crawl-stop-s: [daemon] crawl-stop-s must be a number, got 'nan'"),
        (["--resource-retry-s", "-1"], f"[daemon] resource-retry-s {BOUND} 86400 s, got -1"),
        (["--resource-retry-s", "1e12"], f"resource-retry-s {BOUND} 86400 s, got 1e+12 (set"),
        (["--control-silent-s", "inf"], f"[daemon] control-silent-s {BOUND} 86400 s, got inf"),
        (["--generate-burst-s", "0"], f"[daemon] generate-burst-s {BOUND} 86400 s, got 0"),
        (["--generate-burst-s", "86401"], f"[daemon] generate-burst-s {BOUND} 86400 s"),
        (["--checkpoint-interval-s", "inf"], f"checkpoint-interval-s {BOUND} 86400 s, got inf"),
        (["--status-interval-s", "1e10"], f"status-interval-s {BOUND} 86400 s, got 1e+10"),
        (
            ["--crawl-database-timeout-s", "61"],
            f"[crawl] database-timeout-s {DB_BOUND}, got 61 (set by flag --crawl-database-timeout-s)",
        ),
        (["--ingest-database-timeout-s", "0"], f"[ingest] database-timeout-s {DB_BOUND}, got 0 (set by"),
        (["--ingest-database-timeout-s", "inf"], f"[ingest] database-timeout-s {DB_BOUND}, got inf"),
        (["--ingest-ocr-timeout-s", "0"], f"[ingest] ocr-timeout-s {BOUND} 3600 s, got 0 (set by flag"),
        (["--ingest-ocr-timeout-s", "inf"], f"[ingest] ocr-timeout-s {BOUND} 3600 s, got inf"),
        (["--ingest-ocr-timeout-s", "nan"], "--ingest-ocr-timeout-s: [ingest] ocr-timeout-s must be a"),
        (
            ["--seed-url", "https://a.example/", "--crawl-max-queued", "-5"],
            "[crawl] max-queued must not be negative",
        ),
    ],
)
def test_bad_flag_values_name_the_flag(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError) as err:
        config.resolve(parse(argv), {})
    assert message in str(err.value)


@pytest.mark.timeout(120)
def test_usage_errors_exit_64_with_one_line(tmp_path: Path, cli_env: dict[str, str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[crawl]\nbogus = 1\n", encoding="utf-8")
    for argv, expected in (
        (["run", "--crawl-concurrency", "x"], "--crawl-concurrency: [crawl] concurrency must be an integer"),
        (["config", "--config", str(cfg)], f"{cfg}: unknown key [crawl] bogus"),
        (["crawl", "--start-url", "http://127.0.0.1/", "--concurrency", "0"], "(set by flag --concurrency)"),
        (["crawl", "--data-dir", str(tmp_path / "d")], "crawl needs a start URL"),
        (["extract", "--processes", "0", str(cfg)], "[ingest] processes must be at least 1"),
    ):
        proc = run_cli(argv, {**cli_env, "CRYSTALLINE_CONFIG": ""})
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == USAGE, proc.stderr
        assert lines == [lines[0]] and lines[0].startswith("crystalline: error: ") and expected in lines[0], (
            lines
        )


# ---- --help shows each command's own defaults --------------------------------------------------


def command_help(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([command, "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def test_help_shows_the_commands_own_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    run = command_help("run", capsys)
    assert "--workers INT worker processes computing gradients (1: in this process) (default: 12)" in run
    assert "(default: 48)" in run.rsplit("--batch-size INT", 1)[1].split("--", 1)[0]
    assert "--crawl-concurrency INT requests in flight, all hosts together (default: 16)" in run
    assert "--crawl-allow-private-addresses" in run and "--crawl-allow-private " not in run  # old: hidden
    train = command_help("train", capsys)
    assert "(default: 1)" in train.rsplit("--workers INT", 1)[1].split("--", 1)[0]
    assert "(default: 12)" in train.rsplit("--batch-size INT", 1)[1].split("--", 1)[0]
    crawl = command_help("crawl", capsys)
    assert "--concurrency INT requests in flight, all hosts together (default: 16)" in crawl
    assert "--allow-private-addresses" in crawl
    assert "(default: 0)" in crawl.rsplit("--warc-max-bytes INT", 1)[1].split("--", 1)[0]


# ---- crystalline config --------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_config_command_prints_values_and_where_they_came_from(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[crawl]\nconcurrency = 3\n[train]\nembed-dim = 64\n[ingest]\nlanguages = ["en"]\n')
    env = {**cli_env, "CRYSTALLINE_CONFIG": str(cfg), "CRYSTALLINE_TRAIN_SEQ_LEN": "32"}
    proc = run_cli(["config", "--json", "--crawl-min-delay", "0"], env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["crawl"]["concurrency"] == {"value": 3, "source": "file", "where": str(cfg)}
    assert report["train"]["seq-len"] == {"value": 32, "source": "env", "where": "CRYSTALLINE_TRAIN_SEQ_LEN"}
    assert report["crawl"]["min-delay"] == {"value": 0.0, "source": "flag", "where": "--crawl-min-delay"}
    assert report["train"]["workers"] == {"value": 12, "source": "command", "where": ""}
    assert report["train"]["num-heads"] == {"value": 4, "source": "preset", "where": "small"}
    assert report["train"]["embed-dim"] == {"value": 64, "source": "file", "where": str(cfg)}
    assert report["ingest"]["languages"]["value"] == ["en"]

    proc = run_cli(["config", "--crawl-min-delay", "0"], env)
    assert proc.returncode == 0, proc.stderr
    assert f"concurrency = 3  # file {cfg}" in proc.stdout.splitlines()
    assert "seq-len = 32  # env CRYSTALLINE_TRAIN_SEQ_LEN" in proc.stdout.splitlines()
    assert 'optimizer = "muon"  # preset small' in proc.stdout.splitlines()
    # the text is TOML: fed back as the file, it gives the same values
    as_toml = tomllib.loads(proc.stdout)
    assert {t: {k: r["value"] for k, r in rows.items()} for t, rows in report.items()} == as_toml
    again = tmp_path / "again.toml"
    again.write_text(proc.stdout, encoding="utf-8")
    proc = run_cli(["config", "--json", "--config", str(again)], {**cli_env, "CRYSTALLINE_CONFIG": ""})
    assert proc.returncode == 0, proc.stderr
    assert {
        t: {k: r["value"] for k, r in rows.items()} for t, rows in json.loads(proc.stdout).items()
    } == as_toml


def config_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[Any, str, str]:
    """`crystalline config ARGV` in this process: exit status, stdout, stderr."""
    try:
        code: Any = cli.main(["config", *argv])
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_config_command_shows_another_commands_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[crawl]\nconcurrency = 3\n[train]\nembed-dim = 64\n[ingest]\nmin-words = 7\n")
    monkeypatch.setenv("CRYSTALLINE_CONFIG", str(cfg))
    monkeypatch.setenv("CRYSTALLINE_TRAIN_SEQ_LEN", "32")

    code, out, err = config_of(["--command", "train", "--json", "--num-layers", "3"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert list(report) == ["train"]  # train reads only its table of the file
    assert report["train"]["embed-dim"] == {"value": 64, "source": "file", "where": str(cfg)}
    assert report["train"]["seq-len"] == {"value": 32, "source": "env", "where": "CRYSTALLINE_TRAIN_SEQ_LEN"}
    assert report["train"]["num-layers"] == {"value": 3, "source": "flag", "where": "--num-layers"}
    # train's own defaults, not run's (12 workers, the small preset)
    assert report["train"]["workers"] == {"value": 1, "source": "default", "where": ""}
    assert report["train"]["preset"] == {"value": "none", "source": "default", "where": ""}

    code, out, err = config_of(["--command=crawl", "--concurrency", "5"], capsys)
    assert code == 0, err
    as_toml = tomllib.loads(out)
    assert list(as_toml) == ["crawl"] and as_toml["crawl"]["concurrency"] == 5
    assert "concurrency = 5  # flag --concurrency" in out.splitlines()
    assert as_toml["crawl"]["warc-max-bytes"] == 0  # crawl keeps all; run keeps 10 GiB
    assert "data-dir" in as_toml["crawl"]  # which run leaves out (the state directory's)

    code, out, err = config_of(["--command", "ingest", "--json"], capsys)
    assert code == 0, err
    ingest = json.loads(out)["ingest"]
    assert ingest["min-words"] == {"value": 7, "source": "file", "where": str(cfg)}
    assert "drop-settle-s" not in ingest and "batch-documents" in ingest
    code, out, err = config_of(["--command", "extract", "--json"], capsys)
    assert code == 0, err
    assert "batch-documents" not in json.loads(out)["ingest"]

    # the flags are the named command's: run's spelling is refused for crawl, and so are a
    # command config does not know and an abbreviated --command (the flags would be run's)
    for argv, said in (
        (["--command", "crawl", "--crawl-concurrency", "5"], "unrecognized arguments: --crawl-concurrency 5"),
        (["--command", "generate"], "argument --command: invalid choice: 'generate'"),
        (["--comm", "train"], "config: spell --command out in full"),
        (["--command", "train", "--embed-dim", "x"], "--embed-dim: [train] embed-dim must be an integer"),
    ):
        code, out, err = config_of(argv, capsys)
        assert code == USAGE and out == "" and said in err, (argv, err)


# ---- the generator: a new field is a key, a flag and a variable with nothing to wire ------------


@dataclass(frozen=True)
class _Inner:
    depth: int = 2  # how deep
    on: bool = True


@dataclass(frozen=True)
class _Outer:
    name: str = field(default="a", metadata={"help": "a name", "choices": ("a", "b")})
    inner: _Inner = field(default_factory=_Inner)
    spots: tuple[str, ...] = field(default=(), metadata={"aliases": ("spot",)})
    where: Path | None = None
    hidden: float = field(default=1.0, metadata={"internal": True})


def test_a_new_field_needs_no_wiring(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = settings_tree.Tree({"crawl": settings_tree.table("crawl", _Outer)}, prefixed=("crawl",))
    assert sorted(tree.tables["crawl"].keys) == ["depth", "name", "on", "spots", "where"]
    parser = argparse.ArgumentParser()
    tree.add_flags(parser)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[crawl]\ndepth = 5\nwhere = "/x"\n', encoding="utf-8")
    args = parser.parse_args(
        ["--crawl-name", "b", "--crawl-no-on", "--crawl-spot", "p", "--crawl-spots", "q"]
    )
    got = tree.resolve(args, {"CRYSTALLINE_CRAWL_DEPTH": "7"}, cfg)
    assert got.tables["crawl"] == _Outer(
        name="b", inner=_Inner(depth=7, on=False), spots=("p", "q"), where=Path("/x")
    )
    assert got.sources[("crawl", "where")] == settings_tree.Source("file", str(cfg))
    parser.print_help()
    text = " ".join(capsys.readouterr().out.split())
    assert "--crawl-depth INT how deep (default: 2)" in text and "{a,b}" in text
    with pytest.raises(UsageError, match="must be one of a, b, got 'c'"):
        tree.resolve(parser.parse_args(["--crawl-name", "c"]), {})

    @dataclass(frozen=True)
    class Odd:
        weights: dict[str, int] = field(default_factory=dict)

    with pytest.raises(TypeError, match=r"Odd\.weights: a dict\[str, int\] cannot be a setting"):
        settings_tree.table("train", Odd)


def _settings_classes() -> list[type]:
    """Every class a tree of the project reads its keys from: each table's and the dataclasses
    nested in it (the ones settings_tree collects keys from, as it does)."""
    from crystalline.crawler import command as crawl_command
    from crystalline.ingest import command as ingest_command
    from crystalline.workers import train_config

    trees = [
        config.settings_tree(),
        crawl_command.settings_tree(),
        ingest_command.settings_tree(ingest_command.INGEST_LEAVES_OUT),
        ingest_command.settings_tree(ingest_command.EXTRACT_LEAVES_OUT),
        train_config.settings_tree(),
    ]
    found: list[type] = []
    todo = [tab.cls for tree in trees for tab in tree.tables.values()]
    while todo:
        cls = todo.pop()
        if cls in found:
            continue
        found.append(cls)
        hints = typing.get_type_hints(cls)
        nested = (hints[f.name] for f in fields(cls) if "parse" not in f.metadata)
        todo += [hint for hint in nested if is_dataclass(hint)]
    return found


def test_the_help_texts_read_by_the_line_scan_are_inspect_getsources(monkeypatch: pytest.MonkeyPatch) -> None:
    """settings_tree._class_lines finds a class's end by a scan of its module's lines (a class
    ends at the first line that is not indented); the help comments it gives every settings
    class are the ones inspect.getsource's parse gives (review R16 R4): a line at column 0 inside
    a class would end it early and lose the later fields' help without a word."""
    classes = _settings_classes()
    scanned = {cls: settings_tree._comments(cls) for cls in classes}
    monkeypatch.setattr(settings_tree, "_class_lines", lambda cls: inspect.getsource(cls).splitlines())
    parsed = {cls: settings_tree._comments(cls) for cls in classes}
    assert {"DaemonConfig", "CrawlSettings", "IngestSettings", "TrainConfig"} <= {c.__name__ for c in classes}
    assert len(classes) > 4  # the nested ones too (ExtractLimits, FilterSettings)
    for cls in classes:
        assert scanned[cls] == parsed[cls], cls.__qualname__
    assert sum(len(c) for c in parsed.values()) > 20  # the comparison is of real help texts


def test_only_extract_and_ingest_take_the_daemons_keys_from_a_shared_file(tmp_path: Path) -> None:
    """extract and ingest check, then leave unused, the [ingest] keys they share with the daemon's
    file or environment (not flags); a misspelt key is refused and its hint names only the keys
    the command uses (R19 1, 11b); run's own exclusion, [crawl] data-dir, stays refused."""
    from crystalline.ingest import command as ingest_command

    extract = ingest_command.settings_tree(ingest_command.EXTRACT_LEAVES_OUT)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[ingest]\ndatabase = "postgresql:///x"\ndatabase-timeout-s = 15\n', encoding="utf-8")
    resolved = extract.resolve(argparse.Namespace(), {"CRYSTALLINE_INGEST_DROP_SETTLE_S": "3"}, cfg)
    assert "database" not in resolved.report()["ingest"]  # unused, so not reported
    cfg.write_text('[ingest]\ndatabse = "postgresql:///x"\n', encoding="utf-8")
    with pytest.raises(UsageError) as err:
        extract.resolve(argparse.Namespace(), {}, cfg)
    said = str(err.value)
    assert said.startswith(f"{cfg}: unknown key [ingest] databse (keys: "), said
    assert "database" not in said.replace("databse", ""), said  # extract ignores database
    cfg.write_text("[ingest]\nocr-timeot-s = 3\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"\[ingest\] ocr-timeot-s \(did you mean ocr-timeout-s\?"):
        extract.resolve(argparse.Namespace(), {}, cfg)
    cfg.write_text('[crawl]\ndata-dir = "/srv/frontier"\n', encoding="utf-8")
    with pytest.raises(UsageError, match=r"unknown key \[crawl\] data-dir \(did you mean warc-dir"):
        config.resolve(parse(["--config", str(cfg)]), {})
