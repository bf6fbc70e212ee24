"""``python -m benchmarks.byte_relay --port P --upstream HOST:PORT``: the cheapest process that
can stand where the proxy stands, for the machine floor of the latency and CPU figures.

Every connection accepted on ``127.0.0.1:P`` gets its own connection to ``HOST:PORT``; the bytes
read on either socket are written, unchanged and unparsed, to the other one from
``data_received``. No HTTP, no buffer of its own past connection set-up, no task per connection
once both sockets are up: whatever an HTTP proxy does, it does at least this (two sockets, one
read and one write per piece, one process wake-up), so what this relay costs is the floor of
what any proxy costs on the machine it runs on.

- The event loop is uvloop when it can be imported (as the proxy's uvicorn picks it), else
  asyncio's own; the ready line names which one.
- ``TCP_NODELAY`` on both sockets (uvicorn sets it on the connections it accepts, aiohttp on the
  connections it opens), so small writes are never held back by Nagle's algorithm.
- Flow control: when one socket's write buffer passes its high-water mark (``pause_writing``),
  reading from the other socket pauses until it drains (``resume_writing``), so a fast sender
  behind a slow receiver cannot grow the relay's memory.
- End of stream: an EOF read on one socket is passed on as an EOF (``write_eof``, a half-close)
  to the other, so a client that half-closes after its request still gets the whole answer;
  once both directions have ended, or either socket is lost, both are closed (a transport's
  ``close`` still writes out what it buffered).
- What the client sends before the upstream connection is up is kept and written to it first
  (reading pauses at once on asyncio; uvloop reads an accepted socket once whatever
  ``connection_made`` did, so there reading pauses after that read); a failed upstream connect
  closes the client's connection.

Output: one line on stdout once listening,
``byte relay listening on 127.0.0.1:P -> HOST:PORT (loop: uvloop|asyncio)``; nothing per
connection. Stops on SIGINT or SIGTERM, dropping open connections. The harness
(``benchmarks.procs.start_byte_relay``) tells it is ready by an HTTP request sent through it to
the upstream.

Deliberately not here: more than one upstream, TLS, timeouts, any reading of the bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

LOOPBACK = "127.0.0.1"


def _set_nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Connections:
    """The relay's open sockets, and an event set whenever there are none."""

    def __init__(self) -> None:
        self.sides: set[_Side] = set()
        self.none_open = asyncio.Event()
        self.none_open.set()

    def add(self, side: _Side) -> None:
        self.sides.add(side)
        self.none_open.clear()

    def discard(self, side: _Side) -> None:
        self.sides.discard(side)
        if not self.sides:
            self.none_open.set()


class _Side(asyncio.Protocol):
    """One socket of a relayed pair: what it reads, its peer's socket writes. Listed in
    ``live`` from connect to loss."""

    def __init__(self, live: _Connections) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.read_eof = False
        self._live = live

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._live.add(self)
        _set_nodelay(transport)

    def _peer_transport(self) -> asyncio.Transport | None:
        peer = self.peer
        if peer is None or peer.transport is None or peer.transport.is_closing():
            return None
        return peer.transport

    def data_received(self, data: bytes) -> None:
        target = self._peer_transport()
        if target is not None:
            target.write(data)

    def eof_received(self) -> bool:
        self.read_eof = True
        target = self._peer_transport()
        peer = self.peer
        if target is None or peer is None or peer.read_eof or not target.can_write_eof():
            self.close_both()
            return False
        target.write_eof()
        return True  # keep this socket open: the answer may still come the other way

    def pause_writing(self) -> None:
        source = self._peer_transport()
        if source is not None:
            source.pause_reading()

    def resume_writing(self) -> None:
        source = self._peer_transport()
        if source is not None:
            source.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._live.discard(self)
        self.close_both()

    def close_both(self) -> None:
        for side in (self, self.peer):
            if side is not None and side.transport is not None and not side.transport.is_closing():
                side.transport.close()


class _Accepted(_Side):
    """The client's socket: opens the upstream connection, and until it is up keeps what the
    client sent (reading is paused as soon as the loop lets it: uvloop starts reading an accepted
    socket after ``connection_made`` whatever that did, asyncio does not)."""

    def __init__(
        self, upstream: tuple[str, int], live: _Connections, pending: set[asyncio.Task[None]]
    ) -> None:
        super().__init__(live)
        self._upstream = upstream
        self._pending = pending
        self._lost = False
        self._early: list[bytes] = []
        self._early_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        cast(asyncio.Transport, transport).pause_reading()
        task = asyncio.get_running_loop().create_task(self._connect_upstream())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _connect_upstream(self) -> None:
        host, port = self._upstream
        try:
            _, upstream = await asyncio.get_running_loop().create_connection(
                lambda: _Side(self._live), host, port
            )
        except OSError:
            self.close_both()
            return
        if self._lost:
            if upstream.transport is not None:
                upstream.transport.close()
            return
        upstream.peer, self.peer = self, upstream
        if upstream.transport is not None:
            upstream.transport.writelines(self._early)
            self._early.clear()
        if self._early_eof:
            super().eof_received()
        elif self.transport is not None:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self._early.append(data)
            if self.transport is not None:
                self.transport.pause_reading()
            return
        super().data_received(data)

    def eof_received(self) -> bool:
        if self.peer is None:
            self._early_eof = True
            return True  # passed on once the upstream connection is up
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        super().connection_lost(exc)


@dataclass(frozen=True, slots=True)
class Relay:
    """A listening relay and the sockets it has open."""

    server: asyncio.Server
    live: _Connections
    pending: set[asyncio.Task[None]]

    @property
    def port(self) -> int:
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    def open_sockets(self) -> int:
        """Sockets of relayed connections still open (both sides of each pair)."""
        return len(self.live.sides)

    def buffered_bytes(self) -> int:
        """Bytes the relay holds in its own write buffers, not yet taken by the kernel (what
        flow control bounds)."""
        return sum(
            side.transport.get_write_buffer_size()
            for side in self.live.sides
            if side.transport is not None and not side.transport.is_closing()
        )

    async def close(self) -> None:
        """Stop listening, drop every relayed connection (unsent bytes are discarded) and
        return once all their sockets are closed."""
        self.server.close()
        for task in list(self.pending):
            task.cancel()
        await asyncio.gather(*self.pending, return_exceptions=True)
        for side in list(self.live.sides):
            if side.transport is not None:
                side.transport.abort()
        await self.live.none_open.wait()


async def serve_relay(upstream: tuple[str, int], *, host: str = LOOPBACK, port: int = 0) -> Relay:
    """A listening relay on ``host:port`` (0: a port the kernel picks, see
    :attr:`Relay.port`) in front of ``upstream``, on the running loop."""
    live = _Connections()
    pending: set[asyncio.Task[None]] = set()
    server = await asyncio.get_running_loop().create_server(
        lambda: _Accepted(upstream, live, pending), host, port, backlog=1024, reuse_address=True
    )
    return Relay(server, live, pending)


def parse_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` as a pair (the port must be a number)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


async def _run(host: str, port: int, upstream: tuple[str, int], loop_name: str) -> None:
    relay = await serve_relay(upstream, host=host, port=port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(
        f"byte relay listening on {host}:{port} -> {upstream[0]}:{upstream[1]} (loop: {loop_name})",
        flush=True,
    )
    await stop.wait()
    await relay.close()


def _runner() -> tuple[Callable[..., object], str]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run, "asyncio"
    return uvloop.run, "uvloop"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.byte_relay", description=__doc__)
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="HOST:PORT to relay every connection to")
    args = parser.parse_args(argv)
    try:
        upstream = parse_host_port(args.upstream)
    except ValueError as exc:
        parser.error(str(exc))
    run, loop_name = _runner()
    run(_run(args.host, args.port, upstream, loop_name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
