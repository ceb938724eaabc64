"""A small pool of extraction processes with a per-document time limit.

``concurrent.futures.ProcessPoolExecutor`` cannot stop one task: killing a worker breaks the
whole pool and loses every other task in flight. Here each worker is its own spawned process on
its own pipe; a document that overruns ``time_limit_s`` (or crashes its worker) gets an error
result, that worker is killed and replaced, and the other documents carry on.

Messages are raw bytes, never pickles: a task is two messages, ``<u32 header length><JSON
header>`` then the body as it is (no copy of a 64 MB body to frame it); a reply is ``<u32 header
length><JSON header, padded so the ids are 8-byte aligned><UTF-8 text><token ids>``, and the ids
are used in place (no copy either). A document's body is let go as soon as it is sent. Workers
extract, normalise, apply the quality rules, fingerprint and tokenize, so the parent (the
supervisor's thread) only does SQLite and file I/O.
"""

from __future__ import annotations

import base64
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import resource
import signal
import struct
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from crystalline.documents import Document
from crystalline.exit_status import one_line
from crystalline.log_lines import log_to_stderr

from .extract import ExtractionError, ExtractLimits, extract_document, sniff_kind
from .filters import FilterSettings, judge
from .in_order import InputOrder
from .language import load as load_language_model

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("crystalline.ingest.pool")

_LEN = struct.Struct("<I")
_READY = b"ready"
#: Seconds a new worker may take to import its libraries and say it is ready.
STARTUP_DEADLINE_S = 60.0
#: Seconds all workers together get to end once their pipes are closed, and then to be reaped
#: once the stragglers were killed (the daemon's stop budget counts on both: daemon/stop_budget.py).
CLOSE_GRACE_S = 2.0
KILLED_GRACE_S = 5.0


@dataclass
class WorkResult:
    """The outcome for one document. Exactly one of: ``error`` set (failed), ``filtered`` set
    (extracted but rejected by the quality rules), or neither (text and ids are valid)."""

    source: str
    kind: str = ""
    error: str = ""
    filtered: str = ""
    title: str = ""
    language: str = ""
    pages: int = 0
    ocr_pages: int = 0
    truncated: bool = False
    truncated_reason: str = ""
    encoding: str = ""
    chars: int = 0
    content_hash: str = ""
    simhash: int = 0
    minhash: list[int] = field(default_factory=list)  # LSH band keys (see minhash.py)
    minhash_signature: str = ""  # the packed signature, base64 (verifies LSH candidates)
    language_score: float = 0.0
    verdicts: dict[str, Any] = field(default_factory=dict)  # each filter's verdict (see filters.py)
    edits: dict[str, int] = field(default_factory=dict)  # lines removed and PII replaced, per rule
    text: str = ""
    # the token ids, a read-only view into the reply; None where the pool does not tokenize
    # (numpy is imported only where ids come: `crystalline extract` skips its 75-95 ms of CPU)
    ids: np.ndarray | None = None

    def token_ids(self) -> np.ndarray:
        """The token ids of a document its pool tokenized (ValueError for one it did not)."""
        if self.ids is None:
            raise ValueError(f"{self.source}: not tokenized (its pool has no tokenizer)")
        return self.ids


@dataclass(frozen=True)
class PoolConfig:
    """How the pool runs: processes, limits, quality rules, and the tokenizer (as JSON) if any."""

    processes: int = 1
    time_limit_s: float = 120.0
    memory_limit_mb: int = 2048  # address-space limit per worker (and its tesseract); 0: none
    limits: ExtractLimits = field(default_factory=ExtractLimits)
    min_chars: int = 200
    min_words: int = 30
    filters: FilterSettings = field(default_factory=FilterSettings)
    tokenizer_json: str = ""  # "": do not tokenize


def _frame(header: dict[str, Any], *parts: bytes, align_tail: int = 0) -> bytes:
    """``<u32 length><JSON header><parts...>``; with ``align_tail`` the header is padded with
    spaces so that the last part starts at a multiple of 8 (token ids read in place)."""
    head = json.dumps(header).encode("utf-8")
    if align_tail:
        before_tail = _LEN.size + len(head) + sum(len(p) for p in parts) - align_tail
        head += b" " * (-before_tail % 8)
    return b"".join((_LEN.pack(len(head)), head, *parts))


def _unframe(data: bytes) -> tuple[dict[str, Any], memoryview]:
    (n,) = _LEN.unpack_from(data)
    view = memoryview(data)
    return json.loads(bytes(view[4 : 4 + n])), view[4 + n :]


def _work(config_json: str, header: dict[str, Any], body: bytes, tokenizer: Any) -> bytes:
    """Process one task inside a worker; returns the reply frame."""
    config = json.loads(config_json)
    limits = ExtractLimits(**config["limits"])
    doc = Document(
        source=header["source"],
        body=body,
        content_type=header.get("content_type", ""),
        charset=header.get("charset"),
        origin=header.get("origin", "crawl"),
    )
    reply: dict[str, Any] = {"source": doc.source}
    # sniffed once: by the caller where it routed the document by its kind, else here
    kind = header.get("kind") or sniff_kind(body, doc.content_type, doc.source)
    try:
        ex = extract_document(doc, limits, kind)
    except ExtractionError as e:
        reply["error"] = one_line(e)
        reply["kind"] = kind
        return _frame(reply)
    reply.update(
        kind=ex.kind,
        title=ex.title,
        pages=ex.pages,
        ocr_pages=ex.ocr_pages,
        truncated=ex.truncated,
        truncated_reason=ex.truncated_reason,
        encoding=ex.encoding,
    )
    verdict = judge(ex.text, config)
    apply = header.get("filter", True)
    problem = verdict.problem if apply else ""
    text = verdict.text if apply else ex.text
    reply.update(
        chars=len(text),
        language=verdict.language or ex.language,
        language_score=verdict.language_score,
        verdicts=verdict.verdicts,
        edits=verdict.edits,
    )
    if problem:
        reply["filtered"] = problem
    raw = text.encode("utf-8", "surrogatepass") if header.get("want_text") else b""
    reply["text_bytes"] = len(raw)
    ids = b""
    if not problem and header.get("fingerprint", True):
        # imported where used: `crystalline extract` asks for no fingerprint (numpy's random
        # module, 7 ms of its start-up)
        from .dedup import content_hash, simhash
        from .minhash import fingerprint

        reply["content_hash"] = content_hash(text)
        reply["simhash"] = simhash(text)
        reply["minhash"], signature = fingerprint(text)
        reply["minhash_signature"] = base64.b64encode(signature).decode("ascii")
    if not problem and tokenizer is not None:
        arr = tokenizer.encode(text)
        reply["dtype"] = arr.dtype.str
        ids = arr.tobytes()
    return _frame(reply, raw, ids, align_tail=len(ids))


def _work_safely(config_json: str, header: dict[str, Any], body: bytes, tokenizer: Any) -> bytes:
    """:func:`_work`, with a library's failure as the document's error instead of an exception."""
    try:
        return _work(config_json, header, body, tokenizer)
    except MemoryError:
        return _frame({"source": header["source"], "error": "out of memory during extraction"})
    except Exception as e:  # a library's own error on hostile input: fail the document, keep the worker
        log.warning("extraction of %s raised %s", header["source"], type(e).__name__, exc_info=True)
        why = one_line(e)[:200] if str(e).strip() else "no message"
        return _frame({"source": header["source"], "error": f"extractor error ({type(e).__name__}: {why})"})


@dataclass(frozen=True)
class _TaskOptions:
    """What is done with each document of a map, and what its worker is told beside the body."""

    want_text: bool = False
    apply_filters: bool = True
    fingerprint: bool = True
    kind: str = ""  # what the documents are where their owner sniffed that to route them; "": sniffed there

    def header(self, doc: Document) -> dict[str, Any]:
        return {
            "source": doc.source,
            "kind": self.kind,
            "content_type": doc.content_type,
            "charset": doc.charset,
            "origin": doc.origin,
            "want_text": self.want_text,
            "filter": self.apply_filters,
            "fingerprint": self.fingerprint,
        }


def _worker_main(conn: multiprocessing.connection.Connection, config_json: str) -> None:
    """Entry point of a pool process: handshake, then one reply per task until EOF."""
    os.environ["OMP_THREAD_LIMIT"] = "1"  # tesseract: one thread per pool worker
    # Ctrl-C reaches the whole process group; the owner stops the pool (EOF on the pipe)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    log_to_stderr(f"ingest-pool[{os.getpid()}] %(levelname)s %(message)s")
    config = json.loads(config_json)
    # what fingerprints and token ids are computed with, loaded before the address-space limit
    # and before the worker is ready (75-95 ms of CPU: not in a document's time limit)
    import numpy  # noqa: F401

    if config["memory_limit_mb"] > 0:
        limit = config["memory_limit_mb"] * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    tokenizer = None
    if config["tokenizer_json"]:
        # The tokenizer lives with the model (workers/); it is rebuilt from its JSON document.
        from crystalline.tokens.tokenizer import tokenizer_from_json

        tokenizer = tokenizer_from_json(config["tokenizer_json"])
    load_language_model()
    try:
        conn.send_bytes(_READY)
    except (BrokenPipeError, OSError):
        return  # the pool was closed before this worker came up
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return  # the parent closed the pipe or died
        header, _ = _unframe(data)
        try:
            body = conn.recv_bytes()  # the body follows its header as a message of its own
        except (EOFError, OSError):
            return
        reply = _work_safely(config_json, header, body, tokenizer)
        try:
            conn.send_bytes(reply)
        except (BrokenPipeError, OSError):
            return


class _Worker:
    def __init__(self, ctx: Any, config_json: str) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_worker_main, args=(child, config_json), daemon=True)
        self.process.start()
        child.close()
        self.task: tuple[int, Document] | None = None
        self.deadline = time.monotonic() + STARTUP_DEADLINE_S
        self.ready = False


class PoolClosed(RuntimeError):
    """A map on a pool closed (or cut, :meth:`ExtractionPool.cut`) before or under it: no process
    starts after either, and the documents it did not finish get no result (their owner keeps
    them for a later run)."""


def _join_all(workers: list[_Worker], grace_s: float) -> None:
    """Wait for every worker's process to end, all of them within one ``grace_s``."""
    deadline = time.monotonic() + grace_s
    for w in workers:
        w.process.join(timeout=max(0.0, deadline - time.monotonic()))


def _kill_all(workers: list[_Worker]) -> None:
    """Kill the workers' processes still alive, then reap them all within one
    :data:`KILLED_GRACE_S`, and close their pipes."""
    for w in workers:
        if w.process.is_alive():
            w.process.kill()
    _join_all(workers, KILLED_GRACE_S)
    for w in workers:
        w.conn.close()


class ExtractionPool:
    """``processes`` worker processes; :meth:`map` runs documents through them."""

    def __init__(self, config: PoolConfig) -> None:
        if config.processes < 1:
            raise ValueError(f"pool processes must be at least 1, got {config.processes}")
        self.config = config
        cfg = asdict(config)
        self._config_json = json.dumps(cfg)
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self._closed = False
        self.restarts = 0

    def __enter__(self) -> ExtractionPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every worker (closing its pipe ends its loop; the stragglers are killed): 2 s for
        all of them to end, then 5 s for all the killed ones, whatever their number. No worker
        starts after this: a map still running (or started later) raises :class:`PoolClosed`
        where it would start one, instead of giving a document a result it did not earn. The
        pool is not thread-safe: its owner closes it from the thread that maps; from another
        thread, :meth:`cut` ends a running map."""
        self._closed = True
        for w in self._workers:
            w.conn.close()
        _join_all(self._workers, CLOSE_GRACE_S)
        _kill_all(self._workers)
        self._workers.clear()

    def cut(self) -> None:
        """The one call allowed from another thread while a map runs (``Ingestor.close``): no
        worker starts from now on and every worker is killed, so the map raises
        :class:`PoolClosed` at once instead of waiting for the documents in hand (each up to
        ``time_limit_s``); those get no result. The map's thread then closes the pool."""
        self._closed = True
        for w in list(self._workers):  # a copy: the map's thread may change the list
            w.process.kill()  # a no-op once the map's thread has reaped it

    def _start_worker(self) -> None:
        if self._closed:
            raise PoolClosed("the extraction pool is closed")
        self._workers.append(_Worker(self._ctx, self._config_json))

    def _ensure_workers(self) -> None:
        self._workers = [w for w in self._workers if w.process.is_alive()]
        while len(self._workers) < self.config.processes:
            self._start_worker()

    def _replace(self, w: _Worker) -> None:
        if self._closed:  # cut (or closed) under the map: its pipe broke or it died for that
            raise PoolClosed("the extraction pool was closed during a map")
        _kill_all([w])
        self._workers.remove(w)
        self.restarts += 1
        self._start_worker()

    def map(
        self,
        docs: Iterable[Document],
        *,
        want_text: bool = False,
        apply_filters: bool = True,
        fingerprint: bool = True,
        in_order: bool = False,
    ) -> Iterator[tuple[int, WorkResult]]:
        """Yield ``(input index, result)`` for every document, in completion order, or with
        ``in_order`` in input order. Each document yields exactly one result, whatever happens to
        its worker. A document is taken from ``docs`` when a worker is free to take it, and its
        body let go once sent, so at most one body per worker is held however many documents
        come (plus, in the caller's generator, the one it yielded last, until it is advanced).
        In input order, at most twice as many results as workers are held back for the
        documents before them: no document is handed out further ahead of the oldest one not yet
        yielded (the workers wait instead). Without ``fingerprint`` the content hash, SimHash and
        MinHash are left empty (``crystalline extract`` shows none). A map that ends early (its
        consumer closes it, or ``docs`` or a worker's start raises) kills the workers still at
        one of its documents, all within one :data:`KILLED_GRACE_S` (the next map starts new
        ones): their replies would otherwise reach the next map, taken there for the results of
        its own documents at the same indexes. ``docs`` may end early (its owner stops between
        documents): the documents taken still get their results. On a closed pool, or one cut
        under it (:meth:`cut`), the map raises :class:`PoolClosed`."""
        return self._mapped(docs, _TaskOptions(want_text, apply_filters, fingerprint), in_order)

    def _mapped(
        self, docs: Iterable[Document], options: _TaskOptions, in_order: bool
    ) -> Iterator[tuple[int, WorkResult]]:
        """:meth:`map` with its ``options`` (:func:`extract_in_process` adds the kind it sniffed)."""
        try:
            yield from self._map(docs, options, in_order)
        finally:
            busy = [w for w in self._workers if w.task is not None]
            _kill_all(busy)  # together: one shared wait, whatever their number
            self._workers = [w for w in self._workers if w.task is None]

    def _map(
        self, docs: Iterable[Document], options: _TaskOptions, in_order: bool
    ) -> Iterator[tuple[int, WorkResult]]:
        """:meth:`map`'s work, but for the workers left at a task when it ends early."""
        pending = enumerate(docs)
        taken_back: deque[tuple[int, Document]] = deque()  # from a worker whose pipe broke
        exhausted = False
        taken = 0  # documents taken from ``docs``
        # in input order: each result held until those before it are out, at most twice as
        # many documents as workers handed out past the oldest one not yet yielded
        order = InputOrder[WorkResult](2 * self.config.processes) if in_order else None

        def take() -> tuple[int, Document] | None:
            nonlocal exhausted, taken
            if taken_back:
                return taken_back.popleft()
            if exhausted or (order is not None and not order.may_take(taken)):
                return None
            item = next(pending, None)
            exhausted = item is None
            taken += not exhausted
            return item

        def done(index: int, result: WorkResult) -> list[tuple[int, WorkResult]]:
            return [(index, result)] if order is None else order.release(index, result)

        self._ensure_workers()
        while True:
            if self._closed:
                raise PoolClosed("the extraction pool was closed during a map")
            for w in self._workers:
                if not (w.ready and w.task is None):
                    continue
                item = take()
                if item is None:
                    break
                index, doc = item
                try:
                    w.conn.send_bytes(_frame(options.header(doc)))
                    w.conn.send_bytes(doc.body)
                except (BrokenPipeError, OSError):
                    taken_back.appendleft((index, doc))
                    self._replace(w)
                    break
                w.task = (index, replace(doc, body=b""))  # only its source is needed now
                w.deadline = time.monotonic() + self.config.time_limit_s
                del doc, item  # nor is the body: let it go while the worker is at it
            waiting = [w for w in self._workers if w.task is not None or not w.ready]
            if exhausted and not taken_back and all(w.task is None for w in self._workers):
                if order is not None:
                    order.finish()  # every index released: nothing is left held back
                return
            # the deadlines of the workers at a task or starting (an idle one has none)
            deadline = min((w.deadline for w in waiting), default=time.monotonic() + self.config.time_limit_s)
            timeout = max(0.0, deadline - time.monotonic())
            try:
                ready = multiprocessing.connection.wait([w.conn for w in self._workers], timeout=timeout)
            except OSError as e:  # a pipe closed under this map
                if self._closed:
                    raise PoolClosed("the extraction pool was closed during a map") from e
                raise
            for w in list(self._workers):
                if w.conn in ready:
                    try:
                        data = w.conn.recv_bytes()
                    except (EOFError, OSError) as e:
                        if self._closed:  # closed under this map: no result for a document cut off
                            raise PoolClosed("the extraction pool was closed during a map") from e
                        w.process.join(timeout=KILLED_GRACE_S)
                        code = w.process.exitcode
                        task = w.task
                        if not w.ready:
                            _kill_all([w])
                            self._workers.remove(w)
                            raise RuntimeError(
                                f"extraction process failed to start (exit code {code})"
                            ) from e
                        self._replace(w)
                        if task is None:
                            log.warning("extraction process died while idle (exit %s)", code)
                            continue
                        crashed = f"extractor crashed (exit code {code})"
                        yield from done(task[0], WorkResult(task[1].source, error=crashed))
                        continue
                    if not w.ready:
                        w.ready = data == _READY
                        continue
                    task, w.task = w.task, None
                    if task is not None:
                        result = self._parse(data)
                        if result.truncated:
                            log.info("%s truncated: %s", result.source, result.truncated_reason)
                        yield from done(task[0], result)
                elif (w.task is not None or not w.ready) and time.monotonic() >= w.deadline:
                    task = w.task
                    self._replace(w)
                    if task is None:
                        raise TimeoutError(f"extraction process did not start within {STARTUP_DEADLINE_S:g}s")
                    log.warning(
                        "extraction of %s exceeded %gs; worker killed",
                        task[1].source,
                        self.config.time_limit_s,
                    )
                    limit = self.config.time_limit_s
                    timed_out = WorkResult(task[1].source, error=f"extraction timed out after {limit:g}s")
                    yield from done(task[0], timed_out)

    @staticmethod
    def _parse(data: bytes) -> WorkResult:
        header, rest = _unframe(data)
        n_text = header.pop("text_bytes", 0)
        dtype = header.pop("dtype", "")
        text = bytes(rest[:n_text]).decode("utf-8", "surrogatepass")
        # a read-only view into the reply (which holds little else): no second copy of the ids
        ids = None
        if dtype:
            import numpy as np

            ids = np.frombuffer(rest[n_text:], dtype=np.dtype(dtype))
        return WorkResult(text=text, ids=ids, **header)


class _Overrun(BaseException):
    """Raised by the in-process time limit's alarm; a BaseException, so that no extractor's
    ``except Exception`` takes it for its own error."""


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, as ``taskset`` sets it), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


#: The kinds :func:`extract_in_process` works in its own process. A PDF (pdfium) or an image
#: (PIL, then tesseract) is decoded by native code that runs long: a crash there would end the
#: whole process and every other file's result with it, and a loop inside it never returns to
#: Python for the alarm to stop it, so those go to a worker. This narrows the native code run in
#: process, it does not remove it: HTML and text go through libxml2 (lxml) and
#: charset_normalizer's compiled modules, where the alarm acts only once they return to Python,
#: and a crash there ends the process all the same.
IN_PROCESS_KINDS = ("html", "text")


def extract_in_process(
    config: PoolConfig,
    docs: Iterable[Document],
    *,
    want_text: bool = False,
    apply_filters: bool = True,
    fingerprint: bool = True,
) -> Iterator[tuple[int, WorkResult]]:
    """What :meth:`ExtractionPool.map` yields, in input order, one document at a time (taken
    from ``docs`` when its turn comes), for where worker processes would only cost (one process
    asked for, or one CPU: their start-up, a second import of everything and a round trip per
    document). HTML and text (:data:`IN_PROCESS_KINDS`) are worked out in this process, with the
    same work and reply frames as a worker's, so the same results: the time limit holds in the
    main thread (an alarm, acted on once native code returns to Python; a document that overruns
    gets the pool's timeout error), the memory
    limit is ``memory_limit_mb`` of address space beyond what this process holds when it starts
    (a document that needs more gets the pool's "out of memory" error). Every other kind goes
    to one pool worker, started when the first such document comes (none for HTML and text
    alone), where its decoder's crash or overrun is that document's alone, as in the pool."""
    config_json = json.dumps(asdict(config))
    tokenizer = None
    if config.tokenizer_json:
        from crystalline.tokens.tokenizer import tokenizer_from_json

        tokenizer = tokenizer_from_json(config.tokenizer_json)
    if fingerprint:  # what fingerprints are computed with, outside the limits (as a worker)
        import numpy  # noqa: F401
    os.environ["OMP_THREAD_LIMIT"] = "1"  # tesseract: one thread, as in a pool worker
    limit = config.time_limit_s
    options = _TaskOptions(want_text, apply_filters, fingerprint)

    def overrun(_signum: int, _frame: object) -> None:
        raise _Overrun

    alarm = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGALRM, overrun) if alarm else None
    address_space = _limit_address_space(config.memory_limit_mb)
    isolated = ExtractionPool(replace(config, processes=1))  # no process until its first document
    loaded: set[str] = set()
    try:
        for index, doc in enumerate(docs):
            kind = sniff_kind(doc.body, doc.content_type, doc.source)  # the one sniff of it
            if kind not in IN_PROCESS_KINDS:
                for _, result in isolated._mapped((doc,), replace(options, kind=kind), in_order=False):
                    yield index, result
                continue
            if kind not in loaded:
                loaded.add(kind)
                limited = resource.getrlimit(resource.RLIMIT_AS)
                if address_space is not None:
                    resource.setrlimit(resource.RLIMIT_AS, address_space)
                try:
                    _load_extractors(kind)
                finally:
                    if address_space is not None:
                        resource.setrlimit(resource.RLIMIT_AS, limited)
            header = replace(options, kind=kind).header(doc)
            try:
                try:
                    if alarm:
                        signal.setitimer(signal.ITIMER_REAL, limit)
                    reply = _work_safely(config_json, header, doc.body, tokenizer)
                finally:
                    if alarm:
                        signal.setitimer(signal.ITIMER_REAL, 0)
            except _Overrun:
                log.warning("extraction of %s exceeded %gs; stopped", doc.source, limit)
                yield index, WorkResult(doc.source, error=f"extraction timed out after {limit:g}s")
                continue
            result = ExtractionPool._parse(reply)
            if result.truncated:
                log.info("%s truncated: %s", result.source, result.truncated_reason)
            yield index, result
    finally:
        isolated.close()
        if alarm:
            signal.signal(signal.SIGALRM, previous)
        if address_space is not None:
            resource.setrlimit(resource.RLIMIT_AS, address_space)


def _load_extractors(kind: str) -> None:
    """Import what a document of ``kind`` (html or text) is worked with in process and load the
    language model, as a pool worker does before it says it is ready: outside the time limit and
    outside the address-space limit, under which a library mapped after a document that used
    the limit up could fail to load, and fail the next document for the other's sake."""
    load_language_model()
    if kind == "html":
        # html_text imports trafilatura where a page first needs it (any page but an empty or a
        # huge one), which brings charset_normalizer, what charset.py detects encodings with
        import trafilatura  # noqa: F401

        from . import html_text  # noqa: F401
    else:
        import charset_normalizer  # noqa: F401


def _limit_address_space(megabytes: int) -> tuple[int, int] | None:
    """Limit this process's address space to what it maps now plus ``megabytes`` (0: no limit);
    the limits before, to restore, or None where nothing was limited."""
    if megabytes <= 0:
        return None
    try:
        with open("/proc/self/statm", "rb") as statm:
            mapped = int(statm.read().split()[0]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        log.warning("extraction in process: address space unknown (/proc/self/statm), no memory limit")
        return None
    before = resource.getrlimit(resource.RLIMIT_AS)
    limit = mapped + megabytes * 1024 * 1024
    if before[0] != resource.RLIM_INFINITY and before[0] <= limit:
        return None  # already held to as little
    hard = before[1]
    soft = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    return before
