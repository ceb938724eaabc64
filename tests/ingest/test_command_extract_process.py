"""`crystalline extract` in its own process (one process asked for, the default): what it imports,
and the memory limit a pool worker would have."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import _ingest_samples as samples
import pytest

from crystalline.documents import Document
from crystalline.ingest import pool as pool_module
from crystalline.ingest.extract import Extraction, ExtractLimits
from crystalline.ingest.pool import PoolConfig, extract_in_process

# what `extract` never needs: the trainer, the crawler, shared memory, the token store, the
# daemon's other commands (the status socket client, the dashboard), ZeroMQ, aiohttp, torch
_NEVER = ("crystalline.workers", "crystalline.crawler", "crystalline.shm", "crystalline.tokens", "zmq",
          "aiohttp", "torch")  # fmt: skip

_IMPORTS_SCRIPT = """
import json, sys
from crystalline.daemon import cli

status = cli.main(["extract", "--json", *sys.argv[1:]])
print(json.dumps({"status": status, "modules": sorted(sys.modules)}))
"""


@pytest.mark.timeout(150)
def test_extract_imports_nothing_of_the_daemon_trainer_or_crawler(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    (tmp_path / "a.html").write_text(samples.article_page(), encoding="utf-8")
    (tmp_path / "b.txt").write_text(samples.prose(2, 120), encoding="utf-8")
    files = [str(tmp_path / "a.html"), str(tmp_path / "b.txt")]
    cmd = [sys.executable, "-c", _IMPORTS_SCRIPT, *files]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=cli_env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    *lines, summary = proc.stdout.splitlines()
    assert samples.PARAGRAPHS[0] in json.loads(lines[0])["text"]  # it did extract, in this process
    report = json.loads(summary)
    modules = report["modules"]
    assert report["status"] == 0 and "crystalline.ingest.html_text" in modules
    assert [m for m in modules if m.split(".")[0] in _NEVER or m.startswith(_NEVER)] == []
    daemon = [m for m in modules if m.startswith("crystalline.daemon.")]
    assert daemon == ["crystalline.daemon.cli"]  # no status client, ctl, dashboard, supervisor
    # nor the registry (SQLite, PostgreSQL) or the fingerprints extract does not compute
    unused = ("sqlite3", *(f"crystalline.ingest.{name}" for name in ("registry", "minhash", "dedup")))
    assert [m for m in unused if m in modules] == []


@pytest.mark.timeout(150)
def test_a_page_over_the_memory_limit_fails_alone_in_process(tmp_path: Path, cli_env: dict[str, str]) -> None:
    # 8 MB of `word<br>` lines take our extractor ~650 MB: over a 300 MB limit the page fails
    # with a reason and the command goes on to the next file, as a pool worker would.
    big = tmp_path / "big.html"
    big.write_text("<html><body><p>" + "word<br>" * 1_000_000 + "</p></body></html>", encoding="utf-8")
    small = tmp_path / "small.html"
    small.write_text(samples.article_page(), encoding="utf-8")
    extract = [sys.executable, "-m", "crystalline.ingest.command", "extract", "--json"]
    cmd = [*extract, "--memory-limit-mb", "300", str(big), str(small)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=cli_env, timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr
    failed, done = (json.loads(line) for line in proc.stdout.splitlines())
    assert failed["path"] == str(big) and failed["error"] and failed["text"] == ""
    assert done["path"] == str(small) and done["error"] is None and samples.PARAGRAPHS[0] in done["text"]


def test_the_limit_holds_while_documents_are_worked_and_is_lifted_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = pool_module.extract_document
    seen: list[tuple[int, int]] = []

    def extractor(doc: Document, limits: ExtractLimits) -> Extraction:
        seen.append(resource.getrlimit(resource.RLIMIT_AS))
        return real(doc, limits)

    monkeypatch.setattr(pool_module, "extract_document", extractor)
    before = resource.getrlimit(resource.RLIMIT_AS)
    docs = [Document(f"/d/{i}.txt", samples.prose(i, 100).encode(), "") for i in range(2)]
    results = dict(extract_in_process(PoolConfig(memory_limit_mb=512, min_words=5), docs))
    assert [r.error for r in results.values()] == ["", ""]
    with open("/proc/self/statm", "rb") as statm:
        mapped = int(statm.read().split()[0]) * resource.getpagesize()
    for soft, hard in seen:  # what this process maps, plus 512 MB (give or take what it mapped since)
        assert hard == before[1] and abs(soft - (mapped + 512 * 2**20)) < 256 * 2**20
    assert resource.getrlimit(resource.RLIMIT_AS) == before
    results = dict(extract_in_process(PoolConfig(memory_limit_mb=0, min_words=5), docs))
    assert seen[-1] == before  # 0: no limit
