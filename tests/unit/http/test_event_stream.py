"""EventStream on a bare ASGI interface: framing, hang-ups and foreign cancellations."""

from __future__ import annotations

import asyncio
import types
from collections.abc import AsyncGenerator, MutableMapping
from typing import Any

import pytest

from proxy.http.event_stream import EventStream

SCOPE: dict[str, Any] = {"type": "http", "asgi": {"spec_version": "2.3"}}


class Peer:
    """The server side: records what was sent; ``hang_up`` makes receive report it."""

    def __init__(self) -> None:
        self.sent: list[MutableMapping[str, Any]] = []
        self.first_part = asyncio.Event()
        self._gone = asyncio.Event()

    def hang_up(self) -> None:
        self._gone.set()

    async def receive(self) -> dict[str, Any]:
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.body":
            self.first_part.set()


async def test_parts_are_sent_as_they_come_then_an_empty_closing_body() -> None:
    async def body() -> AsyncGenerator[bytes, None]:
        yield b"data: 1\n\n"
        yield b"data: [DONE]\n\n"

    peer = Peer()
    await EventStream(body(), {"x-venice-proxy-e2ee": "true"})(SCOPE, peer.receive, peer.send)
    start, *parts = peer.sent
    assert start["type"] == "http.response.start"
    assert start["status"] == 200
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"text/event-stream; charset=utf-8"
    assert headers[b"x-venice-proxy-e2ee"] == b"true"
    assert parts == [
        {"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True},
        {"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": True},
        {"type": "http.response.body", "body": b"", "more_body": False},
    ]


async def test_a_hang_up_cancels_the_body_where_it_waits_and_the_answer_just_ends() -> None:
    cleaned = asyncio.Event()
    cancelled = False

    async def body() -> AsyncGenerator[bytes, None]:
        nonlocal cancelled
        try:
            yield b"data: 1\n\n"
            await asyncio.sleep(30)  # the upstream thinking
            yield b"never"
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            cleaned.set()

    peer = Peer()
    stream = asyncio.create_task(EventStream(body(), {})(SCOPE, peer.receive, peer.send))
    await peer.first_part.wait()
    peer.hang_up()
    await asyncio.wait_for(stream, 5.0)  # ends without an exception
    assert cancelled
    assert cleaned.is_set()
    assert b"never" not in [message.get("body") for message in peer.sent]
    assert stream.cancelling() == 0  # the task is not left marked as cancelled


async def test_the_body_is_closed_when_the_stream_ends_between_parts() -> None:
    closed = asyncio.Event()

    async def body() -> AsyncGenerator[bytes, None]:
        try:
            yield b"data: 1\n\n"
            yield b"data: 2\n\n"
        finally:
            closed.set()

    peer = Peer()

    async def failing_send(message: MutableMapping[str, Any]) -> None:
        peer.sent.append(message)
        if message.get("body") == b"data: 1\n\n":
            raise OSError("the socket is gone")

    with pytest.raises(OSError, match="the socket is gone"):
        await EventStream(body(), {})(SCOPE, peer.receive, failing_send)
    assert closed.is_set()  # not left for the garbage collector


async def test_a_cancellation_from_elsewhere_propagates() -> None:
    async def body() -> AsyncGenerator[bytes, None]:
        yield b"data: 1\n\n"
        await asyncio.sleep(30)
        yield b"never"

    peer = Peer()
    stream = asyncio.create_task(EventStream(body(), {})(SCOPE, peer.receive, peer.send))
    await peer.first_part.wait()
    stream.cancel()  # a server shutting down, not the client
    with pytest.raises(asyncio.CancelledError):
        await stream


def buffered_parts(count: int) -> AsyncGenerator[bytes, None]:
    """A body whose parts are all ready at once: it never suspends (bytes already buffered)."""

    async def body() -> AsyncGenerator[bytes, None]:
        for i in range(count):
            yield b"data: %d\n\n" % i

    return body()


async def test_a_hang_up_is_seen_at_once_when_the_body_never_suspends() -> None:
    peer = Peer()
    peer.hang_up()  # the client is already gone; only a loop pass can tell the writer
    # No source: the writer yields after every part. A source whose reads never waited: after
    # every part but the first (the loop ran while the answer was opened).
    for source_waits, written in ((None, 1), (lambda: 7, 2)):
        peer.sent.clear()
        await EventStream(buffered_parts(100), {}, source_waits=source_waits)(
            SCOPE, peer.receive, peer.send
        )
        parts = [m for m in peer.sent if m["type"] == "http.response.body"]
        assert len(parts) == written


async def test_no_extra_loop_pass_while_the_source_says_its_reads_waited() -> None:
    moving = iter(range(1000))
    peer = Peer()
    peer.hang_up()
    await EventStream(buffered_parts(5), {}, source_waits=lambda: next(moving))(
        SCOPE, peer.receive, peer.send
    )
    # The source claims every read waited (the loop ran), so the writer never yields itself;
    # this body never actually suspends, so all five parts and the end were written.
    bodies = [m["body"] for m in peer.sent if m["type"] == "http.response.body"]
    assert bodies == [b"data: %d\n\n" % i for i in range(5)] + [b""]


async def test_a_stream_cancelled_before_its_writer_ran_closes_the_body() -> None:
    async def body() -> AsyncGenerator[bytes, None]:
        yield b"data: 1\n\n"

    generator = body()
    assert isinstance(generator, types.AsyncGeneratorType)
    peer = Peer()
    stream = asyncio.create_task(EventStream(generator, {})(SCOPE, peer.receive, peer.send))
    await asyncio.sleep(0)  # the stream has made its writer task, which has not run yet
    stream.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stream
    assert peer.sent == []
    assert generator.ag_frame is None  # closed, not left for the garbage collector


async def test_a_server_shutdown_mid_stream_closes_the_body_before_it_propagates() -> None:
    closed = asyncio.Event()

    async def body() -> AsyncGenerator[bytes, None]:
        try:
            yield b"data: 1\n\n"
            await asyncio.sleep(30)
            yield b"never"
        finally:
            closed.set()

    peer = Peer()
    stream = asyncio.create_task(EventStream(body(), {})(SCOPE, peer.receive, peer.send))
    await peer.first_part.wait()
    stream.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stream
    assert closed.is_set()


def test_the_response_says_200_and_event_stream_before_it_is_sent() -> None:
    stream = EventStream(buffered_parts(1), {"x-request-id": "req_1"})
    assert stream.status_code == 200
    assert stream.media_type == "text/event-stream"
    assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert stream.headers["x-request-id"] == "req_1"
    asyncio.run(stream.body_iterator.aclose())


@pytest.mark.parametrize("source_waits", [None, lambda: 0, lambda: 3])
async def test_buffered_parts_are_not_slowed_by_the_loop_passes(source_waits: Any) -> None:
    peer = Peer()  # the client stays
    await asyncio.wait_for(
        EventStream(buffered_parts(20), {}, source_waits=source_waits)(
            SCOPE, peer.receive, peer.send
        ),
        0.5,  # a loop pass per part, never a real wait
    )
    bodies = [m["body"] for m in peer.sent if m["type"] == "http.response.body"]
    assert bodies == [b"data: %d\n\n" % i for i in range(20)] + [b""]


async def test_a_source_whose_first_count_is_one_still_skips_the_first_pass() -> None:
    # The counter starts below any count a source can report: the first part is never followed
    # by a pass of its own, whatever the source says first (here 1, then unchanged: a pass).
    peer = Peer()
    peer.hang_up()
    await EventStream(buffered_parts(100), {}, source_waits=lambda: 1)(
        SCOPE, peer.receive, peer.send
    )
    parts = [m for m in peer.sent if m["type"] == "http.response.body"]
    assert len(parts) == 2


async def test_the_task_the_body_ran_in_absorbs_the_hang_up() -> None:
    ran_in: list[asyncio.Task[Any]] = []

    async def body() -> AsyncGenerator[bytes, None]:
        task = asyncio.current_task()
        assert task is not None
        ran_in.append(task)
        yield b"data: 1\n\n"
        await asyncio.sleep(30)
        yield b"never"

    peer = Peer()
    stream = asyncio.create_task(EventStream(body(), {})(SCOPE, peer.receive, peer.send))
    await peer.first_part.wait()
    peer.hang_up()
    await asyncio.wait_for(stream, 5.0)
    (writer,) = ran_in
    assert writer is not stream
    assert writer.done()
    assert not writer.cancelled()
    assert writer.cancelling() == 0  # the cancellation was ours, and it is taken back
