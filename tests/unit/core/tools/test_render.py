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


_W = {"type": "function", "function": {"name": "get_weather"}}
_X = {"type": "function", "function": {"name": "x"}}
_NAME_RULE = "must be 1-128 characters of letters, digits, _ . : -"


def _allowed(allowed: Any) -> dict[str, Any]:
    return {"tools": [_W], "tool_choice": {"type": "allowed_tools", "allowed_tools": allowed}}


@pytest.mark.parametrize(
    ("extra", "param", "message"),
    [
        ({"tools": {"a": 1}}, "tools", "'tools' must be an array"),
        ({"tools": ["x"]}, "tools[0]", "'tools[0]' must be an object"),
        (
            {"tools": [{"type": "custom", "custom": {"name": "x"}}]},
            "tools[0].type",
            "'tools[0].type' 'custom' is not supported; only function tools can be emulated "
            "inside the encryption",
        ),
        (
            {"tools": [{"function": "x"}]},
            "tools[0].function",
            "'tools[0].function' must be an object",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "bad name"}}]},
            "tools[0].function.name",
            f"'tools[0].function.name' {_NAME_RULE}",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "description": 3}}]},
            "tools[0].function.description",
            "'tools[0].function.description' must be a string",
        ),
        (
            {
                "tools": [
                    {"type": "function", "function": {"name": "f", "parameters": {"type": "float"}}}
                ]
            },
            "tools[0].function.parameters",
            "'tools[0].function.parameters' is not a valid JSON Schema: "
            "'float' is not valid under any of the given schemas",
        ),
        ({"tools": [_W, _W]}, "tools[1]", "tool name 'get_weather' is declared twice"),
        ({"functions": {"name": "f"}}, "functions", "'functions' must be an array"),
        ({"functions": ["f"]}, "functions[0]", "'functions[0]' must be an object"),
        (
            {"functions": [{"name": "f"}, {"name": ""}]},
            "functions[1].name",
            f"'functions[1].name' {_NAME_RULE}",
        ),
        (
            {"tools": [_W], "tool_choice": "sometimes"},
            "tool_choice",
            "'tool_choice' must be auto, none, required or a named function",
        ),
        (
            {"tools": [_W], "tool_choice": 3},
            "tool_choice",
            "'tool_choice' must be a string or an object",
        ),
        (
            {"tools": [_W], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
            "'tool_choice' names a function that is not among the tools",
        ),
        (
            _allowed({"tools": "get_weather"}),
            "tool_choice",
            "'tool_choice.allowed_tools.tools' must be an array",
        ),
        (
            _allowed(["get_weather"]),
            "tool_choice",
            "'tool_choice.allowed_tools.tools' must be an array",
        ),
        (
            _allowed({"mode": "none", "tools": []}),
            "tool_choice",
            "'tool_choice.allowed_tools.mode' must be auto or required",
        ),
        (
            _allowed({"tools": [_W, _X]}),
            "tool_choice.allowed_tools.tools[1]",
            "'tool_choice.allowed_tools.tools[1]' names a function that is not among the tools",
        ),
        (
            {"functions": [_W["function"]], "function_call": {"name": "nope"}},
            "function_call",
            "'function_call' names a function that is not among the tools",
        ),
        (
            {"tools": [_W], "parallel_tool_calls": "yes"},
            "parallel_tool_calls",
            "'parallel_tool_calls' must be a boolean",
        ),
        ({"tools": [_W], "n": 2}, "n", "'n' must be 1 when tools or response_format are used"),
        (
            {"response_format": {"type": "xml"}},
            "response_format",
            "'response_format.type' must be text, json_object or json_schema",
        ),
        (
            {"response_format": {"type": "json_schema"}},
            "response_format.json_schema",
            "'response_format.json_schema' must be an object",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": []}}},
            "response_format.json_schema.schema",
            "'response_format.json_schema.schema' must be a JSON Schema object",
        ),
        ({"tools": [_W], "messages": []}, "messages", "'messages' must be a non-empty array"),
        (
            {"tools": [_W], "messages": {"role": "user"}},
            "messages",
            "'messages' must be a non-empty array",
        ),
        ({"tools": [_W], "messages": ["hi"]}, "messages[0]", "messages[0] must be an object"),
        (
            {"tools": [_W], "messages": [{"role": "assistant", "tool_calls": {"a": 1}}]},
            "messages[0]",
            "'messages[0].tool_calls' must be an array",
        ),
        (
            {
                "tools": [_W],
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": ""}}]},
                ],
            },
            "messages[1].tool_calls[0]",
            "'messages[1].tool_calls[0].function.name' must be a string",
        ),
        (
            {"tools": [_W], "messages": [{"role": "assistant", "tool_calls": ["junk"]}]},
            "messages[0].tool_calls[0]",
            "'messages[0].tool_calls[0].function.name' must be a string",
        ),
        (
            {"tools": [_W], "messages": [{"role": "assistant", "tool_calls": [{"function": "f"}]}]},
            "messages[0].tool_calls[0]",
            "'messages[0].tool_calls[0].function.name' must be a string",
        ),
    ],
)
def test_bad_requests(extra: dict[str, Any], param: str, message: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        prepare(_request(**extra), model_id="m", config=ToolsConfig())
    assert info.value.param == param
    assert info.value.message == message


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


TIME = {"type": "function", "function": {"name": "get_time"}}
ONLY_WEATHER = {"type": "function", "function": {"name": "get_weather"}}


def _system(model: str = "m", **extra: Any) -> str:
    request = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    content = prepare(request, model_id=model, config=ToolsConfig()).request["messages"][0]
    assert content["role"] == "system"
    text: str = content["content"]
    return text


def test_the_system_prompt_for_tools_in_full() -> None:
    """The prompt is what the model works from: every word of it is deliberate."""
    assert _system("e2ee-qwen3-vl-30b-a3b-p", tools=[WEATHER, TIME]) == (
        "# Tools\n"
        "\n"
        "You may call one or more functions to assist with the user "
        "query.\n"
        "\n"
        "You are provided with function signatures within "
        "<tools></tools> XML tags:\n"
        "<tools>\n"
        '{"type": "function", "function": {"name": "get_weather", '
        '"description": "Current weather", "parameters": {"type": '
        '"object", "properties": {"city": {"type": "string"}}, '
        '"required": ["city"]}}}\n'
        '{"type": "function", "function": {"name": "get_time", '
        '"parameters": {"type": "object"}}}\n'
        "</tools>\n"
        "\n"
        "For each function call, return a json object with function name "
        "and arguments within <tool_call></tool_call> XML tags:\n"
        "<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n'
        "</tool_call>\n"
        "\n"
        "Call a function only when it helps to answer; otherwise answer "
        "directly in plain text without mentioning functions.\n"
        "You may call several functions in one reply when the calls are "
        "independent.\n"
        "Function results come back inside "
        "<tool_response></tool_response> tags; use them to continue."
    )


def test_the_system_prompt_for_allowed_tools_and_a_schema_in_full() -> None:
    system = _system(
        tools=[WEATHER],
        tool_choice={
            "type": "allowed_tools",
            "allowed_tools": {"tools": [ONLY_WEATHER]},
        },
        parallel_tool_calls=False,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "Out", "schema": {"type": "object"}},
        },
    )
    assert system == (
        "# Tools\n"
        "\n"
        "You may call one or more functions to assist with the user "
        "query.\n"
        "\n"
        "You are provided with function signatures within "
        "<tools></tools> XML tags:\n"
        "<tools>\n"
        '{"type": "function", "function": {"name": "get_weather", '
        '"description": "Current weather", "parameters": {"type": '
        '"object", "properties": {"city": {"type": "string"}}, '
        '"required": ["city"]}}}\n'
        "</tools>\n"
        "\n"
        "To call tools, reply with ONLY one JSON object and nothing else "
        "(no prose before or after it, no code fence), in exactly this "
        "shape:\n"
        '{"tool_calls": [{"name": "<function-name>", "arguments": '
        "<args-json-object>}]}\n"
        "List several calls in the array to call several tools.\n"
        "\n"
        "Call a function only when it helps to answer; otherwise answer "
        "directly in plain text without mentioning functions.\n"
        "You may only call these functions: get_weather.\n"
        "Call at most one function per reply.\n"
        "Function results come back inside "
        "<tool_response></tool_response> tags; use them to continue.\n"
        "\n"
        "# Response format\n"
        "\n"
        "When you answer without calling a function, your reply must be "
        "ONLY one JSON value that conforms to the JSON Schema named "
        '"Out" below: no prose before or after it, no code fence, every '
        "required property present, no property the schema does not "
        "allow.\n"
        "<json_schema>\n"
        '{"type": "object"}\n'
        "</json_schema>"
    )


def test_the_system_prompt_for_tools_not_to_call_and_json_in_full() -> None:
    system = _system(tools=[TIME], tool_choice="none", response_format={"type": "json_object"})
    assert system == (
        "# Tools\n"
        "\n"
        "These functions exist, but do not call any of them in your next "
        "reply: answer in plain text.\n"
        "<tools>\n"
        '{"type": "function", "function": {"name": "get_time", '
        '"parameters": {"type": "object"}}}\n'
        "</tools>\n"
        "\n"
        "# Response format\n"
        "\n"
        "Your reply must be ONLY one valid JSON object: no prose before "
        "or after it, no code fence."
    )


def test_the_system_prompt_for_an_unnamed_schema_in_full() -> None:
    system = _system(
        response_format={
            "type": "json_schema",
            "json_schema": {"schema": {"type": "object", "title": "é"}},
        }
    )
    assert system == (
        "# Response format\n"
        "\n"
        "Your reply must be ONLY one JSON value that conforms to the "
        "JSON Schema below: no prose before or after it, no code fence, "
        "every required property present, no property the schema does "
        "not allow.\n"
        "<json_schema>\n"
        '{"type": "object", "title": "é"}\n'
        "</json_schema>"
    )


def test_tool_choice_rules_are_whole_lines() -> None:
    required = _system(tools=[WEATHER], tool_choice="required").split("\n")
    assert "You MUST call at least one function in your next reply." in required
    named = _system(
        tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_time"}}
    ).split("\n")
    assert "You MUST call the function get_time in your next reply." in named
    assert not [line for line in named if line.startswith("Call a function only")]


def test_refusal_names_the_first_field_that_needs_emulation() -> None:
    refuse = ToolsConfig(mode="refuse")
    call: dict[str, Any] = {"id": "c", "function": {"name": "f", "arguments": "{}"}}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"functions": [WEATHER["function"]]}, "functions"),
        (
            {"messages": ["junk", {"role": "assistant", "tool_calls": [call]}]},
            "messages[1].tool_calls",
        ),
        (
            {"messages": [{"role": "assistant", "function_call": call["function"]}]},
            "messages[0].function_call",
        ),
        ({"messages": [{"role": "tool", "tool_call_id": "c", "content": "x"}]}, "messages[0]"),
        ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages[0]"),
        ({"response_format": {"type": "json_schema", "json_schema": {}}}, "response_format"),
    ]
    for extra, param in cases:
        assert emulation_param(_request(**extra)) == param
        with pytest.raises(UnsupportedForE2EEError) as info:
            prepare(_request(**extra), model_id="m", config=refuse)
        assert info.value.param == param
        assert info.value.message == (
            "tools and structured outputs are not enabled for this model on this proxy "
            '([tools] mode = "refuse" or disabled_models); they would have to travel unencrypted'
        )
    assert emulation_param(_request(messages="not a list")) is None


def test_tool_results_are_named_by_their_call_in_the_json_convention() -> None:
    def call(call_id: Any, name: str, arguments: Any) -> dict[str, Any]:
        return {
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }

    messages: list[Any] = [
        {"role": "system", "content": "  Be brief.  "},
        {
            "role": "tool",
            "tool_call_id": "early",
            "content": ["junk", {"text": "a"}, {"text": "b"}],
        },
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "  Checking.  ",
            "tool_calls": [
                call("c1", "get_weather", '{"city": "Paris"}'),
                call("c2", "get_time", None),
                call(7, "get_time", {"tz": "UTC"}),
                call("c3", "get_time", "not json"),
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "name": "other", "content": "18C"},
        {"role": "tool", "tool_call_id": "c2", "content": 12},
        {"role": "tool", "tool_call_id": "zz", "name": "get_time", "content": None},
        {"role": "tool", "tool_call_id": "zz", "content": "?"},
        {"role": "assistant", "content": "  Done.  "},
    ]
    tools = [WEATHER, {"type": "function", "function": {"name": "get_time"}}]
    prepared = prepare(
        {"model": "m", "messages": messages, "tools": tools}, model_id="m", config=ToolsConfig()
    )
    rendered = prepared.request["messages"]
    assert [m["role"] for m in rendered] == [
        "system",
        "user",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    assert rendered[0]["content"].startswith("  Be brief.\n\n# Tools\n")
    assert rendered[1]["content"] == "<tool_response>\na\nb\n</tool_response>"
    assert rendered[3]["content"] == (
        "  Checking.\n\n"
        '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}, '
        '{"name": "get_time", "arguments": {}}, {"name": "get_time", "arguments": {"tz": "UTC"}}, '
        '{"name": "get_time", "arguments": "not json"}]}'
    )
    assert rendered[4]["content"] == (
        '<tool_response name="get_weather">\n18C\n</tool_response>\n'
        '<tool_response name="get_time">\n12\n</tool_response>\n'
        '<tool_response name="get_time">\n\n</tool_response>\n'
        "<tool_response>\n?\n</tool_response>"
    )
    assert rendered[5] == {"role": "assistant", "content": "  Done.  "}


def test_an_empty_system_message_becomes_the_tools_section() -> None:
    request = _request(tools=[WEATHER])
    request["messages"] = [{"role": "system", "content": ""}, *request["messages"]]
    system = prepare(request, model_id="m", config=ToolsConfig()).request["messages"][0]
    assert system["content"].startswith("# Tools\n")


def test_the_plan_reads_choices_convention_and_stream() -> None:
    config = ToolsConfig()
    untyped = {"function": {"name": "get_time"}}
    for choice, mode in (
        (None, "auto"),
        ("auto", "auto"),
        ("none", "none"),
        ("required", "required"),
    ):
        extra = {"tool_choice": choice} if choice else {}
        prepared = prepare(
            _request(tools=[WEATHER, untyped], response_format={"type": "json_object"}, **extra),
            model_id="m",
            config=config,
        )
        assert prepared.plan is not None
        assert prepared.plan.tool_choice.mode == mode
    allowed = prepare(
        _request(
            tools=[WEATHER, untyped],
            tool_choice={
                "type": "allowed_tools",
                "allowed_tools": {"tools": [{"name": "get_time"}]},
            },
        ),
        model_id="m",
        config=config,
    ).plan
    assert allowed is not None
    assert (allowed.tool_choice.mode, allowed.tool_choice.allowed) == ("auto", ("get_time",))
    no_tools = prepare(
        _request(
            response_format={"type": "json_object"}, tool_choice={"type": "function"}, stream=True
        ),
        model_id="m",
        config=config,
    ).plan
    assert no_tools is not None
    assert no_tools.tool_choice.mode == "none"
    assert no_tools.stream is True
    assert no_tools.response is not None
    assert no_tools.response.kind == "json_object"
    streams = [
        prepare(_request(tools=[WEATHER], stream=s), model_id="m", config=config).plan
        for s in (False, "yes")
    ]
    assert [plan.stream for plan in streams if plan is not None] == [False, False]
    spec = {"modelSource": "https://huggingface.co/Qwen/Qwen3.5-35B-A3B"}
    by_spec = prepare(_request(tools=[WEATHER]), model_id="m", config=config, model_spec=spec).plan
    assert by_spec is not None
    assert by_spec.convention.name == "qwen3_xml"
    overridden = ToolsConfig(conventions={"m": "glm"})
    by_config = prepare(_request(tools=[WEATHER]), model_id="m", config=overridden).plan
    assert by_config is not None
    assert by_config.convention.name == "glm"


def test_a_schema_response_without_a_schema_is_a_json_object_answer() -> None:
    prepared = prepare(
        _request(response_format={"type": "json_schema", "json_schema": {"name": 5, "strict": 1}}),
        model_id="m",
        config=ToolsConfig(),
    )
    assert prepared.plan is not None
    response = prepared.plan.response
    assert response is not None
    assert (response.kind, response.name, response.schema, response.strict) == (
        "json_schema",
        None,
        None,
        False,
    )
    assert "ONLY one valid JSON object" in prepared.request["messages"][0]["content"]


def test_a_tool_without_parameters_takes_any_object() -> None:
    from proxy.core.tools import CompletionFinished, finish_completion

    plan = prepare(
        _request(tools=[{"type": "function", "function": {"name": "ping"}}]),
        model_id="m",
        config=ToolsConfig(),
    ).plan
    assert plan is not None
    answer = {
        "choices": [
            {"message": {"content": '{"tool_calls": [{"name": "ping", "arguments": {"x": 1}}]}'}}
        ]
    }
    result = finish_completion(plan, answer)
    assert isinstance(result, CompletionFinished)
    assert result.completion["choices"][0]["message"]["tool_calls"][0]["function"] == {
        "name": "ping",
        "arguments": '{"x":1}',
    }


def test_a_conversation_may_open_with_a_tool_result() -> None:
    request = _request(tools=[WEATHER])
    request["messages"] = [{"role": "tool", "tool_call_id": "c", "content": "18C"}]
    messages = prepare(request, model_id="m", config=ToolsConfig()).request["messages"]
    assert messages[1:] == [{"role": "user", "content": "<tool_response>\n18C\n</tool_response>"}]


def test_config_defaults_from_settings_and_the_plan_repr() -> None:
    from proxy.settings import load_settings

    config = ToolsConfig.from_settings(
        load_settings(overrides={"tools": {"repair_attempts": 3}}, environ={}).tools
    )
    assert (config.mode, config.repair_attempts, config.disabled_models) == (
        "emulate",
        3,
        frozenset(),
    )
    plan = prepare(
        _request(tools=[WEATHER], response_format={"type": "json_object"}),
        model_id="m",
        config=config,
    ).plan
    assert plan is not None
    assert plan.repair_attempts == 3
    assert repr(plan) == (
        "EmulationPlan(convention='json', tools=1, tool_choice='auto', response='json_object')"
    )


def test_odd_ids_and_allowed_tools_are_handled_not_crashed_on() -> None:
    time_tool = {"type": "function", "function": {"name": "get_time"}}
    request = _request(
        tools=[WEATHER, time_tool],
        tool_choice={"type": "allowed_tools", "allowed_tools": {"tools": [WEATHER, time_tool]}},
    )
    request["messages"] += [
        {
            "role": "assistant",
            "tool_calls": [{"id": ["x"], "function": {"name": "get_time", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": ["x"], "content": "noon"},
    ]
    messages = prepare(request, model_id="m", config=ToolsConfig()).request["messages"]
    assert "You may only call these functions: get_weather, get_time." in messages[0]["content"]
    assert messages[-1] == {"role": "user", "content": "<tool_response>\nnoon\n</tool_response>"}
    with pytest.raises(InvalidRequestError) as info:
        prepare(
            _request(**_allowed({"tools": ["get_weather"]})), model_id="m", config=ToolsConfig()
        )
    assert info.value.param == "tool_choice.allowed_tools.tools[0]"
