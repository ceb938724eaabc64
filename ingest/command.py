"""The ``extract`` and ``ingest`` commands.

``crystalline extract [--json] FILE...`` prints the text extracted from each file (HTML, PDF,
images by OCR, plain text); with ``--json`` one line per file::

    {"path": "a.pdf", "kind": "pdf", "text": "...", "chars": 1234, "error": null, "language": "en",
     "language_score": 0.93, "verdicts": {"basic": "kept", "language": "kept", "c4": "kept",
     "gopher_quality": "kept", "gopher_repetition": "gopher_repetition: ..."},
     "edits": {"c4_policy": 1, "pii_email": 2}}

The text is as extracted; ``verdicts`` are what ingest's filters (same options as ``ingest``)
would decide, and ``edits`` the lines they would remove and the addresses they would replace.

A file that fails gets its ``error`` and the others are still done; the exit status is 1 if any
failed. ``crystalline ingest PATH... --data-dir DIR [--tokenizer T]`` ingests files and folders
once into the token store and registry of DIR and prints the counts (documents, tokens,
duplicates, failed, filtered); files are left where they are, and a rerun skips what is already
recorded. Exit statuses are every subcommand's (``crystalline.exit_status``): 1 for an error,
64 for a bad command line. The daemon wires :func:`add_parsers` into its CLI; ``python -m
crystalline.ingest.command`` runs these two commands alone.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from crystalline.documents import Document
from crystalline.documents import sql_text as readable  # as drop_folder's, without the registry

from ..exit_status import CommandParser
from ..exit_status import main as run_main
from ..settings_tree import Table, Tree, add_config_flag, table
from .file_read import NotRegular, read_named
from .pool import ExtractionPool, WorkResult, extract_in_process, usable_cpus
from .settings import IngestSettings


class Entry(NamedTuple):
    """A file to take: named, or found in a folder named; ``refused``: why it is not read, where
    listing its folder told already ("" otherwise: its read decides)."""

    path: Path
    refused: str = ""


def _files(paths: Sequence[str], strict: bool = True) -> list[Entry]:
    """Files named, plus every entry under folders named (:func:`_folder_entries`), in order. A
    missing path raises ValueError if ``strict``, else is kept (its read fails later); a named
    FIFO, device or socket is kept, and refused by its read (:func:`read_named`)."""
    out: list[Entry] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            _folder_entries(path, out)
        elif not strict or os.path.lexists(path):  # not a regular file: its read refuses it
            out.append(Entry(path))
        else:
            raise ValueError(f"{path}: no such file or directory")
    return out


def _folder_entries(folder: Path, out: list[Entry]) -> None:
    """Add every entry under ``folder`` but its sub-folders (walked) and hidden names (skipped,
    with what is under them), by name, depth first (the order of the sorted paths), with a stack
    of its own (a folder 1,500 deep ended the call in a RecursionError). Whatever is not a
    regular file is added as well, for its read to refuse in one line like a named one: a FIFO,
    socket or device, a symbolic link to one of those, to nothing or in a loop. A symbolic link
    to a folder is refused here (not followed: a link back up would never end), and so is a
    folder that cannot be listed."""
    stack = [iter(_listing(folder, out))]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                stack.append(iter(_listing(path, out)))
                continue
            if entry.is_symlink() and entry.is_dir():
                out.append(Entry(path, "not a regular file (symbolic link to a folder, not followed)"))
                continue
        except OSError:  # gone since listed, or no longer statable: its read says which
            pass
        out.append(Entry(path))


def _listing(folder: Path, out: list[Entry]) -> list[os.DirEntry[str]]:
    """The entries of ``folder`` by name; none, and its refusal added to ``out``, where it
    cannot be listed."""
    try:
        with os.scandir(folder) as listing:
            return sorted(listing, key=lambda e: e.name)
    except OSError as e:
        out.append(Entry(folder, f"cannot list the folder ({e.strerror})"))
        return []


def cmd_extract(args: argparse.Namespace) -> int:
    """Print the extracted text of each file, in the order given; exit 1 if any failed. A file is
    read when its turn comes (at most one body per worker is held, plus the one ``documents``
    yielded last, however many files), and its line printed as soon as the files before it are done."""
    entries = _files(args.files, strict=False)
    settings = _settings(args)
    limits = settings.limits
    config = settings.pool_config()
    errors: dict[int, str] = {}  # files not read: their error
    read: list[int] = []  # the file of each document read, in order

    def documents() -> Iterator[Document]:
        for i, (path, refused) in enumerate(entries):
            if refused:
                errors[i] = refused
                continue
            try:
                body, st = read_named(path, limits.max_bytes)
            except (NotRegular, OSError) as e:
                errors[i] = _unread(path, e)
                continue
            if st.st_size > limits.max_bytes or len(body) > limits.max_bytes:
                size = max(st.st_size, len(body))
                errors[i] = f"too large ({size} bytes > {limits.max_bytes})"
                continue
            read.append(i)
            yield Document(readable(os.path.realpath(path)), body, "", origin="cli")

    options = {"want_text": True, "apply_filters": False, "fingerprint": False}
    failed = printed = 0  # files failed, files printed
    with ExtractionPool(config) as pool:
        # one process asked for (the default) or one CPU: worker processes would only cost (their
        # start-up, a second import of everything, a round trip per file: 0.4-0.5 s of CPU on the
        # 124 dev-set pages, and under load each round trip waits for the scheduler twice); PDFs
        # and images still go to one worker there (extract_in_process: native decoders)
        outcomes = (
            extract_in_process(config, documents(), **options)
            if config.processes == 1 or usable_cpus() == 1
            else pool.map(documents(), in_order=True, **options)
        )
        for j, result in outcomes:
            for i in range(printed, read[j]):  # files not read before this one
                failed += _print_file(args.json, entries[i].path, None, errors[i])
            failed += _print_file(args.json, entries[read[j]].path, result, result.error)
            printed = read[j] + 1
    for i in range(printed, len(entries)):
        failed += _print_file(args.json, entries[i].path, None, errors[i])
    return 1 if failed else 0


def _unread(path: Path, error: NotRegular | OSError) -> str:
    """Why ``path`` was not read, in one line (:class:`NotRegular`'s reason, or the system's)."""
    if isinstance(error, NotRegular):
        return str(error)
    if os.path.islink(path):  # the link is there, what it names is not (or it loops)
        return f"cannot read: a broken symbolic link ({error.strerror})"
    return f"cannot read ({error.strerror})"


def _print_file(as_json: bool, path: Path, res: WorkResult | None, error: str) -> bool:
    """Print one file's text, its JSON line or its error (``res``: None for a file not read);
    whether it failed."""
    done = res if res is not None and not error else None
    if as_json:
        line = {
            "path": readable(str(path)),
            "kind": res.kind if res else "",
            "text": done.text if done else "",
            "chars": len(done.text) if done else 0,
            "error": error or None,
            "language": done.language if done else "",
            "language_score": done.language_score if done else 0.0,
            "verdicts": done.verdicts if done else {},
            "edits": done.edits if done else {},
        }
        print(json.dumps(line, ensure_ascii=False))
    elif error:
        print(f"{readable(str(path))}: {error}", file=sys.stderr)
    else:
        print(done.text if done else "")
    return bool(error)


def cmd_ingest(args: argparse.Namespace) -> int:
    """Ingest files and folders into the store of ``--data-dir``; print the counts."""
    from crystalline.tokens.tokenizer import load_tokenizer

    from .drop_folder import file_key_of
    from .ingestor import Ingestor, Submission, content_entry, refusal_key

    entries = _files(args.paths)
    tokenizer = load_tokenizer(args.tokenizer)
    settings = _settings(args)
    counts = dict.fromkeys(("documents", "tokens", "duplicates", "failed", "filtered", "skipped"), 0)
    with Ingestor(settings, Path(args.data_dir), tokenizer) as ingestor:
        batch: list[Submission] = []
        size = 0

        def flush() -> None:
            nonlocal size
            records = ingestor.process(batch)
            counts["skipped"] += len(batch) - len(records)
            for rec in records:
                key = {"done": "documents", "duplicate": "duplicates"}.get(rec.state, rec.state)
                counts[key] += 1
                counts["tokens"] += rec.tokens
            batch.clear()
            size = 0

        limit = settings.limits.max_bytes
        for path, refused in entries:
            # file-system bytes as os.fsdecode gives them: any name works; realpath, not resolve:
            # a link loop raises RuntimeError there (it ended `ingest` as an internal error)
            name = os.path.realpath(path)
            try:
                if refused:
                    raise NotRegular(refused)
                body, st = read_named(path, limit)
            except (NotRegular, OSError) as e:
                print(f"{readable(str(path))}: {_unread(path, e)}", file=sys.stderr)
                counts["failed"] += 1
                continue
            if st.st_size > limit or len(body) > limit:  # keyed by its identity on disk, as the drop folder
                reason = f"too large ({max(st.st_size, len(body))} bytes > {limit})"
                entry = refusal_key("file-refused", file_key_of(st), name)
                if ingestor.record_refusal(entry, readable(name), "cli", reason):
                    print(f"{readable(str(path))}: {reason}", file=sys.stderr)
                    counts["failed"] += 1
                else:
                    counts["skipped"] += 1
                continue
            doc = Document(readable(name), body, "", origin="cli")
            batch.append(Submission(content_entry("file", name, body), doc, lambda _rec: None))
            size += len(body)
            if len(batch) >= settings.batch_documents or size >= settings.batch_bytes:
                flush()
        if batch:
            flush()
    print(" ".join(f"{k}={v}" for k, v in counts.items()))
    return 0


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``extract`` and ``ingest`` subcommands (each sets ``func``) to a CLI."""
    p = subparsers.add_parser(
        "extract",
        help="print the text extracted from files (HTML, PDF, images, text)",
        description="Print the text extracted from each file; exit 1 if any file failed.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="files or folders to extract")
    p.add_argument("--json", action="store_true", help='one JSON line per file: {"path", "kind", "text", '
                   '"chars", "error", "language", "language_score", "verdicts", "edits"}')  # fmt: skip
    _add_settings(p, EXTRACT_LEAVES_OUT)
    p.set_defaults(func=cmd_extract)

    p = subparsers.add_parser(
        "ingest",
        help="ingest files into the token store once",
        description="Extract, deduplicate and tokenize files into the token store of --data-dir and print "
        "the counts. Files stay where they are; what is already recorded is skipped.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or folders to ingest")
    p.add_argument("--data-dir", required=True, help="directory of the registry and token store")
    p.add_argument("--tokenizer", default="bytes", help='"bytes" or a tokenizer file (default: bytes)')
    _add_settings(p, INGEST_LEAVES_OUT)
    p.set_defaults(func=cmd_ingest)


# the [ingest] keys each command leaves out: what only the daemon's drop folder and shards use,
# and for extract, which opens no database, the registry's. No flag; a file or the environment
# shared with the daemon may set them (checked, then unused)
INGEST_LEAVES_OUT = ("drop_settle_s",)
EXTRACT_LEAVES_OUT = ("drop_settle_s", "batch_documents", "batch_bytes", "database", "database_timeout_s")


def settings_tree(leaves_out: tuple[str, ...]) -> Tree:
    """The settings of `crystalline ingest` or `extract`: the [ingest] keys but ``leaves_out``."""
    return Tree({"ingest": _ingest_table()}, shared={"ingest": leaves_out})


@functools.cache
def _ingest_table() -> Table:
    """The [ingest] table, collected once (its help texts are read from the classes' source:
    5-8 ms, which building both subcommands' flags and resolving the settings paid three times)."""
    return table("ingest", IngestSettings)


def _add_settings(p: argparse.ArgumentParser, leaves_out: tuple[str, ...]) -> None:
    """``--config`` and one flag per [ingest] key the command uses (``leaves_out``: the others)."""
    add_config_flag(p, "[ingest] table")
    settings_tree(leaves_out).add_flags(p)
    p.set_defaults(ingest_leaves_out=leaves_out)


def _settings(args: argparse.Namespace) -> IngestSettings:
    """The [ingest] settings of the file, the environment and the flags."""
    tree = settings_tree(args.ingest_leaves_out)
    settings: IngestSettings = tree.resolve(args, os.environ, args.config).tables["ingest"]
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``extract`` or ``ingest`` alone (``python -m crystalline.ingest.command``), through
    the error path and exit statuses of every subcommand (``crystalline.exit_status``)."""
    parser = CommandParser(prog="crystalline", description="Text extraction and ingest.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parsers(sub)
    return run_main(parser, list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
