"""httpx's transport interface on aiohttp: the upstream's bytes parsed in C.

httpx's own transport parses every upstream read in pure Python (httpcore + h11) and wraps each
in several layers of async context managers; on a token stream that is most of the proxy's
per-chunk cost (benchmarks/README.md, "Where the time goes"). :class:`AiohttpTransport` keeps
the httpx API the rest of :mod:`proxy.venice` and the tests use (requests, responses, errors,
in-memory transports in tests) and hands the wire to aiohttp's connection pool and its C
HTTP/1.1 parser.

What it does, and what it deliberately does not:

- **Bytes as received.** Bodies are never decompressed here (``auto_decompress=False``): the
  client inflates them itself within its size bounds (:mod:`proxy.venice.client`). Pieces are at
  most 64 KiB, as httpcore reads them.
- **No cookies.** Nothing the upstream sets is stored or sent back (aiohttp's dummy jar), so no
  cookie links one client's request to another's at Venice; httpx's own client jar sees no
  ``Set-Cookie`` either (those headers are dropped from the response handed to httpx).
- **Headers**: the request's headers as httpx built them (user agent, accept, authorization,
  ...) minus the framing ones (``host``, ``content-length``, ``transfer-encoding``,
  ``connection``) that aiohttp writes itself for the body it sends. No automatic headers are
  added (``skip_auto_headers``).
- **Timeouts** from the request's httpx timeouts: ``connect`` bounds the TCP/TLS connect,
  ``pool`` the wait for a connection plus the connect, ``read`` every socket read (``None``:
  unbounded; the client's own deadlines bound a stream). ``write`` has no aiohttp equivalent
  and is not enforced here.
- **Errors** become the httpx exceptions :func:`proxy.venice.client._translate` reads: a
  connect timeout :class:`httpx.ConnectTimeout`, a refused or unresolvable host
  :class:`httpx.ConnectError`, a read timeout :class:`httpx.ReadTimeout`, a connection that
  broke or a malformed answer :class:`httpx.RemoteProtocolError`, anything else from aiohttp
  :class:`httpx.TransportError`.
- **Closing** a response that was not read to its end closes its connection (the upstream sees
  the disconnect and stops generating); one read to its end goes back to the pool.
- TLS: httpx's trust store (certifi, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``).
- Proxies from the environment (``HTTPS_PROXY`` ...) are honoured, as httpx does by default.
  HTTP/2 is not spoken (neither did the proxy's httpx client).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager

import aiohttp
import httpx
from yarl import URL

_PIECE_BYTES = 64 * 1024
# Written by aiohttp for the body it sends; httpx's copies would disagree or repeat them.
_FRAMING_HEADERS = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection"})
_SET_COOKIE = b"set-cookie"
_MAX_PARSED_URLS = 32  # the endpoints a client calls: a handful (query strings are not kept)
_NO_AUTO_HEADERS = frozenset({"User-Agent", "Accept", "Accept-Encoding", "Content-Type"})


@contextmanager
def _as_httpx_errors(request: httpx.Request, *, connecting: bool) -> Iterator[None]:
    """aiohttp's failures as the httpx exceptions the client translates."""
    try:
        yield
    except aiohttp.ConnectionTimeoutError as exc:
        raise httpx.ConnectTimeout(str(exc) or "connect timed out", request=request) from exc
    except aiohttp.SocketTimeoutError as exc:
        raise httpx.ReadTimeout(str(exc) or "read timed out", request=request) from exc
    except aiohttp.ServerTimeoutError as exc:
        kind = httpx.ConnectTimeout if connecting else httpx.ReadTimeout
        raise kind(str(exc) or "timed out", request=request) from exc
    except aiohttp.ClientConnectorError as exc:
        raise httpx.ConnectError(str(exc), request=request) from exc
    except (aiohttp.ClientPayloadError, aiohttp.ClientResponseError) as exc:
        raise httpx.RemoteProtocolError(str(exc), request=request) from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        raise httpx.RemoteProtocolError(str(exc), request=request) from exc
    except aiohttp.InvalidURL as exc:
        raise httpx.UnsupportedProtocol(str(exc), request=request) from exc
    except aiohttp.ClientError as exc:
        raise httpx.TransportError(str(exc), request=request) from exc


class _Body(httpx.AsyncByteStream):
    """An aiohttp response body as httpx's byte stream."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors(self._request, connecting=False):
            async for piece in self._response.content.iter_chunked(_PIECE_BYTES):
                yield piece

    async def aclose(self) -> None:
        response = self._response
        if response.content.is_eof():
            response.release()
        else:
            response.close()  # unread: drop the connection, the upstream stops generating


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport whose wire is an aiohttp session (created on first use, inside the
    running loop; closed by :meth:`aclose`)."""

    def __init__(self, *, max_keepalive: int = 64, ssl_context: ssl.SSLContext | None = None):
        self._max_keepalive = max_keepalive
        # httpx's own trust store (certifi, or SSL_CERT_FILE / SSL_CERT_DIR): unchanged by the
        # switch of transport.
        self._ssl = ssl_context if ssl_context is not None else httpx.create_ssl_context()
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ssl=self._ssl)
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=True,
            auto_decompress=False,
            skip_auto_headers=_NO_AUTO_HEADERS,
        )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session if self._session is not None else self._open()
        timeouts = request.extensions.get("timeout", {})
        headers = [
            (key.decode("latin-1"), value.decode("latin-1"))
            for key, value in request.headers.raw
            if key.lower() not in _FRAMING_HEADERS
        ]
        body = await request.aread()
        with _as_httpx_errors(request, connecting=True):
            response = await session.request(
                request.method,
                URL(str(request.url), encoded=True),
                headers=headers,
                data=body or None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=timeouts.get("pool"),
                    sock_connect=timeouts.get("connect"),
                    sock_read=timeouts.get("read"),
                ),
            )
        return httpx.Response(
            status_code=response.status,
            headers=[
                (key, value) for key, value in response.raw_headers if key.lower() != _SET_COOKIE
            ],
            stream=_Body(response, request),
            extensions={"http_version": b"HTTP/1.1"},
            request=request,
        )

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
            # Let the transports' close callbacks run (aiohttp's advice for a clean shutdown).
            await asyncio.sleep(0)


class Wire:
    """How the Venice clients send a request.

    By default through the proxy's own :class:`AiohttpTransport`, called directly: none of an
    httpx client's layers run (no cookie jar, redirects, auth hooks or default headers; the
    request carries exactly the headers its builder gave, plus ``host`` and
    ``content-length``). When a caller hands in an :class:`httpx.AsyncClient` (the tests'
    in-memory upstreams), that client sends instead and the caller owns it.
    """

    def __init__(self, http_client: httpx.AsyncClient | None, timeout: httpx.Timeout) -> None:
        self._client = http_client
        self._transport = AiohttpTransport() if http_client is None else None
        self._timeout = timeout.as_dict()
        # Parsed once: httpx parses a URL string in pure Python on every request otherwise.
        self._urls: dict[str, httpx.URL] = {}

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        params: Mapping[str, str] | None = None,
        content: bytes | None = None,
    ) -> httpx.Request:
        """A request with this wire's timeouts."""
        parsed = self._urls.get(url)
        if parsed is None:
            parsed = httpx.URL(url)
            if len(self._urls) < _MAX_PARSED_URLS:
                self._urls[url] = parsed
        return httpx.Request(
            method,
            parsed,
            params=dict(params) if params else None,
            headers=headers,
            content=content,
            extensions={"timeout": self._timeout},
        )

    async def send(self, request: httpx.Request) -> httpx.Response:
        """Send ``request``; the response is open (its body unread) until closed."""
        if self._transport is not None:
            return await self._transport.handle_async_request(request)
        assert self._client is not None
        return await self._client.send(request, stream=True)

    async def aclose(self) -> None:
        """Close the connection pool if this wire created it (a handed-in client is not
        closed: its owner closes it)."""
        if self._transport is not None:
            await self._transport.aclose()
