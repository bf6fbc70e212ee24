"""The Venice client's JSON answers are bounded: read incrementally, cut at the cap, closed.

Hostile bodies are generated lazily by an :class:`httpx.AsyncByteStream` (the test never holds
them) and served through :class:`httpx.MockTransport`; ``tracemalloc`` measures the peak of
what the client allocated while reading.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from proxy.core.errors import UpstreamError, UpstreamTimeoutError, UpstreamTooLargeError
from proxy.venice.client import ServiceClient, UpstreamClient, UpstreamTimeouts

MiB = 1 << 20
CAP = 1 * MiB


class LazyBody(httpx.AsyncByteStream):
    """``total`` bytes of a JSON string, 64 KiB at a time; counts what was pulled."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.pulled = 0
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'{"pad": "'
        block = b"a" * 65536
        while self.pulled < self.total:
            self.pulled += len(block)
            yield block
        yield b'"}'

    async def aclose(self) -> None:
        self.closed = True


def _transport(make: Callable[[httpx.Request], httpx.Response]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(make))


async def _peak(work: Callable[[], Awaitable[object]]) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        with pytest.raises(UpstreamTooLargeError) as info:
            await work()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.code == "upstream_json_too_large"
    assert "upstream.max_json_bytes" in info.value.message
    return peak - before


async def test_a_huge_nras_answer_is_cut_at_the_cap() -> None:
    body = LazyBody(128 * MiB)
    client = ServiceClient(
        http_client=_transport(lambda _: httpx.Response(200, stream=body)), max_json_bytes=CAP
    )
    growth = await _peak(lambda: client.request_json("POST", "https://nras.test/attest", {}))
    assert body.pulled <= CAP + 65536
    assert body.closed
    assert growth < 4 * CAP


async def test_a_huge_attestation_is_cut_at_the_cap() -> None:
    body = LazyBody(128 * MiB)
    client = UpstreamClient(
        "https://venice.test/api/v1",
        "key",
        http_client=_transport(lambda _: httpx.Response(200, stream=body)),
        max_json_bytes=CAP,
    )
    growth = await _peak(lambda: client.get_attestation("m", "00" * 32))
    assert body.pulled <= CAP + 65536
    assert body.closed
    assert growth < 4 * CAP


async def test_a_declared_length_over_the_cap_is_refused_before_reading() -> None:
    body = LazyBody(128 * MiB)
    response = httpx.Response(200, headers={"content-length": str(128 * MiB)}, stream=body)
    client = UpstreamClient(
        "https://venice.test/api/v1",
        None,
        http_client=_transport(lambda _: response),
        max_json_bytes=CAP,
    )
    with pytest.raises(UpstreamTooLargeError):
        await client.list_models()
    assert body.pulled == 0


async def test_a_gzip_bomb_is_inflated_in_pieces_and_cut_at_the_cap() -> None:
    # 64 MiB of zeros in about 64 KiB: one network read would inflate to all of it at once.
    bomb = gzip.compress(b"0" * (64 * MiB), compresslevel=9)
    assert len(bomb) < 256 * 1024

    class Bomb(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield bomb

    client = ServiceClient(
        http_client=_transport(
            lambda _: httpx.Response(200, headers={"content-encoding": "gzip"}, stream=Bomb())
        ),
        max_json_bytes=CAP,
    )
    growth = await _peak(lambda: client.request_json("GET", "https://nras.test/jwks"))
    assert growth < 4 * CAP


async def test_json_answers_within_the_cap_are_parsed_plain_or_gzipped() -> None:
    document = {"data": [{"id": f"model-{i}"} for i in range(1000)]}
    raw = json.dumps(document).encode()
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["accept-encoding"])
        if request.url.path.endswith("/models"):
            return httpx.Response(200, content=raw)
        return httpx.Response(200, headers={"content-encoding": "gzip"}, content=gzip.compress(raw))

    client = UpstreamClient(
        "https://venice.test/api/v1", None, http_client=_transport(answer), max_json_bytes=CAP
    )
    assert await client.list_models() == document
    assert await client.get_signature("m", "chatcmpl-1") == document
    assert seen == ["gzip", "gzip"]  # never br or zstd: every encoding asked for is bounded


async def test_an_encoding_not_asked_for_is_an_error() -> None:
    client = UpstreamClient(
        "https://venice.test/api/v1",
        None,
        http_client=_transport(
            lambda _: httpx.Response(200, headers={"content-encoding": "br"}, stream=LazyBody(1024))
        ),
    )
    with pytest.raises(UpstreamError) as info:
        await client.list_models()
    assert info.value.code == "upstream_bad_encoding"


async def test_corrupt_gzip_is_an_error() -> None:
    client = UpstreamClient(
        "https://venice.test/api/v1",
        None,
        http_client=_transport(
            lambda _: httpx.Response(
                200, headers={"content-encoding": "gzip"}, stream=LazyBody(1024)
            )
        ),
    )
    with pytest.raises(UpstreamError) as info:
        await client.list_models()
    assert info.value.code == "upstream_bad_encoding"


async def test_a_gzipped_event_stream_is_inflated_in_pieces_of_at_most_64_kib() -> None:
    events = b"".join(b'data: {"n": %d}\n\n' % i for i in range(200_000))
    compressed = gzip.compress(events)

    class Body(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            for start in range(0, len(compressed), 65536):
                yield compressed[start : start + 65536]

    def answer(_: httpx.Request) -> httpx.Response:
        headers = {"content-type": "text/event-stream", "content-encoding": "gzip"}
        return httpx.Response(200, headers=headers, stream=Body())

    client = UpstreamClient("https://venice.test/api/v1", None, http_client=_transport(answer))
    stream = await client.open_chat(b"{}", {})
    pieces = [piece async for piece in stream.iter_bytes()]
    await stream.aclose()
    assert b"".join(pieces) == events
    assert max(len(piece) for piece in pieces) <= 64 * 1024


class _PacedBody(httpx.AsyncByteStream):
    """Events with a pause before each (seconds, per event)."""

    def __init__(self, pauses: list[float]) -> None:
        self.pauses = pauses

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for index, pause in enumerate(self.pauses):
            await asyncio.sleep(pause)
            yield b'data: {"n": %d}\n\n' % index


async def _paced_stream(pauses: list[float], *, first_byte_s: float, idle_s: float) -> Any:
    def answer(_: httpx.Request) -> httpx.Response:
        headers = {"content-type": "text/event-stream"}
        return httpx.Response(200, headers=headers, stream=_PacedBody(pauses))

    timeouts = UpstreamTimeouts(first_byte_s=first_byte_s, idle_s=idle_s)
    client = UpstreamClient(
        "https://venice.test/api/v1", None, http_client=_transport(answer), timeouts=timeouts
    )
    return await client.open_chat(b"{}", {})


async def test_a_stalled_read_after_the_first_chunk_is_an_idle_timeout() -> None:
    stream = await _paced_stream([0.0, 0.0, 0.5], first_byte_s=5.0, idle_s=0.05)
    pieces: list[bytes] = []

    async def read_all() -> None:
        async for piece in stream.iter_bytes():
            pieces.append(piece)

    with pytest.raises(UpstreamTimeoutError) as info:
        await read_all()
    await stream.aclose()
    assert info.value.code == "upstream_idle_timeout"
    assert len(pieces) == 2


async def test_the_first_byte_limit_applies_to_the_first_read_only() -> None:
    stream = await _paced_stream([0.3, 0.0], first_byte_s=0.05, idle_s=5.0)

    async def read_all() -> None:
        async for _ in stream.iter_bytes():
            pass

    with pytest.raises(UpstreamTimeoutError):
        await read_all()
    await stream.aclose()


async def test_time_the_consumer_spends_between_reads_is_not_idle_time() -> None:
    stream = await _paced_stream([0.0, 0.01, 0.01, 0.01], first_byte_s=5.0, idle_s=0.05)
    pieces = []
    async for piece in stream.iter_bytes():
        pieces.append(piece)
        await asyncio.sleep(0.12)  # a slow client, longer than the idle limit
    await stream.aclose()
    assert len(pieces) == 4


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    stream = await _paced_stream([0.0, 5.0], first_byte_s=5.0, idle_s=5.0)

    async def read_all() -> None:
        async for _ in stream.iter_bytes():
            pass

    task = asyncio.create_task(read_all())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await stream.aclose()
