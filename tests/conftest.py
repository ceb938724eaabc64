"""Shared fixtures: a small, learnable corpus and the environment for CLI subprocesses."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._postgres import pg_cluster, pg_url  # noqa: F401  (fixtures: a PostgreSQL cluster, a database)
from tests._session_shm import PRIVATE_DEV_SHM  # noqa: F401  (made at import: the session's own /dev/shm)
from tests._sigterm import pytest_configure  # noqa: F401  (the hook: a TERM runs the teardown)

# Sentences drawn from a tiny word list: repetitive enough for a 30k-parameter model to learn
# in a few hundred steps, varied enough that the validation split is not a copy of training.
_VOCABULARY = (
    "the cat sat on the mat and the dog ran to the park while a bird sang in the tree "
    "near old red house by river"
)
_WORDS = _VOCABULARY.split()


def make_corpus(size: int = 30_000, seed: int = 0) -> str:
    """About ``size`` bytes of ASCII sentences, one per line, deterministic for ``seed``."""
    rng = random.Random(seed)
    lines: list[str] = []
    total = 0
    while total < size:
        line = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 10))).capitalize() + "."
        lines.append(line)
        total += len(line) + 1
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ~30 KB text file of simple sentences (read-only by convention: do not modify it)."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(make_corpus(), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def bpe_tokenizer_file(corpus_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE tokenizer (vocab <= 300) trained on ``corpus_file``."""
    from crystalline.tokens.tokenizer import save_tokenizer, train_bpe

    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    save_tokenizer(train_bpe([corpus_file], 300), path)
    return path


@pytest.fixture
def cli_env() -> dict[str, str]:
    """Environment for `python -m crystalline.daemon.cli` subprocesses: one BLAS thread each."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def _mapped_shm_names() -> set[str]:
    """Names of /dev/shm files some live process has mapped (in use, not leaked)."""
    names: set[str] = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            i = line.find("/dev/shm/crystalline-")
            if i >= 0:
                names.add(line[i + len("/dev/shm/") :].split(" ")[0])
    return names


@pytest.fixture(autouse=True)
def no_shared_memory_leaks() -> Iterator[None]:
    """Every test leaves /dev/shm as it found it: a crystalline-* segment that appeared during the
    test and that no live process maps any more is a leak (this session's own /dev/shm where it
    can have one, see tests/_session_shm.py; in a shared one, the segments of a session running at
    the same time count only while unmapped)."""
    from crystalline.shm.segments import list_segments, unlink_segment

    before = set(list_segments())
    yield
    new = set(list_segments()) - before
    if not new:
        return
    leaked = sorted(new - _mapped_shm_names())
    for name in leaked:
        unlink_segment(name)  # so one leak does not fail every later test
    assert not leaked, f"shared-memory segments leaked: {leaked}"
