"""Tests for the `crystalline` command line: help, one-line errors, train/generate/vocab-build/tokenize,
signals and resume."""

from __future__ import annotations

import argparse
import json
import math
import re
import signal
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _wait import until

from crystalline import exit_status
from crystalline.daemon import cli
from crystalline.tokens.tokenizer import load_tokenizer
from crystalline.workers.checkpoint import load_checkpoint, load_latest
from crystalline.workers.model import GPT
from crystalline.workers.model_config import ModelConfig
from crystalline.workers.sampling import sample
from crystalline.workers.train_config import TrainConfig, flag
from crystalline.workers.trainer import Trainer

TINY = {
    "embed_dim": 32, "num_layers": 2, "num_heads": 2, "seq_len": 16, "batch_size": 4,
    "learning_rate": 1e-2, "min_lr": 1e-3, "warmup_steps": 20, "eval_windows": 32,
}  # fmt: skip
TINY_ARGS = [arg for name, value in TINY.items() for arg in (f"--{flag(name)}", str(value))]
TINY_CONFIG = TrainConfig(**TINY)


def run_cli(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crystalline.daemon.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def nonempty_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def read_metrics(checkpoint_dir: Path) -> list[dict[str, Any]]:
    lines = (checkpoint_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def trained_dir(corpus_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint dir holding a 150-step tiny byte-level model (read-only for the tests)."""
    ckdir = tmp_path_factory.mktemp("cli-trained") / "ck"
    cfg = TrainConfig(**{**TINY_CONFIG.to_dict(), "max_steps": 150, "eval_interval": 50})
    Trainer([corpus_file], ckdir, cfg).run()
    return ckdir


# ---- help -------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_top_level_help_lists_subcommands(cli_env: dict[str, str]) -> None:
    proc = run_cli(["--help"], cli_env)
    assert proc.returncode == 0
    for word in ("train", "generate", "vocab-build", "tokenize", "--debug", "--version"):
        assert word in proc.stdout


ENGINES = ("aiohttp", "numpy", "zmq")  # the crawler's, the trainer's, the daemon's


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("args", "status", "said"),
    [
        (["--help"], 0, "vocab-build"),
        (["run", "--bogus"], 64, "unrecognized arguments: --bogus"),
        (["crawl", "--help"], 0, "--start-url"),
        (["train", "--help"], 0, "--embed-dim"),
        (["config", "--command", "crawl", "--help"], 0, "--max-pages"),
        (["train", "PATH", "--checkpoint-dir", "DIR", "--embed-dim", "-1"], 64, "embed-dim must be at least"),
        (["run", "--state-dir", "DIR", "--embed-dim", "30", "--num-heads", "4"], 64, "must divide embed-dim"),
        (["crawl", "--start-url", "http://example.com/", "--max-pages", "-3"], 64, "max-pages"),
    ],
    ids=["help", "run-usage", "crawl-help", "train-help", "config-help", "train-setting", "run-setting",
         "crawl-setting"],
)  # fmt: skip
def test_parsers_help_usage_and_setting_errors_import_no_engine(
    tmp_path: Path, cli_env: dict[str, str], args: list[str], status: int, said: str
) -> None:
    # building the parsers and checking the settings need the settings' dataclasses alone: the
    # crawler (aiohttp), the model and optimizer (numpy) and the daemon's links (ZeroMQ) are
    # imported when a command runs (they cost 0.45 s of CPU to every --help and usage error)
    args = [{"PATH": str(tmp_path / "corpus.txt"), "DIR": str(tmp_path / "d")}.get(a, a) for a in args]
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "crystalline.daemon.cli", *args],
        env=cli_env, capture_output=True, text=True, timeout=50, check=False,
    )  # fmt: skip
    trace = [line for line in proc.stderr.splitlines() if line.startswith("import time:")]
    imported = {line.split("|")[2].strip() for line in trace}
    assert "crystalline.exit_status" in imported  # the trace is the command's own
    assert proc.returncode == status, proc.stderr[-2000:]
    told = proc.stdout if status == 0 else "\n".join(
        line for line in proc.stderr.splitlines() if not line.startswith("import time:")
    )  # fmt: skip
    assert said in told
    assert sorted(m for m in imported if m.split(".")[0] in ENGINES) == []
    assert not (tmp_path / "d").exists()  # a refused setting makes no directory


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("command", "options"),
    [
        (
            "train",
            ["--checkpoint-dir", "--config", "--resume", *(f"--{flag(f.name)}" for f in fields(TrainConfig))],
        ),
        ("generate", ["--checkpoint-dir", "--prompt", "--num-tokens", "--temperature", "--top-k", "--seed"]),
        ("vocab-build", ["--vocab-size", "--out"]),
        ("tokenize", ["--tokenizer", "--stats"]),
    ],
)
def test_subcommand_help_mentions_options(cli_env: dict[str, str], command: str, options: list[str]) -> None:
    proc = run_cli([command, "--help"], cli_env)
    assert proc.returncode == 0
    assert proc.stderr == ""
    for option in options:
        assert option in proc.stdout, option


# ---- one-line errors --------------------------------------------------------------------------


def _error_case(name: str, tmp: Path, corpus: Path) -> tuple[list[str], str]:
    """(argv, text the error line must contain) for each user error; creates the files it needs."""
    ck = str(tmp / "ck")
    train = ["train", str(corpus), "--checkpoint-dir", ck, *TINY_ARGS, "--max-steps", "3"]
    if name == "missing-file":
        return ["train", str(tmp / "nope.txt"), "--checkpoint-dir", ck, *TINY_ARGS], "no such file"
    if name == "empty-file":
        (tmp / "empty.txt").write_bytes(b"")
        return ["train", str(tmp / "empty.txt"), "--checkpoint-dir", ck, *TINY_ARGS], "empty file"
    if name == "binary-file":
        (tmp / "bin.txt").write_bytes(b"some text\x00\x01\x02 more")
        return ["train", str(tmp / "bin.txt"), "--checkpoint-dir", ck, *TINY_ARGS], "not a UTF-8 text file"
    if name == "heads-not-dividing":
        return [*train, "--embed-dim", "30", "--num-heads", "4"], "num-heads"
    if name == "max-steps-0":
        return [*train, "--max-steps", "0"], "max-steps"
    if name == "workers-0":
        return [*train, "--workers", "0"], "workers"
    if name == "missing-tokenizer":
        return [*train, "--tokenizer", str(tmp / "tok.json")], "tok.json"
    if name == "resume-empty-dir":
        (tmp / "ck").mkdir()
        return [*train, "--resume"], "no checkpoint"
    if name == "generate-empty-dir":
        (tmp / "ck").mkdir()
        return ["generate", "--checkpoint-dir", ck, "-n", "5"], "no checkpoint"
    if name == "generate-missing-dir":
        return ["generate", "--checkpoint-dir", ck, "-n", "5"], "no checkpoint"
    if name == "malformed-toml":
        (tmp / "bad.toml").write_text("max_steps = [\nembed_dim = \n", encoding="utf-8")
        return [*train, "--config", str(tmp / "bad.toml")], "bad.toml"
    if name == "unknown-toml-key":
        (tmp / "unk.toml").write_text("[train]\nmax_steps = 3\nbogus_key = 1\n", encoding="utf-8")
        return [*train, "--config", str(tmp / "unk.toml")], "bogus-key"
    if name == "wrong-toml-type":
        (tmp / "type.toml").write_text('[train]\nembed_dim = "big"\n', encoding="utf-8")
        return [*train, "--config", str(tmp / "type.toml")], "embed-dim"
    if name == "missing-config":
        return [*train, "--config", str(tmp / "none.toml")], "none.toml"
    if name == "vocab-size-too-small":
        return ["vocab-build", str(corpus), "--vocab-size", "10", "--out", str(tmp / "t.json")], "vocab_size"
    if name == "tokenize-missing-file":
        return ["tokenize", str(tmp / "nope.txt")], "no such file"
    raise AssertionError(name)


ERROR_CASES = [
    "missing-file",
    "empty-file",
    "binary-file",
    "heads-not-dividing",
    "max-steps-0",
    "workers-0",
    "missing-tokenizer",
    "resume-empty-dir",
    "generate-empty-dir",
    "generate-missing-dir",
    "malformed-toml",
    "unknown-toml-key",
    "wrong-toml-type",
    "missing-config",
    "vocab-size-too-small",
    "tokenize-missing-file",
]


# a bad setting (a value out of range, an unknown key, a wrong type) exits USAGE, as a bad
# command line does; a file that cannot be read is an error like any other (1)
SETTING_ERRORS = {"heads-not-dividing", "max-steps-0", "workers-0", "unknown-toml-key", "wrong-toml-type"}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ERROR_CASES)
def test_user_error_is_one_line_exit_1_or_usage(
    tmp_path: Path, corpus_file: Path, cli_env: dict[str, str], case: str
) -> None:
    argv, expected = _error_case(case, tmp_path, corpus_file)
    proc = run_cli(argv, cli_env)
    assert proc.returncode == (exit_status.USAGE if case in SETTING_ERRORS else 1)
    assert "Traceback" not in proc.stderr
    lines = nonempty_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("crystalline: error: ")
    assert expected in lines[0]
    assert proc.stdout == ""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["missing-file", "malformed-toml", "generate-empty-dir"])
def test_debug_shows_traceback(tmp_path: Path, corpus_file: Path, cli_env: dict[str, str], case: str) -> None:
    argv, expected = _error_case(case, tmp_path, corpus_file)
    proc = run_cli(["--debug", *argv], cli_env)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr
    assert expected in proc.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("option", "value"), [("--weight-decay", "nan"), ("--grad-clip", "nan"), ("--weight-decay", "inf")]
)
def test_non_finite_optimizer_option_is_rejected_up_front(
    tmp_path: Path, corpus_file: Path, cli_env: dict[str, str], option: str, value: str
) -> None:
    ck = tmp_path / "ck"
    proc = run_cli(
        [
            "train",
            str(corpus_file),
            "--checkpoint-dir",
            str(ck),
            *TINY_ARGS,
            "--max-steps",
            "3",
            option,
            value,
        ],
        cli_env,
    )
    lines = nonempty_lines(proc.stderr)
    assert proc.returncode == exit_status.USAGE
    assert len(lines) == 1
    assert option.lstrip("-") in lines[0]
    assert not ck.exists()


@pytest.mark.timeout(60)
def test_negative_seed_error_names_the_option(
    tmp_path: Path, corpus_file: Path, cli_env: dict[str, str]
) -> None:
    proc = run_cli(
        [
            "train",
            str(corpus_file),
            "--checkpoint-dir",
            str(tmp_path / "ck"),
            *TINY_ARGS,
            "--max-steps",
            "3",
            "--seed",
            "-1",
        ],
        cli_env,
    )
    lines = nonempty_lines(proc.stderr)
    assert proc.returncode == exit_status.USAGE
    assert len(lines) == 1
    assert "[train] seed must not be negative, got -1 (set by flag --seed)" in lines[0]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-p", ""], "prompt"),
        (["-n", "-1"], "number of tokens"),
        (["--temperature", "-1"], "temperature"),
        (["--top-k", "-1"], "top-k"),
    ],
    ids=["empty-prompt", "negative-n", "negative-temperature", "negative-top-k"],
)
def test_generate_bad_argument_is_one_line_error(
    trained_dir: Path, cli_env: dict[str, str], args: list[str], expected: str
) -> None:
    proc = run_cli(["generate", "--checkpoint-dir", str(trained_dir), *args], cli_env)
    assert proc.returncode == 1
    lines = nonempty_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert expected in lines[0]
    assert proc.stdout == ""


# ---- train ------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["train-table-dashes", "top-level-underscores"])
def test_train_config_file_with_cli_override(
    tmp_path: Path, corpus_file: Path, capsys: pytest.CaptureFixture[str], layout: str
) -> None:
    file_values = {
        "embed_dim": 32,
        "num_layers": 2,
        "num_heads": 2,
        "seq_len": 16,
        "batch_size": 4,
        "max_steps": 50,
        "eval_interval": 2,
        "seed": 7,
    }
    if layout == "train-table-dashes":
        body = "[train]\n" + "".join(f"{flag(k)} = {v}\n" for k, v in file_values.items())
    else:
        body = "".join(f"{k} = {v}\n" for k, v in file_values.items())
    config = tmp_path / "run.toml"
    config.write_text(body + 'init = "normal"\nlearning_rate = 0.005\n', encoding="utf-8")
    ck = tmp_path / "ck"
    rc = cli.main(
        [
            "train",
            str(corpus_file),
            "--checkpoint-dir",
            str(ck),
            "--config",
            str(config),
            "--max-steps",
            "4",
            "--seed",
            "11",
        ]
    )
    assert rc == 0
    start = read_metrics(ck)[0]["config"]
    assert start["max_steps"] == 4  # CLI wins
    assert start["seed"] == 11  # CLI wins
    assert start["embed_dim"] == 32  # from the file
    assert start["eval_interval"] == 2  # from the file
    assert start["learning_rate"] == 0.005  # from the file
    assert start["weight_decay"] == TrainConfig().weight_decay  # default
    assert re.match(r"steps 4  tokens 256 ", capsys.readouterr().out)


# ---- generate ---------------------------------------------------------------------------------


def _generate(capsys: pytest.CaptureFixture[str], ckdir: Path, *args: str) -> str:
    assert cli.main(["generate", "--checkpoint-dir", str(ckdir), *args]) == 0
    return capsys.readouterr().out


def test_generate_prints_prompt_then_continuation(
    trained_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompt = "The cat"
    out = _generate(capsys, trained_dir, "-p", prompt, "-n", "30", "--temperature", "0")
    ckpt = load_latest(trained_dir)
    assert ckpt is not None
    tok = load_tokenizer("bytes")
    model = GPT(ModelConfig(**ckpt.state["model"]))
    ids = sample(model, ckpt.arrays["params"], tok.encode(prompt), 30, temperature=0.0)
    assert out == prompt + tok.decode(ids) + "\n"
    assert len(out) == len(prompt) + 30 + 1  # ASCII corpus: one char per byte token


def test_generate_same_seed_is_repeatable(trained_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ("-p", "The ", "-n", "60", "--seed", "5", "--temperature", "1.0")
    assert _generate(capsys, trained_dir, *args) == _generate(capsys, trained_dir, *args)


def test_generate_different_seeds_differ(trained_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ("-p", "The ", "-n", "60", "--temperature", "1.0")
    assert _generate(capsys, trained_dir, *base, "--seed", "1") != _generate(
        capsys, trained_dir, *base, "--seed", "2"
    )


def test_generate_temperature_zero_is_deterministic_without_seed(
    trained_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("-p", "A dog", "-n", "40", "--temperature", "0")
    assert _generate(capsys, trained_dir, *args) == _generate(capsys, trained_dir, *args)


def test_generate_zero_tokens_prints_just_the_prompt(
    trained_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _generate(capsys, trained_dir, "-p", "Hello there", "-n", "0") == "Hello there\n"


def test_generate_top_k_one_equals_greedy(trained_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    greedy = _generate(capsys, trained_dir, "-p", "The ", "-n", "30", "--temperature", "0")
    top1 = _generate(capsys, trained_dir, "-p", "The ", "-n", "30", "--top-k", "1", "--seed", "3")
    assert top1 == greedy


def test_generate_crops_a_prompt_longer_than_the_context(
    trained_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompt = "The cat sat on the mat and the dog ran to the park. "  # > seq-len 16
    out = _generate(capsys, trained_dir, "-p", prompt, "-n", "10", "--temperature", "0")
    assert out.startswith(prompt)
    assert len(out) == len(prompt) + 10 + 1


def test_generate_from_bpe_checkpoint(
    tmp_path: Path, corpus_file: Path, bpe_tokenizer_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ck = tmp_path / "ck"
    cfg = TrainConfig(**{**TINY_CONFIG.to_dict(), "tokenizer": str(bpe_tokenizer_file), "max_steps": 20})
    Trainer([corpus_file], ck, cfg).run()
    out = _generate(capsys, ck, "-p", "The cat", "-n", "8", "--temperature", "0")
    tok = load_tokenizer(str(bpe_tokenizer_file))
    ckpt = load_latest(ck)
    assert ckpt is not None
    model = GPT(ModelConfig(**ckpt.state["model"]))
    ids = sample(model, ckpt.arrays["params"], tok.encode("The cat"), 8, temperature=0.0)
    assert len(ids) == 8
    assert out == "The cat" + tok.decode(ids) + "\n"


# ---- vocab-build and tokenize -----------------------------------------------------------------


def test_vocab_build_writes_tokenizer_file(
    tmp_path: Path, corpus_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tok.json"
    assert cli.main(["vocab-build", str(corpus_file), "--vocab-size", "300", "--out", str(out)]) == 0
    tok = load_tokenizer(str(out))
    assert tok.kind == "bpe"
    assert 256 < tok.vocab_size <= 300
    assert str(out) in capsys.readouterr().out


def test_tokenize_stats_with_bpe_counts_fewer_tokens_than_bytes(
    corpus_file: Path, bpe_tokenizer_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["tokenize", str(corpus_file), "--tokenizer", str(bpe_tokenizer_file), "--stats"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(str(corpus_file))
    total = re.fullmatch(r"total\tchars (\d+)\ttokens (\d+)\tvocab (\d+)", lines[-1])
    assert total is not None, lines[-1]
    chars, tokens, vocab = map(int, total.groups())
    n_bytes = len(corpus_file.read_bytes())
    assert chars == n_bytes  # ASCII
    assert 0 < tokens < n_bytes
    assert vocab == load_tokenizer(str(bpe_tokenizer_file)).vocab_size


def test_tokenize_bytes_prints_utf8_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = "héllo wörld ✓\n"
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    assert cli.main(["tokenize", str(path), "--tokenizer", "bytes"]) == 0
    out = capsys.readouterr().out
    assert out == " ".join(str(b) for b in text.encode("utf-8")) + "\n"


# ---- signals, resume and refusing to overwrite ------------------------------------------------


def _wait_for_eval_past_step_0(ckdir: Path, proc: subprocess.Popen[str], limit: float = 30) -> None:
    metrics = ckdir / "metrics.jsonl"

    def past_step_0() -> bool:
        assert proc.poll() is None, "train exited before it was signalled"
        lines = metrics.read_text(encoding="utf-8").splitlines() if metrics.exists() else []
        return any(json.loads(x).get("step", 0) > 0 for x in lines[:-1])  # last line may be partial

    until(past_step_0, "train did not reach an eval past step 0", limit, 0.05)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_train_with_checkpoint_then_resume_continues(
    tmp_path: Path, corpus_file: Path, cli_env: dict[str, str], signum: int
) -> None:
    ck = tmp_path / "ck"
    argv = [
        sys.executable,
        "-m",
        "crystalline.daemon.cli",
        "train",
        str(corpus_file),
        "--checkpoint-dir",
        str(ck),
        *TINY_ARGS,
        "--eval-interval",
        "5",
        "--checkpoint-interval",
        "1000",
    ]
    proc = subprocess.Popen(
        [*argv, "--max-steps", "10000000"],
        env=cli_env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for_eval_past_step_0(ck, proc)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    summary = re.match(r"steps (\d+)  tokens (\d+) .* checkpoint (\S+)", stdout)
    assert summary is not None, stdout
    steps, tokens = int(summary.group(1)), int(summary.group(2))
    assert steps > 0
    assert tokens == steps * 4 * 16
    ckpt = load_checkpoint(Path(summary.group(3)))
    newest = load_latest(ck)
    assert newest is not None and newest.path == ckpt.path
    assert ckpt.step == ckpt.state["step"] == steps  # the last completed step

    proc2 = subprocess.run(
        [*argv, "--max-steps", str(steps + 7), "--resume"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc2.returncode == 0, proc2.stderr
    assert proc2.stdout.startswith(f"steps {steps + 7}  tokens {(steps + 7) * 64} ")
    starts = [r for r in read_metrics(ck) if r["event"] == "start"]
    assert [s["resumed_from"] for s in starts] == [0, steps]
    final = load_latest(ck)
    assert final is not None and final.step == steps + 7


@pytest.mark.timeout(60)
def test_train_refuses_existing_checkpoints_without_resume(
    tmp_path: Path, corpus_file: Path, cli_env: dict[str, str]
) -> None:
    ck = tmp_path / "ck"
    Trainer([corpus_file], ck, TrainConfig(**{**TINY_CONFIG.to_dict(), "max_steps": 3})).run()
    before = snapshot(ck)
    proc = run_cli(
        ["train", str(corpus_file), "--checkpoint-dir", str(ck), *TINY_ARGS, "--max-steps", "3"], cli_env
    )
    assert proc.returncode == 1
    lines = nonempty_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert "--resume" in lines[0]
    assert snapshot(ck) == before


def test_train_in_process_prints_summary(
    tmp_path: Path, corpus_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ck = tmp_path / "ck"
    assert (
        cli.main(
            [
                "train",
                str(corpus_file),
                "--checkpoint-dir",
                str(ck),
                *TINY_ARGS,
                "--max-steps",
                "6",
                "--eval-interval",
                "3",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    m = re.fullmatch(
        r"steps 6  tokens 384  train loss (\S+) \((\S+) bpb\)  val loss (\S+) \((\S+) bpb, perplexity (\S+)\)"
        r"  checkpoint (\S+)\n",
        out,
    )
    assert m is not None, out
    train_loss, train_bpb, val_loss, val_bpb, perplexity = (float(m.group(i)) for i in range(1, 6))
    assert math.isfinite(train_loss) and math.isfinite(val_loss)
    # the byte tokenizer: one token is one byte, so bits per byte is the loss in bits
    assert train_bpb == pytest.approx(train_loss / math.log(2), abs=1e-3)
    assert val_bpb == pytest.approx(val_loss / math.log(2), abs=1e-3)
    assert perplexity == pytest.approx(math.exp(val_loss), rel=1e-3)
    assert Path(m.group(6)) == ck / "step-00000006"
    assert np.isfinite(load_checkpoint(ck / "step-00000006").arrays["params"]).all()


@pytest.mark.timeout(120)
def test_train_with_worker_processes_matches_one_process(
    tmp_path: Path, corpus_file: Path, cli_env: dict[str, str]
) -> None:
    """--workers changes speed, never the math: same checkpoint to float32 round-off."""
    results = {}
    for workers in ("1", "3"):
        ck = tmp_path / f"ck{workers}"
        argv = ["train", str(corpus_file), "--checkpoint-dir", str(ck), *TINY_ARGS, "--max-steps", "8"]
        proc = run_cli([*argv, "--workers", workers], cli_env, timeout=100)
        assert proc.returncode == 0, proc.stderr
        ckpt = load_latest(ck)
        assert ckpt is not None and ckpt.step == 8
        results[workers] = ckpt.arrays
    for name in ("params", "adam_m", "adam_v"):
        np.testing.assert_allclose(results["3"][name], results["1"][name], rtol=1e-4, atol=1e-5)


# every entry point and every subcommand: a bad command line exits 64 (USAGE), not argparse's 2,
# which `crystalline status` keeps for "degraded"
USAGE_CASES = {
    "status": ["crystalline.daemon.cli", "status", "--bogus"],
    "dashboard": ["crystalline.daemon.cli", "dashboard", "--bogus"],
    "train": ["crystalline.daemon.cli", "train"],
    "run": ["crystalline.daemon.cli", "run", "--bogus"],
    "crawl": ["crystalline.daemon.cli", "crawl", "--max-pages", "many"],
    "ingest": ["crystalline.daemon.cli", "ingest"],
    "no-command": ["crystalline.daemon.cli"],
    "crawl-alone": ["crystalline.crawler.command", "--bogus"],
    "ingest-alone": ["crystalline.ingest.command", "extract"],
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(USAGE_CASES))
def test_usage_error_exits_64_with_one_error_line(cli_env: dict[str, str], case: str) -> None:
    module, *argv = USAGE_CASES[case]
    cmd = [sys.executable, "-m", module, *argv]
    proc = subprocess.run(cmd, env=cli_env, capture_output=True, text=True, timeout=50, check=False)
    assert proc.returncode == exit_status.USAGE, proc.stderr
    errors = [line for line in nonempty_lines(proc.stderr) if ": error: " in line]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("module", ["crystalline.daemon.cli", "crystalline.crawler.command"])
@pytest.mark.parametrize(
    ("extra", "status", "expected"),
    [
        ([], exit_status.ERROR, "cannot crawl http://127.0.0.1:1/: private or loopback address"),
        (["--max-pages", "-3"], exit_status.USAGE, "max-depth non-negative (set by flag --max-pages)"),
    ],
    ids=["crawl-error", "bad-setting"],
)
def test_crawl_error_is_one_line_whichever_entry(
    tmp_path: Path, cli_env: dict[str, str], module: str, extra: list[str], status: int, expected: str
) -> None:
    argv = ["crawl"] if module.endswith("cli") else []
    argv += ["--start-url", "http://127.0.0.1:1/", "--data-dir", str(tmp_path), *extra]
    cmd = [sys.executable, "-m", module, *argv]
    proc = subprocess.run(cmd, env=cli_env, capture_output=True, text=True, timeout=50, check=False)
    assert proc.returncode == status, proc.stderr
    lines = nonempty_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("crystalline: error: "), proc.stderr
    assert expected in lines[0]


def test_a_bug_keeps_its_traceback_and_exits_70(capsys: pytest.CaptureFixture[str]) -> None:
    def buggy(_args: argparse.Namespace) -> int:
        raise KeyError("missing")  # as a lookup the code got wrong would

    assert exit_status.run_command(buggy, argparse.Namespace(debug=False)) == exit_status.SOFTWARE
    err = capsys.readouterr().err
    assert "Traceback" in err and err.splitlines()[-1] == "crystalline: internal error: KeyError: 'missing'"


def test_debug_raises_a_user_error_and_no_debug_makes_it_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    def bad_value(_args: argparse.Namespace) -> int:
        raise ValueError("--lr must be\npositive")

    with pytest.raises(ValueError, match="positive"):
        exit_status.run_command(bad_value, argparse.Namespace(debug=True))
    assert exit_status.run_command(bad_value, argparse.Namespace(debug=False)) == exit_status.ERROR
    assert capsys.readouterr().err == "crystalline: error: --lr must be positive\n"


@pytest.mark.timeout(60)
def test_a_runtime_directory_that_cannot_be_created_is_named(tmp_path: Path, cli_env: dict[str, str]) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    proc = run_cli(["run", "--state-dir", str(afile / "state"), "--http", "off"], cli_env)
    assert proc.returncode == 1
    # before: 'crystalline: error: [Errno 20] Not a directory: '.../afile/state/run''
    said = f"crystalline: error: cannot create the runtime directory {afile}/state/run: Not a directory\n"
    assert proc.stderr == said
