"""The `crystalline` command: one argparse CLI with a subcommand per task.

Errors reach the user as one line on stderr and a non-zero exit; ``--debug`` shows the
traceback as well. Every subcommand goes through ``crystalline.exit_status`` (its statuses
are tabled in the README).

Imports are per subcommand: `crystalline status` builds a parser with only its own subcommand
and imports the socket client and nothing of numpy, ZeroMQ, aiohttp, the crawler or ingest
(issue 19: with those it took 2-11 s on a busy machine, against 1-90 ms for the socket itself).
The others' parsers are built from the settings' dataclasses alone (workers/train_config.py,
model_config.py, optimizer_config.py, crawler/settings.py, ...): ``--help``, a usage error and a
bad setting import no aiohttp, numpy or ZeroMQ (0.55 -> 0.15 s of CPU); each command imports its
engine when it runs, after its settings are checked.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from crystalline import __version__
from crystalline.exit_status import CommandParser, UsageError
from crystalline.exit_status import main as run_main

if TYPE_CHECKING:
    from ..settings_tree import Tree

log = logging.getLogger("crystalline")


def _status_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from . import status_command

    status_command.add_parser(sub)


def _ctl_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from . import ctl_command

    ctl_command.add_parser(sub)


def _dashboard_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from . import dashboard_command

    dashboard_command.add_parser(sub)


def _ingest_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from ..ingest import command as ingest_command

    ingest_command.add_parsers(sub)


# subcommands whose parser needs nothing of the others: main builds (and imports) only theirs
# when one is asked for (extract and ingest skip the crawler's aiohttp and the trainer's
# modules: 0.4 s of a `crystalline extract` on one core; and the status socket client's,
# which a spawned pool worker would import again with this module)
LIGHT_COMMANDS: dict[str, Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = {
    "status": _status_parser,
    "dashboard": _dashboard_parser,
    "ctl": _ctl_parser,
    "extract": _ingest_parsers,
    "ingest": _ingest_parsers,
}


def cmd_train(args: argparse.Namespace) -> int:
    from ..workers.train_config import settings_tree

    config = settings_tree().resolve(args, os.environ, args.config).tables["train"]
    # the trainer (numpy, ZeroMQ, tokenizers) once the settings hold: a bad one is told without it
    from ..workers.bits_per_byte import perplexity
    from ..workers.trainer import Trainer, progress_stream

    trainer = Trainer(args.paths, args.checkpoint_dir, config, resume=args.resume)

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        # record only; the loop finishes the step and checkpoints
        trainer.stop_requested = True
        log.warning("signal %d: stopping after this step", signum)

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = trainer.run(progress=progress_stream())
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    print(
        f"steps {result.steps}  tokens {result.tokens}  train loss {result.train_loss:.4f} "
        f"({result.train_bpb:.4f} bpb)  val loss {result.val_loss:.4f} ({result.val_bpb:.4f} bpb, "
        f"perplexity {perplexity(result.val_loss):.2f})  checkpoint {result.checkpoint}"
        + ("  (target reached)" if result.reached_target else "")
    )
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from ..tokens.tokenizer import tokenizer_from_json
    from ..workers.checkpoint import load_latest
    from ..workers.model import GPT
    from ..workers.model_config import ModelConfig
    from ..workers.sampling import sample

    ckpt = load_latest(args.checkpoint_dir)
    if ckpt is None:
        raise ValueError(f"{args.checkpoint_dir}: no checkpoint found")
    tokenizer = tokenizer_from_json(ckpt.tokenizer_json)
    model = GPT(ModelConfig(**ckpt.state["model"]))
    if model.config.vocab_size != tokenizer.vocab_size:
        raise ValueError(
            f"{ckpt.path}: model vocab {model.config.vocab_size} != tokenizer vocab {tokenizer.vocab_size}"
        )
    prompt = tokenizer.encode(args.prompt)
    served = ckpt.arrays.get("ema", ckpt.arrays["params"])  # the moving average, when the run kept one
    ids = sample(model, served, prompt, args.num_tokens, args.temperature, args.top_k, args.seed)
    sys.stdout.write(args.prompt + tokenizer.decode(ids) + "\n")
    return 0


def cmd_vocab_build(args: argparse.Namespace) -> int:
    from ..tokens.tokenizer import save_tokenizer, train_bpe

    tok = train_bpe(args.data, args.vocab_size)
    save_tokenizer(tok, args.out)
    print(f"wrote {args.out}: byte-level BPE, vocab {tok.vocab_size}")
    return 0


def cmd_tokenize(args: argparse.Namespace) -> int:
    from ..tokens.tokenizer import iter_text_files, load_tokenizer, read_text_file

    tok = load_tokenizer(args.tokenizer)
    total_chars = total_tokens = 0
    for path in iter_text_files(args.files):
        text = read_text_file(path)
        ids = tok.encode(text)
        if args.stats:
            total_chars += len(text)
            total_tokens += len(ids)
            ratio = len(text.encode("utf-8")) / max(len(ids), 1)
            print(f"{path}\tchars {len(text)}\ttokens {len(ids)}\tbytes/token {ratio:.2f}")
        else:
            print(" ".join(map(str, ids.tolist())))
    if args.stats:
        print(f"total\tchars {total_chars}\ttokens {total_tokens}\tvocab {tok.vocab_size}")
    return 0


# the commands whose settings `crystalline config --command NAME` prints (run's by default)
CONFIG_COMMANDS = ("run", "train", "crawl", "ingest", "extract")


def _settings_tree(command: str) -> Tree:
    """The settings tree ``command`` (one of CONFIG_COMMANDS) reads."""
    if command == "run":
        from . import config as daemon_config

        return daemon_config.settings_tree()
    if command == "train":
        from ..workers.train_config import settings_tree as train_settings

        return train_settings()
    if command == "crawl":
        from ..crawler import command as crawl_command

        return crawl_command.settings_tree()
    from ..ingest import command as ingest_command

    leaves_out = {"ingest": ingest_command.INGEST_LEAVES_OUT, "extract": ingest_command.EXTRACT_LEAVES_OUT}
    return ingest_command.settings_tree(leaves_out[command])


def cmd_config(args: argparse.Namespace) -> int:
    """Print the resolved settings of `crystalline run` (or of ``--command``'s) and where each
    value came from."""
    from . import config as daemon_config

    if args.config_command != args.config_flags_of:  # `--comm train`: the flags were run's
        raise UsageError("config: spell --command out in full: it chooses which flags follow")
    if args.config_command == "run":  # a state directory's checkpoint counts too
        resolved = daemon_config.resolve_tree(args)
    else:
        resolved = _settings_tree(args.config_command).resolve(args, os.environ, args.config)
    report = resolved.report()
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    for table_name, rows in report.items():
        print(f"[{table_name}]")
        for key, row in rows.items():
            source = f"{row['source']} {row['where']}".strip()
            print(f"{key} = {json.dumps(row['value'])}  # {source}")
        print()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from . import config as daemon_config

    settings = daemon_config.resolve(args)  # a bad setting is told before the daemon is imported
    from .supervisor import run_daemon

    return run_daemon(settings)


def build_parser(only: str | None = None, config_of: str = "run") -> argparse.ArgumentParser:
    """The whole command line, or with ``only`` one light subcommand (see LIGHT_COMMANDS);
    ``config`` takes the flags of ``config_of`` (its ``--command``)."""
    parser = CommandParser(
        prog="crystalline",
        description="A continuous-learning daemon and the tools around its numpy transformer.",
    )
    parser.add_argument("--version", action="version", version=f"crystalline {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if only is not None:
        LIGHT_COMMANDS[only](sub)
        return parser

    from ..crawler import command as crawl_command
    from ..ingest import command as ingest_command
    from ..settings_tree import add_config_flag
    from ..workers.train_config import settings_tree as train_settings
    from . import config as daemon_config

    p = sub.add_parser("train", help="train the model on text files", description="Train the model on "
                       "text files or folders of them, checkpointing into --checkpoint-dir.")  # fmt: skip
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="text files or folders")
    p.add_argument("--checkpoint-dir", type=Path, required=True, help="where checkpoints and metrics go")
    add_config_flag(p, "[train] table")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    train_settings().add_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("generate", help="sample a continuation from a checkpoint",
                       description="Print the prompt and its continuation.")  # fmt: skip
    p.add_argument("--checkpoint-dir", type=Path, required=True)
    p.add_argument("-p", "--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("-n", "--num-tokens", type=int, default=200, help="tokens to generate (default: 200)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy (default: 0.8)")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k most likely (default: all)")
    p.add_argument("--seed", type=int, default=None, help="seed for a repeatable sample")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("vocab-build", help="train a byte-level BPE tokenizer",
                       description="Train a byte-level BPE tokenizer on text files.")  # fmt: skip
    p.add_argument("data", nargs="+", type=Path, metavar="DATA", help="text files or folders")
    p.add_argument("--vocab-size", type=int, required=True, help="257..65536")
    p.add_argument("--out", type=Path, required=True, help="tokenizer file to write")
    p.set_defaults(func=cmd_vocab_build)

    p = sub.add_parser("tokenize", help="print token ids of text files",
                       description="Print the token ids of each file, one line per file.")  # fmt: skip
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--tokenizer", default="bytes", help="'bytes' or a tokenizer file (default: bytes)")
    p.add_argument("--stats", action="store_true", help="print counts instead of ids")
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser(
        "run",
        help="run the daemon (crawl, ingest, train, serve status)",
        description="Run the continuous-learning daemon. Every option is also a key of a TOML "
        "table (--config) and an environment variable CRYSTALLINE_<TABLE>_<KEY>; flags win over "
        "the environment, which wins over the file. `crystalline config` shows what is in effect.",
    )
    daemon_config.add_arguments(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "config",
        help="print the daemon's (or another command's) resolved settings and where each came from",
        description="Print the settings `crystalline run` (or the command --command names) would use "
        "with the same file, environment and flags, as TOML with the source of each value (default, "
        "command, preset, file, env, flag). The flags that follow are that command's.",
    )
    p.add_argument("--json", action="store_true", help='{"TABLE": {"KEY": {"value", "source", "where"}}}')
    p.add_argument("--command", dest="config_command", choices=CONFIG_COMMANDS, default="run",
                   help="whose settings (default: run)")  # fmt: skip
    config_of = config_of if config_of in CONFIG_COMMANDS else "run"  # a wrong name: argparse says so
    if config_of == "run":
        daemon_config.add_arguments(p)
    else:
        tree = _settings_tree(config_of)
        add_config_flag(p, " and ".join(f"[{name}]" for name in tree.tables) + " table")
        tree.add_flags(p)
    p.set_defaults(func=cmd_config, config_flags_of=config_of)

    _status_parser(sub)
    _ctl_parser(sub)
    _dashboard_parser(sub)
    crawl_command.add_parser(sub)
    ingest_command.add_parsers(sub)
    return parser


def _light_command(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` when it is a light one (the top-level options take no
    values, so the first word that is not an option is the subcommand)."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in LIGHT_COMMANDS else None


def _config_command(argv: Sequence[str]) -> str:
    """The command named by ``crystalline config --command NAME`` (``run`` when none): config
    takes that command's flags, so its parser is built for it."""
    words = list(argv)
    subcommand = next((i for i, a in enumerate(words) if not a.startswith("-")), None)
    if subcommand is None or words[subcommand] != "config":
        return "run"
    rest = words[subcommand + 1 :]
    for i, word in enumerate(rest):
        if word == "--command" and i + 1 < len(rest):
            return rest[i + 1]
        if word.startswith("--command="):
            return word.partition("=")[2]
    return "run"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_main(build_parser(only=_light_command(argv), config_of=_config_command(argv)), argv)


if __name__ == "__main__":
    sys.exit(main())
