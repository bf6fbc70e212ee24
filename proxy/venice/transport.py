"""The wire under the Venice clients: aiohttp's connection pool and C HTTP/1.1 parser.

httpx parses every upstream read in pure Python (httpcore + h11), builds a request, URL and
header object per call in pure Python, and runs its client layers (cookies, redirects, auth
hooks) on every request; on a token stream that was most of the proxy's CPU per request and per
chunk (benchmarks/README.md, "Where the time goes"). :class:`Wire` sends the clients' requests
on aiohttp directly. When a caller hands in an :class:`httpx.AsyncClient` (the tests'
in-memory upstreams), that client sends instead, through the same two calls, so the code
above the wire (:mod:`proxy.venice.client`) is the same on both.

What the wire does, and what it deliberately does not:

- **Headers**: exactly the ones the request was built with, plus ``host`` and
  ``content-length`` (``transfer-encoding`` never: bodies are bytes of known length); aiohttp
  adds none of its own (no user agent, ``accept`` or ``accept-encoding`` defaults).
- **Bytes as received.** Bodies are never decompressed here: the client inflates them itself
  within its size bounds. :meth:`WireResponse.pieces` yields at most 64 KiB at a time.
- **No cookies.** Nothing the upstream sets is stored or sent back (a dummy jar), so no cookie
  links one client's request to another's at Venice.
- **Timeouts** (from the :class:`httpx.Timeout` given): ``connect`` bounds the TCP/TLS connect,
  ``pool`` the wait for a connection plus the connect, ``read`` every socket read (``None``:
  unbounded; the client's own deadlines bound a stream). ``write`` is not enforced by aiohttp.
- **Errors** are raised as the httpx exceptions :func:`proxy.venice.client._translate` reads,
  whichever path sent: a connect timeout :class:`httpx.ConnectTimeout`, a refused or
  unresolvable host :class:`httpx.ConnectError`, a read timeout :class:`httpx.ReadTimeout`, a
  connection that broke or a malformed answer :class:`httpx.RemoteProtocolError`, anything else
  from aiohttp :class:`httpx.TransportError`.
- **Closing** a response that was not read to its end closes its connection (the upstream sees
  the disconnect and stops generating); one read to its end goes back to the pool.
- TLS with httpx's trust store (certifi, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``). HTTP/2 is not
  spoken (neither did the proxy's httpx client).
- **Proxies from the environment** as httpx honours them by default: ``HTTPS_PROXY``,
  ``HTTP_PROXY`` (by the URL's scheme), else ``ALL_PROXY``, with ``NO_PROXY`` exempting hosts
  and credentials taken from the proxy URL. They are read once per endpoint URL (the
  environment does not change under a running proxy), not on every request: aiohttp's own
  ``trust_env`` looks them up in a thread per request. **``~/.netrc`` is never read** (aiohttp's
  ``trust_env`` would add its credentials for a matching host, e.g. NVIDIA's, to requests that
  must carry only what the proxy built).
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import aiohttp
import httpx
from yarl import URL

PIECE_BYTES = 64 * 1024
_MAX_PARSED_URLS = 32  # the endpoints a client calls: a handful (query strings are not kept)


@dataclass(frozen=True, slots=True)
class WireRequest:
    """One request as the client built it (URL without its query, which is ``params``)."""

    method: str
    url: str
    headers: Mapping[str, str]
    params: Mapping[str, str] | None = None
    content: bytes | None = None


@dataclass(frozen=True, slots=True)
class _Route:
    """An endpoint URL parsed, and the environment's proxy for it (``None``: direct).

    ``proxy_headers`` go on the ``CONNECT`` of an ``https`` URL (never inside the tunnel, where
    Venice would read them); ``request_headers`` on the request itself for an ``http`` URL,
    which the proxy relays in the clear.
    """

    url: URL
    proxy: URL | None = None
    proxy_headers: Mapping[str, str] | None = None
    request_headers: Mapping[str, str] | None = None

    @classmethod
    def for_url(cls, url: str) -> _Route:
        parsed = URL(url, encoded=False)
        proxy, credentials = environment_proxy(parsed)
        if proxy is None:
            return cls(parsed)
        if credentials is None or parsed.scheme == "https":
            return cls(parsed, proxy, credentials)
        return cls(parsed, proxy, None, credentials)


def environment_proxy(url: URL) -> tuple[URL | None, Mapping[str, str] | None]:
    """The proxy the environment names for ``url`` and the headers for it, or ``(None, None)``.

    ``<scheme>_proxy`` (either case, lower-case first, as the standard library reads it), else
    ``all_proxy``; ``no_proxy`` hosts go direct. The proxy URL's user and password become Basic
    credentials for the proxy itself (``proxy-authorization``) and are taken out of the URL.
    """
    if url.host is not None and urllib.request.proxy_bypass(url.host):
        return None, None
    proxies = urllib.request.getproxies()
    named = proxies.get(url.scheme) or proxies.get("all")
    if not named:
        return None, None
    proxy = URL(named if "://" in named else f"http://{named}")
    if proxy.user is None:
        return proxy, None
    credentials = aiohttp.encode_basic_auth(proxy.user, proxy.password or "")
    return proxy.with_user(None), {"proxy-authorization": credentials}


@contextmanager
def as_httpx_errors(*, connecting: bool) -> Iterator[None]:
    """aiohttp's failures as the httpx exceptions the client translates."""
    try:
        yield
    except aiohttp.ConnectionTimeoutError as exc:
        raise httpx.ConnectTimeout(str(exc) or "connect timed out") from exc
    except aiohttp.SocketTimeoutError as exc:
        raise httpx.ReadTimeout(str(exc) or "read timed out") from exc
    except aiohttp.ServerTimeoutError as exc:
        kind = httpx.ConnectTimeout if connecting else httpx.ReadTimeout
        raise kind(str(exc) or "timed out") from exc
    except aiohttp.ClientConnectorError as exc:
        raise httpx.ConnectError(str(exc)) from exc
    except (
        aiohttp.ClientPayloadError,
        aiohttp.ClientResponseError,
        aiohttp.ServerDisconnectedError,
        aiohttp.ClientOSError,
    ) as exc:
        raise httpx.RemoteProtocolError(str(exc)) from exc
    except aiohttp.InvalidURL as exc:
        raise httpx.UnsupportedProtocol(str(exc)) from exc
    except aiohttp.ClientError as exc:
        raise httpx.TransportError(str(exc)) from exc


class WireResponse:
    """An open response: status, headers (case-insensitive) and the raw body, once."""

    status_code: int
    headers: Mapping[str, str]
    # True when the body was decoded before it reached the wire (an in-memory httpx response
    # built with its content): the client must not inflate it again.
    already_decoded: bool = False
    # True when the last piece had to wait for the network (so the event loop ran meanwhile);
    # False when it came from bytes already buffered, or when the wire cannot tell (httpx).
    waited: bool = False

    def pieces(self) -> AsyncIterator[bytes]:
        """The body as received, compressed or not, in pieces of at most 64 KiB."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Done with the response (see the module docstring for what closing does)."""
        raise NotImplementedError


class _AiohttpResponse(WireResponse):
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status_code = response.status
        self.headers = response.headers
        self._read_to_end = False

    async def pieces(self) -> AsyncIterator[bytes]:
        content = self._response.content
        with as_httpx_errors(connecting=False):
            while True:
                received = content.total_bytes
                piece = await content.read(PIECE_BYTES)
                if not piece:
                    break
                # Bytes arrived during the read only if the loop ran while it waited.
                self.waited = content.total_bytes != received
                yield piece
        self._read_to_end = True

    async def aclose(self) -> None:
        response = self._response
        if self._read_to_end:
            response.release()
        else:
            # Not read to its end by us (whatever aiohttp has buffered): drop the connection at
            # once, so the upstream sees the hang-up and stops generating.
            response.close()


class _HttpxResponse(WireResponse):
    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status_code = response.status_code
        self.headers = response.headers
        self.already_decoded = response.is_stream_consumed

    async def pieces(self) -> AsyncIterator[bytes]:
        response = self._response
        if response.is_stream_consumed:
            # A response built with its whole (already decoded) content: in-memory transports.
            content = response.content
            for start in range(0, len(content), PIECE_BYTES):
                yield content[start : start + PIECE_BYTES]
            return
        async for piece in response.aiter_raw():
            yield piece

    async def aclose(self) -> None:
        await self._response.aclose()


class Wire:
    """How the Venice clients send a request: the proxy's own aiohttp session (created on first
    use, inside the running loop), or a handed-in httpx client (which its owner closes)."""

    def __init__(self, http_client: httpx.AsyncClient | None, timeout: httpx.Timeout) -> None:
        self._client = http_client
        self._session: aiohttp.ClientSession | None = None
        self._httpx_timeout = timeout.as_dict()
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=timeout.pool, sock_connect=timeout.connect, sock_read=timeout.read
        )
        self._routes: dict[str, _Route] = {}

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ssl=httpx.create_ssl_context())
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,  # proxies: environment_proxy; never ~/.netrc
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )
        return self._session

    def _route(self, url: str) -> _Route:
        route = self._routes.get(url)
        if route is None:
            route = _Route.for_url(url)
            if len(self._routes) < _MAX_PARSED_URLS:
                self._routes[url] = route
        return route

    async def send(self, request: WireRequest) -> WireResponse:
        """Send ``request``; the response is open (its body unread) until closed."""
        if self._client is not None:
            built = httpx.Request(
                request.method,
                request.url,
                params=dict(request.params) if request.params else None,
                headers=dict(request.headers),
                content=request.content,
                extensions={"timeout": self._httpx_timeout},
            )
            return _HttpxResponse(await self._client.send(built, stream=True))
        session = self._session if self._session is not None else self._open()
        route = self._route(request.url)
        headers = request.headers
        if route.request_headers is not None:
            headers = {**headers, **route.request_headers}
        with as_httpx_errors(connecting=True):
            response = await session.request(
                request.method,
                route.url,
                proxy=route.proxy,
                proxy_headers=route.proxy_headers,
                params=request.params,
                headers=headers,
                data=request.content,
                allow_redirects=False,
                timeout=self._timeout,
            )
        return _AiohttpResponse(response)

    async def aclose(self) -> None:
        """Close the connection pool if this wire created it."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()
            # Let the transports' close callbacks run (aiohttp's advice for a clean shutdown).
            await asyncio.sleep(0)
