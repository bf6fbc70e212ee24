"""A misbehaving Venice upstream controlled at the byte level, and an instrumented proxy harness.

:class:`FakeUpstream` is a raw ``asyncio`` HTTP/1.1 server on 127.0.0.1 in its own thread:

- ``GET /api/v1/models`` and ``GET /api/v1/tee/attestation`` are DELEGATED to a real simulator
  app (in process, over ``httpx.ASGITransport``) so attestation passes for real (DCAP off,
  NVIDIA nonce check), unless :attr:`FakeUpstream.overrides` names a raw body for that path;
- ``POST /api/v1/chat/completions`` does what :attr:`FakeUpstream.behaviour` says, writing the
  exact bytes itself: a well-formed encrypted stream (every ``content`` sealed to the request's
  ``X-Venice-TEE-Client-Pub-Key`` with :func:`proxy.core.crypto.seal_text`), or a fault. Chat
  answers always carry ``Connection: close`` and use chunked transfer encoding, like a real
  server streaming SSE.

Every request is recorded (:attr:`FakeUpstream.requests`) so tests can prove the prompt canary
never reached the upstream in plaintext. After the scripted bytes of a chat answer the fake
does NOT hang up (unless the behaviour itself ends the connection): it waits for the peer to
close, so a test can tell that the proxy released the upstream socket
(:attr:`FakeUpstream.open_chat_connections` returns to 0, :attr:`FakeUpstream.forced_closes`
stays 0).

``Behaviour.hold`` pauses an answer between its good prefix and its fault until the test calls
:meth:`FakeUpstream.release`, so the proxy reads the prefix on its own (a fault coalesced into
the same read would otherwise surface before the first byte); :attr:`FakeUpstream.cycle` gives
concurrent requests a mix of behaviours.

:class:`InstrumentedApp` wraps an ASGI app and remembers the event loop it runs on, so a test can
count the asyncio tasks alive inside a proxy served by :class:`tests.servers.ThreadedServer`;
:func:`proxy_harness` starts a fake and a proxy in front of it, and
:meth:`ProxyHarness.assert_clean` checks that no socket, task or canary was left behind.

Deliberately not done: HTTP/2, pipelining, request bodies without ``Content-Length`` (httpx
always sends one for a bytes body), TLS.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from proxy.core.crypto import parse_public_key, seal_text
from proxy.http.loopback import ThreadedServer
from proxy.simulator import SimulatorState, create_simulator_app

Kind = Literal[
    "ok",  # a complete, well-formed encrypted stream
    "reset",  # good prefix, then a TCP reset (SO_LINGER 0)
    "reset_before_headers",  # the request is read, then a TCP reset
    "stall_headers",  # the request is read, nothing is ever answered
    "stall_body",  # headers, then nothing
    "stall",  # good prefix, then nothing
    "garbage",  # good prefix, then ``payload`` as raw body bytes
    "endless_line",  # good prefix, then ``data: aaaa…`` without a line end, until the peer goes
    "big_event",  # good prefix, one event whose content seals ``size`` bytes, then a clean end
    "json_body",  # 200 application/json with a whole (encrypted) chat.completion, no SSE
    "html_body",  # 200 text/html error page
    "wrong_content_type",  # a complete good stream labelled ``content_type``
    "no_done",  # good prefix, finish and usage chunks, clean end of body, no [DONE]
    "bad_status_line",  # ``payload`` instead of an HTTP status line
    "flood",  # an endless fast stream of big sealed chunks, written with back-pressure
    "script",  # good prefix, then ``events`` (SEAL: strings sealed), then a clean end
    "role_flood",  # role-only chunks (no text ever), ``size`` bytes or until the peer goes
    "data_lines",  # good prefix, then ``data:`` lines that never end an event, likewise
]

SEAL = "SEAL:"  # in a scripted event, a string starting with this is sent sealed

MODEL = "e2ee-simulated-near"
COMPLETION_ID = "chatcmpl-fake-upstream"
CLIENT_KEY_HEADER = "x-venice-tee-client-pub-key"
# How long the fake waits for a peer that never hangs up before closing itself (a test failure).
_PEER_CLOSE_CAP_S = 30.0


@dataclass(frozen=True, slots=True)
class Behaviour:
    """What the next chat answers do. ``text_chunks`` content chunks precede the fault."""

    kind: Kind = "ok"
    text_chunks: int = 3
    payload: bytes = b""
    size: int = 0
    content_type: str = "text/event-stream"
    # Wait for FakeUpstream.release() between the good prefix and the fault, so that the proxy
    # has read the prefix on its own before the fault arrives (no coalesced read).
    hold: bool = False
    # "script": the chunks sent after the prefix (top-level objects; every string value that
    # starts with SEAL is replaced by that text sealed to the request's client key).
    events: tuple[dict[str, Any], ...] = ()
    # "flood": text sent (sealed, as one chunk) before the repeated blob, e.g. a call's opening.
    opening: str = ""


@dataclass(frozen=True, slots=True)
class Received:
    """One request as the fake read it off the socket. The repr hides headers and body."""

    method: str
    path: str
    headers: dict[str, str] = field(repr=False)
    body: bytes = field(repr=False)


def token_text(index: int) -> str:
    """The plaintext of content chunk ``index`` of a fake answer."""
    return f"tok{index} "


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


_LAST_CHUNK = b"0\r\n\r\n"


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _chunk_obj(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "id": COMPLETION_ID,
        "object": "chat.completion.chunk",
        "created": 0,
        "model": MODEL,
        "choices": choices,
        **extra,
    }


def _delta_event(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return _event(_chunk_obj([{"index": 0, "delta": delta, "finish_reason": finish}]))


class SealedStream:
    """The events of a well-formed answer, sealed to one client key."""

    def __init__(self, client_public: bytes) -> None:
        self.client_public = client_public

    def role(self) -> bytes:
        return _delta_event({"role": "assistant", "content": ""})

    def text(self, plaintext: str) -> bytes:
        return _delta_event({"content": seal_text(self.client_public, plaintext)})

    def scripted(self, event: dict[str, Any]) -> bytes:
        """``event`` as a chunk (id, object, created and model added unless given)."""

        def seal(value: Any) -> Any:
            if isinstance(value, str) and value.startswith(SEAL):
                return seal_text(self.client_public, value[len(SEAL) :])
            if isinstance(value, dict):
                return {k: seal(v) for k, v in value.items()}
            if isinstance(value, list):
                return [seal(v) for v in value]
            return value

        return _event({**_chunk_obj([]), **seal(event)})

    def prefix(self, text_chunks: int) -> bytes:
        return self.role() + b"".join(self.text(token_text(i)) for i in range(text_chunks))

    def end(self, text_chunks: int, *, done: bool = True) -> bytes:
        usage = {"prompt_tokens": 3, "completion_tokens": text_chunks, "total_tokens": 3}
        tail = _delta_event({}, "stop") + _event(_chunk_obj([], usage=usage))
        return tail + (b"data: [DONE]\n\n" if done else b"")


def _head(status: str, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status}"] + [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _sse_head(content_type: str = "text/event-stream") -> bytes:
    return _head(
        "200 OK",
        {
            "content-type": content_type,
            "transfer-encoding": "chunked",
            "connection": "close",
            "x-venice-tee": "true",
        },
    )


def _fixed_head(status: str, content_type: str, length: int) -> bytes:
    return _head(
        status,
        {"content-type": content_type, "content-length": str(length), "connection": "close"},
    )


def tcp_socket() -> socket.socket:
    """A socket bound to a free loopback port.

    ``IPPROTO_TCP`` is explicit on purpose: asyncio sets ``TCP_NODELAY`` only on sockets whose
    ``proto`` says TCP, and an accepted socket inherits the listener's ``proto``. With 0, every
    small write waits for the peer's delayed ACK (about 40 ms on Linux loopback).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class FakeUpstream:
    """The misbehaving upstream. Start with ``with FakeUpstream() as fake:``.

    Chat request ``i`` follows ``cycle[i % len(cycle)]`` when :attr:`cycle` is set (concurrent
    mixed faults), else :attr:`behaviour`.
    """

    def __init__(self, state: SimulatorState | None = None) -> None:
        self.state = state if state is not None else SimulatorState()
        self.behaviour = Behaviour()
        self.cycle: tuple[Behaviour, ...] = ()
        # Raw 200 JSON bodies served instead of the simulator's, by path suffix
        # (e.g. "/tee/attestation"): hostile metadata.
        self.overrides: dict[str, bytes] = {}
        # Endless 200 JSON answers by path suffix: a chunked body of this many bytes, generated
        # as it is written (the fake never holds it), until the peer hangs up.
        self.huge_json: dict[str, int] = {}
        self.requests: list[Received] = []
        self.chat_requests = 0
        self.open_chat_connections = 0
        self.peer_closes = 0
        self.forced_closes = 0
        self.bytes_sent = 0
        self._sock = tcp_socket()
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = self.url + "/api/v1"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True, name="fake-upstream")
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._release = threading.Event()

    # -- lifecycle (test thread) ----------------------------------------------------------------

    def __enter__(self) -> FakeUpstream:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake upstream did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        stop = self._stop
        if stop is not None:
            self._loop.call_soon_threadsafe(stop.set)
        self._thread.join(timeout=10)
        self._sock.close()

    def reset(self, behaviour: Behaviour | None = None) -> None:
        """Clear the recorder and counters; set the next chat behaviour."""
        self.behaviour = behaviour or Behaviour()
        self.cycle = ()
        self.overrides = {}
        self.huge_json = {}
        self._release.clear()
        self.requests.clear()
        self.chat_requests = 0
        self.peer_closes = 0
        self.forced_closes = 0
        self.bytes_sent = 0

    def release(self) -> None:
        """Let one held answer (``Behaviour.hold``) go on to its fault."""
        self._release.set()

    def wait_until(self, condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
        """Poll ``condition`` until true or a generous deadline (an event, not a timing)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.01)
        return condition()

    def settled(self, timeout_s: float = 10.0) -> bool:
        """True once every chat connection has been closed by the peer."""
        return self.wait_until(lambda: self.open_chat_connections == 0, timeout_s)

    def recorded_text(self) -> str:
        """Everything the fake received (headers and bodies) as one string, for leak checks."""
        parts: list[str] = []
        for item in self.requests:
            parts.append(item.path)
            parts.extend(f"{k}: {v}" for k, v in item.headers.items())
            parts.append(item.body.decode("utf-8", errors="replace"))
        return "\n".join(parts)

    # -- server (fake's own loop) ---------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        simulator = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_simulator_app(self.state)),
            base_url="http://simulator",
        )

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await self._connection(reader, writer, simulator)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.transport.abort()

        server = await asyncio.start_server(on_connect, sock=self._sock, limit=1 << 20)
        self._ready.set()
        async with server:
            await self._stop.wait()
        # Every task, not only the registered handlers: a connection accepted just before the
        # close may have a handler task that has not started yet.
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        await simulator.aclose()

    async def _connection(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        simulator: httpx.AsyncClient,
    ) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await reader.readexactly(length) if length else b""
        self.requests.append(Received(method, target, headers, body))
        if method == "POST" and target.split("?")[0].endswith("/chat/completions"):
            cycle = self.cycle
            plan = cycle[self.chat_requests % len(cycle)] if cycle else self.behaviour
            self.chat_requests += 1
            self.open_chat_connections += 1
            try:
                await self._chat(reader, writer, headers, plan)
            finally:
                self.open_chat_connections -= 1
            return
        await self._delegate(writer, simulator, method, target, headers, body)

    async def _delegate(
        self,
        writer: asyncio.StreamWriter,
        simulator: httpx.AsyncClient,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes,
    ) -> None:
        path = target.split("?")[0]
        for suffix, size in self.huge_json.items():
            if path.endswith(suffix):
                head = _head(
                    "200 OK", {"content-type": "application/json", "transfer-encoding": "chunked"}
                )
                await self._send(writer, head + _chunk(b'{"pad": "'))
                block = _chunk(b"a" * 65536)
                try:
                    while self.bytes_sent < size:
                        await self._send(writer, block)
                    await self._send(writer, _chunk(b'"}') + _LAST_CHUNK)
                except ConnectionError:
                    pass
                return
        for suffix, content in self.overrides.items():
            if path.endswith(suffix):
                writer.write(_fixed_head("200 OK", "application/json", len(content)) + content)
                await writer.drain()
                return
        forwarded = {k: v for k, v in headers.items() if k in ("authorization", "accept")}
        response = await simulator.request(method, target, headers=forwarded, content=body)
        content = response.content
        writer.write(
            _fixed_head(
                f"{response.status_code} {response.reason_phrase}",
                response.headers.get("content-type", "application/json"),
                len(content),
            )
            + content
        )
        await writer.drain()

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await writer.drain()
        self.bytes_sent += len(data)

    async def _flushed(self, writer: asyncio.StreamWriter) -> None:
        """Wait until the transport handed everything written to the kernel."""
        writer.transport.set_write_buffer_limits(high=0)
        await writer.drain()

    async def _held(self) -> None:
        if not await asyncio.to_thread(self._release.wait, _PEER_CLOSE_CAP_S):
            self.forced_closes += 1  # nobody released it: the test is broken
        self._release.clear()

    async def _until_peer_closes(self, reader: asyncio.StreamReader) -> None:
        try:
            async with asyncio.timeout(_PEER_CLOSE_CAP_S):
                while await reader.read(65536):
                    pass
        except TimeoutError:
            self.forced_closes += 1
            return
        except ConnectionError:
            pass
        self.peer_closes += 1

    async def _reset(self, writer: asyncio.StreamWriter) -> None:
        await self._flushed(writer)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()
        self.peer_closes += 1

    async def _chat(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        headers: dict[str, str],
        plan: Behaviour,
    ) -> None:
        stream = SealedStream(parse_public_key(headers[CLIENT_KEY_HEADER]))
        kind = plan.kind
        send: Callable[[bytes], Awaitable[None]] = lambda data: self._send(writer, data)  # noqa: E731
        if kind == "reset_before_headers":
            await self._reset(writer)
            return
        if kind == "stall_headers":
            await self._until_peer_closes(reader)
            return
        if kind == "bad_status_line":
            await send(plan.payload)
            await self._until_peer_closes(reader)
            return
        if kind in ("json_body", "html_body"):
            await send(self._fixed_body(kind, stream))
            await self._until_peer_closes(reader)
            return
        content_type = plan.content_type if kind == "wrong_content_type" else "text/event-stream"
        if kind == "stall_body":
            await send(_sse_head(content_type))
            await self._until_peer_closes(reader)
            return
        if kind == "role_flood":
            await send(_sse_head(content_type))
            await self._endless(writer, reader, _chunk(stream.role() * 400), plan.size)
            return
        # Sealed before the prefix goes out: sealing megabytes takes long enough on a loaded
        # machine that the proxy's idle timeout, running since the prefix, could fire first.
        big = stream.text("x" * plan.size) if kind == "big_event" else b""
        await send(_sse_head(content_type) + _chunk(stream.prefix(plan.text_chunks)))
        if plan.hold:
            await self._held()
        if kind in ("ok", "wrong_content_type"):
            await send(_chunk(stream.end(plan.text_chunks)) + _LAST_CHUNK)
        elif kind == "no_done":
            await send(_chunk(stream.end(plan.text_chunks, done=False)) + _LAST_CHUNK)
        elif kind == "reset":
            await self._reset(writer)
            return
        elif kind == "garbage":
            await send(_chunk(plan.payload))
        elif kind == "endless_line":
            await self._endless_line(writer, reader)
            return
        elif kind == "big_event":
            await send(_chunk(big) + _chunk(stream.end(plan.text_chunks + 1)) + _LAST_CHUNK)
        elif kind == "flood":
            if plan.opening:
                await send(_chunk(stream.text(plan.opening)))
            await self._flood(writer, reader, stream, plan.size)
            return
        elif kind == "script":
            body = b"".join(stream.scripted(event) for event in plan.events)
            scripted = _chunk(body) if body else b""  # an empty chunk would end the body
            await send(scripted + _chunk(stream.end(plan.text_chunks)) + _LAST_CHUNK)
        elif kind == "data_lines":
            line = b'data: {"pad": "' + b"b" * 100 + b'"}\n'
            await self._endless(writer, reader, _chunk(line * 600), plan.size)
            return
        await self._until_peer_closes(reader)

    def _fixed_body(self, kind: Kind, stream: SealedStream) -> bytes:
        if kind == "html_body":
            page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
            return _fixed_head("200 OK", "text/html", len(page)) + page
        completion = {
            "id": COMPLETION_ID,
            "object": "chat.completion",
            "created": 0,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": seal_text(stream.client_public, "whole answer"),
                    },
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        }
        payload = json.dumps(completion).encode()
        return _fixed_head("200 OK", "application/json", len(payload)) + payload

    async def _endless_line(
        self, writer: asyncio.StreamWriter, reader: asyncio.StreamReader
    ) -> None:
        block = _chunk(b"a" * 65536)
        closed = asyncio.ensure_future(self._until_peer_closes(reader))
        try:
            await self._send(writer, _chunk(b"data: "))
            while not closed.done():
                await self._send(writer, block)
        except ConnectionError:
            pass
        await closed

    async def _endless(
        self,
        writer: asyncio.StreamWriter,
        reader: asyncio.StreamReader,
        block: bytes,
        total: int,
    ) -> None:
        """Write ``block`` again and again (``total`` bytes at most; 0: no limit) until the
        peer hangs up; then a clean end of the body."""
        closed = asyncio.ensure_future(self._until_peer_closes(reader))
        try:
            while not closed.done() and (total <= 0 or self.bytes_sent < total):
                await self._send(writer, block)
            if not closed.done():
                await self._send(writer, _LAST_CHUNK)
        except ConnectionError:
            pass
        await closed

    async def _flood(
        self,
        writer: asyncio.StreamWriter,
        reader: asyncio.StreamReader,
        stream: SealedStream,
        total: int,
    ) -> None:
        # One sealed blob repeated: the proxy decrypts every copy (its key cache keeps that
        # cheap), the fake does not pay one ECDH per event.
        event = _chunk(stream.text("y" * 8192) * 4)
        closed = asyncio.ensure_future(self._until_peer_closes(reader))
        try:
            while not closed.done() and (total <= 0 or self.bytes_sent < total):
                await self._send(writer, event)
            if not closed.done():
                await self._send(writer, _chunk(stream.end(0)) + _LAST_CHUNK)
        except ConnectionError:
            pass
        await closed


class InstrumentedApp:
    """An ASGI wrapper that remembers the loop the app runs on (set at lifespan startup)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        await self.app(scope, receive, send)

    def tasks(self) -> list[str]:
        """The names and coroutines of the tasks alive on the app's loop (this probe excluded)."""
        loop = self.loop
        assert loop is not None, "the app has not started"

        async def probe() -> list[str]:
            me = asyncio.current_task()
            return [
                f"{task.get_name()}: {task.get_coro()!r}"
                for task in asyncio.all_tasks()
                if task is not me
            ]

        future: Future[list[str]] = asyncio.run_coroutine_threadsafe(probe(), loop)
        return future.result(timeout=10)

    def wait_for_tasks(self, at_most: int, timeout_s: float = 10.0) -> list[str]:
        """The live tasks once there are at most ``at_most`` of them (or at the deadline)."""
        deadline = time.monotonic() + timeout_s
        tasks = self.tasks()
        while len(tasks) > at_most and time.monotonic() < deadline:
            time.sleep(0.01)
            tasks = self.tasks()
        return tasks


def start_proxy(
    upstream_url: str, **sections: dict[str, Any]
) -> tuple[ThreadedServer, InstrumentedApp]:
    """A real proxy (uvicorn in a thread) in front of ``upstream_url``, with its loop exposed.

    Settings are the test defaults (DCAP off, no retries) plus ``sections``. Stop the server.
    """
    from pydantic import SecretStr

    from proxy.http.app import create_app
    from tests.conftest import SIM_API_KEY, proxy_settings

    settings = proxy_settings(upstream_url, **sections)
    app = InstrumentedApp(create_app(settings, api_key=SecretStr(SIM_API_KEY)))
    return ThreadedServer(app).start(), app


@dataclass(frozen=True)
class ProxyHarness:
    """A proxy in front of a fake upstream, and what it takes to prove nothing leaked."""

    fake: FakeUpstream
    server: ThreadedServer
    app: InstrumentedApp
    idle_tasks: int  # tasks alive on the proxy's loop when it serves nothing

    @property
    def chat_url(self) -> str:
        return self.server.url + "/v1/chat/completions"

    def settle(self) -> None:
        """Wait until the proxy finished the requests it was serving (logging included).

        Assert only after this when a request may have crashed: on Python 3.11 the traceback
        printer and pytest's failure report both run ``ast.parse``, whose recursion counter is
        shared between threads (CPython gh-106905), and pytest would stop with an
        INTERNALERROR instead of reporting.
        """
        self.app.wait_for_tasks(self.idle_tasks)

    def assert_clean(self, logged: str) -> None:
        """No upstream socket, proxy task or canary left behind (``logged``: the test's log)."""
        from tests.conftest import assert_no_leak

        fake = self.fake
        assert fake.settled(), f"{fake.open_chat_connections} upstream connection(s) left open"
        assert fake.forced_closes == 0, "the proxy never closed an upstream connection"
        tasks = self.app.wait_for_tasks(self.idle_tasks)
        assert len(tasks) <= self.idle_tasks, f"tasks left running in the proxy: {tasks}"
        assert_no_leak([fake.recorded_text()], logged)


@contextmanager
def proxy_harness(**sections: dict[str, Any]) -> Iterator[ProxyHarness]:
    """A fake upstream (its simulator takes the test API key) and a proxy in front of it.

    The proxy checks no signatures (a background task per answer, and another suite's
    concern) unless ``sections`` say otherwise.
    """
    from tests.conftest import SIM_API_KEY

    with FakeUpstream(SimulatorState(api_key=SIM_API_KEY)) as fake:
        server, app = start_proxy(fake.url, **{"signatures": {"mode": "off"}, **sections})
        try:
            yield ProxyHarness(fake, server, app, len(app.tasks()))
        finally:
            server.stop()
