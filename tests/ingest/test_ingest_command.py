"""The extract and ingest commands, run as subprocesses the way a user runs them."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import _ingest_samples as samples
import pytest
from _extract_run import run_extract

from crystalline.ingest.file_read import read_at_most

SHIPPED_CONFIG = Path(__file__).resolve().parents[2] / "systemd" / "crystalline.toml"


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "crystalline.ingest.command", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=False)


@pytest.mark.timeout(150)
def test_extract_json_reports_bad_file_and_does_the_rest(tmp_path: Path, cli_env: dict[str, str]) -> None:
    (tmp_path / "a.html").write_text(samples.article_page(), encoding="utf-8")
    (tmp_path / "b.pdf").write_bytes(b"%PDF-1.4 truncated")
    (tmp_path / "c.txt").write_text("plain text", encoding="utf-8")
    files = [str(tmp_path / name) for name in ("a.html", "b.pdf", "c.txt")]
    proc = run(["extract", "--json", *files], cli_env)
    assert proc.returncode == 1, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [x["kind"] for x in lines] == ["html", "pdf", "text"]
    assert lines[0]["error"] is None and samples.PARAGRAPHS[0] in lines[0]["text"]
    assert "PDF" in lines[1]["error"] and lines[1]["text"] == ""
    assert lines[2]["chars"] == len("plain text")


@pytest.mark.timeout(150)
def test_ingest_prints_counts_and_skips_on_rerun(tmp_path: Path, cli_env: dict[str, str]) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.html").write_text(samples.article_page(), encoding="utf-8")
    (src / "copy.html").write_text(samples.article_page(), encoding="utf-8")
    (src / "bad.png").write_bytes(b"not an image")
    data = tmp_path / "data"
    first = run(["ingest", str(src), "--data-dir", str(data)], cli_env)
    assert first.returncode == 0, first.stderr
    assert "documents=1" in first.stdout and "duplicates=1" in first.stdout and "failed=1" in first.stdout
    again = run(["ingest", str(src), "--data-dir", str(data)], cli_env)
    assert "documents=0" in again.stdout and "skipped=3" in again.stdout


@pytest.mark.timeout(150)
def test_ingest_reports_each_new_oversized_file_at_one_path_as_too_large(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    big = tmp_path / "big.txt"
    data = tmp_path / "data"
    for size in (65 * 2**20, 66 * 2**20):  # a new file each time, over the 64 MB limit (sparse)
        big.unlink(missing_ok=True)
        with open(big, "wb") as f:
            f.truncate(size)
        proc = run(["ingest", str(big), "--data-dir", str(data)], cli_env)
        assert proc.returncode == 0, proc.stderr
        assert "failed=1" in proc.stdout and "skipped=0" in proc.stdout, proc.stdout
        assert f"too large ({size} bytes" in proc.stderr
    again = run(["ingest", str(big), "--data-dir", str(data)], cli_env)  # the same file: recorded
    assert "failed=0" in again.stdout and "skipped=1" in again.stdout, again.stdout


def _capped(
    args: list[str], env: dict[str, str], prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """``run`` (under the command ``prefix``), with the child's address space held to 3 GB: a
    file read without a bound (such as /dev/zero) fails it with a MemoryError instead of filling
    this machine's memory."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    cmd = [*prefix, sys.executable, "-m", "crystalline.ingest.command", *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=120, check=False, preexec_fn=cap
    )


def _hostile_files(tmp_path: Path) -> list[str]:
    """A good page, a FIFO (no writer), /dev/zero, a link to the FIFO, a file over 5000 bytes
    (the --max-bytes the tests pass), and a good text file, in that order."""
    (tmp_path / "a.html").write_text(samples.article_page(), encoding="utf-8")
    os.mkfifo(tmp_path / "f.fifo")
    (tmp_path / "link").symlink_to(tmp_path / "f.fifo")
    (tmp_path / "big.txt").write_bytes(b"x" * 5001)
    (tmp_path / "b.txt").write_text("plain text", encoding="utf-8")
    names = ("a.html", "f.fifo", "/dev/zero", "link", "big.txt", "b.txt")
    return [name if name.startswith("/") else str(tmp_path / name) for name in names]


@pytest.mark.timeout(300)
def test_extract_refuses_a_fifo_a_device_and_a_too_large_file_in_place_and_does_the_rest(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    files = _hostile_files(tmp_path)
    for processes in ("1", "2"):  # in process, and through the pool
        args = ["extract", "--json", "--max-bytes", "5000", "--processes", processes, *files]
        proc = _capped(args, cli_env)
        assert proc.returncode == 1, proc.stderr
        lines = [json.loads(line) for line in proc.stdout.splitlines()]
        assert [x["path"] for x in lines] == files
        assert [x["error"] for x in lines] == [
            None,
            "not a regular file (FIFO)",
            "not a regular file (character device)",
            "not a regular file (FIFO)",
            "too large (5001 bytes > 5000)",
            None,
        ]
        assert samples.PARAGRAPHS[0] in lines[0]["text"] and lines[5]["text"] == "plain text"


@pytest.mark.timeout(300)
def test_ingest_refuses_a_fifo_a_device_and_a_too_large_file_each_in_one_line_and_ingests_the_rest(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    files = _hostile_files(tmp_path)
    proc = _capped(["ingest", *files, "--max-bytes", "5000", "--data-dir", str(tmp_path / "data")], cli_env)
    assert proc.returncode == 0, proc.stderr  # ingest's failures are in its counts
    # b.txt is too short: filtered
    assert "documents=1 " in proc.stdout and "failed=4 filtered=1 " in proc.stdout, proc.stdout
    assert [line for line in proc.stderr.splitlines() if "filtered" not in line] == [
        f"{files[1]}: not a regular file (FIFO)",
        "/dev/zero: not a regular file (character device)",
        f"{files[3]}: not a regular file (FIFO)",
        f"{files[4]}: too large (5001 bytes > 5000)",
    ]


def test_a_file_that_grew_after_its_size_was_taken_is_read_no_further_than_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "growing.txt"
    path.write_bytes(b"y" * 5000)
    fd = os.open(path, os.O_RDONLY)
    try:  # its size taken at 10 bytes, before it grew
        assert read_at_most(fd, 10, 1000) == b"y" * 1001  # limit + 1: too large
        assert read_at_most(fd, 10, 9000) == b"y" * 5000
    finally:
        os.close(fd)


def _odd_folder(tmp_path: Path) -> Path:
    """A folder of regular files and of every entry that is not one (a FIFO without a writer, a
    socket, links to /dev/zero, to nothing, in a loop and back up to the folder), a file whose
    name is not UTF-8, and a hidden folder."""
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    (folder / "a.html").write_text(samples.article_page(), encoding="utf-8")
    (folder / "sub" / "b.txt").write_text("plain text", encoding="utf-8")
    (folder / ".hidden" / "c.html").write_text(samples.article_page(), encoding="utf-8")
    with open(os.fsencode(folder) + b"/bad-\xff.txt", "wb") as f:  # not UTF-8
        f.write(samples.prose(3, 120).encode())
    os.mkfifo(folder / "fifo")
    short = Path(tempfile.mkdtemp(dir="/tmp"))  # a socket's path is at most 107 bytes
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(short / "s"))
        os.rename(short / "s", folder / "sock")
    short.rmdir()
    (folder / "zero").symlink_to("/dev/zero")
    (folder / "dangling").symlink_to(tmp_path / "missing")
    (folder / "loop1").symlink_to(folder / "loop2")
    (folder / "loop2").symlink_to(folder / "loop1")
    (folder / "up").symlink_to(folder)
    return folder


# what a named folder's entries that are not regular files get, in the folder's order
ODD_ENTRIES = [
    ("dangling", "cannot read: a broken symbolic link (No such file or directory)"),
    ("fifo", "not a regular file (FIFO)"),
    ("loop1", "cannot read: a broken symbolic link (Too many levels of symbolic links)"),
    ("loop2", "cannot read: a broken symbolic link (Too many levels of symbolic links)"),
    ("sock", "not a regular file (socket)"),
    ("up", "not a regular file (symbolic link to a folder, not followed)"),
    ("zero", "not a regular file (character device)"),
]


@pytest.mark.timeout(300)
def test_every_entry_of_a_named_folder_is_taken_or_refused_in_one_line(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    # each entry that is not taken has its line (before: skipped without one), none hangs the
    # call (the FIFO is never opened), hidden ones are left out as documented; a named link
    # loop is one line too (before: `ingest` ended on an internal error, RuntimeError)
    folder = _odd_folder(tmp_path)
    proc = _capped(["extract", "--json", str(folder)], cli_env)
    assert proc.returncode == 1, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    names = [line["path"].removeprefix(f"{folder}/") for line in lines]
    assert names == ["a.html", "bad-\\xff.txt", *(n for n, _ in ODD_ENTRIES[:5]), "sub/b.txt", "up", "zero"]
    by_name = dict(zip(names, lines, strict=True))
    assert {n: by_name[n]["error"] for n, _ in ODD_ENTRIES} == dict(ODD_ENTRIES)
    assert samples.PARAGRAPHS[0] in by_name["a.html"]["text"] and by_name["sub/b.txt"]["text"] == "plain text"
    assert by_name["bad-\\xff.txt"]["error"] is None and by_name["bad-\\xff.txt"]["chars"] > 0
    plain = _capped(["extract", str(folder)], cli_env)  # without --json: each on stderr
    assert plain.returncode == 1
    assert plain.stderr.splitlines() == [f"{folder}/{name}: {why}" for name, why in ODD_ENTRIES]

    data = tmp_path / "data"
    proc = _capped(["ingest", str(folder), "--data-dir", str(data)], cli_env)
    assert proc.returncode == 0, proc.stderr  # ingest's failures are in its counts
    assert "documents=2 " in proc.stdout and "failed=7 filtered=1 " in proc.stdout, proc.stdout
    refused = [line for line in proc.stderr.splitlines() if "filtered" not in line]
    assert refused == [f"{folder}/{name}: {why}" for name, why in ODD_ENTRIES]
    loop = _capped(["ingest", str(folder / "loop1"), "--data-dir", str(data)], cli_env)
    assert loop.returncode == 0 and "failed=1 " in loop.stdout, loop.stderr
    assert loop.stderr.splitlines() == [f"{folder}/loop1: {ODD_ENTRIES[2][1]}"]


@pytest.mark.timeout(150)
def test_a_folder_nested_deeper_than_the_recursion_limit_is_walked_to_its_bottom(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    # before: RecursionError, the call ended as an internal error. The command runs with a
    # recursion limit of 300 and the folder is 400 deep: the same as 1,000 against a folder
    # 1,500 deep (a path of ~3,000 bytes, within PATH_MAX), which shutil.rmtree, and so
    # pytest's clean-up of its temporary folders, could not remove after an interrupted run
    bottom = tmp_path.joinpath(*["d"] * 400)
    bottom.mkdir(parents=True)
    (bottom / "x.txt").write_text("plain text at the bottom", encoding="utf-8")
    limited = "import sys; sys.setrecursionlimit(300); "
    code = limited + "from crystalline.ingest.command import main; sys.exit(main())"
    cmd = [sys.executable, "-c", code, "extract", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=cli_env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-500:]
    assert proc.stdout == "plain text at the bottom\n"


@pytest.mark.timeout(150)
def test_an_unreadable_file_and_folder_in_a_named_folder_are_one_line_each(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    folder = tmp_path / "in"
    (folder / "locked").mkdir(parents=True)
    (folder / "a.txt").write_text(samples.prose(1, 120), encoding="utf-8")
    (folder / "secret.txt").write_text(samples.prose(2, 120), encoding="utf-8")
    (folder / "secret.txt").chmod(0)
    (folder / "locked" / "b.txt").write_text(samples.prose(3, 120), encoding="utf-8")
    (folder / "locked").chmod(0)
    # root reads and lists whatever the modes say (CAP_DAC_OVERRIDE): there the command runs
    # without those capabilities (setpriv), as any other user would
    caps = "-dac_override,-dac_read_search"
    drop = ("setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}")
    prefix = drop if os.geteuid() == 0 and shutil.which("setpriv") else ()
    try:
        probe = [*prefix, sys.executable, "-c", f"open({str(folder / 'secret.txt')!r}, 'rb')"]
        if subprocess.run(probe, capture_output=True, timeout=60, check=False).returncode == 0:
            pytest.skip("this user reads a file of mode 000 (root that cannot drop CAP_DAC_OVERRIDE)")
        proc = _capped(["extract", str(folder)], cli_env, prefix)
        assert proc.returncode == 1
        assert proc.stderr.splitlines() == [
            f"{folder}/locked: cannot list the folder (Permission denied)",
            f"{folder}/secret.txt: cannot read (Permission denied)",
        ]
        assert " ".join(samples.prose(1, 120).split()[:6]) in proc.stdout  # a.txt was extracted
    finally:
        (folder / "locked").chmod(0o755)


def test_help_and_one_line_user_error(tmp_path: Path, cli_env: dict[str, str]) -> None:
    assert "--data-dir" in run(["ingest", "--help"], cli_env).stdout
    assert "--json" in run(["extract", "--help"], cli_env).stdout
    proc = run(["ingest", str(tmp_path / "missing"), "--data-dir", str(tmp_path)], cli_env)
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0 and "no such file" in proc.stderr
    assert proc.stderr.startswith("crystalline: error: ")


@pytest.mark.timeout(150)
def test_extract_offers_no_database_keys(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """extract opens no database: --database and --database-timeout-s are not its flags (a usage
    error, exit 64, as any unknown flag); ingest keeps them. (A config file may still set them:
    test_a_config_shared_with_the_daemon_serves_extract_and_ingest.)"""
    text = tmp_path / "a.txt"
    text.write_text("plain text", encoding="utf-8")
    assert "--database" not in run(["extract", "--help"], cli_env).stdout
    assert "--database-timeout-s" in run(["ingest", "--help"], cli_env).stdout
    for flag, value in (("--database", "postgresql://u@127.0.0.1:1/x"), ("--database-timeout-s", "3")):
        proc = run(["extract", flag, value, str(text)], cli_env)
        assert proc.returncode == 64 and proc.stdout == "", (flag, proc.stdout, proc.stderr)
        assert proc.stderr.endswith(f"crystalline: error: unrecognized arguments: {flag}\n"), proc.stderr


@pytest.mark.timeout(200)
def test_a_config_shared_with_the_daemon_serves_extract_and_ingest(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """The shipped systemd/crystalline.toml with every commented key set (the first of two
    spellings of one key), and the daemon's own [ingest] keys (drop-settle-s, the shards'
    batch sizes): extract and ingest read it, each using its keys and checking the rest as the
    daemon would; a misspelt key and a bad value of a key the command does not use still fail."""
    text = tmp_path / "a.txt"
    text.write_text(samples.prose(7), encoding="utf-8")
    seen: set[str] = set()
    lines = []
    for line in SHIPPED_CONFIG.read_text(encoding="utf-8").splitlines():
        found = re.match(r"# ([a-z][a-z-]*) = ", line)
        if line.startswith("["):
            seen = set()
        elif found and found[1] not in seen:
            seen.add(found[1])
            line = line[2:]
        lines.append(line)
    shared = "\n".join(lines).replace("[ingest]\n", "[ingest]\ndrop-settle-s = 3\nbatch-documents = 50\n")
    assert "\ndatabase-timeout-s = 15" in shared and "\n# database" not in shared, shared
    cfg = tmp_path / "crystalline.toml"
    cfg.write_text(shared, encoding="utf-8")
    proc = run(["extract", "--config", str(cfg), str(text)], cli_env)
    assert (proc.returncode, proc.stdout) == (0, samples.prose(7) + "\n"), proc.stderr
    proc = run(["ingest", "--config", str(cfg), "--data-dir", str(tmp_path / "data"), str(text)], cli_env)
    assert proc.returncode == 0 and "documents=1 " in proc.stdout, (proc.stdout, proc.stderr)
    for table_text, said in (
        ("database-timeut-s = 15", "unknown key [ingest] database-timeut-s ("),  # hints: test_config
        ("database-timeout-s = 0", "[ingest] database-timeout-s "),
        ("drop-settle-s = -1", "drop-settle-s not negative (set by file"),
    ):
        cfg.write_text(f"[ingest]\n{table_text}\n", encoding="utf-8")
        for command in (["extract"], ["ingest", "--data-dir", str(tmp_path / "data")]):
            proc = run([*command, "--config", str(cfg), str(text)], cli_env)
            assert proc.returncode == 64 and proc.stdout == "", (command, table_text, proc.stderr)
            assert said in proc.stderr and proc.stderr.count("\n") == 1, (command, table_text, proc.stderr)


@pytest.mark.timeout(150)
def test_extract_through_the_main_cli_loads_no_extractor_or_crawler_in_the_parent(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    # `crystalline extract` builds only its own parser, and with a pool (two processes asked
    # for) the extractors (lxml, trafilatura, pypdfium2, tesseract) are imported in the pool's
    # workers: the parent reads files and prints. (Where the process may use one CPU only there
    # is no worker: said as two CPUs here.)
    page = tmp_path / "a.html"
    page.write_text(samples.article_page(), encoding="utf-8")
    script = (
        "import json, sys\n"
        "from crystalline.daemon import cli\n"
        "from crystalline.ingest import command\n"
        "command.usable_cpus = lambda: 2\n"
        f"status = cli.main(['extract', '--json', '--processes', '2', {str(page)!r}])\n"
        "heavy = ('aiohttp', 'trafilatura', 'lxml', 'pypdfium2', 'PIL', 'crystalline.ingest.ocr',"
        " 'charset_normalizer', 'crystalline.crawler')\n"
        "print(json.dumps({'status': status, 'loaded': sorted(m for m in heavy if m in sys.modules)}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=cli_env, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    extracted, summary = proc.stdout.splitlines()
    assert samples.PARAGRAPHS[0] in json.loads(extracted)["text"]
    assert json.loads(summary) == {"status": 0, "loaded": []}


@pytest.mark.timeout(300)
def test_extract_on_one_cpu_or_one_process_works_html_and_text_in_process_and_the_rest_in_one_worker(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    # on one CPU or with one process asked for, HTML and text are worked in the command's own
    # process (an HTML and text run starts no worker) and a PDF or an image in one worker, where
    # its native decoder's crash or overrun is its own; two processes on two CPUs are a pool of
    # two. The output is the same each way.
    (tmp_path / "a.html").write_text(samples.article_page(), encoding="utf-8")
    (tmp_path / "b.pdf").write_bytes(b"%PDF-1.4 truncated")
    (tmp_path / "c.txt").write_text(samples.prose(3, 120), encoding="utf-8")
    (tmp_path / "d.txt").write_bytes(b"")
    (tmp_path / "e.bin").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "f.png").write_bytes(samples.image_bytes(samples.render_text(samples.OCR_LINES), "PNG"))
    names = ("a.html", "b.pdf", "c.txt", "d.txt", "missing.txt", "e.bin", "f.png")
    files = [str(tmp_path / name) for name in names]
    outputs = {}
    # (CPUs, processes asked for): workers started
    for cpus, processes, workers in ((1, 1, 1), (1, 2, 1), (2, 1, 1), (2, 2, 2)):
        run = run_extract(["--processes", str(processes), *files], cli_env, cpus=cpus)
        assert (run.status, run.workers) == (1, workers), run.stderr
        outputs[cpus, processes] = run.lines
    assert outputs[1, 1] == outputs[1, 2] == outputs[2, 1] == outputs[2, 2]
    results = [json.loads(line) for line in outputs[1, 1]]
    assert samples.PARAGRAPHS[0] in results[0]["text"] and results[0]["verdicts"]
    assert [r["error"] is None for r in results] == [True, False, True, False, False, False, True]
    assert [r["kind"] for r in results] == ["html", "pdf", "text", "text", "", "text", "image"]
    assert "brown fox" in results[6]["text"]
    html_and_text = [f for f in files if not f.endswith((".pdf", ".png"))]
    run = run_extract(html_and_text, cli_env, cpus=2)
    assert (run.status, run.workers) == (1, 0), run.stderr
    assert run.lines == [line for line in outputs[1, 1] if json.loads(line)["kind"] not in ("pdf", "image")]
