"""Per-source grouping (issue 13): files dropped at the top of the drop folder are the source
``inbox``, files in a sub-folder the sub-folder's name, crawled pages their host; the group is
recorded in the registry and the token store through the real ingest path (pool processes,
SQLite, shards), and shards and registries written before it still load."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import numpy as np
from _older_registry import migrated_from
from _wait import until
from test_drop_ingest import SETTINGS, text

from crystalline.documents import Document, Spool, source_group
from crystalline.ingest.drop_sources import DropSources
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
