"""A deadline for each request's headers, on the listener's connections.

uvicorn (0.55) closes a keep-alive connection that stays idle after a response, but never one
that has not sent a whole request yet: a connection that sends nothing, or trickles its header
lines, stays open for ever. A neighbour (any local process; a pod beside a sidecar) could hold
thousands of them, each a file descriptor, until the proxy can open no socket to Venice.

:func:`header_deadline_protocol` makes the HTTP/1.1 protocol ``serve`` runs uvicorn with
(uvicorn's own, on httptools' C parser: what ``http = "auto"`` picks, as httptools is a
dependency) with one addition: a connection must send a request's whole header block within
``server.header_timeout_s`` seconds, counted from the connection's opening for its first request
and from a request's first byte for each later one. Past it the connection is closed without an
answer (the client has not finished asking; nothing of a request has reached the app) and a
``client_header_timeout`` line is logged, with no address and nothing the client sent.

Deliberately not done here: the time a request's *body* takes (the handlers bound it,
:mod:`proxy.http.body`, with a 408 the client can read); the number of connections (the kernel's
and the process's limits; ``server.max_in_flight`` bounds the requests being served); idle
keep-alive connections (uvicorn's ``timeout_keep_alive``, 5 s, closes them); a TLS handshake
that never finishes (asyncio's ``ssl_handshake_timeout``, 60 s).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from proxy.observability.logs import get_logger

log = get_logger("proxy.listener")


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing a connection whose request headers are late."""

    header_timeout_s: float = 20.0
    _header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        # The first request's clock started when the connection opened: its first byte does
        # not restart it.
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self.header_timeout_s, self._late)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _late(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            log.warning(
                "client_header_timeout",
                header_timeout_s=self.header_timeout_s,
                hint="a client kept a connection open without sending a whole request; "
                "raise server.header_timeout_s if a real client is this slow",
            )
            self.transport.close()


def header_deadline_protocol(header_timeout_s: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)``, with this deadline in seconds."""
    if not header_timeout_s > 0:
        raise ValueError("header_timeout_s must be above 0")
    return type(
        "HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout_s": header_timeout_s}
    )
