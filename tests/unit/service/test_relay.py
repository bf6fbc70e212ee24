"""The relay's batching of upstream reads (``decrypted_batches``), with real sealing.

One batch per upstream read, so a burst becomes one client write; but the first batch ends at
the answer's first text, so its first words go out before the rest of a buffered read is
opened (each E2EE chunk costs an ECDH).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import pytest

from proxy.core.crypto import keypair_from_private, seal_text
from proxy.core.errors import (
    AttestationError,
    PlaintextInStreamError,
    ProxyError,
    SSEProtocolError,
    UpstreamError,
    UpstreamTooLargeError,
)
from proxy.core.response import ChunkDecryptor
from proxy.core.stop import ChoiceStops
from proxy.service import relay
from proxy.service.relay import (
    AnswerLimit,
    StreamStats,
    aggregate,
    decrypted_batches,
    is_usage_chunk,
    sse_to_client,
    stop_at,
)

CLIENT = keypair_from_private(bytes.fromhex("5c" * 32))


def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "e2ee-m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def sealed(text: str) -> bytes:
    return event({"content": seal_text(CLIENT.public, text)})


ROLE = event({"role": "assistant", "content": ""})
DONE = b"data: [DONE]\n\n"


async def reads(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


def words(batch: list[dict[str, Any]]) -> list[str]:
    return [chunk["choices"][0]["delta"].get("content", "") for chunk in batch]


async def test_the_first_batch_ends_at_the_first_text_before_the_rest_is_opened() -> None:
    stats = StreamStats()
    burst = ROLE + sealed("Hello") + sealed(" big") + sealed(" world")
    batches = decrypted_batches(reads(burst, DONE), ChunkDecryptor(CLIENT.private), stats)
    first = await anext(batches)
    assert words(first) == ["", "Hello"]
    assert stats.chunks == 2  # " big" and " world" are still sealed
    assert [words(batch) async for batch in batches] == [[" big", " world"]]
    assert stats.chunks == 4
    assert stats.completed


async def test_after_the_first_text_each_read_is_one_batch() -> None:
    stats = StreamStats()
    upstream = reads(
        ROLE,
        sealed("a") + sealed("b"),
        sealed("c") + sealed("d") + event({}, "stop") + DONE,
    )
    got = [
        words(batch)
        async for batch in decrypted_batches(upstream, ChunkDecryptor(CLIENT.private), stats)
    ]
    assert got == [[""], ["a"], ["b"], ["c", "d", ""]]
    assert stats.completed


async def test_chunks_before_a_refused_one_in_the_same_read_are_relayed_first() -> None:
    stats = StreamStats()
    leak = event({"content": "PLAINTEXT"})
    batches = decrypted_batches(
        reads(ROLE + sealed("ok") + sealed("fine") + leak + DONE),
        ChunkDecryptor(CLIENT.private),
        stats,
    )
    assert words(await anext(batches)) == ["", "ok"]
    assert words(await anext(batches)) == ["fine"]
    with pytest.raises(PlaintextInStreamError):
        await anext(batches)
    assert not stats.completed


async def test_a_stream_without_done_is_truncated_not_complete() -> None:
    stats = StreamStats()
    batches = decrypted_batches(reads(ROLE + sealed("cut")), ChunkDecryptor(CLIENT.private), stats)
    assert words(await anext(batches)) == ["", "cut"]
    with pytest.raises(UpstreamError) as info:
        await anext(batches)
    assert info.value.code == "upstream_stream_truncated"
    assert not stats.completed


def text_chunk(**delta: Any) -> dict[str, Any]:
    return {"id": "c", "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


async def batches_of(*batches: list[dict[str, Any]]) -> AsyncIterator[list[dict[str, Any]]]:
    for batch in batches:
        yield batch


@pytest.mark.parametrize(
    "delta",
    [
        {"content": "x" * 600},
        {"reasoning_content": "x" * 600},
        {"reasoning": "x" * 600},
        {"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "x" * 600}}]},
    ],
    ids=["content", "reasoning_content", "reasoning", "tool_call_arguments"],
)
async def test_an_answer_gathered_whole_is_bounded_by_its_text(delta: dict[str, Any]) -> None:
    under = [text_chunk(**delta)]
    done = await aggregate(under, batches_of(under), StreamStats(), max_chars=1200)
    assert done["object"] == "chat.completion"
    with pytest.raises(UpstreamTooLargeError) as info:
        await aggregate(under, batches_of(under, under), StreamStats(), max_chars=1200)
    assert info.value.code == "upstream_answer_too_large"
    assert info.value.message == (
        "the upstream's answer exceeds 1200 characters, more than the proxy holds for one "
        "answer; raise upstream.max_answer_chars for longer ones"
    )


async def test_every_choice_counts_towards_the_bound() -> None:
    two = {
        "id": "c",
        "choices": [
            {"index": 0, "delta": {"content": "x" * 600}},
            {"index": 1, "message": {"content": "y" * 601}},
        ],
    }
    with pytest.raises(UpstreamTooLargeError):
        await aggregate([two], batches_of(), StreamStats(), max_chars=1200)
    AnswerLimit(1201).take([two])  # exactly at the bound is fine: no error


async def test_the_bytes_before_the_first_text_are_bounded_and_nothing_after() -> None:
    limit = len(ROLE) * 3
    decryptor = ChunkDecryptor(CLIENT.private)
    # Role-only chunks up to the limit are fine, one byte more is not (before it is parsed).
    within = decrypted_batches(
        reads(ROLE, ROLE, ROLE, sealed("Hi"), DONE),
        decryptor,
        StreamStats(),
        max_read_ahead_bytes=limit + len(sealed("Hi")),
    )
    assert [words(batch) async for batch in within] == [[""], [""], [""], ["Hi"]]
    beyond = decrypted_batches(
        reads(ROLE, ROLE, ROLE + b"\n", sealed("Hi"), DONE),
        decryptor,
        StreamStats(),
        max_read_ahead_bytes=limit,
    )
    with pytest.raises(UpstreamTooLargeError) as caught:
        _ = [batch async for batch in beyond]
    assert caught.value.code == "upstream_read_ahead_exceeded"
    assert f"more than {limit} bytes" in caught.value.message
    assert "upstream.max_read_ahead_bytes" in caught.value.message
    # Once the first text is in, the answer may be as long as it is.
    long_answer = decrypted_batches(
        reads(ROLE + sealed("Hi"), *[sealed(" w")] * 20, DONE),
        decryptor,
        StreamStats(),
        max_read_ahead_bytes=len(ROLE + sealed("Hi")),
    )
    assert len([batch async for batch in long_answer]) == 21
    # No bound given: none kept.
    unbounded = decrypted_batches(reads(*[ROLE] * 50, sealed("Hi"), DONE), decryptor, StreamStats())
    assert len([batch async for batch in unbounded]) == 51


# --- Venice's in-band errors and events that are not chunks -------------------------------------


def raw(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


async def failure_of(*pieces: bytes, **options: Any) -> ProxyError:
    batches = decrypted_batches(
        reads(*pieces), ChunkDecryptor(CLIENT.private), StreamStats(), **options
    )
    with pytest.raises(ProxyError) as caught:
        _ = [batch async for batch in batches]
    return caught.value


@pytest.mark.parametrize(
    ("error", "message", "code"),
    [
        (
            {"message": "m" * 400, "code": "rate_limited"},
            "upstream error mid-stream: " + "m" * 300,
            "rate_limited",
        ),
        ("s" * 400, "upstream error mid-stream: " + "s" * 300, "upstream_error"),
        ({"message": 5, "code": 7}, "the upstream reported an error mid-stream", "upstream_error"),
        ({}, "the upstream reported an error mid-stream", "upstream_error"),
        (None, "the upstream reported an error mid-stream", "upstream_error"),
        (["not", "a", "message"], "the upstream reported an error mid-stream", "upstream_error"),
    ],
    ids=["object", "string", "wrong-types", "empty", "null", "array"],
)
async def test_an_in_band_error_becomes_our_error_with_its_message_cut(
    error: Any, message: str, code: str
) -> None:
    failed = await failure_of(ROLE + raw({"error": error}) + DONE)
    assert type(failed) is UpstreamError
    assert failed.message == message
    assert failed.code == code
    assert failed.http_status == 502
    # Venice chose the code: the log line names only our class and status.
    assert failed.foreign
    assert failed.log_code == "UpstreamError:502"


async def test_an_in_band_error_ends_the_answer_even_beside_text() -> None:
    stats = StreamStats()
    batches = decrypted_batches(
        reads(sealed("Hi") + raw({"error": {"message": "boom"}, "choices": []}) + sealed("x")),
        ChunkDecryptor(CLIENT.private),
        stats,
    )
    assert words(await anext(batches)) == ["Hi"]
    with pytest.raises(UpstreamError) as caught:
        await anext(batches)
    assert caught.value.message == "upstream error mid-stream: boom"
    assert stats.chunks == 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"data: {not json\n\n", "the upstream sent an event that is not valid JSON"),
        (b"data: [1, 2]\n\n", "the upstream sent an event that is not a JSON object"),
        (b'data: "text"\n\n', "the upstream sent an event that is not a JSON object"),
    ],
    ids=["invalid", "array", "string"],
)
async def test_an_event_that_is_no_json_object_is_a_protocol_error(
    data: bytes, message: str
) -> None:
    failed = await failure_of(ROLE + data + DONE)
    assert type(failed) is SSEProtocolError
    assert failed.message == message
    assert failed.code == "upstream_bad_stream"


async def test_the_cost_is_kept_for_the_log_and_never_relayed() -> None:
    stats = StreamStats()
    cost = {"usd": 0.0012, "diem": 0}
    upstream = reads(ROLE, raw({"id": "chatcmpl-1", "choices": [], "cost": cost}), DONE)
    got = [b async for b in decrypted_batches(upstream, ChunkDecryptor(CLIENT.private), stats)]
    assert stats.cost == cost
    assert all("cost" not in chunk for batch in got for chunk in batch)
    # A cost that is no object is not kept.
    stats = StreamStats()
    upstream = reads(ROLE, raw({"id": "chatcmpl-1", "choices": [], "cost": 0.5}), DONE)
    _ = [b async for b in decrypted_batches(upstream, ChunkDecryptor(CLIENT.private), stats)]
    assert stats.cost is None


async def test_the_completion_id_is_the_first_usable_one() -> None:
    """The id the answer's signature is fetched for: the first non-empty id, never a later one
    (an id that is no short token is rebuilt as "")."""
    stats = StreamStats()

    def with_id(completion_id: str) -> bytes:
        return raw({"id": completion_id, "choices": [{"index": 0, "delta": {}}]})

    upstream = reads(with_id("not a token!"), with_id("chatcmpl-a"), with_id("chatcmpl-b"), DONE)
    _ = [b async for b in decrypted_batches(upstream, ChunkDecryptor(CLIENT.private), stats)]
    assert stats.completion_id == "chatcmpl-a"
    assert stats.chunks == 3


# --- The event size limits ----------------------------------------------------------------------


async def test_a_line_longer_than_the_limit_fails_before_it_ends() -> None:
    """A line is bounded while it is still arriving: an upstream that never sends its newline
    cannot grow the buffer to the default 4 MiB."""
    failed = await failure_of(ROLE, b"data: " + b"x" * 1100, max_event_bytes=1000)
    assert type(failed) is SSEProtocolError
    assert failed.code == "upstream_event_too_large"
    assert failed.message == "an upstream event-stream line exceeds the size limit of 1000 bytes"


async def test_an_event_of_many_short_lines_is_bounded_as_a_whole() -> None:
    lines = b"".join(b"data: " + b"x" * 300 + b"\n" for _ in range(4))
    failed = await failure_of(ROLE + lines + b"\n" + DONE, max_event_bytes=1000)
    assert failed.code == "upstream_event_too_large"
    assert failed.message == "an upstream event-stream event exceeds the size limit of 1000 bytes"


async def test_messages_of_a_truncated_stream_and_of_too_much_before_the_first_text() -> None:
    failed = await failure_of(ROLE + sealed("cut"))
    assert failed.message == "the upstream stream ended before it was complete (no [DONE])"
    failed = await failure_of(ROLE, ROLE, max_read_ahead_bytes=len(ROLE))
    assert failed.message == (
        f"the upstream sent more than {len(ROLE)} bytes before the first text of its answer "
        "(upstream.max_read_ahead_bytes)"
    )


# --- After [DONE]: the body is read to its end, within bounds -----------------------------------


class Body:
    """An upstream body that records how many of its reads were taken."""

    def __init__(self, *pieces: bytes, hang: bool = False, fail: ProxyError | None = None) -> None:
        self.pieces = pieces
        self.hang = hang
        self.fail = fail
        self.taken = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            self.taken += 1
            yield piece
        if self.fail is not None:
            raise self.fail
        if self.hang:
            await asyncio.Event().wait()


async def relayed_words(body: Body, stats: StreamStats) -> list[list[str]]:
    batches = decrypted_batches(aiter(body), ChunkDecryptor(CLIENT.private), stats)
    return [words(batch) async for batch in batches]


async def test_after_done_the_body_is_read_to_its_end_and_not_parsed() -> None:
    stats = StreamStats()
    body = Body(sealed("Hi") + DONE, b"data: {not json\n\n", b"garbage")
    assert await relayed_words(body, stats) == [["Hi"]]
    assert body.taken == 3
    assert stats.completed
    assert stats.chunks == 1


async def test_after_done_at_most_64_kib_are_read() -> None:
    # 65535 bytes leave one byte of the allowance: the next read is taken, then no more.
    body = Body(sealed("Hi") + DONE, b"x" * 65535, b"y", b"z", b"w")
    assert await relayed_words(body, StreamStats()) == [["Hi"]]
    assert body.taken == 3
    body = Body(sealed("Hi") + DONE, b"x" * 65536, b"y")
    assert await relayed_words(body, StreamStats()) == [["Hi"]]
    assert body.taken == 2


async def test_after_done_a_silent_upstream_is_waited_for_a_bounded_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(relay, "_DRAIN_LIMIT_S", 0.05)
    stats = StreamStats()
    body = Body(sealed("Hi") + DONE, b"more", hang=True)
    got = await asyncio.wait_for(relayed_words(body, stats), timeout=5)
    assert got == [["Hi"]]
    assert stats.completed


async def test_after_done_an_upstream_failure_is_no_error() -> None:
    stats = StreamStats()
    body = Body(sealed("Hi") + DONE, b"more", fail=UpstreamError("reset", code="upstream_reset"))
    assert await relayed_words(body, stats) == [["Hi"]]
    assert stats.completed


# --- Stop sequences cut from the relayed answer ---------------------------------------------------


def content(text: str, finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": finish}
        ],
    }


USAGE = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
USAGE_CHUNK = {
    "id": "c",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "m",
    "choices": [],
    "usage": USAGE,
}


class Source:
    """Rebuilt batches as the relay reads them; records what was taken and whether closed."""

    def __init__(self, *batches: list[dict[str, Any]]) -> None:
        self.batches = batches
        self.taken = 0
        self.closed = False

    async def run(self) -> AsyncGenerator[list[dict[str, Any]], None]:
        try:
            for batch in self.batches:
                self.taken += 1
                yield batch
        finally:
            self.closed = True


def texts(batches: list[list[dict[str, Any]]]) -> list[list[tuple[str | None, Any]]]:
    return [
        [
            (chunk["choices"][0]["delta"].get("content"), chunk["choices"][0]["finish_reason"])
            if chunk["choices"]
            else ("usage", chunk["usage"])
            for chunk in batch
        ]
        for batch in batches
    ]


ANSWER = (
    [content("Hello wor")],
    [content("ldEND tail")],
    [content(" more")],
    [content("", "stop")],
    [USAGE_CHUNK],
)


async def test_a_stop_sequence_ends_the_answer_and_closes_the_upstream() -> None:
    source, stats = Source(*ANSWER), StreamStats()
    got = [batch async for batch in stop_at(source.run(), ChoiceStops(["END"]), stats)]
    assert texts(got) == [[("Hello wor", None)], [("ld", "stop")]]
    assert stats.stopped is True
    assert source.taken == 2  # nothing more is read: the caller closes the upstream
    assert source.closed


async def test_with_read_to_end_the_rest_is_read_and_only_usage_passes() -> None:
    source, stats = Source(*ANSWER), StreamStats()
    stopped = stop_at(source.run(), ChoiceStops(["END"]), stats, read_to_end=True)
    got = [batch async for batch in stopped]
    assert texts(got) == [[("Hello wor", None)], [("ld", "stop")], [("usage", USAGE)]]
    assert stats.stopped is True
    assert source.taken == 5
    assert source.closed


async def test_a_held_back_tail_is_relayed_when_the_stream_ends() -> None:
    source, stats = Source([content("abc E")]), StreamStats()
    got = [batch async for batch in stop_at(source.run(), ChoiceStops(["END"]), stats)]
    # "E" could have started "END": held back, then relayed at the end (no stop: no finish).
    assert texts(got) == [[("abc ", None)], [("E", None)]]
    assert stats.stopped is False
    assert source.taken == 1


async def test_without_a_stop_the_answer_passes_whole() -> None:
    source, stats = Source(*ANSWER), StreamStats()
    got = [batch async for batch in stop_at(source.run(), ChoiceStops(["STOP"]), stats)]
    assert texts(got) == [
        [("Hello wor", None)],
        [("ldEND tail", None)],
        [(" more", None)],
        [("", "stop")],
        [("usage", USAGE)],
    ]
    assert stats.stopped is False


# --- The client's bytes ---------------------------------------------------------------------------


def frame(chunk: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


async def client_parts(
    first: list[dict[str, Any]],
    *batches: list[dict[str, Any]],
    include_usage: bool,
    stats: StreamStats,
    fail: ProxyError | None = None,
    before_done: Any = None,
) -> list[bytes]:
    async def rest() -> AsyncIterator[list[dict[str, Any]]]:
        for batch in batches:
            yield batch
        if fail is not None:
            raise fail
        stats.completed = True

    return [
        part
        async for part in sse_to_client(
            first, rest(), include_usage=include_usage, stats=stats, before_done=before_done
        )
    ]


def with_usage(chunk: dict[str, Any]) -> dict[str, Any]:
    return {**chunk, "usage": USAGE}


NOTHING = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": []}


async def test_each_chunk_is_one_compact_event() -> None:
    parts = await client_parts([content("Hi")], include_usage=False, stats=StreamStats())
    assert parts == [
        b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":'
        b'[{"index":0,"delta":{"content":"Hi"},"logprobs":null,"finish_reason":null}]}\n\n',
        b"data: [DONE]\n\n",
    ]


def stream() -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
    first = [content(""), content("Hi")]
    rest = [
        [content(" there")],
        [content(" a"), NOTHING, with_usage(content(" b"))],
        [NOTHING],
        [NOTHING, NOTHING],
        [content("", "stop")],
        [USAGE_CHUNK],
    ]
    return first, rest


async def test_usage_is_relayed_only_when_the_client_asked() -> None:
    stats = StreamStats()
    first, rest = stream()
    parts = await client_parts(first, *rest, include_usage=False, stats=stats)
    # One write per batch; a batch with nothing left to say is no write at all.
    assert parts == [
        frame(content("")) + frame(content("Hi")),
        frame(content(" there")),
        frame(content(" a")) + frame(content(" b")),
        frame(content("", "stop")),
        b"data: [DONE]\n\n",
    ]
    assert stats.sent == 6
    assert stats.usage == USAGE  # for the log line, even when not relayed
    assert stats.delivered is True
    assert stats.error_code is None


async def test_usage_is_relayed_when_asked() -> None:
    stats = StreamStats()
    first, rest = stream()
    parts = await client_parts(first, *rest, include_usage=True, stats=stats)
    assert parts == [
        frame(content("")) + frame(content("Hi")),
        frame(content(" there")),
        frame(content(" a")) + frame(with_usage(content(" b"))),
        frame(content("", "stop")),
        frame(USAGE_CHUNK),
        b"data: [DONE]\n\n",
    ]
    assert stats.sent == 7
    assert stats.usage == USAGE


async def test_a_first_batch_with_nothing_to_say_is_no_write() -> None:
    stats = StreamStats()
    parts = await client_parts([NOTHING], [content("Hi")], include_usage=True, stats=stats)
    assert parts == [frame(content("Hi")), b"data: [DONE]\n\n"]
    assert stats.sent == 1


async def test_an_error_after_the_first_bytes_is_reported_in_band() -> None:
    stats = StreamStats()
    truncated = UpstreamError("cut short", code="upstream_stream_truncated")
    parts = await client_parts(
        [content("Hi")], [content("!")], include_usage=False, stats=stats, fail=truncated
    )
    assert parts == [
        frame(content("Hi")),
        frame(content("!")),
        b'data: {"error":{"message":"cut short","type":"upstream_error","param":null,'
        b'"code":"upstream_stream_truncated"}}\n\n',
        b"data: [DONE]\n\n",
    ]
    assert stats.error_code == "upstream_stream_truncated"
    assert stats.sent == 2
    assert stats.delivered is False


async def test_a_foreign_error_is_logged_by_class_not_by_its_code() -> None:
    stats = StreamStats()
    foreign = UpstreamError("upstream error mid-stream: x", code="PROMPT-ECHO", foreign=True)
    parts = await client_parts([], include_usage=False, stats=stats, fail=foreign)
    assert json.loads(parts[0][6:])["error"]["code"] == "PROMPT-ECHO"
    assert stats.error_code == "UpstreamError:502"


async def test_a_failed_check_before_done_withholds_the_end() -> None:
    stats = StreamStats()
    seen: list[int] = []

    async def refuse() -> ProxyError | None:
        seen.append(stats.sent)
        return AttestationError("not signed", code="signature_mismatch")

    parts = await client_parts(
        [content("Hi")], [content("!")], include_usage=False, stats=stats, before_done=refuse
    )
    assert seen == [2]  # after the whole answer
    assert parts[-2:] == [
        b'data: {"error":{"message":"not signed","type":"attestation_error","param":null,'
        b'"code":"signature_mismatch"}}\n\n',
        b"data: [DONE]\n\n",
    ]
    assert stats.completed
    assert stats.error_code == "signature_mismatch"
    assert stats.delivered is False


async def test_a_passed_check_before_done_ends_the_answer() -> None:
    stats = StreamStats()

    async def accept() -> ProxyError | None:
        return None

    parts = await client_parts(
        [content("Hi")], include_usage=False, stats=stats, before_done=accept
    )
    assert parts == [frame(content("Hi")), b"data: [DONE]\n\n"]
    assert stats.delivered is True


async def test_an_incomplete_upstream_stream_is_not_delivered() -> None:
    stats = StreamStats()

    async def rest() -> AsyncIterator[list[dict[str, Any]]]:
        yield [content("Hi")]

    parts = [p async for p in sse_to_client([], rest(), include_usage=False, stats=stats)]
    assert parts == [frame(content("Hi")), b"data: [DONE]\n\n"]
    assert stats.error_code is None
    assert stats.delivered is False


@pytest.mark.parametrize(
    ("chunk", "usage"),
    [
        (USAGE_CHUNK, True),
        ({"usage": {}}, True),
        (with_usage(content("x")), False),
        ({"choices": [], "usage": None}, False),
        (NOTHING, False),
    ],
)
def test_is_usage_chunk(chunk: dict[str, Any], usage: bool) -> None:
    assert is_usage_chunk(chunk) is usage


# --- The answer limit and the aggregated answer ---------------------------------------------------


def delta_chunk(delta: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"id": "c", "choices": [{"index": 0, "delta": delta}]}]


@pytest.mark.parametrize(
    "delta",
    [
        {"content": "x" * 5, "reasoning_content": "y" * 5},
        {"content": "x" * 5, "tool_calls": [{"index": 0, "function": {"arguments": "y" * 5}}]},
        {
            "tool_calls": [
                {"index": 0, "function": {"arguments": "x" * 5}},
                {"index": 1, "function": {"arguments": "y" * 5}},
            ]
        },
    ],
    ids=["content+reasoning", "content+arguments", "two-calls"],
)
def test_every_text_of_a_delta_counts(delta: dict[str, Any]) -> None:
    AnswerLimit(10).take(delta_chunk(delta))
    with pytest.raises(UpstreamTooLargeError):
        AnswerLimit(9).take(delta_chunk(delta))


def test_call_names_and_malformed_calls_count_nothing() -> None:
    calls = [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather"}},
        {"index": 1, "function": {"name": "f", "arguments": None}},
        {"index": 2},
        "not a call",
    ]
    AnswerLimit(0).take(delta_chunk({"tool_calls": calls}))


async def test_an_aggregated_answer_keeps_its_usage_for_the_log() -> None:
    stats = StreamStats()
    done = await aggregate(
        [content("Hi")], batches_of([content("", "stop")], [USAGE_CHUNK]), stats, max_chars=10
    )
    assert done["usage"] == USAGE
    assert stats.usage == USAGE
    stats = StreamStats(usage={"stale": 1})
    await aggregate([content("Hi")], batches_of([content("", "stop")]), stats, max_chars=10)
    assert stats.usage is None


@pytest.mark.parametrize("include_usage", [True, False])
async def test_an_answer_without_text_is_relayed_from_its_first_batch(include_usage: bool) -> None:
    """No text: the first batch holds the whole answer, its usage included."""
    stats = StreamStats()
    first = [content(""), content("", "stop"), USAGE_CHUNK]
    parts = await client_parts(first, include_usage=include_usage, stats=stats)
    closing = frame(USAGE_CHUNK) if include_usage else b""
    assert parts == [
        frame(content("")) + frame(content("", "stop")) + closing,
        b"data: [DONE]\n\n",
    ]
    assert stats.usage == USAGE
    assert stats.sent == (3 if include_usage else 2)


async def test_usage_read_with_the_finish_is_relayed_in_the_same_write() -> None:
    stats = StreamStats()
    closing = [content("", "stop"), USAGE_CHUNK]
    parts = await client_parts([content("Hi")], closing, include_usage=True, stats=stats)
    assert parts[1] == frame(content("", "stop")) + frame(USAGE_CHUNK)
    assert stats.usage == USAGE
    assert stats.sent == 3
