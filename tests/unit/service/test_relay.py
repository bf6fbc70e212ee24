"""The relay's batching of upstream reads (``decrypted_batches``), with real sealing.

One batch per upstream read, so a burst becomes one client write; but the first batch ends at
the answer's first text, so its first words go out before the rest of a buffered read is
opened (each E2EE chunk costs an ECDH).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from proxy.core.crypto import keypair_from_private, seal_text
from proxy.core.errors import PlaintextInStreamError, UpstreamError, UpstreamTooLargeError
from proxy.core.response import ChunkDecryptor
from proxy.service.relay import AnswerLimit, StreamStats, aggregate, decrypted_batches

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
