"""ToolStreamTransformer and finish_completion: OpenAI chunks in, tool_calls or JSON out."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessageFunctionToolCall,
)

from proxy.core.tools import (
    CompletionFinished,
    RepairNeeded,
    StreamFinished,
    ToolEmulationError,
    ToolsConfig,
    ToolStreamTransformer,
    finish_completion,
    prepare,
    with_repair,
)
from proxy.core.tools.plan import EmulationPlan
from proxy.core.tools.repair import merge_usage

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


def _call(name: str, **arguments: Any) -> str:
    return json.dumps({"name": name, "arguments": arguments})


OSLO = _call("get_weather", city="Oslo")
USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


def _plan(**extra: Any) -> EmulationPlan:
    request = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        **extra,
    }
    plan = prepare(request, model_id="e2ee-qwen3-vl-30b-a3b-p", config=ToolsConfig()).plan
    assert plan is not None
    return plan


def _chunks(text: str, *, size: int = 7, finish: str = "stop") -> list[dict[str, Any]]:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    out = [
        {
            **base,
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            ],
        }
    ]
    for start in range(0, len(text), size):
        out.append(
            {
                **base,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"content": text[start : start + size]},
                        "finish_reason": None,
                    }
                ],
            }
        )
    out.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    out.append({**base, "choices": [], "usage": dict(USAGE), "cost": {"usd": 0.1}})
    return out


def _ids() -> Callable[[], str]:
    counter = itertools.count()
    return lambda: f"call_{next(counter)}"


def _run(
    plan: EmulationPlan,
    text: str,
    *,
    attempt: int = 0,
    size: int = 7,
    prior: dict[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], StreamFinished | RepairNeeded]:
    transformer = ToolStreamTransformer(plan, attempt=attempt, prior_usage=prior, new_id=_ids())
    live = [out for chunk in _chunks(text, size=size) for out in transformer.feed(chunk)]
    return live, transformer.finish()


def _content(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def _tool_calls(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            for delta in choice["delta"].get("tool_calls") or []:
                call = calls.setdefault(delta["index"], {"id": None, "name": "", "arguments": ""})
                call["id"] = delta.get("id") or call["id"]
                call["name"] += delta.get("function", {}).get("name") or ""
                call["arguments"] += delta.get("function", {}).get("arguments") or ""
    return [calls[i] for i in sorted(calls)]


def test_text_then_call_streams_text_and_emits_the_call_at_the_end() -> None:
    plan = _plan(tools=[WEATHER])
    text = f"Let me check.\n<tool_call>\n{_call('get_weather', city='Paris')}\n</tool_call>"
    live, result = _run(plan, text)
    assert isinstance(result, StreamFinished)
    assert _content(live) == "Let me check."
    assert live[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert not _tool_calls(live)  # nothing of the call before it validated
    closing = list(result.chunks)
    assert _tool_calls(closing) == [
        {"id": "call_0", "name": "get_weather", "arguments": '{"city":"Paris"}'}
    ]
    assert closing[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert closing[-1]["usage"] == USAGE
    assert closing[-1]["choices"] == []
    for chunk in [*live, *closing]:
        ChatCompletionChunk.model_validate(chunk)
        assert "cost" not in chunk


def test_parallel_calls_and_long_arguments_are_fragmented() -> None:
    plan = _plan(tools=[WEATHER, TIME])
    long_city = "x" * 1200
    text = (
        f"<tool_call>{_call('get_weather', city=long_city)}</tool_call>\n"
        '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
    )
    live, result = _run(plan, text, size=50)
    assert isinstance(result, StreamFinished)
    assert _content(live) == ""
    calls = _tool_calls(list(result.chunks))
    assert [c["name"] for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0]["arguments"]) == {"city": long_city}
    fragments = [
        c for c in result.chunks if c["choices"] and c["choices"][0]["delta"].get("tool_calls")
    ]
    assert len(fragments) > 4


def test_parallel_false_keeps_the_first_call() -> None:
    plan = _plan(tools=[WEATHER, TIME], parallel_tool_calls=False)
    text = (
        f"<tool_call>{_call('get_time')}</tool_call>"
        f"<tool_call>{_call('get_weather', city='Oslo')}</tool_call>"
    )
    _, result = _run(plan, text)
    assert isinstance(result, StreamFinished)
    assert [c["name"] for c in _tool_calls(list(result.chunks))] == ["get_time"]


def test_plain_answer_with_tools_is_relayed() -> None:
    plan = _plan(tools=[WEATHER])
    live, result = _run(plan, "It is sunny, no tool needed.  \n")
    assert isinstance(result, StreamFinished)
    assert _content(live) + _content(list(result.chunks)) == "It is sunny, no tool needed.  \n"
    assert result.chunks[-2]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("text", "extra", "fragment"),
    [
        (
            '<tool_call>{"name": "get_weather", "arguments": {"days": 2}}</tool_call>',
            {},
            "'city' is a required property",
        ),
        (
            '<tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>',
            {},
            "could not be read",
        ),
        ('<tool_call>{"name": "nope", "arguments": {}}</tool_call>', {}, "no tool named 'nope'"),
        ("I would rather not.", {"tool_choice": "required"}, "must call at least one function"),
        (
            '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>',
            {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
            "no tool named 'get_time'",
        ),
        (
            "I would rather not.",
            {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
            "must call the function get_weather",
        ),
    ],
)
def test_unusable_answers_are_re_asked_then_fail(
    text: str, extra: dict[str, Any], fragment: str
) -> None:
    plan = _plan(tools=[WEATHER, TIME], **extra)
    _, result = _run(plan, text)
    assert isinstance(result, RepairNeeded)
    assistant, user = result.messages
    assert assistant == {"role": "assistant", "content": text}
    assert user["role"] == "user"
    assert fragment in user["content"]
    assert result.usage == USAGE
    rendered = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert with_repair(rendered, result)["messages"][1:] == list(result.messages)
    with pytest.raises(ToolEmulationError) as info:
        _run(plan, text, attempt=1, prior=result.usage)
    assert info.value.code in ("tool_call_invalid", "tool_call_missing")
    assert "after 2 attempt(s)" in info.value.message


def test_repair_round_holds_text_and_sums_usage() -> None:
    plan = _plan(tools=[WEATHER])
    text = 'Sorry! <tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
    live, result = _run(plan, text, attempt=1, prior=dict(USAGE))
    assert _content(live) == ""
    assert isinstance(result, StreamFinished)
    assert _content(list(result.chunks)) == ""  # the re-ask's chatter around its call is dropped
    assert result.chunks[-1]["usage"] == {
        "prompt_tokens": 20,
        "completion_tokens": 10,
        "total_tokens": 30,
    }
    _, text_only = _run(plan, "No call needed after all.", attempt=1)
    assert isinstance(text_only, StreamFinished)
    assert _content(list(text_only.chunks)) == "No call needed after all."


def test_structured_output_is_held_extracted_and_validated() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}},
        "required": ["a"],
        "additionalProperties": False,
    }
    strict = _plan(
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "o", "schema": schema, "strict": True},
        }
    )
    live, result = _run(strict, 'Here you go:\n```json\n{"a": 1}\n```')
    assert _content(live) == ""
    assert isinstance(result, StreamFinished)
    assert _content(list(result.chunks)) == '{"a": 1}'
    _, bad = _run(strict, '{"a": "one"}')
    assert isinstance(bad, RepairNeeded)
    assert "is not of type 'integer'" in bad.messages[1]["content"]
    with pytest.raises(ToolEmulationError) as info:
        _run(strict, '{"a": "one"}', attempt=1)
    assert info.value.code == "structured_output_invalid"
    loose = _plan(
        response_format={"type": "json_schema", "json_schema": {"name": "o", "schema": schema}}
    )
    _, passed = _run(loose, '{"a": "one"}')
    assert isinstance(passed, StreamFinished)
    assert _content(list(passed.chunks)) == '{"a": "one"}'
    _, not_json = _run(loose, "sorry, no JSON today")
    assert isinstance(not_json, RepairNeeded)


def test_tools_with_response_format() -> None:
    plan = _plan(tools=[WEATHER], response_format={"type": "json_object"})
    _, call = _run(
        plan, '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
    )
    assert isinstance(call, StreamFinished)
    assert _tool_calls(list(call.chunks))
    _, answer = _run(plan, 'The answer: {"temp": 3}')
    assert isinstance(answer, StreamFinished)
    assert _content(list(answer.chunks)) == '{"temp": 3}'


def test_chunks_without_choices_and_upstream_tool_deltas() -> None:
    plan = _plan(tools=[WEATHER])
    transformer = ToolStreamTransformer(plan)
    assert transformer.feed({"id": "x", "choices": []}) == []
    assert transformer.feed({"id": "x", "choices": 1}) == []  # an odd chunk is skipped
    assert transformer.feed({"id": "x", "choices": None}) == []
    assert not transformer.usage_seen
    out = transformer.feed(
        {
            "id": "x",
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0}], "reasoning_content": "hmm"},
                    "finish_reason": None,
                }
            ],
        }
    )
    assert out[0]["choices"][0]["delta"] == {"reasoning_content": "hmm"}


def test_finish_completion_non_streaming() -> None:
    plan = _plan(tools=[WEATHER])
    completion: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": f"Checking. <tool_call>{OSLO}</tool_call>",
                    "refusal": None,
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": dict(USAGE),
    }
    result = finish_completion(plan, completion, new_id=_ids(), prior_usage=USAGE)
    assert isinstance(result, CompletionFinished)
    parsed = ChatCompletion.model_validate(result.completion)
    message = parsed.choices[0].message
    assert message.content == "Checking."
    assert parsed.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls is not None
    call = message.tool_calls[0]
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    assert call.id == "call_0"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Oslo"}
    assert result.completion["usage"]["total_tokens"] == 30
    only_call = {
        **completion,
        "choices": [
            {
                **completion["choices"][0],
                "message": {
                    "role": "assistant",
                    "content": f"<tool_call>{OSLO}</tool_call>",
                },
            }
        ],
    }
    result = finish_completion(plan, only_call)
    assert isinstance(result, CompletionFinished)
    assert result.completion["choices"][0]["message"]["content"] is None
    text = {
        **completion,
        "choices": [
            {**completion["choices"][0], "message": {"role": "assistant", "content": "Sunny."}}
        ],
    }
    result = finish_completion(plan, text)
    assert isinstance(result, CompletionFinished)
    assert result.completion["choices"][0]["message"] == {"role": "assistant", "content": "Sunny."}
    broken = {
        **completion,
        "choices": [
            {
                **completion["choices"][0],
                "message": {"role": "assistant", "content": "<tool_call>{"},
            }
        ],
    }
    assert isinstance(finish_completion(plan, broken), RepairNeeded)
    assert isinstance(finish_completion(plan, {"choices": []}), CompletionFinished)


def test_merge_usage() -> None:
    a = {"prompt_tokens": 1, "details": {"cached": 1}, "flag": True, "name": "x"}
    b = {"prompt_tokens": 2, "details": {"cached": 2, "new": 1}, "flag": False, "name": "y"}
    assert merge_usage(a, b) == {
        "prompt_tokens": 3,
        "details": {"cached": 3, "new": 1},
        "flag": False,
        "name": "y",
    }
    assert merge_usage(None, None) is None
    assert merge_usage(a, None) == a


def _stream_chunk(delta: Any, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }


def test_a_fresh_transformer_relays_text_at_once_and_reports_usage() -> None:
    transformer = ToolStreamTransformer(_plan(tools=[WEATHER]))  # attempt 0 by default
    assert transformer.usage_seen is False
    out = transformer.feed(_stream_chunk({"content": "Sunny"}, usage=dict(USAGE), cost={"a": 1}))
    assert out == [
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": "Sunny"}, "finish_reason": None}],
        }
    ]  # usage and cost are held: the summed usage closes the stream
    assert transformer.usage_seen is True


def test_the_upstream_finish_reason_is_held_and_kept_for_a_plain_answer() -> None:
    plan = _plan(tools=[WEATHER])
    transformer = ToolStreamTransformer(plan, new_id=_ids())
    out = transformer.feed(_stream_chunk({"content": "It was cut"}, "length"))
    assert out[0]["choices"][0]["finish_reason"] is None  # a client sees one finish_reason
    result = transformer.finish()
    assert isinstance(result, StreamFinished)
    assert result.chunks == (
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}],
        },
    )
    message = {"role": "assistant", "content": "Cut"}
    completion = {"choices": [{"index": 3, "message": message, "finish_reason": "length"}]}
    finished = finish_completion(plan, completion)
    assert isinstance(finished, CompletionFinished)
    assert finished.completion["choices"][0]["finish_reason"] == "length"
    assert finished.completion["choices"][0]["index"] == 0


def test_calls_open_with_their_id_type_and_name() -> None:
    plan = _plan(tools=[WEATHER])
    chunks = [
        {"id": "c", "created": 1, "model": "m", "choices": [{"index": 0, "delta": {"content": t}}]}
        for t in (f"<tool_call>{OSLO}", "</tool_call>")
    ]
    transformer = ToolStreamTransformer(plan, new_id=_ids())
    assert [out for chunk in chunks for out in transformer.feed(chunk)] == []
    result = transformer.finish()
    assert isinstance(result, StreamFinished)
    template = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    assert list(result.chunks) == [
        {
            **template,
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_0",
                                "type": "function",
                                "function": {"name": "get_weather", "arguments": ""},
                            }
                        ]
                    },
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
        },
        {
            **template,
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [{"index": 0, "function": {"arguments": '{"city":"Oslo"}'}}]
                    },
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
        },
        {
            **template,
            "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}],
        },
    ]


def test_odd_choices_and_content_parts() -> None:
    transformer = ToolStreamTransformer(_plan(tools=[WEATHER]))
    parts = [{"type": "text", "text": "Hel"}, {"type": "image_url"}, "x", {"text": "lo"}]
    out = transformer.feed(
        {
            "id": "x",
            "choices": [
                "junk",
                {"index": 0, "delta": None, "finish_reason": None},
                {"index": 0, "delta": {"content": parts}, "finish_reason": None},
            ],
        }
    )
    assert [choice["delta"] for choice in out[0]["choices"]] == [{"content": "Hello"}]
    held = transformer.feed(
        {"id": "x", "choices": [{"index": 0, "delta": {"content": "<tool_call"}, "logprobs": {}}]}
    )
    assert held == []
    logprobs = {"content": [{"token": "<", "logprob": -0.1}]}
    out = transformer.feed(
        {"id": "x", "choices": [{"index": 0, "delta": {"content": ">"}, "logprobs": logprobs}]}
    )
    assert out[0]["choices"] == [
        {"index": 0, "delta": {}, "logprobs": logprobs, "finish_reason": None}
    ]


def test_json_naming_an_undeclared_tool_is_text_and_xml_strings_stay_strings() -> None:
    text = 'Example: {"name": "other", "arguments": {}}'
    live, result = _run(_plan(tools=[WEATHER]), text)
    assert isinstance(result, StreamFinished)
    assert _content(live) + _content(list(result.chunks)) == text
    code = {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {"type": "object", "properties": {"code": {"type": "string"}}},
        },
    }
    plan = prepare(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [code]},
        model_id="e2ee-qwen3-5-122b-a10b",
        config=ToolsConfig(),
    ).plan
    assert plan is not None
    xml = "<tool_call>\n<function=lookup>\n<parameter=code>\n42\n</parameter>\n</function>"
    _, result = _run(plan, xml + "\n</tool_call>")
    assert isinstance(result, StreamFinished)
    assert _tool_calls(list(result.chunks))[0]["arguments"] == '{"code":"42"}'


def test_the_re_ask_quotes_why_a_call_could_not_be_read() -> None:
    plan = _plan(tools=[WEATHER])
    _, result = _run(plan, '<tool_call>{"name": "get_weather", "arguments": {"city": }</tool_call>')
    assert isinstance(result, RepairNeeded)
    assert "could not be read: the tool call is not valid JSON" in result.messages[1]["content"]


def test_an_empty_re_asked_answer_has_no_content_chunk() -> None:
    _, result = _run(_plan(tools=[WEATHER]), "", attempt=1)
    assert isinstance(result, StreamFinished)
    assert [c["choices"][0]["delta"] for c in result.chunks if c["choices"]] == [{}]


def test_closing_chunks_are_complete_when_upstream_chunks_omit_fields() -> None:
    transformer = ToolStreamTransformer(_plan(tools=[WEATHER]))
    transformer.feed({"choices": [{"index": 0, "delta": {"content": "Hi"}}]})
    result = transformer.finish()
    assert isinstance(result, StreamFinished)
    assert result.chunks[-1]["object"] == "chat.completion.chunk"


def test_non_streaming_text_around_a_call_and_foreign_fields() -> None:
    plan = _plan(tools=[WEATHER])
    message = {
        "role": "assistant",
        "content": [{"type": "text", "text": f"Checking. <tool_call>{OSLO}</tool_call> Done."}],
        "refusal": None,
        "tool_calls": [],
        "function_call": None,
    }
    result = finish_completion(
        plan,
        {"choices": [{"message": message, "finish_reason": "stop"}], "usage": "garbage"},
        new_id=_ids(),
        prior_usage=USAGE,
    )
    assert isinstance(result, CompletionFinished)
    assert result.completion["usage"] == USAGE  # a malformed upstream usage is ignored
    assert result.completion["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Checking. Done.",
        "refusal": None,
        "tool_calls": [
            {
                "id": "call_0",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
            }
        ],
    }
    empty = finish_completion(plan, {"choices": []})
    assert isinstance(empty, CompletionFinished)
    assert empty.completion["choices"][0]["message"] == {"role": "assistant", "content": ""}
    broken = finish_completion(
        plan,
        {"choices": [{"message": {"content": "<tool_call>{"}}], "usage": dict(USAGE)},
        prior_usage=USAGE,
    )
    assert isinstance(broken, RepairNeeded)
    assert broken.usage == {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30}


def test_call_ids_look_like_openai_ids() -> None:
    from proxy.core.tools import new_call_id

    ids = {new_call_id() for _ in range(5)}
    assert len(ids) == 5
    for call_id in ids:
        assert call_id.startswith("call_")
        assert len(call_id) == 29
        int(call_id[5:], 16)


def test_non_streaming_plain_answers_drop_upstream_call_fields() -> None:
    plan = _plan(tools=[WEATHER])
    message = {"role": "assistant", "content": "Sunny.", "tool_calls": None, "function_call": None}
    result = finish_completion(plan, {"choices": [{"message": message, "finish_reason": 1}]})
    assert isinstance(result, CompletionFinished)
    choice = result.completion["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Sunny."}
    assert choice["finish_reason"] == "stop"  # an odd upstream finish_reason is not passed on
