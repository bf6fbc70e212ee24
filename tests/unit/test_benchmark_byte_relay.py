"""The benchmarks' byte relay (benchmarks/byte_relay.py) in front of tiny loopback servers, and
the machine floor the harness reads from its figures (benchmarks/run.py).

Each scenario runs on asyncio's own loop and on uvloop (the loop the relay runs on in
``make bench``), with the relay in this process so its sockets and buffers can be looked at.
Behaviour only: the bytes, their order, end of stream and closing, and that a reader who stops
reading holds the sender back instead of filling the relay's memory. No timing is asserted.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest
import uvloop

from benchmarks.byte_relay import LOOPBACK, Relay, parse_host_port, serve_relay
from proxy.http.loopback import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Runner = Callable[[Coroutine[Any, Any, None]], None]

RUNNERS = [pytest.param(asyncio.run, id="asyncio"), pytest.param(uvloop.run, id="uvloop")]
PIECE = 256 * 1024


def payload(size: int, seed: int) -> bytes:
    """Bytes that are not a repeating pattern, so a lost or reordered piece shows."""
    return random.Random(seed).randbytes(size)


@asynccontextmanager
async def relay_in_front_of(handler: Handler) -> AsyncIterator[Relay]:
    """An upstream server running ``handler`` per connection and a relay in front of it."""
    upstream = await asyncio.start_server(handler, LOOPBACK, 0)
    relay = await serve_relay((LOOPBACK, upstream.sockets[0].getsockname()[1]))
    try:
        yield relay
    finally:
        await relay.close()
        upstream.close()
        await upstream.wait_closed()


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with suppress(ConnectionError):
        await writer.wait_closed()


async def read_all(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    while chunk := await reader.read(PIECE):
        chunks.append(chunk)
    return b"".join(chunks)


async def write_in_pieces(writer: asyncio.StreamWriter, data: bytes) -> None:
    view = memoryview(data)
    for start in range(0, len(data), PIECE):
        writer.write(view[start : start + PIECE])
        await writer.drain()


@pytest.mark.parametrize("run", RUNNERS)
def test_bytes_pass_both_ways_unchanged_and_a_half_close_still_gets_the_whole_answer(
    run: Runner,
) -> None:
    """An echo upstream: 8 MiB each way at once (many pauses and resumes on both sockets), the
    client's EOF reaches the upstream as an EOF, and the answer after it arrives whole."""
    request = payload(8 * 1024 * 1024, seed=1)
    upstream_saw_eof = False

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal upstream_saw_eof
        while data := await reader.read(PIECE):
            writer.write(data)
            await writer.drain()
        upstream_saw_eof = True
        writer.write(b"after your EOF")
        await close(writer)

    async def scenario() -> None:
        async with relay_in_front_of(echo) as relay:
            reader, writer = await asyncio.open_connection(LOOPBACK, relay.port)

            async def send() -> None:
                await write_in_pieces(writer, request)
                writer.write_eof()

            sending = asyncio.create_task(send())
            answer = await read_all(reader)
            await sending
            await close(writer)
        assert upstream_saw_eof
        assert answer == request + b"after your EOF"

    run(scenario())


@pytest.mark.parametrize("run", RUNNERS)
def test_a_client_that_stops_reading_holds_the_sender_back_not_the_relays_memory(
    run: Runner,
) -> None:
    """The upstream writes 64 MiB with ``drain``; the client reads nothing until the relay has
    bytes it cannot hand to the kernel. Then the relay holds at most its high-water mark plus
    one read, the upstream is still writing, and once the client reads, everything arrives."""
    answer = payload(64 * 1024 * 1024, seed=2)
    sent = 0
    upstream_done = asyncio.Event()

    async def talker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        view = memoryview(answer)
        for start in range(0, len(answer), PIECE):
            writer.write(view[start : start + PIECE])
            await writer.drain()
            sent = start + PIECE
        upstream_done.set()
        await close(writer)

    async def scenario() -> None:
        async with relay_in_front_of(talker) as relay:
            reader, writer = await asyncio.open_connection(LOOPBACK, relay.port)
            for _ in range(1000):  # until the kernel's buffers towards the client are full
                if relay.buffered_bytes():
                    break
                await asyncio.sleep(0.01)
            else:
                pytest.fail("the relay never held bytes back from the client")
            for _ in range(20):  # time for a relay without flow control to read on
                await asyncio.sleep(0.01)
            assert relay.buffered_bytes() <= 64 * 1024 + PIECE
            assert not upstream_done.is_set()
            assert sent < len(answer)
            received = await read_all(reader)
            await close(writer)
        assert received == answer
        assert upstream_done.is_set()

    run(scenario())


@pytest.mark.parametrize("run", RUNNERS)
def test_a_request_and_its_eof_sent_at_once_get_their_answer(run: Runner) -> None:
    """Sent before the relay's upstream connection is up (uvloop reads the accepted socket
    at once): kept, then passed on in order with the EOF after them."""

    async def answer_after_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"pong:" + await read_all(reader))
        await close(writer)

    async def scenario() -> None:
        async with relay_in_front_of(answer_after_eof) as relay:
            reader, writer = await asyncio.open_connection(LOOPBACK, relay.port)
            writer.write(b"ping")
            writer.write_eof()
            assert await read_all(reader) == b"pong:ping"
            await close(writer)

    run(scenario())


@pytest.mark.parametrize("run", RUNNERS)
def test_an_upstream_that_closes_closes_the_client_after_its_last_bytes(run: Runner) -> None:
    async def goodbye(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"last words")
        await close(writer)

    async def scenario() -> None:
        async with relay_in_front_of(goodbye) as relay:
            reader, writer = await asyncio.open_connection(LOOPBACK, relay.port)
            assert await read_all(reader) == b"last words"
            await close(writer)
            await relay.live.none_open.wait()
            assert relay.open_sockets() == 0

    run(scenario())


@pytest.mark.parametrize("run", RUNNERS)
def test_a_client_that_closes_closes_the_upstream_connection(run: Runner) -> None:
    heard: list[bytes] = []
    upstream_closed = asyncio.Event()

    async def listener(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heard.append(await read_all(reader))
        upstream_closed.set()
        await close(writer)

    async def scenario() -> None:
        async with relay_in_front_of(listener) as relay:
            _, writer = await asyncio.open_connection(LOOPBACK, relay.port)
            writer.write(b"hello and goodbye")
            await writer.drain()
            await close(writer)
            await upstream_closed.wait()
            await relay.live.none_open.wait()
            assert relay.open_sockets() == 0
        assert heard == [b"hello and goodbye"]

    run(scenario())


@pytest.mark.parametrize("run", RUNNERS)
def test_an_unreachable_upstream_closes_the_client(run: Runner) -> None:
    async def scenario() -> None:
        relay = await serve_relay((LOOPBACK, free_port()))  # nobody listens there
        try:
            reader, writer = await asyncio.open_connection(LOOPBACK, relay.port)
            with suppress(ConnectionResetError):
                assert await reader.read() == b""
            await close(writer)
        finally:
            await relay.close()
        assert relay.open_sockets() == 0

    run(scenario())


def test_the_upstream_argument_is_host_and_port() -> None:
    assert parse_host_port("127.0.0.1:8080") == ("127.0.0.1", 8080)
    for text in ("127.0.0.1", ":80", "host:port", "host:"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_host_port(text)


def test_the_machine_floor_is_read_from_the_relays_figures_and_only_those_measured() -> None:
    from benchmarks.run import machine_floor

    assert machine_floor({}) == {}
    hop = {"ttft_p50": 0.2, "ttlt_p50": 0.3, "ttft_p99": 9.0, "ttlt_p99": 9.0}
    details: dict[str, Any] = {
        "latency": {"overhead": {"added": {"relay_plain_vs_direct_plain": hop}}},
        "paced": {
            "relay_cpu_us_per_chunk": {"relay_plain": 40.0},
            "relay_system_us_per_chunk": {"relay_plain": 25.0},
            "runtime_us_per_chunk": {"proxy_e2ee": 230.0, "relay_plain": 38.0},
        },
    }
    assert machine_floor(details) == {
        "first_token_added_ms_p50": 0.2,
        "last_token_added_ms_p50": 0.3,
        "paced_cpu_us_per_chunk": 40.0,
        "paced_system_us_per_chunk": 25.0,
        "paced_runtime_us_per_chunk": 38.0,
    }
    details["inprocess"] = {"crypto_floor_us": 50.0}
    assert machine_floor(details)["paced_cpu_plus_crypto_floor_us"] == 88.0
