"""``python -m benchmarks.stack_relay --port P --upstream URL``: the cheapest HTTP proxy that can
be built from the proxy's own libraries, for the stack floor of the latency and CPU figures.

uvicorn serves a raw ASGI callable on ``127.0.0.1:P`` (no FastAPI, no Starlette, no middleware
of ours) that sends every HTTP request on to ``URL`` (``http://HOST:PORT``) with aiohttp and
streams the answer back. What it costs above the byte relay (``benchmarks.byte_relay``) is what
the chosen libraries cost; what the proxy costs above it is the proxy's own code.

- **Server**: ``uvicorn.Server`` started as ``proxy.cli.main`` starts it, with the same
  ``uvicorn.Config`` as ``_uvicorn_config``: loop ``auto`` (uvloop when it can be imported; the
  ready line names it), httptools' parser with the proxy's deadline for request headers
  (``proxy.http.header_deadline``, the default ``server.header_timeout_s``),
  ``proxy_headers`` off (no ``ProxyHeadersMiddleware``), ``access_log=False``,
  ``log_config=None`` with ``log_level="info"`` (the proxy's default level; uvicorn's info lines
  have no handler here, warnings and errors reach stderr), ``timeout_graceful_shutdown=10``, and
  uvicorn's defaults for the rest, as the proxy has them: ``server`` and ``date`` headers,
  lifespan ``auto``. The start-up heap is collected and frozen before serving, as ``serve`` does.
  Deliberate differences, none of them per request: no TLS, no draining on the first signal
  (``proxy.http.shutdown``), and once stopped by a signal the process exits 0 instead of
  raising the signal again (uvicorn's ``capture_signals``).
- **Upstream**: one ``aiohttp.ClientSession`` per process, opened at lifespan start-up and
  closed at its end, with the settings of the proxy's wire (``proxy.venice.transport.Wire``):
  ``TCPConnector(limit=0, limit_per_host=0)`` (no TLS context: the upstream is plain HTTP),
  ``DummyCookieJar``, ``trust_env=False``, ``auto_decompress=False``, no automatic
  ``User-Agent``/``Accept``/``Accept-Encoding``/``Content-Type``, no total or per-read timeout
  (10 s to connect), ``allow_redirects=False``.
- **Per request**: the whole request body is read, then sent upstream with the request's
  method, path and query (as received, not re-quoted) and its headers except the hop-by-hop ones
  (``connection`` and what it names, ``keep-alive``, ``proxy-*``, ``te``, ``trailer``,
  ``transfer-encoding``, ``upgrade``), ``host``, ``content-length`` (aiohttp sets both) and
  ``expect`` (uvicorn has answered it). The answer goes back with the upstream's status and
  headers minus the hop-by-hop ones, ``content-length`` (uvicorn chunks it) and ``date`` and
  ``server`` (uvicorn writes its own, which would make them twice), and its body in
  ``response.content.read(64 * 1024)`` pieces, one ``http.response.body`` message each with
  ``more_body=True``, then an empty one with ``more_body=False``. The upstream response is
  released when read to its end and closed otherwise (its connection dropped).
- **Errors**: when the upstream cannot be reached or does not answer, 502 with a short plain
  text body naming the error's class. An upstream that fails mid-answer ends the relay of it:
  uvicorn then closes the client's connection, so the client sees a truncated body.

Output: one line on stdout once listening,
``stack relay listening on 127.0.0.1:P -> http://HOST:PORT (loop: uvloop|asyncio, http: NAME)``
(``NAME``: uvicorn's HTTP protocol class); nothing per request. Stops on SIGINT or SIGTERM as
uvicorn does (stop accepting, finish requests in flight for up to 10 s) and exits 0. The harness
(``benchmarks.procs.start_stack_relay``) tells it is ready by an HTTP request sent through it to
the upstream.

Deliberately not here: any reading of the body (no SSE, no JSON), more than one upstream, a path
prefix on the upstream, TLS, noticing a client that hangs up mid-answer (uvicorn drops what is
sent after; the upstream answer is read to its end), limits of any kind.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import socket
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import uvicorn
from yarl import URL

from proxy.http.header_deadline import header_deadline_protocol
from proxy.settings import ServerSettings

LOOPBACK = "127.0.0.1"
PIECE_BYTES = 64 * 1024
CONNECT_TIMEOUT_S = 10.0  # the proxy's default upstream.connect_timeout_s

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
RawHeaders = Iterable[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
NOT_FORWARDED = HOP_BY_HOP | {b"host", b"content-length", b"expect"}
# uvicorn writes its own ``date`` and ``server`` headers on every answer.
NOT_ANSWERED = HOP_BY_HOP | {b"content-length", b"date", b"server"}


def _kept(headers: RawHeaders, dropped: frozenset[bytes]) -> list[tuple[bytes, bytes]]:
    """``headers`` with lower-case names, minus ``dropped`` and whatever a ``connection`` header
    names (its options are hop-by-hop too)."""
    lowered = [(name.lower(), value) for name, value in headers]
    named = {
        token.strip().lower()
        for name, value in lowered
        if name == b"connection"
        for token in value.split(b",")
    }
    return [(name, value) for name, value in lowered if name not in dropped and name not in named]


async def _request_body(receive: Receive) -> bytes | None:
    """The whole request body; None when the client disconnected before it was whole."""
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


async def _bad_gateway(send: Send, exc: BaseException) -> None:
    body = f"bad gateway: {type(exc).__name__}\n".encode()
    await send(
        {
            "type": "http.response.start",
            "status": 502,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode("ascii")),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def open_session() -> aiohttp.ClientSession:
    """A session with the settings of the proxy's wire, minus TLS (``Wire._open``)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        timeout=aiohttp.ClientTimeout(
            total=None, connect=CONNECT_TIMEOUT_S, sock_connect=CONNECT_TIMEOUT_S, sock_read=None
        ),
    )


class StackRelay:
    """The raw ASGI callable: every HTTP request relayed to ``upstream`` (``http://HOST:PORT``)."""

    def __init__(self, upstream: str) -> None:
        self._upstream = upstream.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._relay(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._session = open_session()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                session, self._session = self._session, None
                if session is not None:
                    await session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _relay(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _request_body(receive)
        if body is None:
            return
        if self._session is None:  # a server without lifespan
            self._session = open_session()
        target = self._upstream + scope["raw_path"].decode("ascii")
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("ascii")
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in _kept(scope["headers"], NOT_FORWARDED)
        ]
        try:
            response = await self._session.request(
                scope["method"],
                URL(target, encoded=True),
                headers=headers,
                data=body or None,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            await _bad_gateway(send, exc)
            return
        read_to_end = False
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": _kept(response.raw_headers, NOT_ANSWERED),
                }
            )
            content = response.content
            while piece := await content.read(PIECE_BYTES):
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            read_to_end = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except aiohttp.ClientError:
            return  # the answer is cut short; uvicorn closes the client's connection
        finally:
            if read_to_end:
                response.release()
            else:
                response.close()


def server_config(app: StackRelay, host: str, port: int) -> uvicorn.Config:
    """``proxy.cli.main._uvicorn_config`` with the proxy's default settings, without TLS."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="info",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        http=header_deadline_protocol(ServerSettings().header_timeout_s),
        proxy_headers=False,
    )


class StackServer(uvicorn.Server):
    """uvicorn's server, printing the ready line once listening and exiting 0 on a signal."""

    def __init__(self, config: uvicorn.Config, upstream: str) -> None:
        super().__init__(config)
        self._upstream_url = upstream

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn's own handlers, without raising the signal again once stopped.
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {signum: signal.signal(signum, self.handle_exit) for signum in signals}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.should_exit:
            return
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        loop_name = type(asyncio.get_running_loop()).__module__.partition(".")[0]
        http_name = self.config.http_protocol_class.__name__
        print(
            f"stack relay listening on {host}:{port} -> {self._upstream_url} "
            f"(loop: {loop_name}, http: {http_name})",
            flush=True,
        )


def parse_upstream(text: str) -> str:
    """``http://HOST:PORT`` (a trailing ``/`` allowed), as given; anything else is an error."""
    parsed = urlsplit(text)
    if (
        parsed.scheme != "http"
        or not parsed.hostname
        or parsed.port is None
        or parsed.path not in ("", "/")
        or parsed.query
        or parsed.fragment
    ):
        raise ValueError(f"expected http://HOST:PORT, got {text!r}")
    return text.rstrip("/")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stack_relay", description=__doc__)
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="http://HOST:PORT to send requests to")
    args = parser.parse_args(argv)
    try:
        upstream = parse_upstream(args.upstream)
    except ValueError as exc:
        parser.error(str(exc))
    server = StackServer(server_config(StackRelay(upstream), args.host, args.port), upstream)
    gc.collect()  # as proxy.cli.main.freeze_startup_heap
    gc.freeze()
    server.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
