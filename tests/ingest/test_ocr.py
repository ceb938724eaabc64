"""OCR's child process: a pool worker's tesseract dies with the worker, however the worker ends
(its time limit, a cut, the end of its map, a kill from outside such as the OOM killer), where it
used to run on until it finished; and OCR leaves no temporary file behind."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import _ingest_samples as samples
import pytest
from _wait import until

from crystalline.documents import Document
from crystalline.ingest import ocr
from crystalline.ingest.ocr import OcrError, ocr_image, ocr_image_bytes
from crystalline.ingest.pool import ExtractionPool, PoolClosed, PoolConfig, WorkResult

pytestmark = pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract is not installed")


def _stat(pid: int) -> tuple[str, str, int, str] | None:
    """(name, state, parent pid, start time) of a process, from /proc; None once it is gone."""
    try:
        line = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    name = line[line.index("(") + 1 : line.rindex(")")]
    fields = line[line.rindex(")") + 2 :].split()
    return name, fields[0], int(fields[1]), fields[19]


def _tesseracts_of(parents: set[int]) -> set[tuple[int, str]]:
    """(pid, start time) of each tesseract whose parent is one of ``parents`` (the workers): found
    by its parent, not by its name alone, on a machine where other tesseracts may run."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[0] == "tesseract" and stat[2] in parents:
                found.add((int(entry), stat[3]))
    return found


def _written(pid: int) -> int:
    """Bytes the process has written so far (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _running(process: tuple[int, str]) -> bool:
    """Whether that process (the same one: its start time) still runs (a zombie has ended)."""
    stat = _stat(process[0])
    return stat is not None and stat[3] == process[1] and stat[1] not in ("Z", "X")


def _slow_scan() -> Document:
    """The tests end its worker while tesseract reads it and never wait for it to finish."""
    return Document("/d/scan.png", samples.slow_scan(), "")


def _texts(*names: str) -> list[Document]:
    return [Document(f"/d/{name}.txt", samples.prose(i, 100).encode(), "") for i, name in enumerate(names)]


class _Watch:
    """The tesseracts the pool's workers start, seen from another thread until stopped;
    ``reading`` is set once one has written its first line (its estimate of the image's
    resolution, on stderr): it has read the image and recognises it, and writes nothing more
    until it is done. Before that write, the end of its worker could kill it another way (a
    write to the closed pipe, SIGPIPE), which is not what the tests are about."""

    def __init__(self, pool: ExtractionPool) -> None:
        self.pool = pool
        self.seen: set[tuple[int, str]] = set()
        self.stop = threading.Event()
        self.reading = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.05):
            parents = {w.process.pid for w in list(self.pool._workers) if w.process.pid is not None}
            self.seen |= _tesseracts_of(parents)
            if any(_written(pid) for pid, _ in self.seen):
                self.reading.set()

    def __enter__(self) -> _Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        for process in self.seen:  # a failed test leaves no OCR running on the machine either
            if _running(process):
                os.kill(process[0], signal.SIGKILL)


@pytest.fixture
def worker_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temporary directory of the workers started from now on (they inherit TMPDIR)."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    return tmp_path


def _assert_all_gone(watch: _Watch, worker_tmp: Path) -> None:
    """Every tesseract the workers started ends soon, and none left a file behind (pytesseract
    wrote the image and its text to the temporary directory, which a killed worker left)."""
    assert watch.seen, "no tesseract of the workers was seen"
    until(
        lambda: not any(_running(p) for p in watch.seen),
        lambda: f"the workers' tesseracts {sorted(p for p in watch.seen if _running(p))} end",
        timeout_s=5,
    )
    assert list(worker_tmp.iterdir()) == []


def _in_a_thread(run: Iterator[tuple[int, WorkResult]]) -> tuple[threading.Thread, list[object]]:
    """Consume ``run`` in a thread of its own; what it yields and what it raises go to the list."""
    out: list[object] = []

    def consume() -> None:
        try:
            out.extend(run)
        except BaseException as e:
            out.append(e)

    thread = threading.Thread(target=consume)
    thread.start()
    return thread, out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["cut", "killed from outside"])
def test_a_worker_killed_while_tesseract_reads_takes_its_tesseract_with_it(
    how: str, worker_tmp: Path
) -> None:
    pool = ExtractionPool(PoolConfig(processes=1, min_words=5))
    try:
        with _Watch(pool) as watch:
            thread, out = _in_a_thread(pool.map([_slow_scan(), *_texts("after")]))
            assert watch.reading.wait(100), "tesseract did not start reading the image"
            worker = pool._workers[0].process
            if how == "cut":
                pool.cut()
            else:  # as the OOM killer would: the pool sees its worker crash
                assert worker.pid is not None
                os.kill(worker.pid, signal.SIGKILL)
            _assert_all_gone(watch, worker_tmp)
            thread.join(60)
        assert not thread.is_alive()
        if how == "cut":
            assert [type(x) for x in out] == [PoolClosed]
        else:  # the image's worker crashed; the next document got a new one
            results = dict(x for x in out if isinstance(x, tuple))
            assert results[0].error == f"extractor crashed (exit code {-signal.SIGKILL})"
            assert not results[1].error and results[1].chars > 0
    finally:
        pool.close()


@pytest.mark.timeout(120)
def test_a_map_closed_while_tesseract_reads_takes_its_tesseract_with_it(worker_tmp: Path) -> None:
    with ExtractionPool(PoolConfig(processes=2, min_words=5)) as pool, _Watch(pool) as watch:
        assert len(list(pool.map(_texts("w1", "w2")))) == 2  # both workers up and ready
        run = pool.map([_slow_scan(), *_texts("quick")])
        index, result = next(run)
        assert (index, result.source) == (1, "/d/quick.txt")  # the image is still being read
        assert watch.reading.wait(100), "tesseract did not start reading the image"
        run.close()  # its consumer is done: the map kills the worker still at its image
        _assert_all_gone(watch, worker_tmp)


@pytest.mark.timeout(120)
def test_a_worker_over_its_time_limit_takes_its_tesseract_with_it(worker_tmp: Path) -> None:
    # the limit is long enough for tesseract to start (a fraction of a second after the image
    # comes) and far shorter than the image's OCR
    config = PoolConfig(processes=1, time_limit_s=8.0, min_words=5)
    with ExtractionPool(config) as pool, _Watch(pool) as watch:
        assert len(list(pool.map(_texts("warm")))) == 1  # the worker is up before the clock starts
        results = dict(pool.map([_slow_scan()]))
        assert results[0].error == "extraction timed out after 8s"
        assert watch.reading.is_set(), "tesseract had not read the image within the time limit"
        _assert_all_gone(watch, worker_tmp)


@pytest.mark.timeout(60)
def test_ocr_of_an_image_writes_no_file_and_times_out_leaving_no_tesseract(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    assert "brown fox" in ocr_image(samples.render_text(samples.OCR_LINES), timeout_s=60)
    with pytest.raises(OcrError, match=r"^OCR timed out after 0.2s$"):
        ocr_image(samples.render_text(samples.OCR_LINES * 200), timeout_s=0.2)
    assert not _tesseracts_of({os.getpid()}), "the timed-out tesseract was left running"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(60)
def test_a_language_tesseract_lacks_is_one_clear_line() -> None:
    with pytest.raises(OcrError) as caught:
        ocr_image(samples.render_text(samples.OCR_LINES), timeout_s=60, language="xx-none")
    message = str(caught.value)
    assert message.startswith("tesseract failed (exit code ") and "xx-none" in message
    assert "\n" not in message


def test_an_unreadable_image_gets_the_same_reason_each_time() -> None:
    reasons = set()
    for _ in range(2):
        with pytest.raises(OcrError) as caught:
            ocr_image_bytes(b"this is not a png at all", 40_000_000, 10, 60)
        reasons.add(str(caught.value))
    assert reasons == {"not a readable image (cannot identify image file)"}


def _ocr_children(parent: int) -> list[int]:
    """The pids of the processes that ``parent`` started for OCR (a fake tesseract runs as sh,
    then as what it execs) and that have not ended."""
    found = []
    for entry in os.listdir("/proc"):
        stat = _stat(int(entry)) if entry.isdigit() else None
        if stat is not None and stat[2] == parent and stat[1] not in ("Z", "X"):
            found += [int(entry)] if stat[0] in ("setpriv", "tesseract", "sleep") else []
    return found


def _fake_tesseract(folder: Path, script: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shell script named tesseract first on PATH (setpriv stays where it is)."""
    fake = folder / "tesseract"
    fake.write_text(f"#!/bin/sh\n{script}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")


@pytest.mark.timeout(60)
def test_a_tesseract_whose_child_holds_its_pipes_still_times_out_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Review R13b R2: a child that kept tesseract's pipes open made the wait after its kill
    # raise TimeoutExpired ("... timed out after 5.0 seconds"), which replaced the OCR error.
    pids = tmp_path / "pids"
    _fake_tesseract(tmp_path, f"sleep 30 & echo $! > {pids}\nexec sleep 1000", monkeypatch)
    try:
        with pytest.raises(OcrError, match=r"^OCR timed out after 0.5s$"):
            ocr_image(samples.render_text(samples.OCR_LINES), timeout_s=0.5)
        assert _ocr_children(os.getpid()) == []
    finally:
        if pids.exists():
            os.kill(int(pids.read_text()), signal.SIGKILL)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stream", ["text", "messages"])
def test_tesseract_output_over_its_limit_is_one_line_for_that_image(
    stream: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Review R13b R4: its stdout and stderr were read whole (a tesseract writing 400 MB took
    # 1.2 GB); past their limits (made small here) it is killed and the image gets one line.
    monkeypatch.setattr(ocr, "OUTPUT_MAX_BYTES", 4096)
    monkeypatch.setattr(ocr, "ERRORS_MAX_BYTES", 1024)
    redirect = "" if stream == "text" else ">&2"
    _fake_tesseract(
        tmp_path, f"cat > /dev/null; head -c 100000000 /dev/zero | tr '\\0' a {redirect}", monkeypatch
    )
    limit = 4096 if stream == "text" else 1024
    with pytest.raises(OcrError, match=rf"^tesseract wrote over {limit} bytes of {stream} for one image$"):
        ocr_image(samples.render_text(samples.OCR_LINES), timeout_s=30)
    assert _ocr_children(os.getpid()) == []


@pytest.mark.timeout(60)
def test_a_tesseract_that_reads_no_image_and_the_missing_tools_are_one_line_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # one that never reads its stdin: the write ends, its exit code and text stand
    _fake_tesseract(tmp_path, "echo some text; exit 0", monkeypatch)
    assert ocr_image(samples.render_text(samples.OCR_LINES * 50), timeout_s=30) == "some text\n"
    _fake_tesseract(tmp_path, "echo 'Error opening data file' >&2; exit 1", monkeypatch)
    with pytest.raises(OcrError, match=r"^tesseract failed \(exit code 1\): Error opening data file$"):
        ocr_image(samples.render_text(samples.OCR_LINES), timeout_s=30)
    # setpriv (util-linux) or tesseract missing: one line each, nothing started
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(OcrError, match=r"^setpriv is not installed \(apt-get install util-linux\)"):
        ocr_image(samples.render_text(samples.OCR_LINES), timeout_s=30)
    monkeypatch.setenv("PATH", str(tmp_path / "none"))
    with pytest.raises(OcrError, match=r"^tesseract is not installed \(apt-get install tesseract-ocr\)$"):
        ocr_image(samples.render_text(samples.OCR_LINES), timeout_s=30)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["image", "pdf"])
def test_tesseracts_error_text_reaches_the_reason_as_one_escaped_line(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Y1: tesseract's stderr reached the reason with its NULs and ESCs raw (only white space
    # runs were joined); a scanned page of a PDF carries it the same way
    from crystalline.ingest.extract import ExtractionError, ExtractLimits, extract_document

    script = r"printf 'bad\000data\nERROR crystalline: forged\033[2J' >&2; exit 1"
    _fake_tesseract(tmp_path, script, monkeypatch)
    scan = samples.render_text(samples.OCR_LINES)
    body = samples.make_pdf([scan]) if kind == "pdf" else samples.image_bytes(scan, "PNG")
    media = "application/pdf" if kind == "pdf" else "image/png"
    doc = Document(f"scan.{'pdf' if kind == 'pdf' else 'png'}", body, media, origin="drop")
    with pytest.raises(ExtractionError) as caught:
        extract_document(doc, ExtractLimits(ocr_timeout_s=30), kind)
    page = "page 1: " if kind == "pdf" else ""
    assert str(caught.value) == (
        f"{page}tesseract failed (exit code 1): bad\\x00data ERROR crystalline: forged\\x1b[2J"
    )
