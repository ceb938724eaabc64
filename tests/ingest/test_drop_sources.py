"""Per-source grouping (issue 13): files dropped at the top of the drop folder are the source
``inbox``, files in a sub-folder the sub-folder's name, crawled pages their host; the group is
recorded in the registry and the token store through the real ingest path (pool processes,
SQLite, shards), and shards and registries written before it still load."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from _older_registry import migrated_from
from _wait import until
from test_drop_ingest import SETTINGS, text

from crystalline.documents import Document, Spool, source_group
from crystalline.ingest.drop_sources import NESTED, DropSources
from crystalline.ingest.ingestor import Ingestor
from crystalline.tokens.token_store import PendingDocument, StoreReader, TokenStore
from crystalline.tokens.tokenizer import load_tokenizer
from crystalline.tokens.windows import SourceValidation

U16 = np.uint16


def ingest_all(ing: Ingestor, deadline_s: float = 120.0) -> None:
    idle = 0

    def idle_thrice() -> bool:  # a sub-folder's files may be found one discovery later
        nonlocal idle
        idle = 0 if ing.run_once() else idle + 1
        return idle >= 3

    until(idle_thrice, "ingest did not finish", deadline_s, 0.05)


def test_source_group_of_urls_sub_folders_and_top_level_files() -> None:
    assert source_group("https://Example.org:8080/a/b?q=1") == "example.org"
    assert source_group("http://[::1]/x") == "::1"
    assert source_group("/srv/inbox/notes.txt") == "inbox"
    assert source_group("/srv/inbox/licenses/gpl.txt", "licenses") == "licenses"
    assert source_group("http://[bad/") == "inbox"  # unparseable: no host, not an error


def test_dropped_and_crawled_documents_are_recorded_with_their_source(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "licenses").mkdir(parents=True)
    (inbox / "licenses" / "mit.txt").write_text(text(1))
    (inbox / "top.txt").write_text(text(2))
    (inbox / "licenses" / "nested").mkdir()  # one level only: left alone
    (inbox / "licenses" / "nested" / "deep.txt").write_text(text(3))
    spool = Spool(tmp_path / "spool")
    spool.put(Document("https://pages.example/a", text(4).encode(), "text/plain"))
    data = tmp_path / "data"
    sources = DropSources(inbox, 0.0)
    with Ingestor(SETTINGS, data, load_tokenizer("bytes"), spool=spool, drop_folder=sources) as ing:
        sources.start()
        ingest_all(ing)
    assert (inbox / "licenses" / "done" / "mit.txt").exists()
    assert (inbox / "done" / "top.txt").exists()
    assert (inbox / "licenses" / "nested" / "deep.txt").exists()
    reader = StoreReader(data / "tokens")
    reader.refresh()
    stored = {d.source.removeprefix(str(inbox) + "/"): d.group for d in reader.documents}
    assert stored == {
        "licenses/mit.txt": "licenses",
        "top.txt": "inbox",
        "https://pages.example/a": "pages.example",
    }
    db = sqlite3.connect(data / "registry.sqlite3")
    rows = dict(db.execute("SELECT source, source_group FROM documents"))
    assert rows[str(inbox / "licenses" / "mit.txt")] == "licenses"
    assert rows[str(inbox / "top.txt")] == "inbox"
    assert rows["https://pages.example/a"] == "pages.example"


def test_a_sub_folder_writable_by_others_is_left_alone(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    shared = inbox / "shared"
    shared.mkdir(parents=True)
    shared.chmod(0o777)
    (shared / "a.txt").write_text(text(5))
    sources = DropSources(inbox, 0.0)
    try:
        assert sources.discover() == 0
        shared.chmod(0o1777)  # with the sticky bit: taken
        assert sources.discover() == 1
    finally:
        sources.close()


@pytest.mark.timeout(180)
def test_folders_inside_a_sub_folder_and_a_sub_folder_left_alone_are_shown_in_status_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # sub-folders are one level deep: a folder inside one (however deep it goes) and a
    # sub-folder not taken are left where they are, each listed with why in status (blocked)
    # and logged once; before, the nested ones were skipped without a word or a count
    inbox = tmp_path / "inbox"
    docs = inbox / "docs"
    (docs / "nested").mkdir(parents=True)
    (docs / "nested" / "deep.txt").write_text(text(11))
    chain = docs / "chain"
    for _ in range(60):
        chain = chain / "d"
    chain.mkdir(parents=True)
    (chain / "bottom.txt").write_text(text(12))
    (docs / "a.txt").write_text(text(13))
    os.mkfifo(docs / "fifo")  # refused unopened, as at the top: a record, failed/, a line
    (inbox / "shared").mkdir()
    (inbox / "shared").chmod(0o777)
    (inbox / "shared" / "s.txt").write_text(text(14))
    sources = DropSources(inbox, 0.0, discover_s=0.0)
    caplog.set_level(logging.INFO, logger="crystalline.ingest")
    with Ingestor(SETTINGS, tmp_path / "data", load_tokenizer("bytes"), drop_folder=sources) as ing:
        sources.start()
        ingest_all(ing)
        for _ in range(3):  # more discoveries and scans: nothing is logged twice
            sources.discover()
            sources.subs["docs"].scan()
        stats = ing.stats()
        assert (docs / "nested" / "deep.txt").exists() and (chain / "bottom.txt").exists()  # where they were
        shutil.rmtree(docs / "nested")  # a folder gone is no longer shown
        sources.subs["docs"].scan()
        after = sources.blocked()
    left = {
        "shared/": "it is writable by others without the sticky bit",
        "docs/chain/": NESTED,
        "docs/nested/": NESTED,
    }
    assert stats["blocked"] == 3
    assert {b["name"]: b["reason"] for b in stats["blocked_files"]} == left
    lines = [r.getMessage() for r in caplog.records if "left alone" in r.getMessage()]
    assert sorted(lines) == sorted(
        [f"{docs}/chain/ left alone: {NESTED}", f"{docs}/nested/ left alone: {NESTED}",
         "drop sub-folder shared left alone: it is writable by others without the sticky bit"]
    )  # fmt: skip
    assert (docs / "done" / "a.txt").exists() and (docs / "failed" / "fifo").exists()
    db = sqlite3.connect(tmp_path / "data" / "registry.sqlite3")
    rows = dict(db.execute("SELECT source, state FROM documents"))
    assert rows == {str(docs / "a.txt"): "done", str(docs / "fifo"): "failed"}
    assert sorted(after) == sorted((name, why) for name, why in left.items() if name != "docs/nested/")


# the drop folder run where a mode says no: as root (CAP_DAC_OVERRIDE reads and lists
# whatever the modes say), without those capabilities, as any other user would
_CAPS = "-dac_override,-dac_read_search"
_AS_A_USER = ("setpriv", f"--inh-caps={_CAPS}", f"--bounding-set={_CAPS}") if os.geteuid() == 0 else ()

_UNUSABLE_SUB_FOLDERS = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    sys.path[:0] = [sys.argv[2], os.path.dirname(sys.argv[2])]
    from test_drop_ingest import SETTINGS
    from test_drop_sources import ingest_all
    from crystalline.ingest.drop_sources import DropSources
    from crystalline.ingest.ingestor import Ingestor
    from crystalline.tokens.tokenizer import load_tokenizer

    def main() -> None:
        tmp = Path(sys.argv[1])
        sources = DropSources(tmp / "inbox", 0.0, discover_s=0.0)
        with Ingestor(SETTINGS, tmp / "data", load_tokenizer("bytes"), drop_folder=sources) as ing:
            sources.start()
            ingest_all(ing)
            fds = len(os.listdir("/proc/self/fd"))
            for _ in range(50):  # each discovery tries them again: nothing may stay open
                sources.discover()
            leaked = len(os.listdir("/proc/self/fd")) - fds
            print(json.dumps({"blocked": ing.stats()["blocked_files"], "leaked_fds": leaked}))

    if __name__ == "__main__":
        main()
""")


@pytest.mark.timeout(180)
def test_a_sub_folder_that_cannot_be_listed_or_written_is_left_alone_and_the_rest_is_ingested(
    tmp_path: Path,
) -> None:
    # before, DropSources.start raised PermissionError for it (and took nothing, the top's
    # files included), leaving the drop folder's descriptors and pipe of the attempt open
    inbox = tmp_path / "inbox"
    for name, mode in (("locked", 0), ("readonly", 0o500)):
        (inbox / name).mkdir(parents=True)
        (inbox / name / "x.txt").write_text(text(20))
        (inbox / name).chmod(mode)
    (inbox / "top.txt").write_text(text(21))
    try:
        probe = [*_AS_A_USER, sys.executable, "-c", f"import os; os.listdir({str(inbox / 'locked')!r})"]
        if _AS_A_USER and not shutil.which("setpriv"):
            pytest.skip("root without setpriv lists a folder of mode 000")
        if subprocess.run(probe, capture_output=True, timeout=60, check=False).returncode == 0:
            pytest.skip("this user lists a folder of mode 000 (root that cannot drop CAP_DAC_OVERRIDE)")
        here = str(Path(__file__).parent)
        proc = subprocess.run(
            [*_AS_A_USER, sys.executable, "-c", _UNUSABLE_SUB_FOLDERS, str(tmp_path), here],
            capture_output=True, text=True, timeout=150, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        report = json.loads(proc.stdout.splitlines()[-1])
        assert report == {
            "blocked": [
                {"name": "locked/", "reason": "it cannot be used as a drop folder (Permission denied)"},
                {"name": "readonly/", "reason": "it cannot be used as a drop folder (Permission denied)"},
            ],
            "leaked_fds": 0,
        }
        assert (inbox / "done" / "top.txt").exists()
        assert proc.stderr.count("left alone") == 2  # one line each, for 50 discoveries
    finally:
        for name in ("locked", "readonly"):
            (inbox / name).chmod(0o755)


def test_shards_and_registries_written_before_the_group_still_load(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens", np.uint16)
    store.append([PendingDocument("d", "e:d", "https://old.example/x", "val", np.arange(40, dtype=U16))])
    index = tmp_path / "tokens" / "shard-000001.json"
    meta = json.loads(index.read_text())
    for d in meta["documents"]:
        del d["group"]  # as a shard of before the group
    index.write_text(json.dumps(meta))
    reader = StoreReader(tmp_path / "tokens")
    reader.refresh()
    assert reader.documents[0].group == ""
    validation = SourceValidation(tmp_path / "tokens", seq_len=8, per_source=2)
    assert list(validation.windows()) == ["old.example"]  # derived from its URL

    def to_schema_3(db: sqlite3.Connection) -> None:  # a schema-3 registry without the columns
        db.execute("ALTER TABLE documents DROP COLUMN source_group")
        db.execute("ALTER TABLE documents DROP COLUMN surprise")

    with migrated_from(tmp_path / "registry.sqlite3", 3, to_schema_3) as registry:
        columns = {r[1] for r in registry.db.execute("PRAGMA table_info(documents)")}
    assert {"source_group", "surprise"} <= columns


def test_validation_per_source_is_bounded_and_rotates(tmp_path: Path) -> None:
    store = TokenStore(tmp_path, np.uint16)
    docs = [
        PendingDocument(f"a{i}", f"e:a{i}", f"https://a.example/{i}", "val", np.full(50, i, dtype=U16))
        for i in range(4)
    ]
    docs.append(PendingDocument("b", "e:b", "/in/b.txt", "val", np.arange(30, dtype=U16), group="books"))
    docs.append(PendingDocument("t", "e:t", "/in/t.txt", "train", np.arange(99, dtype=U16), group="books"))
    store.append(docs)
    validation = SourceValidation(tmp_path, seq_len=9, per_source=3)
    first, second = validation.windows(), validation.windows()
    assert sorted(first) == ["a.example", "books"]
    assert first["a.example"].shape == (3, 10)  # 200 tokens hold 22 windows: 3 of them
    assert not np.array_equal(first["a.example"], second["a.example"])  # the next 3 in turn
    assert first["books"].shape == (3, 10)  # 30 tokens: all of its 3 windows, every time
    assert np.array_equal(first["books"], second["books"])
    assert validation.documents() == {"a.example": 4, "books": 2}
    assert len(SourceValidation(tmp_path, seq_len=9, per_source=3, max_sources=1).windows()) == 1
    assert os.path.exists(tmp_path / "shard-000001.json")
