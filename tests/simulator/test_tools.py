"""The simulator plays tool calling and structured outputs: it reads the (decrypted) prompt that
proxy.core.tools renders and answers in the model family's convention, or spoils the answer on
request. The end-to-end tests run the real crypto against the simulator app and read the answer
with the proxy's own transformer."""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxy.core.crypto import open_text
from proxy.core.tools import (
    CONVENTION_NAMES,
    RepairNeeded,
    StreamFinished,
    ToolEmulationError,
    ToolsConfig,
    ToolStreamTransformer,
    judge,
    parse_output,
    prepare,
    with_repair,
)
from proxy.core.tools.plan import EmulationPlan
from proxy.core.tools.validate import compile_schema
from proxy.simulator import Faults, SimulatorState
from proxy.simulator.tools import NO_CALL_TEXT, example_value, tool_answer
from tests.support.simulator_helpers import API_KEY, client_for, e2ee_chat, json_events

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "detailed": {"type": "boolean"},
            },
            "required": ["city", "days", "unit", "detailed"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
    },
}
PERSON = {  # what Pydantic writes for a model with an optional field, an enum and a nested list
    "$defs": {
        "Pet": {
            "properties": {"name": {"type": "string"}, "kind": {"enum": ["cat", "dog"]}},
            "required": ["name", "kind"],
            "type": "object",
        }
    },
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "email": {"anyOf": [{"type": "string", "format": "email"}, {"type": "null"}]},
        "pets": {"type": "array", "items": {"$ref": "#/$defs/Pet"}, "minItems": 1},
    },
    "required": ["name", "age", "email", "pets"],
    "additionalProperties": False,
    "type": "object",
}


def _prepared(
    convention: str, messages: list[dict[str, Any]], **extra: Any
) -> tuple[dict[str, Any], EmulationPlan]:
    request = {"model": "e2ee-simulated-near", "messages": messages, "stream": True, **extra}
    config = ToolsConfig(conventions={"e2ee-simulated-near": convention})
    prepared = prepare(request, model_id="e2ee-simulated-near", config=config)
    assert prepared.plan is not None
    return prepared.request, prepared.plan


def _judge(plan: EmulationPlan, text: str, attempt: int = 0) -> Any:
    parsed = parse_output(text, known=plan.tools.keys(), schemas=plan.schemas)
    return judge(plan, parsed, output_text=text, finish_reason="stop", attempt=attempt)


@pytest.mark.parametrize("convention", CONVENTION_NAMES)
def test_calls_in_each_convention_parse_and_validate(convention: str) -> None:
    ask = [{"role": "user", "content": "Use get_time, then get_weather please."}]
    rendered, plan = _prepared(convention, ask, tools=[WEATHER, TIME])
    text = tool_answer(rendered["messages"])
    assert text is not None
    if convention == "json":
        assert text.startswith('{"tool_calls": [')
    elif convention == "glm":
        assert "<arg_key>" in text
    elif convention == "qwen3_xml":
        assert "<function=get_time>" in text
    else:
        assert '<tool_call>\n{"name": "get_time"' in text
    decision = _judge(plan, text)
    assert [c.name for c in decision.calls] == ["get_time", "get_weather"]
    assert decision.calls[1].arguments == {
        "city": "example city",
        "days": 2,
        "unit": "celsius",
        "detailed": True,
    }


@pytest.mark.parametrize("convention", CONVENTION_NAMES)
def test_answers_in_text_after_the_tool_result(convention: str) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "get_weather for Oslo"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "3C and snow"},
    ]
    rendered, plan = _prepared(convention, messages, tools=[WEATHER])
    text = tool_answer(rendered["messages"])
    assert text == "The tool returned: 3C and snow"
    assert _judge(plan, text).content == text


def test_tool_choice_rules() -> None:
    plain = [{"role": "user", "content": "hello there"}]
    rendered, _ = _prepared("hermes", plain, tools=[WEATHER, TIME])
    assert tool_answer(rendered["messages"]) is None  # nothing mentioned: the usual echo
    rendered, _ = _prepared("hermes", plain, tools=[WEATHER, TIME], tool_choice="required")
    assert '"get_weather"' in (tool_answer(rendered["messages"]) or "")
    named = {"type": "function", "function": {"name": "get_time"}}
    rendered, _ = _prepared("glm", plain, tools=[WEATHER, TIME], tool_choice=named)
    assert (tool_answer(rendered["messages"]) or "").startswith("<tool_call>get_time")
    both = [{"role": "user", "content": "get_weather and get_time"}]
    rendered, _ = _prepared("hermes", both, tools=[WEATHER, TIME], parallel_tool_calls=False)
    assert (tool_answer(rendered["messages"]) or "").count("<tool_call>") == 1
    prepared = prepare(
        {"model": "m", "messages": both, "tools": [WEATHER], "tool_choice": "none"},
        model_id="m",
        config=ToolsConfig(),
    )
    assert tool_answer(prepared.request["messages"]) is None


def test_structured_answers_conform() -> None:
    ask = [{"role": "user", "content": "Describe a person"}]
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "Person", "schema": PERSON, "strict": True},
    }
    rendered, plan = _prepared("hermes", ask, response_format=response_format)
    text = tool_answer(rendered["messages"])
    assert text is not None
    value = json.loads(text)
    assert compile_schema(PERSON, param="p").problems(value, where="x") == []
    assert value["pets"] == [{"name": "example name", "kind": "cat"}]
    assert _judge(plan, text).content == text
    rendered, _ = _prepared("hermes", ask, response_format={"type": "json_object"})
    assert json.loads(tool_answer(rendered["messages"]) or "") == {"answer": "Describe a person"}


def test_example_values_follow_the_schema() -> None:
    assert example_value({"type": "string", "format": "date"}) == "2026-01-01"
    assert example_value({"type": "string", "minLength": 20}, key="k") == "example k" + "x" * 11
    assert example_value({"type": "number", "exclusiveMinimum": 5}) == 6.0
    assert example_value({"type": ["null", "integer"], "maximum": 0}) == 0
    assert example_value({"const": "c"}) == "c"
    assert example_value({"default": [1]}) == [1]
    assert example_value({"items": {"type": "boolean"}}) == [True]
    assert example_value({"type": "null"}) is None
    assert example_value(None, key="z") == "example z"


@pytest.mark.parametrize("convention", CONVENTION_NAMES)
@pytest.mark.parametrize("fault", ["invalid_arguments", "malformed_call", "no_call"])
def test_faults_spoil_calls_and_are_re_asked(convention: str, fault: str) -> None:
    ask = [{"role": "user", "content": "call get_weather"}]
    rendered, plan = _prepared(convention, ask, tools=[WEATHER], tool_choice="required")
    text = tool_answer(rendered["messages"], lambda: fault)
    assert text is not None
    if fault == "no_call":
        assert text == NO_CALL_TEXT
    decision = _judge(plan, text)
    assert isinstance(decision, RepairNeeded)
    retry = with_repair(rendered, decision)
    fixed = tool_answer(retry["messages"])  # the re-ask is answered like the original turn
    assert fixed is not None
    assert [c.name for c in _judge(plan, fixed, attempt=1).calls] == ["get_weather"]


def test_broken_object_fault() -> None:
    ask = [{"role": "user", "content": "JSON please"}]
    rendered, plan = _prepared("json", ask, response_format={"type": "json_object"})
    text = tool_answer(rendered["messages"], lambda: "broken_object")
    assert isinstance(_judge(plan, text or ""), RepairNeeded)


def test_faults_are_validated_and_budgeted() -> None:
    with pytest.raises(ValueError, match="tool_fault must be"):
        Faults(tool_fault="sometimes")
    with pytest.raises(ValueError, match="tool_fault_times"):
        Faults(tool_fault="no_call", tool_fault_times=-2)
    state = SimulatorState()
    assert state.take_tool_fault() is None
    state.faults = Faults(tool_fault="no_call", tool_fault_times=2)
    assert [state.take_tool_fault() for _ in range(3)] == ["no_call", "no_call", None]
    state.faults = Faults(tool_fault="malformed_call")
    assert all(state.take_tool_fault() == "malformed_call" for _ in range(5))


# -- through the simulated server, with real encryption ----------------------------------------


async def _attempt(
    state: SimulatorState, body: dict[str, Any], plan: EmulationPlan, attempt: int
) -> StreamFinished | RepairNeeded:
    async with client_for(state) as http:
        response, client = await e2ee_chat(http, state, body["messages"])
    assert response.status_code == 200, response.text
    transformer = ToolStreamTransformer(plan, attempt=attempt)
    relayed: list[dict[str, Any]] = []
    for chunk in json_events(response.content):
        for choice in chunk.get("choices", []):
            content = choice["delta"].get("content")
            if content:
                choice["delta"]["content"] = open_text(client.private, content)
        relayed.extend(transformer.feed(chunk))
    shown = [c["choices"][0]["delta"].get("content") for c in relayed if c["choices"]]
    assert not any(shown), shown
    return transformer.finish()


async def test_encrypted_round_trip_with_one_repair() -> None:
    state = SimulatorState(api_key=API_KEY)
    state.faults = Faults(tool_fault="invalid_arguments", tool_fault_times=1)
    ask = [{"role": "user", "content": "What is the weather? Use get_weather."}]
    body, plan = _prepared("qwen3_xml", ask, tools=[WEATHER])
    first = await _attempt(state, body, plan, 0)
    assert isinstance(first, RepairNeeded)
    second = await _attempt(state, with_repair(body, first), plan, 1)
    assert isinstance(second, StreamFinished)
    deltas = [
        delta
        for chunk in second.chunks
        for choice in chunk["choices"]
        for delta in choice["delta"].get("tool_calls", [])
    ]
    assert deltas[0]["function"]["name"] == "get_weather"
    arguments = json.loads("".join(d["function"]["arguments"] for d in deltas))
    assert arguments["city"] == "example city"
    assert second.chunks[-1]["usage"]["completion_tokens"] > 0
    # The tools, the schema and the re-ask travelled only inside encrypted contents.
    for recorded in state.requests:
        if recorded.path.endswith("/chat/completions"):
            raw = recorded.body.decode()
            assert "get_weather" not in raw
            assert "<tool_call>" not in raw


async def test_encrypted_round_trip_fails_after_repairs() -> None:
    state = SimulatorState(api_key=API_KEY)
    state.faults = Faults(tool_fault="malformed_call")
    body, plan = _prepared("glm", [{"role": "user", "content": "get_weather now"}], tools=[WEATHER])
    first = await _attempt(state, body, plan, 0)
    assert isinstance(first, RepairNeeded)
    with pytest.raises(ToolEmulationError):
        await _attempt(state, with_repair(body, first), plan, 1)
