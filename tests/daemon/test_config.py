"""Daemon configuration: defaults < file < environment < command line."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from crystalline.daemon import config


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return parser.parse_args(argv)


def test_precedence_cli_over_env_over_file_over_defaults(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[daemon]\ncrawl-delay = 2.5\nseed-url = ["https://a.example/"]\n'
        "[train]\nembed-dim = 64\nnum-heads = 2\nbatch-size = 24\n"
    )
    env = {"CRYSTALLINE_EMBED_DIM": "96", "CRYSTALLINE_CRAWL_DELAY": "3"}
    s = config.resolve(parse(["--config", str(cfg), "--embed-dim", "32", "--no-crawl"]), env)
    assert s.train.embed_dim == 32  # CLI beats env and file
    assert s.daemon.crawl_delay == 3.0  # env beats file
    assert s.train.batch_size == 24  # file beats defaults
    assert s.daemon.seed_url == ("https://a.example/",)
    assert s.daemon.no_crawl is True
    assert s.train.num_layers == 4  # default
    assert s.train.workers == 12  # the daemon's default: node zero and 12 workers
    assert config.resolve(parse([]), {}).train.batch_size == 48  # 4 sequences per worker


def test_config_file_from_the_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("workers = 3\n")
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


def test_repeatable_and_comma_separated_lists() -> None:
    s = config.resolve(parse(["--seed-url", "https://a.example/", "--seed-url", "https://b.example/"]), {})
    assert s.daemon.seed_url == ("https://a.example/", "https://b.example/")
    s = config.resolve(parse([]), {"CRYSTALLINE_ALLOWED_DOMAIN": "a.example, b.example"})
    assert s.daemon.allowed_domain == ("a.example", "b.example")


@pytest.mark.parametrize(
    "argv, env, message",
    [
        (["--embed-dim", "big"], {}, "embed-dim"),
        ([], {"CRYSTALLINE_NO_SUCH_KEY": "1"}, "CRYSTALLINE_NO_SUCH_KEY"),
        ([], {"CRYSTALLINE_NO_CRAWL": "maybe"}, "no-crawl"),
        (["--num-heads", "3"], {}, "num-heads"),
        (["--socket-mode", "rw"], {}, "invalid literal"),
    ],
)
def test_bad_values_are_one_line_errors(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config.resolve(parse(argv), env)


def test_unknown_key_in_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[daemon]\nbogus = 1\n")
    with pytest.raises(ValueError, match="bogus"):
        config.resolve(parse(["--config", str(cfg)]), {})


def test_example_file_documents_http_and_its_off_switch(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "systemd" / "crystalline.toml"
    text = example.read_text(encoding="utf-8")
    assert config.resolve(parse(["--config", str(example)]), {}).daemon.http == "127.0.0.1:8470"
    for line, bind in (('# http = "127.0.0.1:8470"', ("127.0.0.1", 8470)), ('# http = "off"', None)):
        assert line in text  # the commented default, and how to turn it off
        cfg = tmp_path / "c.toml"
        cfg.write_text(text.replace(line, line[2:]), encoding="utf-8")
        assert config.parse_bind(config.resolve(parse(["--config", str(cfg)]), {}).daemon.http) == bind
