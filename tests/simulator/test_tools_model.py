"""The simulated model's tool calling and structured outputs (proxy/simulator/tools.py), driven by
hand-written system prompts: what it reads from the prompt, the exact text it writes in each
calling convention (what the proxy's parsers read back), every fault, and the example values it
derives from a JSON schema."""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxy.simulator.tools import (
    NO_CALL_TEXT,
    REASK_PREFIX,
    example_value,
    render_call,
    tool_answer,
)

CONVENTIONS = {
    "qwen3_xml": "Write calls as <function=example_function_name> blocks.",
    "glm": "Write calls with <arg_key> and <arg_value>.",
    "json": 'Answer with {"tool_calls": [ ... ]}.',
    "hermes": "Write calls in <tool_call> blocks.",
}


def tool(name: Any, parameters: Any = None) -> str:
    function: dict[str, Any] = {"name": name}
    if parameters is not None:
        function["parameters"] = parameters
    return json.dumps({"type": "function", "function": function}, ensure_ascii=False)


def system(*lines: str, tools: tuple[str, ...] = (), convention: str = "hermes") -> str:
    parts = [CONVENTIONS[convention], *lines]
    if tools:
        parts.append("<tools>\n" + "\n".join(tools) + "\n</tools>")
    return "\n".join(parts)


def chat(system_text: str, *turns: Any) -> list[Any]:
    """A system message, then user turns (strings) or whole messages (anything else)."""
    messages: list[Any] = [{"role": "system", "content": system_text}]
    for turn in turns:
        messages.append({"role": "user", "content": turn} if isinstance(turn, str) else turn)
    return messages


ALPHA = tool(
    "alpha", {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
)
BETA = tool("beta", {"type": "object", "properties": {"y": {"type": "string"}}, "required": ["y"]})
ASSISTANT = {"role": "assistant", "content": "done"}


# -- reading the prompt ------------------------------------------------------------------------


def test_a_prompt_without_tools_or_json_is_left_to_the_echo() -> None:
    assert tool_answer(chat("Be helpful.", "use alpha")) is None
    assert tool_answer([{"role": "user", "content": "use alpha"}]) is None


def test_the_system_message_is_found_wherever_it_is() -> None:
    messages = [
        {"role": "user", "content": "hello"},
        "not a message",
        {"role": "system", "content": [{"type": "text", "text": system(tools=(ALPHA,))}]},
        {"role": "user", "content": "use alpha"},
    ]
    assert (
        tool_answer(messages)
        == '<tool_call>\n{"name": "alpha", "arguments": {"x": 1}}\n</tool_call>'
    )


def test_tool_lines_that_are_not_tools_are_skipped() -> None:
    lines = (
        "not json",
        "[1, 2]",
        '"text"',
        tool(5),
        json.dumps({"type": "function", "function": "alpha"}),
        json.dumps({"type": "function"}),
        ALPHA,
        tool("gamma", "not an object"),
    )
    prompt = system("You MUST call at least one function in your next reply.", tools=lines)
    assert tool_answer(chat(prompt, "go")) == (
        '<tool_call>\n{"name": "alpha", "arguments": {"x": 1}}\n</tool_call>'
    )
    assert tool_answer(chat(prompt, "go gamma")) == (
        '<tool_call>\n{"name": "gamma", "arguments": {}}\n</tool_call>'
    )


@pytest.mark.parametrize(
    ("markers", "convention"),
    [
        ((CONVENTIONS["qwen3_xml"], CONVENTIONS["glm"], CONVENTIONS["json"]), "qwen3_xml"),
        ((CONVENTIONS["glm"], CONVENTIONS["json"]), "glm"),
        ((CONVENTIONS["json"],), "json"),
        ((), "hermes"),
    ],
)
def test_the_convention_is_read_in_order(markers: tuple[str, ...], convention: str) -> None:
    prompt = "\n".join((*markers, "<tools>\n" + ALPHA + "\n</tools>"))
    expected = {
        "qwen3_xml": (
            "<tool_call>\n<function=alpha>\n<parameter=x>\n1\n</parameter>\n</function>\n"
            "</tool_call>"
        ),
        "glm": "<tool_call>alpha\n<arg_key>x</arg_key>\n<arg_value>1</arg_value>\n</tool_call>",
        "json": '{"tool_calls": [{"name": "alpha", "arguments": {"x": 1}}]}',
        "hermes": '<tool_call>\n{"name": "alpha", "arguments": {"x": 1}}\n</tool_call>',
    }[convention]
    assert tool_answer(chat(prompt, "use alpha")) == expected


def test_tool_choice() -> None:
    tools = (ALPHA, BETA)
    forced = "You MUST call the function beta in your next reply."
    assert tool_answer(chat(system(forced, tools=tools), "use alpha")) == (
        '<tool_call>\n{"name": "beta", "arguments": {"y": "example y"}}\n</tool_call>'
    )
    # A forced tool that is not declared is ignored: the named ones are called.
    ghost = "You MUST call the function ghost in your next reply."
    assert tool_answer(chat(system(ghost, tools=tools), "use alpha")) == (
        '<tool_call>\n{"name": "alpha", "arguments": {"x": 1}}\n</tool_call>'
    )
    assert tool_answer(chat(system(ghost, tools=tools), "hello")) is None
    none = "Tools are listed, but do not call any of them."
    assert tool_answer(chat(system(none, tools=tools), "use alpha")) is None
    both = tool_answer(chat(system(tools=tools), "beta first, then alpha"))
    assert both == (
        '<tool_call>\n{"name": "beta", "arguments": {"y": "example y"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "alpha", "arguments": {"x": 1}}\n</tool_call>'
    )
    single = "Call at most one function per reply."
    assert tool_answer(chat(system(single, tools=tools), "beta first, then alpha")) == (
        '<tool_call>\n{"name": "beta", "arguments": {"y": "example y"}}\n</tool_call>'
    )


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("alpha.", ["alpha"]),
        ("(alpha)", ["alpha"]),
        ("alphas", []),
        ("x_alpha", []),
        ("my.alpha", []),
        ("ns:alpha", []),
        ("alpha:ns", []),
        ("alpha-like", []),
        ("alpha.method", []),
        ("beta and alpha", ["beta", "alpha"]),
    ],
)
def test_a_tool_is_named_by_whole_word(text: str, names: list[str]) -> None:
    answer = tool_answer(chat(system(tools=(ALPHA, BETA), convention="json"), text))
    called = [c["name"] for c in json.loads(answer)["tool_calls"]] if answer else []
    assert called == names


# -- the user turn -----------------------------------------------------------------------------


def test_only_a_last_user_turn_is_answered() -> None:
    prompt = system(tools=(ALPHA,))
    assert tool_answer(chat(prompt, "use alpha", ASSISTANT)) is None
    assert tool_answer(chat(prompt, "use alpha", 42)) is None
    assert tool_answer(chat(prompt, ASSISTANT, "use alpha")) is not None
    json_prompt = system("Reply with ONLY one valid JSON object.")
    assert tool_answer(chat(json_prompt, "use alpha", ASSISTANT)) == '{"answer": ""}'
    assert tool_answer(chat(json_prompt, ASSISTANT)) == '{"answer": ""}'


def test_a_re_ask_is_answered_as_the_user_turn_before_it() -> None:
    prompt = system(tools=(ALPHA, BETA))
    reask = REASK_PREFIX + ": it did not parse."
    again = tool_answer(chat(prompt, "use beta", {"role": "assistant", "content": "alpha"}, reask))
    assert again == '<tool_call>\n{"name": "beta", "arguments": {"y": "example y"}}\n</tool_call>'
    # A re-ask with no turn before it is read as it is.
    assert tool_answer(chat(prompt, reask + " Call alpha.")) == (
        '<tool_call>\n{"name": "alpha", "arguments": {"x": 1}}\n</tool_call>'
    )


def test_tool_results_are_quoted_or_put_in_json() -> None:
    results = (
        '<tool_response name="alpha">\n 3C \n</tool_response>\n'
        "<tool_response>\nsnow\n</tool_response>"
    )
    assert tool_answer(chat(system(tools=(ALPHA,)), results)) == "The tool returned: 3C; snow"
    json_prompt = system("Reply with ONLY one valid JSON object.", tools=(ALPHA,))
    assert tool_answer(chat(json_prompt, results)) == '{"answer": "3C; snow"}'
    assert tool_answer(chat(json_prompt, results), lambda: "broken_object") == '{"answer": "broken'


# -- JSON answers ------------------------------------------------------------------------------


def test_json_answers() -> None:
    plain = system("Reply with ONLY one valid JSON object.")
    assert tool_answer(chat(plain, "héllo")) == '{"answer": "héllo"}'
    assert tool_answer(chat(plain, "héllo"), lambda: "broken_object") == '{"answer": "broken'
    schema = {"type": "object", "properties": {"city": {"const": "Zürich"}}, "required": ["city"]}
    with_schema = system("<json_schema>\n" + json.dumps(schema) + "\n</json_schema>")
    assert tool_answer(chat(with_schema, "x")) == '{"city": "Zürich"}'
    # A schema that is not an object, or not JSON, asks for nothing.
    assert tool_answer(chat(system("<json_schema>\n[1]\n</json_schema>"), "x")) is None
    assert tool_answer(chat(system("<json_schema>\n{oops\n</json_schema>"), "x")) is None


# -- writing calls -----------------------------------------------------------------------------


ARGS = {"city": "Zürich", "days": 2, "tags": ["ü"], "on": True}


def test_render_call_in_each_convention() -> None:
    assert render_call("qwen3_xml", "f", ARGS) == (
        "<tool_call>\n<function=f>\n"
        "<parameter=city>\nZürich\n</parameter>\n"
        "<parameter=days>\n2\n</parameter>\n"
        '<parameter=tags>\n["ü"]\n</parameter>\n'
        "<parameter=on>\ntrue\n</parameter>\n"
        "</function>\n</tool_call>"
    )
    assert render_call("glm", "f", ARGS) == (
        "<tool_call>f\n"
        "<arg_key>city</arg_key>\n<arg_value>Zürich</arg_value>\n"
        "<arg_key>days</arg_key>\n<arg_value>2</arg_value>\n"
        '<arg_key>tags</arg_key>\n<arg_value>["ü"]</arg_value>\n'
        "<arg_key>on</arg_key>\n<arg_value>true</arg_value>\n"
        "</tool_call>"
    )
    hermes = (
        '<tool_call>\n{"name": "f", "arguments": '
        '{"city": "Zürich", "days": 2, "tags": ["ü"], "on": true}}\n</tool_call>'
    )
    assert render_call("hermes", "f", ARGS) == hermes
    assert render_call("json", "f", ARGS) == hermes


UNICODE_TOOL = tool(
    "place",
    {
        "type": "object",
        "properties": {
            "city": {"enum": ["Zürich"]},
            "tags": {"type": "array", "items": {"const": "ü"}},
        },
        "required": ["city", "tags"],
    },
)


def test_calls_keep_non_ascii_text() -> None:
    as_json = tool_answer(
        chat(system(tools=(UNICODE_TOOL, ALPHA), convention="json"), "place, alpha")
    )
    assert as_json == (
        '{"tool_calls": [{"name": "place", "arguments": {"city": "Zürich", "tags": ["ü"]}}, '
        '{"name": "alpha", "arguments": {"x": 1}}]}'
    )
    as_xml = tool_answer(chat(system(tools=(UNICODE_TOOL,), convention="qwen3_xml"), "place"))
    assert as_xml is not None
    assert '<parameter=tags>\n["ü"]\n</parameter>' in as_xml


# -- faults ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("convention", "malformed"),
    [
        ("qwen3_xml", "<tool_call>\n<parameter=x>\n1\n</parameter>\n</tool_call>"),
        ("glm", "<tool_call>beta\n<arg_key>x</arg_key>\n<arg_value>1\n</tool_call>"),
        ("json", '{"tool_calls": [{"name": "beta", "arguments": {'),
        ("hermes", '<tool_call>\n{"name": "beta", "arguments": {\n</tool_call>'),
    ],
)
def test_malformed_and_missing_calls(convention: str, malformed: str) -> None:
    messages = chat(system(tools=(ALPHA, BETA), convention=convention), "beta then alpha")
    assert tool_answer(messages, lambda: "malformed_call") == malformed
    assert tool_answer(messages, lambda: "no_call") == NO_CALL_TEXT


def invalid_call(parameters: Any, name: str = "f") -> tuple[str, Any]:
    """The call that the invalid_arguments fault writes for a tool with these parameters."""
    answer = tool_answer(
        chat(system(tools=(tool(name, parameters),), convention="json"), f"use {name}"),
        lambda: "invalid_arguments",
    )
    assert answer is not None
    [call] = json.loads(answer)["tool_calls"]
    return call["name"], call["arguments"]


def test_invalid_arguments_leave_out_the_first_required_property() -> None:
    parameters = {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    }
    assert invalid_call(parameters) == ("f", {"b": 1})


@pytest.mark.parametrize(
    ("parameters", "arguments"),
    [
        (
            {"properties": {"s": {"type": "string"}, "n": {"type": "integer"}}},
            {"n": "not a number"},
        ),
        ({"properties": {"z": {"type": "null"}}, "required": []}, {"z": 12345}),
        (
            {"properties": {"s": {}, "t": 5, "b": {"type": "boolean"}}, "required": [7]},
            {"b": "not a number"},
        ),
    ],
)
def test_invalid_arguments_else_give_a_property_the_wrong_type(
    parameters: dict[str, Any], arguments: dict[str, Any]
) -> None:
    assert invalid_call({"type": "object", **parameters}) == ("f", arguments)


@pytest.mark.parametrize(
    "parameters",
    [{}, {"type": "string"}, {"type": "object", "properties": {"s": {"type": "string"}}}],
)
def test_invalid_arguments_else_call_an_undeclared_tool(parameters: dict[str, Any]) -> None:
    assert invalid_call(parameters) == ("f_undeclared", {})


def test_without_a_fault_taker_nothing_is_spoiled() -> None:
    messages = chat(system("Reply with ONLY one valid JSON object.", tools=(ALPHA,)), "alpha")
    assert (
        tool_answer(messages)
        == '<tool_call>\n{"name": "alpha", "arguments": {"x": 1}}\n</tool_call>'
    )
    asked: list[str] = []

    def take() -> str | None:
        asked.append("asked")
        return None

    assert tool_answer(chat(system("Reply with ONLY one valid JSON object."), "x"), take) == (
        '{"answer": "x"}'
    )
    assert asked == ["asked"]


# -- example values ----------------------------------------------------------------------------


def nested(inner: dict[str, Any], levels: int, wrap: str) -> dict[str, Any]:
    schema = inner
    for _ in range(levels):
        if wrap == "array":
            schema = {"type": "array", "items": schema}
        elif wrap == "object":
            schema = {"type": "object", "properties": {"k": schema}, "required": ["k"]}
        else:
            schema = {wrap: [schema]}
    return schema


def unwrap(value: Any, levels: int, wrap: str) -> Any:
    for _ in range(levels):
        if wrap == "array":
            value = value[0]
        elif wrap == "object":
            value = value["k"]
    return value


@pytest.mark.parametrize("wrap", ["array", "object", "anyOf", "oneOf", "allOf"])
def test_twelve_levels_deep_and_no_deeper(wrap: str) -> None:
    integer = {"type": "integer"}
    assert unwrap(example_value(nested(integer, 12, wrap)), 12, wrap) == 1
    fallback = "example k" if wrap == "object" else "example value"
    assert unwrap(example_value(nested(integer, 13, wrap)), 13, wrap) == fallback


@pytest.mark.parametrize(
    ("schema", "value"),
    [
        ({"type": "string"}, "example value"),
        ({"const": None, "type": "integer"}, None),
        ({"enum": ["b", "a"], "type": "integer"}, "b"),
        ({"enum": [], "type": "integer"}, 1),
        ({"enum": "ab", "type": "integer"}, 1),
        ({"default": 0, "type": "string"}, 0),
        ({"anyOf": [{"type": "null"}, {"type": "integer"}]}, 1),
        ({"oneOf": [{"type": "null"}, {"type": "boolean"}]}, True),
        ({"allOf": [{"type": "null"}, {"type": "number"}]}, 1.0),
        ({"anyOf": [{"type": "null"}]}, None),
        ({"anyOf": [None, {"type": "integer"}]}, "example value"),
        ({"anyOf": [], "type": "integer"}, 1),
        ({"anyOf": {"type": "string"}, "type": "integer"}, 1),
        ({"type": ["null", "integer"]}, 1),
        ({"type": ["null"]}, None),
        ({"type": []}, None),
        ({"properties": {"a": {"type": "integer"}}, "required": ["a"]}, {"a": 1}),
        ({"properties": {"a": {"type": "integer"}}}, {}),
        ({"items": {"type": "boolean"}, "properties": {}}, {}),
        ({"items": {"type": "boolean"}}, [True]),
        ({}, "example value"),
        ({"type": "object", "properties": [1], "required": ["a", 5]}, {"a": "example a"}),
        ({"type": "object", "properties": {"a": {}}, "required": "a"}, {}),
        ({"type": "array", "items": {"type": "integer"}, "minItems": 3}, [1, 1, 1]),
        ({"type": "array", "items": {"type": "integer"}, "minItems": 0}, [1]),
        ({"type": "array", "items": {"type": "integer"}, "minItems": -1}, [1]),
        ({"type": "array", "items": {"type": "integer"}, "minItems": "2"}, [1]),
        ({"type": "array", "minItems": 2}, ["example value", "example value"]),
        ({"type": "integer"}, 1),
        ({"type": "integer", "minimum": 5}, 6),
        ({"type": "integer", "minimum": 2.5}, 3),
        ({"type": "integer", "exclusiveMinimum": 5}, 6),
        ({"type": "integer", "minimum": "5"}, 1),
        ({"type": "integer", "maximum": 0}, 0),
        ({"type": "integer", "minimum": 9, "maximum": 7.5}, 7),
        ({"type": "integer", "maximum": "0"}, 1),
        ({"type": "boolean"}, True),
        ({"type": "null"}, None),
        ({"type": "string", "format": "uuid"}, "00000000-0000-4000-8000-000000000000"),
        ({"type": "string", "format": "date-time"}, "2026-01-01T00:00:00Z"),
        ({"type": "string", "format": "time"}, "12:00:00"),
        ({"type": "string", "format": "email"}, "user@example.com"),
        ({"type": "string", "format": "uri"}, "https://example.com/"),
        ({"type": "string", "format": "color"}, "example value"),
        ({"type": "string", "minLength": 15}, "example valuexx"),
        ({"type": "string", "minLength": 3}, "example value"),
        ({"type": "string", "minLength": "99"}, "example value"),
    ],
)
def test_example_values(schema: dict[str, Any], value: Any) -> None:
    result = example_value(schema)
    assert result == value
    assert type(result) is type(value)


def test_the_key_names_string_fallbacks_down_the_tree() -> None:
    assert example_value({"type": "string"}, key="k") == "example k"
    assert example_value("not a schema", key="k") == "example k"
    assert example_value({"type": "array", "items": {"type": "string"}}, key="tags") == [
        "example tags"
    ]
    assert example_value({"anyOf": [{"type": "string"}]}, key="k") == "example k"
    assert example_value({"type": ["string", "null"]}, key="k") == "example k"


def test_references_resolve_from_the_root_down_the_tree() -> None:
    root = {
        "$defs": {
            "Pet": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
        },
        "type": "object",
        "properties": {
            "pets": {"type": "array", "items": {"$ref": "#/$defs/Pet"}},
            "best": {"anyOf": [{"$ref": "#/$defs/Pet"}, {"type": "null"}]},
            "lost": {"$ref": "#/$defs/Missing"},
            "gone": {"$ref": "#/$defs/Missing/properties"},
            "deep": {"$ref": "#/$defs/Pet/properties/n/type"},
            "deeper": {"$ref": "#/$defs/Pet/properties/n/type/x"},
            "far": {"$ref": "other.json#/Pet"},
        },
        "required": ["pets", "best", "lost", "gone", "deep", "deeper", "far"],
    }
    assert example_value(root) == {
        "pets": [{"n": 1}],
        "best": {"n": 1},
        "lost": "example lost",
        "gone": "example gone",
        "deep": "example deep",
        "deeper": "example deeper",
        "far": "example far",
    }
    assert example_value({"$ref": "#/$defs/Pet"}, root) == {"n": 1}
