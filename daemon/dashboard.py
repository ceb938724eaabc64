"""The dashboard: the daemon watched and driven from a browser, served by the supervisor.

aiohttp on the supervisor's loop, loopback by default (``--http 127.0.0.1:8470``; ``--http off``:
no TCP listener at all). Views are read-only and pushed as server-sent events (one status
snapshot a second, the same dict `crystalline status --json` prints); ``/metrics`` is the
Prometheus text format. Every asset ships in the package (``dashboard_static/``).

Security:

- actions (pause/resume, add-url, checkpoint, generate, stop) need the token the daemon writes
  to ``RUNTIME_DIR/dashboard.json`` (mode 0640), in the ``X-Crystalline-Token`` header; no
  cookie is ever read, so another site cannot make a browser act (CSRF) without the token;
- the Host header must name this listener (localhost, 127.0.0.1, [::1] or the bound address,
  with its port): a DNS-rebinding page reaching us under its own name is refused;
- the page inserts every string as text (``textContent``), never as HTML, and the server
  sends a Content-Security-Policy without inline scripts;
- at most MAX_CONNECTIONS connections (at the cap a newcomer closes the longest-idle keep-alive
  one; 503 only when every one is in a request), and a request's head within REQUEST_HEAD_S
  (``connection_gate``): a local user holds at most MAX_CONNECTIONS of the supervisor's
  descriptors, and cannot lock others out with idle keep-alive connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import os
import secrets
import sqlite3
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from ..ingest.registry import Registry, RegistryNotCreated
from ..states import SERVICE, transition
from . import prometheus
from .config import parse_bind as parse_bind  # re-exported for the supervisor
from .connection_gate import ConnectionGate, GatedRunner
from .generate_fields import generate_fields
from .metrics_history import MetricsHistory
from .status_server import Command, CommandError


class Generation(Protocol):
    """What the dashboard needs of the generation process (``GenerationService``)."""

    def stream(self, fields: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]: ...
    async def vocabulary(self) -> dict[str, Any]: ...


log = logging.getLogger("crystalline.dashboard")

STATIC = Path(__file__).resolve().parent / "dashboard_static"
ASSETS = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "charts.js": "text/javascript",
    "style.css": "text/css",
}
TOKEN_HEADER = "X-Crystalline-Token"
ACTIONS = ("pause", "resume", "add-url", "checkpoint", "stop")
MAX_BODY = 16 * 1024
MAX_EVENT_CLIENTS = 32
# open connections at most (event streams included); past it one is answered 503 and closed
MAX_CONNECTIONS = 128
# a request's head must arrive within this of the connection's accept (or of the last response)
REQUEST_HEAD_S = 10.0
EVENT_INTERVAL_S = 1.0
WRITE_TIMEOUT_S = 10.0  # an event client that does not read for this long is dropped
FILES_EVERY_S = 5.0
READ_CLOSE_WAIT_S = 5.0  # close() waits this long for a read in flight (it then closes its reader)
SHUTDOWN_S = 0.5  # at close, what a request in progress gets (aiohttp's shutdown_timeout)
CLOSE_S = 2 * SHUTDOWN_S  # aiohttp's close at most: the request's end, then its cancelled task's
# aiohttp's close is cut no earlier than this: twice its own worst case, so that an ordinary close
# (an event stream open) racing a cut at a spent stop budget is never taken for one that overran
CUT_S = 2 * CLOSE_S
SPIRAL_EVERY_S = 60.0
SNAPSHOT_S = 0.5
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _host_part(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def list_checkpoints(directory: Path, now: float | None = None) -> list[dict[str, Any]]:
    """Checkpoint directories (``step-*``), newest first, with step, age and size."""
    now = time.time() if now is None else now
    out: list[dict[str, Any]] = []
    try:
        entries = list(directory.glob("step-*"))
    except OSError:
        return []
    for d in entries:
        try:
            if not d.is_dir():
                continue
            size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
            mtime = d.stat().st_mtime
            step = int(d.name.split("-", 1)[1])
        except (OSError, ValueError):
            continue
        out.append({"name": d.name, "step": step, "age_s": round(now - mtime, 1), "bytes": size})
    out.sort(key=lambda c: int(c["step"]), reverse=True)
    return out


LATEST_DOCUMENTS = 20
MAX_FIELD_CHARS = 300  # a title or URL longer than this is cut for the page


def latest_documents(
    registry: Registry, limit: int = LATEST_DOCUMENTS, origin: str = ""
) -> list[dict[str, Any]]:
    """The newest documents of the ingest registry (either backend; of one ``origin``: "crawl",
    "drop", ...), long strings cut for the page."""
    return [
        {k: v[:MAX_FIELD_CHARS] if isinstance(v, str) else v for k, v in doc.items()}
        for doc in registry.latest(limit, origin)
    ]


async def _cleanup_within(runner: web.AppRunner, timeout_s: float) -> None:
    """aiohttp's close of ``runner``, cut after ``timeout_s``: the listening sockets are then
    closed (a cleanup stuck before it stopped its sites leaves them listening) and the
    connections it left open aborted (their peers get a reset), in one warning."""
    server = runner.server  # its connections, before the cleanup lets go of it
    sites = runner.sites
    cleanup = asyncio.ensure_future(runner.cleanup())
    done, _ = await asyncio.wait([cleanup], timeout=timeout_s)
    if done:
        cleanup.result()
        return
    cleanup.cancel()
    for site in sites:
        listening = site._server  # what BaseSite.stop closes first
        if listening is not None:
            listening.close()
    left = [c.transport for c in server.connections if c.transport is not None] if server is not None else []
    for transport in left:
        transport.abort()
    log.warning("dashboard: aiohttp's close did not end in %.1f s: cut, %d connection(s) aborted",
                timeout_s, len(left))  # fmt: skip


def _finite(obj: Any) -> Any:
    """JSON for a browser: NaN and infinities (not JSON) become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _dumps(obj: Any) -> str:
    return json.dumps(_finite(obj), separators=(",", ":"))


class Dashboard:
    def __init__(
        self,
        bind: tuple[str, int],
        runtime_dir: Path,
        status: Callable[[], dict[str, Any]],
        commands: dict[str, Command],
        history: MetricsHistory,
        checkpoint_dir: Path,
        open_registry: Callable[[], Registry],
        generator: Generation,
    ) -> None:
        """``open_registry``: a reader of the ingest registry (``open_registry(...,
        read_only=True)``: never creates, migrates nor writes it; its own connection, opened at
        the first read and again after an error)."""
        self.bind = bind
        self.runtime_dir = runtime_dir
        self._status = status
        self.commands = commands
        self.history = history
        self.checkpoint_dir = checkpoint_dir
        self.open_registry = open_registry
        self._registry: Registry | None = None  # used by one read at a time (``_reading``)
        self._reading: asyncio.Task[None] | None = None  # the read of the files in flight
        self._read_failures: set[str] = set()  # kinds of failure logged since the last good read
        self._closed = False
        self._documents: list[dict[str, Any]] = []
        self._pages: list[dict[str, Any]] = []  # the latest crawled documents
        self.generator = generator  # the chat and the spiral: the generation process
        self.token = secrets.token_urlsafe(32)
        self.url: str | None = None
        self.error: str | None = None
        self.state = SERVICE.initial
        self._runner: web.AppRunner | None = None
        self._gate: ConnectionGate | None = None  # the listener's, once it listens
        self._allowed_hosts: set[str] = set()
        self._event_clients = 0
        self._generating = asyncio.Lock()
        self._checkpoints: list[dict[str, Any]] = []
        self._files_at = -math.inf
        self.requests = 0
        self.refused = 0  # wrong Host or missing token
        self.generations = 0
        self._spiral: dict[str, Any] | None = None
        self._snapshot: dict[str, Any] | None = None
        self._snapshot_at = -math.inf
        self._spiral_at = -math.inf

    @property
    def token_path(self) -> Path:
        return self.runtime_dir / "dashboard.json"

    # ---- life cycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Listen; OSError (address in use, ...) is kept in ``error`` for status, not raised."""
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._guard])
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", self._asset)
        app.router.add_get("/api/status", self._api_status)
        app.router.add_get("/api/history", self._api_history)
        app.router.add_get("/api/events", self._api_events)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/api/spiral", self._api_spiral)
        app.router.add_post("/api/generate", self._api_generate)
        app.router.add_post("/api/{action}", self._api_action)
        runner = GatedRunner(
            app,
            limit=MAX_CONNECTIONS,
            head_s=REQUEST_HEAD_S,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=SHUTDOWN_S,
        )
        await runner.setup()
        self.state = transition(SERVICE, self.state, "starting")
        host, port = self.bind
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            self.error = f"cannot listen on {_host_part(host)}:{port}: {exc.strerror or exc}"
            log.error("dashboard: %s (the daemon runs without it)", self.error)
            self.state = transition(SERVICE, self.state, "failed")
            return
        self._runner = runner
        self._gate = runner.gate
        self.state = transition(SERVICE, self.state, "running")
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        bound_port = sockets[0].getsockname()[1] if sockets else port
        self.url = f"http://{_host_part(host)}:{bound_port}/"
        names = {_host_part(host), "localhost", "127.0.0.1", "[::1]"}
        self._allowed_hosts = {f"{n}:{bound_port}".lower() for n in names}
        if bound_port == 80:
            self._allowed_hosts |= {n.lower() for n in names}
        try:
            self._write_token_file()
        except OSError as exc:  # a full or read-only runtime dir: the views still work, actions cannot
            self.error = f"cannot write the token file {self.token_path}: {exc.strerror or exc}"
            log.error("dashboard: %s (read-only until it can)", self.error)
        log.info("dashboard on %s (crystalline dashboard prints the URL with its token)", self.url)

    def _write_token_file(self) -> None:
        path = self.token_path
        tmp = path.with_name(f".{path.name}.tmp")
        data = json.dumps({"url": self.url, "token": self.token, "pid": os.getpid()}) + "\n"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o640)  # whatever the umask
        os.replace(tmp, path)

    async def close(self, timeout_s: float = READ_CLOSE_WAIT_S + CUT_S) -> None:
        """Stop serving, in ``timeout_s`` at most when that is CUT_S or more (the daemon's stop
        gives it what is left of its budget): a read in flight, or the registry's close, gets at
        most READ_CLOSE_WAIT_S of what is beyond CUT_S; then aiohttp closes the idle keep-alive
        connections at once and gives a request in progress (an event stream) and a half-sent one
        SHUTDOWN_S each (CLOSE_S together), then closes them. aiohttp's close is cut at the end of
        ``timeout_s``, never before CUT_S (twice CLOSE_S, so that its ordinary end always comes
        first), whatever it does (an older aiohttp's ``Server.wait_closed`` waits for every
        connection on Python 3.12+): the listening socket is closed and the connections it left
        are aborted then."""
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout_s
        self._closed = True
        # a read in flight closes the reader when it ends (each of its waits has a deadline); with
        # none, the reader is closed here (on PostgreSQL up to 10 s): either within the same time,
        # a thread still at it left to the daemon's stop (given up on at its EXIT_S)
        reading = self._reading or asyncio.ensure_future(asyncio.to_thread(self._close_registry))
        await asyncio.wait([reading], timeout=min(READ_CLOSE_WAIT_S, max(0.0, timeout_s - CUT_S)))
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await _cleanup_within(runner, max(CUT_S, until - loop.time()))
            with contextlib.suppress(FileNotFoundError):
                self.token_path.unlink()
        self.state = transition(SERVICE, self.state, "off")

    def info(self) -> dict[str, Any]:
        """What status reports under ``http``."""
        out: dict[str, Any] = {"url": self.url, "state": self.state}
        if self.error:
            out["error"] = self.error
        out.update(requests=self.requests, refused=self.refused, event_clients=self._event_clients)
        if self._gate is not None:
            out["connections_refused"] = self._gate.refused
            out["connections_evicted"] = self._gate.evicted
        return out

    # ---- data -----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The status dict (one source of truth) plus the checkpoints and latest documents,
        computed at most every SNAPSHOT_S however many pages are open."""
        now = time.monotonic()
        if self._snapshot is not None and now - self._snapshot_at < SNAPSHOT_S:
            return self._snapshot
        data = self._status()
        data["checkpoints"] = self._checkpoints
        if isinstance(data.get("ingest"), dict):
            data["ingest"]["latest"] = self._documents
        if isinstance(data.get("crawler"), dict):
            data["crawler"]["latest"] = self._pages
        self._snapshot, self._snapshot_at = data, now
        if self._checkpoints:
            data["training"]["checkpoint_age_s"] = self._checkpoints[0]["age_s"]
        return data

    async def refresh_files(self) -> None:
        """Read the checkpoints and the latest documents again once FILES_EVERY_S have passed,
        one read at a time: a caller that comes while one is in flight gets the last ones."""
        if self._closed or self._reading is not None or time.monotonic() - self._files_at < FILES_EVERY_S:
            return
        self._files_at = time.monotonic()
        self._reading = asyncio.create_task(self._read_files())
        await asyncio.shield(self._reading)  # a caller that goes away leaves the read to end

    async def _read_files(self) -> None:
        try:
            self._checkpoints, (self._documents, self._pages) = await asyncio.to_thread(self._read_all)
            self._snapshot = None  # shown from the next snapshot on
        finally:
            if self._closed and self._registry is not None:  # closed as the thread returned:
                await asyncio.to_thread(self._close_registry)  # close() is waiting, the pool open
            self._reading = None

    def _read_all(self) -> tuple[list[dict[str, Any]], tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
        """The checkpoints and the latest documents, in one thread; the reader is closed in it
        when the dashboard was closed meanwhile: a read that outlives close()'s wait ends after
        the stop has shut the loop's executor down, where no further ``to_thread`` can run."""
        try:
            checkpoints = list_checkpoints(self.checkpoint_dir)
            latest = (self._documents, self._pages) if self._closed else self._read_latest()
            return checkpoints, latest
        finally:
            if self._closed:
                self._close_registry()

    def _read_latest(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The latest documents and crawled pages (in a thread, one read at a time): the last
        ones read while the registry cannot be (not created yet, its database away, a newer
        schema); each kind of failure is logged once until a read succeeds."""
        try:
            if self._registry is None:
                self._registry = self.open_registry()
            latest = latest_documents(self._registry), latest_documents(self._registry, origin="crawl")
        except Exception as exc:  # whatever it is, the panel keeps the last lists
            kind = type(exc).__name__
            if kind not in self._read_failures:
                self._read_failures.add(kind)
                level = logging.INFO if isinstance(exc, RegistryNotCreated) else logging.WARNING
                why = (str(exc).strip().splitlines() or [""])[0]
                log.log(level, "latest documents not read (%s: %s); showing the last ones read", kind, why)
            self._close_registry()
            return self._documents, self._pages
        self._read_failures.clear()
        return latest

    def _close_registry(self) -> None:
        registry, self._registry = self._registry, None
        if registry is not None:
            with contextlib.suppress(OSError, sqlite3.Error):
                registry.close()

    # ---- guards ---------------------------------------------------------------------------
    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.requests += 1
        if self._gate is not None:
            self._gate.started(request.protocol)
        host = request.headers.get("Host", "").lower()
        if host not in self._allowed_hosts:
            self.refused += 1
            return web.Response(status=403, text="refused: the Host header does not name this dashboard\n")
        if request.method != "GET" and not self._has_token(request):
            self.refused += 1
            return web.json_response(
                {"ok": False, "error": f"this action needs the dashboard token in the {TOKEN_HEADER} header"},
                status=403,
            )
        response = await handler(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    def _has_token(self, request: web.Request) -> bool:
        given = request.headers.get(TOKEN_HEADER, "")
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())

    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        if request.content_type != "application/json":
            raise CommandError("send the request as application/json")
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise CommandError("the request body is not JSON") from None
        except RecursionError:  # [[[...: the parser's depth, reached well within MAX_BODY
            raise CommandError("the request body is not JSON: nested too deep") from None
        if not isinstance(body, dict):
            raise CommandError("the request body must be a JSON object")
        return body

    # ---- views ----------------------------------------------------------------------------
    async def _index(self, _request: web.Request) -> web.StreamResponse:
        return await self._file("index.html")

    async def _asset(self, request: web.Request) -> web.StreamResponse:
        return await self._file(request.match_info["name"])

    async def _file(self, name: str) -> web.StreamResponse:
        if name not in ASSETS:  # a fixed list: no path from the request reaches the disk
            raise web.HTTPNotFound()
        body = await asyncio.to_thread((STATIC / name).read_bytes)
        return web.Response(body=body, content_type=ASSETS[name], charset="utf-8")

    async def _api_status(self, _request: web.Request) -> web.StreamResponse:
        await self.refresh_files()
        return web.Response(text=_dumps(self.snapshot()), content_type="application/json")

    async def _api_history(self, _request: web.Request) -> web.StreamResponse:
        return web.Response(text=_dumps({"points": self.history.points}), content_type="application/json")

    async def _metrics(self, _request: web.Request) -> web.StreamResponse:
        await self.refresh_files()
        body = prometheus.render(self.snapshot)
        return web.Response(body=body, headers={"Content-Type": prometheus.CONTENT_TYPE})

    async def _api_spiral(self, _request: web.Request) -> web.StreamResponse:
        """The vocabulary for the spiral view: labels and a colour per token from the embeddings
        (computed by the generation process, kept for SPIRAL_EVERY_S)."""
        if self._spiral is None or time.monotonic() - self._spiral_at >= SPIRAL_EVERY_S:
            try:
                reply = await self.generator.vocabulary()
            except CommandError as exc:
                return web.json_response({"ok": False, "error": str(exc)}, status=503)
            self._spiral = {k: reply[k] for k in ("vocab", "labels", "colour", "version")}
            self._spiral_at = time.monotonic()
        return web.json_response({"ok": True, "data": self._spiral})

    async def _api_events(self, request: web.Request) -> web.StreamResponse:
        if self._event_clients >= MAX_EVENT_CLIENTS:
            return web.Response(status=503, text="too many dashboards open\n")
        self._event_clients += 1
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        try:
            await response.prepare(request)
            await self._send(response, "history", {"points": self.history.points})
            sent_points = len(self.history.points)
            last_point = self.history.points[-1] if self.history.points else None
            while True:
                await self.refresh_files()
                await self._send(response, "status", self.snapshot())
                points = self.history.points
                if points and points[-1] is not last_point:
                    # new points since the last event (the history may have been thinned: then all)
                    since = last_point["t"] if last_point is not None else None
                    new = [p for p in points if since is None or (p["t"] or 0.0) > since]
                    if len(points) < sent_points:
                        await self._send(response, "history", {"points": points})
                    else:
                        await self._send(response, "points", {"points": new})
                    sent_points, last_point = len(points), points[-1]
                await asyncio.sleep(EVENT_INTERVAL_S)
        except (ConnectionError, TimeoutError):  # the page went away, or stopped reading for 10 s
            return response
        finally:
            self._event_clients -= 1

    async def _send(self, response: web.StreamResponse, event: str, data: Any) -> None:
        payload = f"event: {event}\ndata: {_dumps(data)}\n\n".encode()
        await asyncio.wait_for(response.write(payload), WRITE_TIMEOUT_S)

    # ---- actions --------------------------------------------------------------------------
    async def _api_action(self, request: web.Request) -> web.StreamResponse:
        action = request.match_info["action"]
        if action not in ACTIONS:
            raise web.HTTPNotFound()
        try:
            body = await self._json_body(request)
            data = await asyncio.wait_for(self.commands[action].handler(body), 120.0)
        except CommandError as exc:
            return web.json_response({"ok": False, "error": str(exc)}, status=400)
        except TimeoutError:
            return web.json_response({"ok": False, "error": f"{action} timed out"}, status=504)
        return web.json_response({"ok": True, "data": _finite(data)})

    async def _api_generate(self, request: web.Request) -> web.StreamResponse:
        """Stream a continuation as NDJSON lines: ``{"text": ...}`` pieces, then ``{"done": ...}``."""
        try:
            body = await self._json_body(request)
            fields = generate_fields(body)
        except CommandError as exc:
            return web.json_response({"ok": False, "error": str(exc)}, status=400)
        if self._generating.locked():
            return web.json_response({"ok": False, "error": "a generation is running: try again"}, status=429)
        async with self._generating:
            response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
            await response.prepare(request)
            self.generations += 1
            try:
                # closed here, not whenever it is collected: a page that leaves mid-stream
                # stops the sampling now and frees the process for the next request
                async with contextlib.aclosing(self.generator.stream(fields)) as pieces:
                    async for piece in pieces:
                        line = _dumps(piece) + "\n"
                        await asyncio.wait_for(response.write(line.encode()), WRITE_TIMEOUT_S)
            except CommandError as exc:
                await response.write((_dumps({"error": str(exc)}) + "\n").encode())
            except (ConnectionError, TimeoutError):
                return response
            await response.write_eof()
            return response
