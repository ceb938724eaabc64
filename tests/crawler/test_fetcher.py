"""Hostile and odd responses: huge bodies, gzip bombs, slow servers, wrong labels, other encodings."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from pathlib import Path

from _loopback import Hits, crawl, fast_settings, html, serve, url_state
from aiohttp import web

from crystalline.crawler.fetcher import Fetcher, parse_retry_after
from crystalline.crawler.urls import UrlPolicy


def _gzip_bomb(size: int) -> bytes:
    """``size`` zero bytes, gzip-compressed (about 1000 : 1)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(1024 * 1024)
    parts = [compressor.compress(chunk) for _ in range(size // len(chunk))]
    return b"".join(parts) + compressor.flush()


def test_a_50_mb_page_is_cut_off_at_the_cap(tmp_path: Path) -> None:
    async def main() -> None:
        sent = {"bytes": 0}

        async def huge(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "text/html"})
            await response.prepare(request)
            chunk = b"<p>" + b"x" * (64 * 1024 - 3)
            try:
                for _ in range(50 * 16):  # 50 MB, no Content-Length
                    await response.write(chunk)
                    sent["bytes"] += len(chunk)
            except (ConnectionError, RuntimeError):
                pass  # the crawler hung up
            return response

        async def start(request: web.Request) -> web.Response:
            return html('<a href="/huge">h</a><a href="/fine">f</a>')

        routes = [web.get("/", start), web.get("/huge", huge), web.get("/fine", start)]
        async with serve(routes) as base:
            settings = fast_settings(tmp_path, max_body_bytes=1024 * 1024)
            summary, sink, _ = await crawl(settings, [base + "/"])
        state = url_state(settings, base + "/huge")
        assert sorted(sink.sources()) == [base + "/", base + "/fine"]
        assert state is not None and state[0] == "failed" and "exceeds" in (state[2] or "")
        assert sent["bytes"] < 20 * 1024 * 1024  # the rest was never read
        assert summary.failed == 1

    asyncio.run(main())


def test_content_length_over_the_cap_is_refused_before_reading(tmp_path: Path) -> None:
    async def main() -> None:
        async def big(request: web.Request) -> web.Response:
            return web.Response(body=b"a" * 300_000, content_type="text/plain")

        async with serve([web.get("/", big)]) as base:
            settings = fast_settings(tmp_path, max_body_bytes=100_000)
            async with Fetcher(settings, UrlPolicy(settings)) as fetcher:
                result = await fetcher.fetch(base + "/", None, settings.max_body_bytes)
        assert result.body == b"" and "Content-Length 300000" in result.error

    asyncio.run(main())


def test_a_gzip_bomb_does_not_expand(tmp_path: Path) -> None:
    bomb = _gzip_bomb(64 * 1024 * 1024)
    assert len(bomb) < 200_000

    async def main() -> None:
        async def exploding(request: web.Request) -> web.Response:
            return web.Response(body=bomb, headers={"Content-Type": "text/html", "Content-Encoding": "gzip"})

        async def small(request: web.Request) -> web.Response:
            body = gzip.compress(b"<html><body>compressed and fine</body></html>")
            return web.Response(body=body, headers={"Content-Type": "text/html", "Content-Encoding": "gzip"})

        async with serve([web.get("/bomb", exploding), web.get("/small", small)]) as base:
            settings = fast_settings(tmp_path, max_body_bytes=1024 * 1024)
            async with Fetcher(settings, UrlPolicy(settings)) as fetcher:
                blown = await fetcher.fetch(base + "/bomb", None, settings.max_body_bytes)
                fine = await fetcher.fetch(base + "/small", None, settings.max_body_bytes)
        assert blown.body == b"" and "exceeds 1048576 bytes" in blown.error
        assert fine.body == b"<html><body>compressed and fine</body></html>"

    asyncio.run(main())


def test_a_slow_server_times_out_and_is_retried_a_bounded_number_of_times(tmp_path: Path) -> None:
    async def main() -> None:
        hits = Hits()

        async def stalls(request: web.Request) -> web.Response:
            await asyncio.sleep(5)
            return html("too late")

        async def drips(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "text/html"})
            await response.prepare(request)
            for _ in range(100):  # a byte every 0.1 s: never a read timeout, but the total one
                await response.write(b"x")
                await asyncio.sleep(0.1)
            return response

        routes = [web.get("/stalls", stalls), web.get("/drips", drips)]
        async with serve(routes, hits=hits) as base:
            settings = fast_settings(tmp_path, read_timeout=0.3, total_timeout=1.0, max_retries=1)
            summary, sink, _ = await crawl(settings, [base + "/stalls", base + "/drips"])
        stalled, dripped = (url_state(settings, base + p) for p in ("/stalls", "/drips"))
        assert sink.docs == []
        assert hits.count("/stalls") == 2 and hits.count("/drips") == 2
        assert stalled is not None and stalled[0] == "failed" and "timeout" in (stalled[2] or "")
        assert dripped is not None and dripped[0] == "failed" and "timeout" in (dripped[2] or "")
        assert summary.failed == 2

    asyncio.run(main())


def test_only_ingestible_content_types_are_stored(tmp_path: Path) -> None:
    async def main() -> None:
        async def start(request: web.Request) -> web.Response:
            return html('<a href="/doc.pdf">pdf</a><a href="/data.json">json</a><a href="/img">img</a>')

        async def pdf(request: web.Request) -> web.Response:
            return web.Response(body=b"%PDF-1.4 ...", content_type="application/pdf")

        async def json_data(request: web.Request) -> web.Response:
            return web.json_response({"a": 1})

        async def image(request: web.Request) -> web.Response:
            return web.Response(body=b"\x89PNG\r\n\x1a\n", content_type="image/png")

        routes = [web.get("/", start), web.get("/doc.pdf", pdf), web.get("/data.json", json_data),
                  web.get("/img", image)]  # fmt: skip
        async with serve(routes) as base:
            summary, sink, _ = await crawl(fast_settings(tmp_path), [base + "/"])
        assert {d.source: d.content_type for d in sink.docs} == {
            base + "/": "text/html",
            base + "/doc.pdf": "application/pdf",
            base + "/img": "image/png",
        }
        assert summary.skipped == 1

    asyncio.run(main())


def test_binary_bytes_labelled_html_are_skipped(tmp_path: Path) -> None:
    async def main() -> None:
        async def start(request: web.Request) -> web.Response:
            return html('<a href="/binary">b</a><a href="/after">a</a>')

        async def binary(request: web.Request) -> web.Response:
            return web.Response(body=bytes(range(256)) * 64, content_type="text/html")

        routes = [web.get("/", start), web.get("/binary", binary), web.get("/after", start)]
        async with serve(routes) as base:
            settings = fast_settings(tmp_path)
            summary, sink, _ = await crawl(settings, [base + "/"])
        state = url_state(settings, base + "/binary")
        assert sorted(sink.sources()) == [base + "/", base + "/after"]
        assert state == ("skipped", 200, "binary body labelled text/html")
        assert summary.skipped == 1

    asyncio.run(main())


def test_a_latin_1_page_keeps_its_charset_and_its_links_resolve(tmp_path: Path) -> None:
    async def main() -> None:
        hits = Hits()
        page = '<html><body><p>Déjà vu</p><a href="/café">c</a></body></html>'.encode("latin-1")

        async def latin(request: web.Request) -> web.Response:
            return web.Response(body=page, headers={"Content-Type": "text/html; charset=ISO-8859-1"})

        async def cafe(request: web.Request) -> web.Response:
            return html("coffee")

        async with serve([web.get("/", latin), web.get("/café", cafe)], hits=hits) as base:
            _, sink, _ = await crawl(fast_settings(tmp_path), [base + "/"])
        first = sink.docs[0]
        assert (first.charset, first.body) == ("iso-8859-1", page)
        assert sorted(sink.sources()) == [base + "/", base + "/caf%C3%A9"]
        assert "/caf%C3%A9" in hits.paths()  # UTF-8 on the wire, which the server decodes to /café

    asyncio.run(main())


def test_retry_after_parsing() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    later = parse_retry_after("Wed, 21 Oct 2099 07:28:00 GMT")
    assert later is not None and later > 1e9
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_a_servers_control_characters_reach_the_reason_escaped(tmp_path: Path) -> None:
    # Z1: a Content-Type with an ESC and a SOH (which aiohttp's parser lets through) was named
    # raw in the skipped page's reason; a status line it cannot parse is one line too
    responses = {
        "/type": b"HTTP/1.1 200 OK\r\nContent-Type: text/\x1b[2J\x01evil\r\nContent-Length: 2\r\n\r\nhi",
        "/status": b"HTTP/1.1 2x0 O\x1b[2JK\r\nContent-Length: 2\r\n\r\nhi",
    }

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        writer.write(responses[request.split()[1].decode()])
        await writer.drain()
        writer.close()

    async def main() -> dict[str, str]:
        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        settings = fast_settings(tmp_path)
        try:
            async with Fetcher(settings, UrlPolicy(settings)) as fetcher:
                base, accept = f"http://127.0.0.1:{port}", settings.content_types
                return {path: (await fetcher.fetch(base + path, accept, 1000)).error for path in responses}
        finally:
            server.close()
            await server.wait_closed()

    errors = asyncio.run(main())
    assert errors["/type"] == "content type text/\\x1b[2j\\x01evil skipped"
    assert errors["/status"].startswith("400, message=") and errors["/status"].isprintable()
