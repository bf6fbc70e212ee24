"""Folding rebuilt, decrypted stream chunks into one OpenAI chat.completion.

The aggregator's input is what :class:`proxy.core.response.ChunkRebuilder` produced (see
tests/unit/core/test_response.py for what never gets that far: refusals, tool calls, logprobs,
list content, Venice's cost).
"""

from __future__ import annotations

from typing import Any

import pytest

from proxy.core.aggregate import CompletionAggregator
from proxy.core.errors import UpstreamError

HEAD = {"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 1700, "model": "glm"}


def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {**HEAD, "choices": choices, **extra}


def delta(index: int = 0, finish: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"index": index, "delta": fields, "logprobs": None, "finish_reason": finish}


USAGE_CHUNK = {
    **HEAD,
    "choices": [],
    "usage": {
        "prompt_tokens": 10,
        "completion_tokens": 4,
        "total_tokens": 14,
        "prompt_tokens_details": {"cached_tokens": 2},
    },
    "cost": {"usd": 0.0012, "diem": 0.5},
}


def aggregate(chunks: list[dict[str, Any]]) -> CompletionAggregator:
    aggregator = CompletionAggregator()
    for c in chunks:
        aggregator.add(c)
    return aggregator


def test_single_choice_shape() -> None:
    aggregator = aggregate(
        [
            chunk([delta(role="assistant", content="")]),
            chunk([delta(content="Hel")]),
            chunk([delta(content="lo")]),
            chunk([delta(finish="stop")]),
            USAGE_CHUNK,
        ]
    )
    assert aggregator.result() == {
        "id": "chatcmpl-9",
        "object": "chat.completion",
        "created": 1700,
        "model": "glm",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE_CHUNK["usage"],
    }
    assert "cost" not in aggregator.result()  # Venice's price is logged by the relay


def test_multi_choice_sorted_and_interleaved() -> None:
    result = aggregate(
        [
            chunk([delta(1, role="assistant", content="B1"), delta(0, content="A1")]),
            chunk([delta(0, content="A2")]),
            chunk([delta(2, content="C")]),
            chunk([delta(1, content="B2", finish="length")]),
            chunk([delta(0, finish="stop"), delta(2, finish="stop")]),
        ]
    ).result()
    assert [c["index"] for c in result["choices"]] == [0, 1, 2]
    assert [c["message"]["content"] for c in result["choices"]] == ["A1A2", "B1B2", "C"]
    assert [c["finish_reason"] for c in result["choices"]] == ["stop", "length", "stop"]
    assert result["usage"] is None


def test_reasoning_is_collected_once_per_delta() -> None:
    result = aggregate(
        [
            chunk([delta(reasoning_content="Let me ")]),
            chunk([delta(reasoning="think", reasoning_content="think")]),
            chunk([delta(reasoning=".")]),
            chunk([delta(content="42", finish="stop")]),
        ]
    ).result()
    message = result["choices"][0]["message"]
    assert message["reasoning_content"] == "Let me think."
    assert message["content"] == "42"
    assert "reasoning" not in message


def test_no_reasoning_key_without_reasoning() -> None:
    result = aggregate([chunk([delta(content="x", reasoning_content=None, finish="stop")])])
    assert "reasoning_content" not in result.result()["choices"][0]["message"]


def test_empty_content_with_finish_reason_is_empty_string() -> None:
    result = aggregate([chunk([delta(role="assistant")]), chunk([delta(finish="stop")])]).result()
    assert result["choices"][0]["message"]["content"] == ""


def test_content_without_finish_reason_and_no_content_is_none() -> None:
    result = aggregate([chunk([delta(role="assistant")])]).result()
    assert result["choices"][0]["message"]["content"] is None
    assert result["choices"][0]["finish_reason"] is None


def test_empty_stream() -> None:
    result = CompletionAggregator().result()
    assert result["choices"] == []
    assert result["object"] == "chat.completion"
    assert result["usage"] is None


def test_usage_is_copied_and_extra_fields_kept() -> None:
    aggregator = aggregate([chunk([delta(content="x", finish="stop")]), USAGE_CHUNK])
    usage = aggregator.result()["usage"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 2}
    usage["prompt_tokens"] = 0
    assert aggregator.result()["usage"]["prompt_tokens"] == 10


def test_fingerprint_only_when_present_and_service_tier_never() -> None:
    plain = aggregate([chunk([delta(content="x")])]).result()
    assert "system_fingerprint" not in plain
    tagged = aggregate(
        [chunk([delta(content="x")], system_fingerprint="fp_1", service_tier="default")]
    ).result()
    assert tagged["system_fingerprint"] == "fp_1"
    assert "service_tier" not in tagged  # OpenAI bookkeeping, dropped by the field policy


def test_result_never_carries_refusal_or_logprobs() -> None:
    # Refusals and logprob tokens end the answer in the rebuilder (text the proxy did not
    # decrypt); whatever reaches the aggregator, its result says null for both.
    first = {"index": 0, "delta": {"content": "a"}, "logprobs": {"content": [{"token": "a"}]}}
    second = {"index": 0, "delta": {"content": "b", "refusal": "no"}, "finish_reason": "stop"}
    result = aggregate([chunk([first]), chunk([second])]).result()
    assert result["choices"][0]["logprobs"] is None
    assert result["choices"][0]["message"]["refusal"] is None
    assert result["choices"][0]["message"]["content"] == "ab"


def test_only_string_content_is_joined() -> None:
    # The rebuilder turns text parts into one decrypted string; anything else is not text here.
    result = aggregate(
        [chunk([delta(content=[{"type": "text", "text": "a"}])]), chunk([delta(content="b")])]
    ).result()
    assert result["choices"][0]["message"]["content"] == "b"


def test_first_id_created_model_win() -> None:
    result = aggregate(
        [
            chunk([delta(content="x")]),
            {"id": "other", "created": 1, "model": "m2", "choices": [delta(content="y")]},
        ]
    ).result()
    assert (result["id"], result["created"], result["model"]) == ("chatcmpl-9", 1700, "glm")
    assert result["choices"][0]["message"]["content"] == "xy"


def test_error_chunk_without_choices_is_ignored() -> None:
    aggregator = aggregate([chunk([delta(content="x")]), {"error": {"message": "boom"}}])
    assert aggregator.result()["choices"][0]["message"]["content"] == "x"


@pytest.mark.parametrize(
    "bad",
    [
        {"choices": {"index": 0}},
        {"choices": ["x"]},
        {"choices": [{"index": "0", "delta": {}}]},
        {"choices": [{"index": -1, "delta": {}}]},
        {"choices": [{"index": 0, "delta": "x"}]},
    ],
)
def test_malformed_chunks_raise(bad: dict[str, Any]) -> None:
    with pytest.raises(UpstreamError):
        CompletionAggregator().add(bad)


# --- what mutation testing found unpinned (make mutation) ------------------------------------


def test_a_malformed_chunk_says_so() -> None:
    with pytest.raises(UpstreamError) as info:
        CompletionAggregator().add({"choices": "x"})
    assert info.value.message == "the upstream sent a malformed completion chunk"


def test_content_that_is_not_a_string_adds_nothing() -> None:
    # The rebuilder hands the aggregator decrypted strings only (content parts are joined before
    # it); anything else that reached it would add nothing.
    parts = [{"type": "text", "text": "a"}, "b", 7, {"type": "image_url"}, {"text": 5}]
    result = aggregate(
        [chunk([delta(content=parts)]), chunk([delta(content={"text": "x"}, finish="stop")])]
    ).result()
    assert result["choices"][0]["message"]["content"] == ""


def test_the_role_is_taken_from_the_delta_when_it_is_a_non_empty_string() -> None:
    def role_of(*roles: Any) -> str:
        result = aggregate([chunk([delta(role=role)]) for role in roles]).result()
        message_role: str = result["choices"][0]["message"]["role"]
        return message_role

    assert role_of("developer") == "developer"
    assert role_of("developer", "", None, 5) == "developer"
    assert role_of("") == "assistant"
    assert role_of(5) == "assistant"


def test_reasoning_takes_the_first_non_empty_string_field() -> None:
    result = aggregate(
        [
            chunk([delta(reasoning_content="", reasoning="one ")]),
            chunk([delta(reasoning_content=["x"], reasoning="two")]),
            chunk([delta(reasoning_content="", reasoning="", finish="stop")]),
        ]
    ).result()
    assert result["choices"][0]["message"]["reasoning_content"] == "one two"


def test_reasoning_is_kept_and_a_refusal_never_aggregated() -> None:
    # A refusal never arrives decrypted (the field policy ends such an answer); the aggregator
    # keeps no refusal text either.
    result = aggregate(
        [chunk([delta(reasoning_content="think", refusal="no", finish="stop")])]
    ).result()
    message = result["choices"][0]["message"]
    assert (message["reasoning_content"], message["refusal"]) == ("think", None)


def test_logprobs_are_never_aggregated() -> None:
    # logprobs are refused on the way in and end an answer on the way out; none reach a client.
    first = {"index": 0, "delta": {"refusal": "n"}, "logprobs": {"content": None, "refusal": [1]}}
    second = {"index": 0, "delta": {"refusal": "o"}, "logprobs": {"refusal": [2]}}
    result = aggregate([chunk([first]), chunk([second])]).result()
    assert result["choices"][0]["logprobs"] is None


def test_a_choice_without_an_index_is_choice_0() -> None:
    result = aggregate([chunk([{"delta": {"content": "x"}, "finish_reason": "stop"}])]).result()
    assert [choice["index"] for choice in result["choices"]] == [0]
    assert result["choices"][0]["message"]["content"] == "x"


def test_missing_id_created_and_model_have_neutral_defaults() -> None:
    result = aggregate([{"choices": [delta(content="x", finish="stop")]}]).result()
    assert (result["id"], result["created"], result["model"]) == ("", 0, "")


# --- tool calls (the proxy's own tool emulation), and whole-message choices -------------------


def call(index: int, **fields: Any) -> dict[str, Any]:
    return {"index": index, **fields}


def test_tool_call_fragments_are_joined_per_call_in_index_order() -> None:
    result = aggregate(
        [
            chunk([delta(role="assistant", content="")]),
            chunk([delta(tool_calls=[call(1, function={"arguments": '{"b":'})])]),
            chunk(
                [
                    delta(
                        tool_calls=[
                            call(0, id="call_a", type="function", function={"name": "get"}),
                            call(1, id="call_b", function={"name": "put", "arguments": "2}"}),
                        ]
                    )
                ]
            ),
            chunk([delta(tool_calls=[call(0, function={"arguments": '{"a":1}'})])]),
            chunk([delta(finish="tool_calls")]),
        ]
    ).result()
    assert result["choices"][0] == {
        "index": 0,
        "message": {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get", "arguments": '{"a":1}'},
                },
                {
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "put", "arguments": '{"b":2}'},
                },
            ],
        },
        "logprobs": None,
        "finish_reason": "tool_calls",
    }


def test_a_calls_id_and_name_come_from_the_first_fragment_that_has_them() -> None:
    result = aggregate(
        [
            chunk([delta(tool_calls=[call(0, function={"arguments": "{"})])]),
            chunk([delta(tool_calls=[call(0, id="call_1", function={"name": "f"})])]),
            chunk([delta(tool_calls=[call(0, id="call_2", function={"name": "g"})])]),
            chunk([delta(tool_calls=[call(0, function={"name": 7, "arguments": "}"})])]),
        ]
    ).result()
    (tool_call,) = result["choices"][0]["message"]["tool_calls"]
    assert tool_call == {
        "id": "call_1",
        "type": "function",
        "function": {"name": "f", "arguments": "{}"},
    }


def test_a_call_whose_fragments_name_nothing_has_empty_fields() -> None:
    result = aggregate([chunk([delta(tool_calls=[call(0, id=5, function="f")])])]).result()
    assert result["choices"][0]["message"]["tool_calls"] == [
        {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
    ]


def test_content_beside_tool_calls_is_kept() -> None:
    result = aggregate(
        [
            chunk([delta(content="Let me look that up.")]),
            chunk(
                [delta(tool_calls=[call(0, id="c", function={"name": "f"})], finish="tool_calls")]
            ),
        ]
    ).result()
    message = result["choices"][0]["message"]
    assert message["content"] == "Let me look that up."
    assert [c["id"] for c in message["tool_calls"]] == ["c"]


def test_reasoning_and_tool_calls_in_one_delta_are_both_kept() -> None:
    result = aggregate(
        [
            chunk(
                [
                    delta(
                        reasoning_content="need data",
                        tool_calls=[call(0, id="c", function={"name": "f", "arguments": "{}"})],
                        finish="tool_calls",
                    )
                ]
            )
        ]
    ).result()
    message = result["choices"][0]["message"]
    assert message["reasoning_content"] == "need data"
    assert message["tool_calls"][0]["function"] == {"name": "f", "arguments": "{}"}
    assert message["content"] is None


def test_empty_content_with_no_tool_calls_is_an_empty_string_even_unfinished() -> None:
    result = aggregate([chunk([delta(role="assistant", content="")])]).result()
    assert result["choices"][0]["message"]["content"] == ""


@pytest.mark.parametrize(
    "fragment",
    ["x", None, {"id": "c", "function": {"name": "f"}}, {"index": "0"}],
)
def test_a_malformed_tool_call_fragment_raises(fragment: Any) -> None:
    with pytest.raises(UpstreamError):
        CompletionAggregator().add(chunk([delta(tool_calls=[fragment])]))


def test_a_choice_with_a_whole_message_is_folded_like_a_delta() -> None:
    whole = {
        "index": 0,
        "message": {
            "role": "assistant",
            "content": None,
            "tool_calls": [call(0, id="c", function={"name": "f", "arguments": "{}"})],
        },
        "finish_reason": "tool_calls",
    }
    result = aggregate([chunk([whole])]).result()
    assert result["choices"][0]["message"]["tool_calls"] == [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ]
    assert result["choices"][0]["finish_reason"] == "tool_calls"
    text = aggregate([chunk([{"index": 0, "message": {"content": "hi"}}])]).result()
    assert text["choices"][0]["message"]["content"] == "hi"
