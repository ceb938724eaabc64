"""One HTTP GET with every limit a crawler needs, over a shared aiohttp session.

Redirects are not followed here: a 3xx comes back with its absolute ``location`` and the crawl
queues the target as a new frontier entry, so each hop passes the URL policy, robots.txt,
politeness and dedup (a redirect loop ends at the first URL already seen). Decompression is ours,
not aiohttp's, so the ``max_body_bytes`` cap holds after inflation: a gzip bomb stops at the cap.
"""

from __future__ import annotations

import email.utils
import logging
import socket
import time
import zlib
from dataclasses import dataclass, replace
from urllib.parse import urljoin

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from ..exit_status import one_line
from .settings import CrawlSettings
from .urls import UrlPolicy, is_private_host

log = logging.getLogger("crystalline.crawler.fetcher")

_CHUNK = 64 * 1024


@dataclass(frozen=True)
class FetchResult:
    """The outcome of one request; ``status`` is 0 when no HTTP response came back."""

    url: str
    status: int = 0
    content_type: str = ""
    charset: str | None = None
    body: bytes = b""
    elapsed: float = 0.0
    error: str = ""  # why no usable body: refused, timeout, too large, skipped type, ...
    retryable: bool = False  # network errors and timeouts; HTTP statuses are judged by the crawl
    location: str | None = None  # absolute redirect target of a 3xx
    retry_after: float | None = None  # seconds, from a Retry-After header
    etag: str | None = None  # validators for the next visit's conditional request
    last_modified: str | None = None
    # what the WARC records need: the status line, the response and request headers as sent
    reason: str = ""
    version: str = "1.1"
    headers: tuple[tuple[str, str], ...] = ()
    request_headers: tuple[tuple[str, str], ...] = ()


class PrivateAddressRefused(OSError):
    """A host name resolved only to loopback, private or link-local addresses (SSRF guard)."""


class BodyTooLarge(Exception):
    """The body (after decompression) passed the byte cap."""


class _BoundedDecoder:
    """Content-Encoding decoder whose output never exceeds ``limit`` + 1 bytes in total."""

    def __init__(self, encoding: str, limit: int) -> None:
        self.limit = limit
        self.size = 0
        if encoding in ("", "identity"):
            self._zlib = None
        elif encoding in ("gzip", "x-gzip", "deflate"):
            self._zlib = zlib.decompressobj(zlib.MAX_WBITS | 32)  # zlib or gzip header, detected
        else:
            raise ValueError(f"unsupported content-encoding {encoding!r}")

    def feed(self, data: bytes) -> bytes:
        if self._zlib is None:
            out = data
        else:
            out = self._zlib.decompress(data, self.limit - self.size + 1)
            if self._zlib.unconsumed_tail and len(out) <= self.limit - self.size:
                raise zlib.error("decoder stalled")  # cannot happen: output was not capped
        self.size += len(out)
        return out

    @property
    def over_limit(self) -> bool:
        return self.size > self.limit


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date), None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class GuardedResolver(AbstractResolver):
    """Resolves names through ``inner`` and drops private/loopback answers unless allowed,
    so a public-looking hostname cannot lead the crawler into the local network."""

    def __init__(
        self, inner: AbstractResolver, allow_private: bool, trusted_hosts: tuple[str, ...] = ()
    ) -> None:
        self.inner = inner
        self.allow_private = allow_private
        self.trusted_hosts = frozenset(h.lower().rstrip(".") for h in trusted_hosts)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        if self.allow_private or host.lower().rstrip(".") in self.trusted_hosts:
            return results
        public = [r for r in results if not is_private_host(r["host"])]
        if not public:
            raise PrivateAddressRefused(f"{host} resolves only to private addresses")
        return public

    async def close(self) -> None:
        await self.inner.close()


class Fetcher:
    """Owns the aiohttp session; use as ``async with Fetcher(...) as fetcher``."""

    def __init__(
        self, settings: CrawlSettings, policy: UrlPolicy, resolver: AbstractResolver | None = None
    ) -> None:
        self.settings = settings
        self.policy = policy
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Fetcher:
        s = self.settings
        resolver = GuardedResolver(
            self._resolver or aiohttp.ThreadedResolver(), s.allow_private_addresses, s.trusted_hosts
        )
        connector = aiohttp.TCPConnector(
            limit=s.concurrency + 4,  # + robots.txt fetches
            limit_per_host=0,  # per-host limits are the crawl's (politeness), not the pool's
            resolver=resolver,
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": s.user_agent, "Accept-Encoding": "gzip, deflate"},
            timeout=aiohttp.ClientTimeout(
                total=s.total_timeout, sock_connect=s.connect_timeout, sock_read=s.read_timeout
            ),
            max_line_size=16 * 1024,
            max_field_size=16 * 1024,
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(
        self,
        url: str,
        accept: frozenset[str] | None,
        max_bytes: int,
        truncate: bool = False,
        headers: dict[str, str] | None = None,
    ) -> FetchResult:
        """GET ``url``. ``accept`` lists the media types whose body is read (None: any);
        a longer body is an error, or cut at ``max_bytes`` when ``truncate``; ``headers`` are
        added to the request (a revisit's If-None-Match / If-Modified-Since)."""
        refused = self.policy.check_fetch(url)
        if refused:
            return FetchResult(url, error=f"refused: {refused}")
        assert self._session is not None, "Fetcher used outside 'async with'"
        start = time.monotonic()
        try:
            async with self._session.get(url, allow_redirects=False, headers=headers) as resp:
                status = resp.status
                rh = resp.headers
                retry_after = parse_retry_after(rh.get("Retry-After"))
                content_type = resp.content_type.lower() if "Content-Type" in rh else ""
                charset = resp.charset.lower() if resp.charset else None
                base = FetchResult(
                    url,
                    status,
                    content_type,
                    charset,
                    retry_after=retry_after,
                    etag=rh.get("ETag"),
                    last_modified=rh.get("Last-Modified"),
                    reason=resp.reason or "",
                    version=f"{resp.version.major}.{resp.version.minor}" if resp.version else "1.1",
                    headers=tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in resp.raw_headers),
                    request_headers=tuple(resp.request_info.headers.items()),
                )
                if 300 <= status < 400 and "Location" in rh:
                    target = urljoin(url, rh["Location"])
                    return replace(base, elapsed=time.monotonic() - start, location=target)
                if not 200 <= status < 300:
                    return replace(base, elapsed=time.monotonic() - start)
                if accept is not None and content_type not in accept:
                    error = f"content type {one_line(content_type) or '(none)'} skipped"
                    return replace(base, elapsed=time.monotonic() - start, error=error)
                encoding = rh.get("Content-Encoding", "").strip().lower()
                declared = resp.content_length
                if not truncate and not encoding and declared is not None and declared > max_bytes:
                    error = f"body exceeds {max_bytes} bytes (Content-Length {declared})"
                    return replace(base, elapsed=time.monotonic() - start, error=error)
                body = await self._read_body(resp, encoding, max_bytes, truncate)
                return replace(base, body=body, elapsed=time.monotonic() - start)
        except BodyTooLarge as exc:
            return FetchResult(url, 200, elapsed=time.monotonic() - start, error=one_line(exc))
        except (ValueError, zlib.error) as exc:
            return FetchResult(url, elapsed=time.monotonic() - start, error=f"bad response: {one_line(exc)}")
        except TimeoutError:
            return FetchResult(url, elapsed=time.monotonic() - start, error="timeout", retryable=True)
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, PrivateAddressRefused):  # final: asking again cannot help
                refusal = f"refused: {one_line(exc.os_error)}"
                return FetchResult(url, elapsed=time.monotonic() - start, error=refusal)
            return FetchResult(url, elapsed=time.monotonic() - start, error=one_line(exc), retryable=True)
        except (aiohttp.ClientError, OSError) as exc:
            return FetchResult(url, elapsed=time.monotonic() - start, error=one_line(exc), retryable=True)

    async def _read_body(
        self, resp: aiohttp.ClientResponse, encoding: str, max_bytes: int, truncate: bool
    ) -> bytes:
        decoder = _BoundedDecoder(encoding, max_bytes)
        parts: list[bytes] = []
        async for chunk in resp.content.iter_chunked(_CHUNK):
            parts.append(decoder.feed(chunk))
            if decoder.over_limit:
                if not truncate:
                    raise BodyTooLarge(f"body exceeds {max_bytes} bytes")
                break  # leaving the context closes the connection: the rest is never read
        return b"".join(parts)[:max_bytes]
