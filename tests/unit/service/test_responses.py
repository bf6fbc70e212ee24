"""The Responses relay (``proxy.service.responses``) over decrypted batches: what reaches the
client when a batch fails half-way, the usage and error code it records, and the final object.

Every event of a failed stream that the final ``response`` depends on must have been sent:
:class:`~proxy.core.responses.ResponseBuilder` itself is pinned in
``tests/unit/core/test_responses_events.py``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from itertools import count
from typing import Any

import pytest

from proxy.core.errors import UpstreamError
from proxy.core.responses import ResponseBuilder
from proxy.service.relay import Batch, StreamStats
from proxy.service.responses import responses_object, responses_sse


def builder() -> ResponseBuilder:
    numbers = count()
    return ResponseBuilder(
        model="m",
        echo={},
        response_id="resp_1",
        created_at=1,
        make_id=lambda prefix: f"{prefix}_{next(numbers)}",
    )


def text(content: str, finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]}


BROKEN = {"choices": [{"index": 0, "delta": {"tool_calls": "not an array"}}]}
LIMIT = 1000
USAGE = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


async def batches(*items: Batch) -> AsyncIterator[Batch]:
    for item in items:
        yield item


def events_of(parts: list[bytes]) -> list[dict[str, Any]]:
    """Every event on the wire, in order (``event: T\\ndata: {...}\\n\\n`` frames)."""
    wire = b"".join(parts).decode()
    frames = [frame for frame in wire.split("\n\n") if frame]
    events = []
    for frame in frames:
        kind, data = frame.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert kind == f"event: {event['type']}"
        events.append(event)
    return events


async def relay(first: Batch, *rest: Batch, stats: StreamStats) -> list[dict[str, Any]]:
    return events_of(
        [
            part
            async for part in responses_sse(
                first, batches(*rest), builder(), stats=stats, max_chars=LIMIT
            )
        ]
    )


@pytest.mark.parametrize("where", ["first", "rest"])
async def test_a_batch_that_fails_half_way_sends_its_earlier_chunks_before_response_failed(
    where: str,
) -> None:
    stats = StreamStats()
    batch = [text("Hel"), text("lo"), BROKEN, text("never")]
    events = await (
        relay(batch, stats=stats) if where == "first" else relay([], batch, stats=stats)
    )
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.failed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(7))
    assert "".join(e["delta"] for e in events if "delta" in e) == "Hello"
    failed = events[-1]["response"]
    assert failed["output"][0]["content"][0]["text"] == "Hello"
    assert failed["error"]["code"] == "server_error"
    assert "upstream_bad_chunk" in failed["error"]["message"]
    assert stats.error_code == "upstream_bad_chunk"


async def test_a_chunk_that_fails_half_way_sends_the_text_it_carried() -> None:
    stats = StreamStats()
    half = {"choices": [{"index": 0, "delta": {"content": "Hi", "tool_calls": [7]}}]}
    events = await relay([text("A")], [half], stats=stats)
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert deltas == ["A", "Hi"]
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "AHi"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


async def test_one_write_per_batch_and_usage_recorded_on_success() -> None:
    stats = StreamStats()
    parts = [
        part
        async for part in responses_sse(
            [text("a")],
            batches([text("b"), text("c", "stop")], [USAGE]),
            builder(),
            stats=stats,
            max_chars=LIMIT,
        )
    ]
    # start, first batch, one batch of two chunks, the usage batch (no events), the closing.
    assert len(parts) == 4
    events = events_of(parts)
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["usage"]["total_tokens"] == 5
    assert stats.usage == USAGE["usage"]
    assert stats.error_code is None


async def test_a_failure_before_done_ends_the_stream_failed_not_completed() -> None:
    stats = StreamStats()

    async def before_done() -> UpstreamError:
        return UpstreamError("the signature did not verify", code="signature_invalid")

    parts = [
        part
        async for part in responses_sse(
            [text("a", "stop")],
            batches(),
            builder(),
            stats=stats,
            max_chars=LIMIT,
            before_done=before_done,
        )
    ]
    events = events_of(parts)
    assert events[-1]["type"] == "response.failed"
    assert "signature_invalid" in events[-1]["response"]["error"]["message"]
    assert all(e["type"] != "response.completed" for e in events)
    assert stats.error_code == "signature_invalid"


async def test_the_object_carries_output_text_and_propagates_errors() -> None:
    stats = StreamStats()
    body = await responses_object(
        [text("a")], batches([text("b", "stop")], [USAGE]), builder(), stats=stats, max_chars=100
    )
    assert (body["status"], body["output_text"]) == ("completed", "ab")
    assert stats.usage == USAGE["usage"]
    with pytest.raises(UpstreamError):
        await responses_object(
            [text("a"), BROKEN], batches(), builder(), stats=stats, max_chars=100
        )


async def test_a_streamed_answer_is_bounded_like_a_gathered_one() -> None:
    # response.completed carries the whole output, so the builder holds it: an upstream that
    # never stops must end the stream failed at the bound, not grow the proxy.
    stats = StreamStats()
    parts = [
        part
        async for part in responses_sse(
            [text("ab")],
            batches([text("cd"), text("e")], [text("f")], [text("never")]),
            builder(),
            stats=stats,
            max_chars=5,
        )
    ]
    events = events_of(parts)
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert deltas == ["ab", "cd", "e"]  # 5 characters: at the bound, not over it
    failed = events[-1]
    assert failed["type"] == "response.failed"
    assert failed["response"]["output"][0]["content"][0]["text"] == "abcde"
    assert failed["response"]["error"]["message"] == (
        "the upstream's answer exceeds 5 characters, more than the proxy holds for one answer; "
        "raise upstream.max_answer_chars for longer ones (upstream_answer_too_large)"
    )
    assert stats.error_code == "upstream_answer_too_large"


COSTED = {**USAGE, "cost": {"usd": 0.25}}


@pytest.mark.parametrize("where", ["first", "rest"])
async def test_usage_and_cost_are_recorded_from_any_batch_streamed(where: str) -> None:
    stats = StreamStats()
    first, rest = ([text("a"), COSTED], []) if where == "first" else ([text("a")], [[COSTED]])
    events = await relay(first, *rest, stats=stats)
    assert events[-1]["response"]["usage"]["total_tokens"] == 5
    assert (stats.usage, stats.cost) == (USAGE["usage"], {"usd": 0.25})


@pytest.mark.parametrize("where", ["first", "rest"])
async def test_usage_and_cost_are_recorded_from_any_batch_gathered(where: str) -> None:
    stats = StreamStats()
    first, rest = ([text("a"), COSTED], []) if where == "first" else ([text("a")], [[COSTED]])
    body = await responses_object(first, batches(*rest), builder(), stats=stats, max_chars=LIMIT)
    assert body["usage"]["total_tokens"] == 5
    assert (stats.usage, stats.cost) == (USAGE["usage"], {"usd": 0.25})
