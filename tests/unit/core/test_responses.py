"""The Responses translation, pure: requests to the chat format, chat chunks to the event
sequence, both checked against the `openai` package's own pydantic models of the API."""

from __future__ import annotations

import typing
from itertools import count
from typing import Any

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import BaseModel

from proxy.core.errors import InvalidRequestError, UnsupportedForE2EEError, UpstreamError
from proxy.core.responses import ResponseBuilder, map_usage, translate_request
from proxy.core.responses import request as request_module


def _event_models() -> dict[str, type[BaseModel]]:
    """Each event type of the `openai` package's ResponseStreamEvent union, by its literal."""
    union = typing.get_args(ResponseStreamEvent)[0]
    models: dict[str, type[BaseModel]] = {}
    for model in typing.get_args(union):
        (literal,) = typing.get_args(model.model_fields["type"].annotation)
        models[literal] = model
    return models


EVENT_MODELS = _event_models()


def builder(**echo: Any) -> ResponseBuilder:
    numbers = count()
    return ResponseBuilder(
        model="m",
        echo=translate_request({"model": "m", "input": "x", **echo}).echo,
        response_id="resp_1",
        created_at=1,
        make_id=lambda prefix: f"{prefix}_{next(numbers)}",
    )


def chunk(**delta: Any) -> dict[str, Any]:
    finish = delta.pop("finish_reason", None)
    return {"id": "c", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


USAGE = {
    "id": "c",
    "choices": [],
    "usage": {
        "prompt_tokens": 7,
        "completion_tokens": 5,
        "total_tokens": 12,
        "completion_tokens_details": {"reasoning_tokens": 2},
    },
}


def run(b: ResponseBuilder, chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    events = b.start()
    for c in chunks:
        events += b.feed(c)
    events += b.complete()
    return events


def validated(events: list[dict[str, Any]]) -> list[str]:
    for event in events:
        EVENT_MODELS[event["type"]].model_validate(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return [e["type"] for e in events]


# -- requests ----------------------------------------------------------------------------------


def test_string_input_and_instructions() -> None:
    translated = translate_request(
        {
            "model": "m",
            "input": "hi",
            "instructions": "be brief",
            "max_output_tokens": 50,
            "temperature": 0.2,
            "top_p": 0.9,
            "reasoning": {"effort": "low", "summary": "auto"},
            "metadata": {"k": "v"},
            "user": "u-1",
            "safety_identifier": "s",
            "prompt_cache_key": "p",
            "include": ["reasoning.encrypted_content"],
            "store": False,
            "stream": True,
            "stream_options": {"include_obfuscation": False},
        }
    )
    assert translated.stream is True
    assert translated.chat == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_completion_tokens": 50,
        "temperature": 0.2,
        "top_p": 0.9,
        "reasoning_effort": "low",
    }
    assert translated.echo["metadata"] == {"k": "v"}
    assert translated.origins == ("instructions", "input")


def test_item_list_becomes_chat_history() -> None:
    translated = translate_request(
        {
            "model": "m",
            "tools": [
                {
                    "type": "function",
                    "name": "weather",
                    "description": "d",
                    "parameters": {"type": "object", "properties": {}},
                    "strict": True,
                }
            ],
            "tool_choice": {"type": "function", "name": "weather"},
            "parallel_tool_calls": False,
            "input": [
                {"role": "developer", "content": "dev"},
                {
                    "type": "message",
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "look"},
                        {
                            "type": "input_image",
                            "image_url": "data:image/png;base64,AA",
                            "detail": "low",
                        },
                    ],
                },
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {
                    "type": "message",
                    "role": "assistant",
                    "id": "msg_1",
                    "status": "completed",
                    "content": [
                        {"type": "output_text", "text": "let me ", "annotations": []},
                        {"type": "output_text", "text": "check", "annotations": []},
                        {"type": "refusal", "refusal": "no"},
                    ],
                },
                {
                    "type": "function_call",
                    "call_id": "call_a",
                    "name": "weather",
                    "arguments": "{}",
                },
                {
                    "type": "function_call",
                    "call_id": "call_b",
                    "name": "weather",
                    "arguments": '{"x":1}',
                },
                {"type": "function_call_output", "call_id": "call_a", "output": "sunny"},
                {
                    "type": "function_call_output",
                    "call_id": "call_b",
                    "output": [{"type": "input_text", "text": "rain"}],
                },
            ],
        }
    )
    chat = translated.chat
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "d",
                "parameters": {"type": "object", "properties": {}},
                "strict": True,
            },
        }
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert chat["parallel_tool_calls"] is False
    assert chat["messages"] == [
        {"role": "developer", "content": "dev"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {
                    "type": "image_url",
                    "image_url": {"url": "data:image/png;base64,AA", "detail": "low"},
                },
            ],
        },
        {
            "role": "assistant",
            "content": "let me check",
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "weather", "arguments": "{}"},
                },
                {
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"x":1}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "rain"}]},
    ]
    assert translated.origins == ("input[0]", "input[1]", "input[3]", "input[6]", "input[7]")
    assert translated.input_param("messages[2].tool_calls") == "input[3]"
    assert translated.input_param("tools") == "tools"
    assert translated.echo["tools"][0]["name"] == "weather"


def test_allowed_tools_narrow_the_tool_list() -> None:
    tools = [
        {"type": "function", "name": name, "parameters": {"type": "object"}} for name in ("a", "b")
    ]
    translated = translate_request(
        {
            "model": "m",
            "input": "x",
            "tools": tools,
            "tool_choice": {
                "type": "allowed_tools",
                "mode": "required",
                "tools": [{"type": "function", "name": "b"}],
            },
        }
    )
    assert translated.chat["tool_choice"] == "required"
    assert [t["function"]["name"] for t in translated.chat["tools"]] == ["b"]


def test_structured_output_translation(monkeypatch: pytest.MonkeyPatch) -> None:
    # The chat path emulates response_format inside the encryption: text.format is handed on.
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    body = {
        "model": "m",
        "input": "x",
        "text": {
            "format": {"type": "json_schema", "name": "out", "schema": schema, "strict": True}
        },
    }
    assert request_module.STRUCTURED_OUTPUT_OVER_E2EE is True
    assert translate_request(body).chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "out", "schema": schema, "strict": True},
    }
    json_mode = translate_request(
        {"model": "m", "input": "x", "text": {"format": {"type": "json_object"}}}
    )
    assert json_mode.chat["response_format"] == {"type": "json_object"}
    plain = translate_request({"model": "m", "input": "x", "text": {"format": {"type": "text"}}})
    assert "response_format" not in plain.chat
    # The switch still refuses text.format here when turned off.
    monkeypatch.setattr(request_module, "STRUCTURED_OUTPUT_OVER_E2EE", False)
    with pytest.raises(UnsupportedForE2EEError) as info:
        translate_request(body)
    assert info.value.param == "text.format"


@pytest.mark.parametrize(
    ("extra", "param", "phrase"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id", "keeps no state"),
        ({"conversation": "conv_1"}, "conversation", "keeps no state"),
        ({"store": True}, "store", "keeps no state"),
        ({"background": True}, "background", "stored state"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt", "instructions"),
        ({"tools": [{"type": "web_search"}]}, "tools[0]", "hosted tools"),
        ({"tools": [{"type": "file_search", "vector_store_ids": []}]}, "tools[0]", "hosted"),
        ({"tools": [{"type": "code_interpreter"}]}, "tools[0]", "function tool"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]", "store = false"),
        ({"input": [{"type": "web_search_call", "id": "ws"}]}, "input[0].type", "no tools"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0]",
            "file inputs",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input[0].content[0]",
            "image_url",
        ),
        ({"truncation": "auto"}, "truncation", "shorten"),
        ({"top_logprobs": 3}, "top_logprobs", "not available"),
        ({"max_tool_calls": 2}, "max_tool_calls", "tool loop"),
        ({"frequency_penalty": 1}, "frequency_penalty", "unknown parameter"),
        ({"model": ""}, "model", "model"),
        ({"input": 3}, "input", "required"),
        ({"input": []}, "input", "no message"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role", "role"),
        ({"temperature": 3}, "temperature", "from 0 to 2"),
        ({"max_output_tokens": 0}, "max_output_tokens", "positive"),
        ({"metadata": {"a": 1}}, "metadata", "strings"),
    ],
)
def test_refusals_name_the_parameter(extra: dict[str, Any], param: str, phrase: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        translate_request({"model": "m", "input": "x", **extra})
    assert info.value.param == param
    assert phrase in info.value.message
    assert info.value.http_status == 400


# -- events ------------------------------------------------------------------------------------


def test_text_stream_event_sequence_and_final_object() -> None:
    b = builder(instructions="i", metadata={"k": "v"})
    events = run(
        b,
        [
            chunk(role="assistant", content=""),
            chunk(content="Hel"),
            chunk(content="lo"),
            chunk(finish_reason="stop"),
            USAGE,
        ],
    )
    assert validated(events) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[0]["response"]["status"] == "in_progress"
    assert events[0]["response"]["output"] == []
    assert events[6]["text"] == "Hello"
    final = events[-1]["response"]
    Response.model_validate(final)
    assert final["status"] == "completed"
    assert final["instructions"] == "i"
    assert final["metadata"] == {"k": "v"}
    assert final["output"] == [
        {
            "id": "msg_0",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [
                {"type": "output_text", "text": "Hello", "annotations": [], "logprobs": []}
            ],
        }
    ]
    assert final["usage"] == {
        "input_tokens": 7,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 2},
        "total_tokens": 12,
    }
    whole = b.response(with_output_text=True)
    assert whole["output_text"] == "Hello"
    assert Response.model_validate(whole).output_text == "Hello"


def test_reasoning_then_text() -> None:
    b = builder()
    events = run(
        b,
        [
            chunk(reasoning_content="think", reasoning="think"),
            chunk(reasoning="ing"),
            chunk(content="ok", finish_reason="stop"),
        ],
    )
    types = validated(events)
    assert types[2:9] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    final = b.response()
    Response.model_validate(final)
    reasoning, message = final["output"]
    assert reasoning == {
        "id": "rs_0",
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": "thinking"}],
    }
    assert message["content"][0]["text"] == "ok"


def test_tool_calls_become_function_call_items() -> None:
    b = builder()
    events = run(
        b,
        [
            chunk(content="Let me look."),
            chunk(
                tool_calls=[
                    {
                        "index": 0,
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": ""},
                    }
                ]
            ),
            chunk(tool_calls=[{"index": 0, "function": {"arguments": '{"city":'}}]),
            chunk(tool_calls=[{"index": 0, "function": {"arguments": '"Oslo"}'}}]),
            chunk(
                tool_calls=[
                    {"index": 1, "id": "call_2", "function": {"name": "time", "arguments": "{}"}}
                ]
            ),
            chunk(finish_reason="tool_calls"),
        ],
    )
    types = validated(events)
    assert types.count("response.function_call_arguments.done") == 2
    assert types[-1] == "response.completed"
    final = b.response()
    Response.model_validate(final)
    message, first, second = final["output"]
    assert message["type"] == "message"
    assert first == {
        "id": "fc_1",
        "type": "function_call",
        "status": "completed",
        "arguments": '{"city":"Oslo"}',
        "call_id": "call_1",
        "name": "weather",
    }
    assert second["call_id"] == "call_2"
    assert second["arguments"] == "{}"
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert done[0]["arguments"] == '{"city":"Oslo"}'
    assert done[0]["name"] == "weather"


def test_tool_call_name_after_arguments_is_buffered() -> None:
    b = builder()
    events = run(
        b,
        [
            chunk(tool_calls=[{"index": 0, "function": {"arguments": "{"}}]),
            chunk(
                tool_calls=[{"index": 0, "id": "c9", "function": {"name": "f", "arguments": "}"}}]
            ),
        ],
    )
    validated(events)
    assert b.response()["output"][0]["arguments"] == "{}"


def test_interleaved_tool_calls_fail_closed() -> None:
    b = builder()
    b.start()
    b.feed(chunk(tool_calls=[{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{"}}]))
    b.feed(chunk(content="text"))
    with pytest.raises(UpstreamError):
        b.feed(chunk(tool_calls=[{"index": 0, "function": {"arguments": "}"}}]))


def test_length_is_incomplete() -> None:
    b = builder()
    events = run(b, [chunk(content="cut", finish_reason="length")])
    assert validated(events)[-1] == "response.incomplete"
    final = events[-1]["response"]
    assert final["status"] == "incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["output"][0]["status"] == "incomplete"


def test_failure_is_response_failed_never_completed() -> None:
    b = builder()
    events = b.start() + b.feed(chunk(content="partial"))
    events += b.fail(
        UpstreamError("the upstream stream ended early", code="upstream_stream_truncated")
    )
    types = validated(events)
    assert types[-1] == "response.failed"
    assert "response.completed" not in types
    failed = events[-1]["response"]
    Response.model_validate(failed)
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "server_error"
    assert "upstream_stream_truncated" in failed["error"]["message"]
    assert failed["output"][0]["status"] == "incomplete"


def test_malformed_chunks_raise() -> None:
    b = builder()
    with pytest.raises(UpstreamError):
        b.feed({"choices": "nope"})
    with pytest.raises(UpstreamError):
        b.feed({"choices": [{"index": 0, "delta": "text"}]})
    with pytest.raises(UpstreamError):
        b.feed(chunk(tool_calls={"index": 0}))
    nameless = builder()
    nameless.feed(chunk(tool_calls=[{"index": 0, "function": {"arguments": "{}"}}]))
    with pytest.raises(UpstreamError):
        nameless.complete()


def test_map_usage_defaults() -> None:
    assert map_usage({"prompt_tokens": 3, "completion_tokens": 4}) == {
        "input_tokens": 3,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 4,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 7,
    }
    assert map_usage({"prompt_tokens": 3, "prompt_tokens_details": {"cached_tokens": 2}})[
        "input_tokens_details"
    ] == {"cached_tokens": 2, "cache_write_tokens": 0}
