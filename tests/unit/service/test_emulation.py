"""The relay's tool emulation loop (:mod:`proxy.service.emulation`) with scripted attempts:
streamed and aggregated answers, the re-ask as a new attempt, the budget, and the chunks of a
non-streamed answer folding back into the same ``chat.completion``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from proxy.core.aggregate import CompletionAggregator
from proxy.core.tools import EmulationPlan, ToolEmulationError, ToolsConfig, prepare
from proxy.service.emulation import completion_chunks, emulated_batches
from proxy.service.relay import Batch, StreamStats

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
GOOD = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
BAD = '<tool_call>\n{"name": "get_weather", "arguments": {"town": 3}}\n</tool_call>'
USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


def _prepared(stream: bool) -> tuple[dict[str, Any], EmulationPlan]:
    request = {
        "model": "m",
        "messages": [{"role": "user", "content": "weather in Oslo?"}],
        "tools": [WEATHER],
        "stream": stream,
    }
    prepared = prepare(request, model_id="e2ee-qwen-2-5-7b-p", config=ToolsConfig())
    assert prepared.plan is not None
    return prepared.request, prepared.plan


def _chunks(text: str, completion_id: str) -> Batch:
    base = {"id": completion_id, "object": "chat.completion.chunk", "created": 1, "model": "m"}
    return [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text[:9]}}]},
        {**base, "choices": [{"index": 0, "delta": {"content": text[9:]}}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {**base, "choices": [], "usage": dict(USAGE)},
    ]


class _Scripted:
    """One upstream attempt answering ``text``."""

    made = 0

    def __init__(self, text: str) -> None:
        _Scripted.made += 1
        chunks = _chunks(text, f"chatcmpl-{_Scripted.made}")
        self.first: Batch = chunks[:1]
        self.rest: AsyncIterator[Batch] = self._rest(chunks[1:])
        self.closed = False

    @staticmethod
    async def _rest(chunks: Batch) -> AsyncIterator[Batch]:
        for chunk in chunks:
            yield [chunk]

    async def aclose(self) -> None:
        self.closed = True


def _run(stream: bool, answers: list[str]) -> tuple[Batch, list[dict[str, Any]], _Scripted]:
    body, plan = _prepared(stream)
    _Scripted.made = 0
    first = _Scripted(answers[0])
    later = iter(answers[1:])
    sent: list[dict[str, Any]] = []

    async def reopen(rendered: dict[str, Any]) -> _Scripted:
        sent.append(rendered)
        return _Scripted(next(later))

    async def collect() -> Batch:
        out: Batch = []
        batches = emulated_batches(
            plan, body, first, reopen, client_stream=stream, stats=StreamStats()
        )
        async for batch in batches:
            out.extend(batch)
        return out

    return asyncio.run(collect()), sent, first


def _folded(chunks: Batch) -> dict[str, Any]:
    aggregator = CompletionAggregator()
    for chunk in chunks:
        aggregator.add(chunk)
    return aggregator.result()


@pytest.mark.parametrize("stream", [False, True])
def test_a_valid_call_needs_one_attempt(stream: bool) -> None:
    chunks, sent, _ = _run(stream, [GOOD])
    assert sent == []
    message = _folded(chunks)["choices"][0]
    assert message["finish_reason"] == "tool_calls"
    assert message["message"]["content"] is None
    (call,) = message["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Oslo"}
    assert call["id"].startswith("call_")


@pytest.mark.parametrize("stream", [False, True])
def test_an_invalid_call_is_asked_again_in_a_new_attempt(stream: bool) -> None:
    chunks, sent, first = _run(stream, [BAD, GOOD])
    assert first.closed
    (rendered,) = sent
    assert len(rendered["messages"]) == len(_prepared(stream)[0]["messages"]) + 2
    assert rendered["messages"][-2]["role"] == "assistant"
    assert "tools" not in rendered
    completion = _folded(chunks)
    # One id per client answer: a stream keeps the first id it showed, an aggregated answer is
    # the attempt that answered.
    assert {chunk["id"] for chunk in chunks} == {"chatcmpl-1" if stream else "chatcmpl-2"}
    (call,) = completion["choices"][0]["message"]["tool_calls"]
    assert json.loads(call["function"]["arguments"]) == {"city": "Oslo"}
    assert completion["usage"]["total_tokens"] == 2 * USAGE["total_tokens"]  # both attempts


@pytest.mark.parametrize("stream", [False, True])
def test_past_the_budget_the_error_propagates(stream: bool) -> None:
    with pytest.raises(ToolEmulationError) as caught:
        _run(stream, [BAD, BAD])
    assert caught.value.status == 502


def test_completion_chunks_fold_back_into_the_completion() -> None:
    completion = {
        "id": "chatcmpl-2",
        "object": "chat.completion",
        "created": 5,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "refusal": None,
                    "tool_calls": [
                        {
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        },
                        {
                            "id": "call_b",
                            "type": "function",
                            "function": {"name": "g", "arguments": '{"x":1}'},
                        },
                    ],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
        "usage": dict(USAGE),
    }
    assert _folded(completion_chunks(completion)) == completion


def test_aggregator_joins_tool_call_fragments_by_index() -> None:
    base = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    opening = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f"}}
    fragment = {"index": 0, "function": {"arguments": '{"a":'}}
    closing = {"index": 0, "function": {"arguments": " 1}"}}
    folded = _folded(
        [
            {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}]},
            *(
                {**base, "choices": [{"index": 0, "delta": {"tool_calls": [part]}}]}
                for part in (opening, fragment, closing)
            ),
            {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        ]
    )
    message = folded["choices"][0]["message"]
    assert message["content"] == "Hi"
    assert message["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    ]
