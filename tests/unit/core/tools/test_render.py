"""prepare(): what reaches the upstream is plain messages; tool data exists only in contents."""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxy.core.errors import InvalidRequestError, UnsupportedForE2EEError
from proxy.core.tools import ToolsConfig, emulation_param, prepare
from proxy.core.tools.render import EMULATED_FIELDS

CANARY = "CANARY7f3a"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def _request(**extra: Any) -> dict[str, Any]:
    return {
        "model": "e2ee-qwen3-vl-30b-a3b-p",
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        **extra,
    }


def test_plain_request_passes_unchanged() -> None:
    request = _request(temperature=0.2, stream=True)
    prepared = prepare(request, model_id="m", config=ToolsConfig())
    assert prepared.plan is None
    assert prepared.request == request
    assert prepared.request is not request


def test_leftover_fields_without_data_are_dropped() -> None:
    request = _request(
        tool_choice="none", parallel_tool_calls=False, response_format={"type": "text"}
    )
    prepared = prepare(request, model_id="m", config=ToolsConfig())
    assert prepared.plan is None
    assert set(prepared.request) == {"model", "messages"}


def test_tools_become_a_system_message() -> None:
    request = _request(tools=[WEATHER], tool_choice="required", parallel_tool_calls=False)
    prepared = prepare(request, model_id="e2ee-qwen3-vl-30b-a3b-p", config=ToolsConfig())
    plan = prepared.plan
    assert plan is not None
    assert plan.convention.name == "hermes"
    assert plan.tool_choice.mode == "required"
    assert not plan.parallel_tool_calls
    assert not set(EMULATED_FIELDS) & set(prepared.request)
    system, user = prepared.request["messages"]
    assert system["role"] == "system"
    assert user == request["messages"][0]
    assert '"name": "get_weather"' in system["content"]
    assert "MUST call at least one function" in system["content"]
    assert "at most one function" in system["content"]
    assert repr(plan).startswith("EmulationPlan(convention='hermes', tools=1")


def test_existing_system_and_developer_messages() -> None:
    request = _request(tools=[WEATHER])
    request["messages"] = [
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
        *request["messages"],
        {"role": "developer", "content": "Later note."},
    ]
    messages = prepare(request, model_id="m", config=ToolsConfig()).request["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "system"]
    assert messages[0]["content"].startswith("Be brief.\n\n# Tools")


def test_history_is_rendered_as_text() -> None:
    request = _request(tools=[WEATHER])
    request["messages"] += [
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {
                    "id": "c2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "18C"},
        {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "25C"}]},
        {"role": "user", "content": "Thanks"},
        {
            "role": "assistant",
            "content": None,
            "function_call": {"name": "get_weather", "arguments": "oops"},
        },
        {"role": "function", "name": "get_weather", "content": "21C"},
    ]
    prepared = prepare(request, model_id="e2ee-glm-5-1", config=ToolsConfig())
    messages = prepared.request["messages"]
    assert [m["role"] for m in messages] == [
        "system",
        "user",
        "assistant",
        "user",
        "user",
        "assistant",
        "user",
    ]
    assert messages[2]["content"] == (
        "Checking.\n\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n"
        "</tool_call>\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Rome</arg_value>\n"
        "</tool_call>"
    )
    assert (
        messages[3]["content"]
        == "<tool_response>\n18C\n</tool_response>\n<tool_response>\n25C\n</tool_response>"
    )
    assert messages[5]["content"] == "<tool_call>get_weather\n</tool_call>"
    assert messages[6]["content"] == "<tool_response>\n21C\n</tool_response>"
    for message in messages:
        assert set(message) <= {"role", "content"}


def test_history_without_tools_needs_no_plan() -> None:
    request = _request()
    request["messages"] += [
        {
            "role": "assistant",
            "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c", "content": "done"},
    ]
    prepared = prepare(request, model_id="m", config=ToolsConfig())
    assert prepared.plan is None
    assert [m["role"] for m in prepared.request["messages"]] == ["user", "assistant", "user"]
    assert (
        prepared.request["messages"][1]["content"]
        == '{"tool_calls": [{"name": "f", "arguments": {}}]}'
    )


def test_canary_never_outside_message_contents() -> None:
    tool = {
        "type": "function",
        "function": {
            "name": f"tool_{CANARY}",
            "description": f"desc {CANARY}",
            "parameters": {
                "type": "object",
                "properties": {f"p_{CANARY}": {"type": "string", "description": CANARY}},
            },
        },
    }
    request = {
        "model": "m",
        "messages": [
            {"role": "user", "content": f"call {CANARY}"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"id_{CANARY}",
                        "type": "function",
                        "function": {
                            "name": f"tool_{CANARY}",
                            "arguments": json.dumps({f"p_{CANARY}": CANARY}),
                        },
                    },
                ],
            },
            {
                "role": "tool",
                "tool_call_id": f"id_{CANARY}",
                "name": f"tool_{CANARY}",
                "content": f"result {CANARY}",
            },
        ],
        "tools": [tool],
        "tool_choice": {"type": "function", "function": {"name": f"tool_{CANARY}"}},
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": CANARY, "schema": {"title": CANARY}},
        },
    }
    prepared = prepare(request, model_id="m", config=ToolsConfig())
    outside = {
        **prepared.request,
        "messages": [
            {k: v for k, v in m.items() if k != "content"} for m in prepared.request["messages"]
        ],
    }
    assert CANARY not in json.dumps(outside)
    inside = json.dumps([m["content"] for m in prepared.request["messages"]])
    assert inside.count(CANARY) >= 6
    assert CANARY not in repr(prepared.plan)


def test_response_format_sections() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    prepared = prepare(
        _request(
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "Out", "schema": schema, "strict": True},
            }
        ),
        model_id="m",
        config=ToolsConfig(),
    )
    plan = prepared.plan
    assert plan is not None
    assert plan.response is not None
    assert plan.response.strict
    assert not plan.calls_enabled
    system = prepared.request["messages"][0]["content"]
    assert '<json_schema>\n{"type": "object"' in system
    assert 'named "Out"' in system
    json_object = prepare(
        _request(response_format={"type": "json_object"}), model_id="m", config=ToolsConfig()
    )
    assert json_object.plan is not None
    assert json_object.plan.response is not None
    assert "ONLY one valid JSON object" in json_object.request["messages"][0]["content"]


def test_tool_choice_variants() -> None:
    other = {"type": "function", "function": {"name": "other"}}
    config = ToolsConfig()
    named = prepare(
        _request(
            tools=[WEATHER, other], tool_choice={"type": "function", "function": {"name": "other"}}
        ),
        model_id="m",
        config=config,
    )
    assert named.plan is not None
    assert named.plan.tool_choice.name == "other"
    assert list(named.plan.callable_tools) == ["other"]
    assert "MUST call the function other" in named.request["messages"][0]["content"]
    allowed = prepare(
        _request(
            tools=[WEATHER, other],
            tool_choice={
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "required",
                    "tools": [{"type": "function", "function": {"name": "get_weather"}}],
                },
            },
        ),
        model_id="m",
        config=config,
    )
    assert allowed.plan is not None
    assert list(allowed.plan.callable_tools) == ["get_weather"]
    assert allowed.plan.tool_choice.must_call
    none = prepare(_request(tools=[WEATHER], tool_choice="none"), model_id="m", config=config)
    assert none.plan is None
    assert "do not call any of them" in none.request["messages"][0]["content"]
    legacy = prepare(
        _request(functions=[WEATHER["function"]], function_call={"name": "get_weather"}),
        model_id="m",
        config=config,
    )
    assert legacy.plan is not None
    assert legacy.plan.tool_choice.mode == "named"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": {"a": 1}}, "tools"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
        (
            {"tools": [{"type": "function", "function": {"name": "bad name"}}]},
            "tools[0].function.name",
        ),
        (
            {
                "tools": [
                    {"type": "function", "function": {"name": "f", "parameters": {"type": "float"}}}
                ]
            },
            "tools[0].function.parameters",
        ),
        ({"tools": [WEATHER, WEATHER]}, "tools[1]"),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
        ),
        ({"tools": [WEATHER], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        ({"tools": [WEATHER], "n": 2}, "n"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ],
)
def test_bad_requests(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        prepare(_request(**extra), model_id="m", config=ToolsConfig())
    assert info.value.param == param


def test_refuse_mode_and_disabled_models() -> None:
    request = _request(tools=[WEATHER])
    with pytest.raises(UnsupportedForE2EEError) as info:
        prepare(request, model_id="m", config=ToolsConfig(mode="refuse"))
    assert info.value.param == "tools"
    with pytest.raises(UnsupportedForE2EEError):
        prepare(request, model_id="m", config=ToolsConfig(disabled_models=frozenset({"m"})))
    assert prepare(_request(), model_id="m", config=ToolsConfig(mode="refuse")).plan is None
    assert emulation_param(_request(response_format={"type": "json_object"})) == "response_format"


def test_config_from_settings() -> None:
    from proxy.settings import load_settings

    settings = load_settings(
        overrides={
            "tools": {"mode": "refuse", "conventions": {"m": "glm"}, "disabled_models": ["x"]}
        },
        environ={},
    )
    config = ToolsConfig.from_settings(settings.tools)
    assert config.mode == "refuse"
    assert config.conventions == {"m": "glm"}
    assert config.disabled_models == frozenset({"x"})
    assert config.repair_attempts == 1
