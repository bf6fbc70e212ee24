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
from proxy.core.crypto import keypair_from_private, seal_text
from proxy.core.response import ChunkDecryptor
from proxy.core.tools import EmulationPlan, ToolEmulationError, ToolsConfig, prepare
from proxy.service.emulation import completion_chunks, emulated_batches
from proxy.service.relay import Batch, StreamStats, decrypted_batches
from tests.support.weather_tool import BAD, GOOD, WEATHER

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


# --- What the client sees first, the budget, and the stats of a re-asked answer ------------------


def test_text_before_a_call_streams_from_the_first_read() -> None:
    chunks, sent, _ = _run(True, ["Sure, let me look.\n" + GOOD])
    assert sent == []
    texts = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert texts[:2] == ["Sure, let", " me look."]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert _folded(chunks)["choices"][0]["finish_reason"] == "tool_calls"


CLIENT = keypair_from_private(bytes.fromhex("5c" * 32))


def _event(completion_id: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    chunk = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "e2ee-m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


class _Sealed:
    """One upstream attempt as the chat service opens it: sealed SSE bytes through the real
    relay (:func:`decrypted_batches`), sharing the request's stats; ``first`` is read up to
    the answer's first text."""

    def __init__(self, text: str, completion_id: str, stats: StreamStats, usage: bool) -> None:
        pieces = [
            _event(
                completion_id, {"role": "assistant", "content": seal_text(CLIENT.public, text[:9])}
            ),
            _event(completion_id, {"content": seal_text(CLIENT.public, text[9:])}),
            _event(completion_id, {}, "stop"),
        ]
        if usage:
            closing = {"id": completion_id, "choices": [], "usage": USAGE}
            pieces.append(b"data: " + json.dumps(closing).encode() + b"\n\n")
        pieces.append(b"data: [DONE]\n\n")
        self._batches = decrypted_batches(_reads(pieces), ChunkDecryptor(CLIENT.private), stats)
        self.rest: AsyncIterator[Batch] = self._batches
        self.first: Batch = []
        self.closed = False

    async def open(self) -> _Sealed:
        self.first = await anext(self._batches)
        return self

    async def aclose(self) -> None:
        self.closed = True
        await self._batches.aclose()


async def _reads(pieces: list[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


def _run_sealed(
    stream: bool, answers: list[str], *, repair_attempts: int = 1, usage: bool = True
) -> tuple[Batch, StreamStats, list[tuple[Any, Any, Any]], list[dict[str, Any]]]:
    request = {
        "model": "m",
        "messages": [{"role": "user", "content": "weather in Oslo?"}],
        "tools": [WEATHER],
        "stream": stream,
    }
    config = ToolsConfig(repair_attempts=repair_attempts)
    prepared = prepare(request, model_id="e2ee-qwen-2-5-7b-p", config=config)
    plan = prepared.plan
    assert plan is not None
    stats = StreamStats()
    later = iter(enumerate(answers[1:], start=2))
    at_reopen: list[tuple[Any, Any, Any]] = []
    sent: list[dict[str, Any]] = []

    async def reopen(rendered: dict[str, Any]) -> _Sealed:
        at_reopen.append((stats.completed, stats.completion_id, stats.usage))
        sent.append(rendered)
        number, text = next(later)
        return await _Sealed(text, f"chatcmpl-{number}", stats, usage).open()

    async def collect() -> Batch:
        first = await _Sealed(answers[0], "chatcmpl-1", stats, usage).open()
        batches = emulated_batches(
            plan, prepared.request, first, reopen, client_stream=stream, stats=stats
        )
        return [chunk async for batch in batches for chunk in batch]

    return asyncio.run(collect()), stats, at_reopen, sent


@pytest.mark.parametrize("stream", [False, True])
def test_a_re_ask_is_a_new_answer_for_the_log_and_the_signature(stream: bool) -> None:
    """When the re-ask opens, nothing of the failed attempt counts as the answer: it is not
    complete, its id is not the one whose signature is checked, its usage is not the total.
    The signature is then checked for the attempt that answered."""
    chunks, stats, at_reopen, _ = _run_sealed(stream, [BAD, GOOD])
    assert at_reopen == [(False, None, None)]
    assert stats.completed is True
    assert stats.completion_id == "chatcmpl-2"
    completion = _folded(chunks)
    assert completion["id"] == ("chatcmpl-1" if stream else "chatcmpl-2")
    assert completion["usage"] == {k: 2 * v for k, v in USAGE.items()}


@pytest.mark.parametrize("stream", [False, True])
def test_no_usage_is_invented_when_the_upstream_sent_none(stream: bool) -> None:
    chunks, _, _, _ = _run_sealed(stream, [GOOD], usage=False)
    assert all(chunk["choices"] for chunk in chunks)
    assert _folded(chunks)["usage"] is None


@pytest.mark.parametrize("stream", [False, True])
def test_the_budget_counts_every_re_ask(stream: bool) -> None:
    chunks, _, _, sent = _run_sealed(stream, [BAD, BAD, GOOD], repair_attempts=2)
    assert [len(rendered["messages"]) for rendered in sent] == [
        len(sent[0]["messages"]),
        len(sent[0]["messages"]) + 2,
    ]
    (call,) = _folded(chunks)["choices"][0]["message"]["tool_calls"]
    assert json.loads(call["function"]["arguments"]) == {"city": "Oslo"}
    with pytest.raises(ToolEmulationError) as caught:
        _run_sealed(stream, [BAD, BAD, BAD, GOOD], repair_attempts=2)
    assert "after 3 attempt(s)" in caught.value.message


@pytest.mark.parametrize("stream", [False, True])
def test_the_default_budget_is_one_re_ask(stream: bool) -> None:
    with pytest.raises(ToolEmulationError) as caught:
        _run(stream, [BAD, BAD, GOOD])
    assert "after 2 attempt(s)" in caught.value.message
    assert caught.value.code == "tool_call_invalid"


# --- completion_chunks: a non-streamed answer handed on as chunks ---------------------------------


def test_completion_chunks_are_role_and_text_then_calls_then_finish_then_usage() -> None:
    call = {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    completion = {
        "id": "chatcmpl-9",
        "object": "chat.completion",
        "created": 5,
        "model": "m",
        "system_fingerprint": "fp_1",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hi",
                    "reasoning_content": "think",
                    "refusal": None,
                    "tool_calls": [call],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
        "usage": dict(USAGE),
    }
    meta = {
        "id": "chatcmpl-9",
        "created": 5,
        "model": "m",
        "system_fingerprint": "fp_1",
        "object": "chat.completion.chunk",
    }

    def choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    assert completion_chunks(completion) == [
        {
            **meta,
            "choices": [
                choice({"role": "assistant", "content": "Hi", "reasoning_content": "think"})
            ],
        },
        {**meta, "choices": [choice({"tool_calls": [{"index": 0, **call}]})]},
        {**meta, "choices": [choice({}, "tool_calls")]},
        {**meta, "choices": [], "usage": USAGE},
    ]


def test_completion_chunks_of_a_bare_message() -> None:
    """No role, no index, no text, no usage, no metadata: the defaults a client expects."""
    completion = {"choices": [{"message": {"content": None}, "finish_reason": "stop"}]}
    assert completion_chunks(completion) == [
        {
            "object": "chat.completion.chunk",
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant"},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
        },
        {
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}],
        },
    ]


def test_completion_chunks_keep_each_choice_index() -> None:
    completion = {
        "choices": [
            {"index": 2, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}
        ]
    }
    assert [chunk["choices"][0]["index"] for chunk in completion_chunks(completion)] == [2, 2]


@pytest.mark.parametrize("role", ["assistant", "tool", None])
def test_completion_chunks_carry_the_message_role(role: str | None) -> None:
    """The role folds back as the message had it (none: ``assistant``), never assumed."""
    message: dict[str, Any] = {"content": "x"} if role is None else {"role": role, "content": "x"}
    completion = {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
    chunks = completion_chunks(completion)
    assert chunks[0]["choices"][0]["delta"] == {"role": role or "assistant", "content": "x"}
    assert _folded(chunks)["choices"][0]["message"]["role"] == (role or "assistant")
