"""judge and the re-ask: what the model is told when its answer cannot be used, and what the
client is told when no re-ask remains."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.core.tools import (
    Accepted,
    RepairNeeded,
    ToolEmulationError,
    ToolsConfig,
    judge,
    merge_usage,
    prepare,
)
from proxy.core.tools.formats import ParsedCall
from proxy.core.tools.parser import ParsedOutput
from proxy.core.tools.plan import EmulationPlan
from proxy.core.tools.repair import arguments_json
from tests.support.weather_tool import WEATHER

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
STRICT = {"type": "json_schema", "json_schema": {"name": "o", "schema": SCHEMA, "strict": True}}
CALL_ASK = (
    "Reply again with only the corrected function call(s), written exactly in the required "
    "format, and nothing else."
)
JSON_ASK = (
    "Reply again with ONLY the corrected JSON value, conforming to the required schema, "
    "and nothing else."
)


def _plan(**extra: Any) -> EmulationPlan:
    request = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    plan = prepare(request, model_id="m", config=ToolsConfig()).plan
    assert plan is not None
    return plan


def _parsed(*calls: ParsedCall, content: str = "", malformed: tuple[str, ...] = ()) -> ParsedOutput:
    return ParsedOutput(content, calls, malformed)


def test_the_re_ask_lists_every_problem_of_the_calls() -> None:
    plan = _plan(tools=[WEATHER])
    parsed = _parsed(
        ParsedCall("get_weather", {"city": "Oslo"}),
        ParsedCall("get_weather", {}),
        malformed=("the tool call is not valid JSON (x)",),
    )
    result = judge(plan, parsed, output_text="raw", finish_reason="stop", attempt=0, usage=None)
    assert result == RepairNeeded(
        (
            {"role": "assistant", "content": "raw"},
            {
                "role": "user",
                "content": "Your previous reply could not be used:\n"
                "- a tool call could not be read: the tool call is not valid JSON (x)\n"
                "- tool call 2 ('get_weather'): at $: 'city' is a required property\n" + CALL_ASK,
            },
        ),
        None,
    )
    assert repr(result) == "RepairNeeded(messages=2, usage=False)"
    with_usage = judge(
        plan, parsed, output_text="raw", finish_reason=None, attempt=0, usage={"total_tokens": 1}
    )
    assert repr(with_usage) == "RepairNeeded(messages=2, usage=True)"


@pytest.mark.parametrize("reply", ["", " \n "])
def test_an_empty_reply_is_named_in_the_re_ask(reply: str) -> None:
    plan = _plan(tools=[WEATHER], tool_choice="required")
    result = judge(plan, _parsed(), output_text=reply, finish_reason="stop", attempt=0)
    assert isinstance(result, RepairNeeded)
    assert result.messages == (
        {"role": "assistant", "content": "(an empty reply)"},
        {
            "role": "user",
            "content": "Your previous reply could not be used:\n"
            "- you did not call a function, but you must call at least one function\n" + CALL_ASK,
        },
    )


def test_the_structured_re_ask_asks_for_json() -> None:
    result = judge(
        _plan(response_format=STRICT),
        _parsed(),
        output_text='{"a": "x"}',
        finish_reason="stop",
        attempt=0,
    )
    assert isinstance(result, RepairNeeded)
    assert result.messages[1]["content"] == (
        "Your previous reply could not be used:\n- the answer: at $.a: 'x' is not of type "
        "'integer'\n" + JSON_ASK
    )


def test_the_client_error_after_the_last_attempt() -> None:
    plan = _plan(tools=[WEATHER])
    parsed = _parsed(
        ParsedCall("nope", {}),
        ParsedCall("get_weather", "Oslo"),
        ParsedCall("get_weather", {}),
        ParsedCall("get_weather", {"city": 1}),
        malformed=("broken",),
    )
    with pytest.raises(ToolEmulationError) as info:
        judge(plan, parsed, output_text="x", finish_reason="stop", attempt=1)
    assert info.value.code == "tool_call_invalid"
    assert info.value.message == (
        "the model did not produce a valid tool call after 2 attempt(s): a tool call did not "
        "parse; tool call 1 names a tool that was not declared; tool call 2 ('get_weather'): "
        "the arguments are not a JSON object"
    )
    missing = _plan(tools=[WEATHER], tool_choice="required")
    with pytest.raises(ToolEmulationError) as info:
        judge(missing, _parsed(), output_text="x", finish_reason="stop", attempt=1)
    assert info.value.code == "tool_call_missing"
    assert info.value.message == (
        "the model did not produce a valid tool call after 2 attempt(s): the model did not call "
        "a tool although tool_choice requires one"
    )
    with pytest.raises(ToolEmulationError) as info:
        judge(
            _plan(response_format=STRICT),
            _parsed(),
            output_text="{}",
            finish_reason=None,
            attempt=1,
        )
    assert info.value.code == "structured_output_invalid"
    assert info.value.message == (
        "the model did not produce a valid JSON answer after 2 attempt(s): the answer: $ fails "
        "'required'"
    )


def test_accepted_answers() -> None:
    plan = _plan(tools=[WEATHER])
    call = ParsedCall("get_weather", {"city": "Zürich"})
    assert judge(plan, _parsed(call), output_text="", finish_reason="stop", attempt=0) == Accepted(
        None, (call,), "tool_calls"
    )
    text = judge(plan, _parsed(content="Hi"), output_text="Hi", finish_reason=None, attempt=0)
    assert text == Accepted("Hi", (), "stop")
    length = judge(plan, _parsed(content="Hi"), output_text="Hi", finish_reason="length", attempt=0)
    assert length == Accepted("Hi", (), "length")
    # Without tools, the answer is the whole text (there are no calls to take out of it).
    json_only = judge(
        _plan(response_format={"type": "json_object"}),
        _parsed(content="ignored"),
        output_text='Sure: {"a": 1}',
        finish_reason="stop",
        attempt=0,
    )
    assert json_only == Accepted('{"a": 1}', (), "stop")


def test_arguments_are_compact_json_with_unicode_kept() -> None:
    call = ParsedCall("f", {"city": "Zürich", "days": [1, 2]})
    assert arguments_json(call) == '{"city":"Zürich","days":[1,2]}'


def test_usage_is_summed_but_flags_and_odd_values_are_replaced() -> None:
    first = {"total_tokens": 1, "cached": True, "details": {"a": 1}, "extra": {"b": 1}}
    second = {"total_tokens": 2, "cached": 1, "details": None, "extra": {"b": 2}, "n": {"c": 1}}
    assert merge_usage(first, second) == {
        "total_tokens": 3,
        "cached": 1,
        "details": None,
        "extra": {"b": 3},
        "n": {"c": 1},
    }
    assert merge_usage({"flag": 1}, {"flag": True}) == {"flag": True}
    assert merge_usage(None, {"a": 1}) == {"a": 1}
