"""Conventions: the family table, overrides, and calls written by each convention read back."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.tools.conventions import (
    CONVENTION_NAMES,
    CONVENTIONS,
    choose_convention,
    convention_named,
)
from proxy.core.tools.parser import parse_output
from proxy.core.tools.validate import ToolSpec
from proxy.settings import ToolsSettings


@pytest.mark.parametrize(
    ("model", "spec", "expected"),
    [
        ("e2ee-qwen3-5-122b-a10b", None, "qwen3_xml"),
        ("e2ee-qwen3-vl-30b-a3b-p", None, "hermes"),
        ("e2ee-glm-5-1", None, "glm"),
        ("e2ee-gpt-oss-120b-p", None, "json"),
        ("e2ee-gemma-3-27b-p", None, "json"),
        ("e2ee-venice-uncensored-24b-p", None, "json"),
        ("qwen3-coder-480b", None, "qwen3_xml"),
        ("qwen3-235b-a22b", None, "hermes"),
        ("qwen3-32b", None, "hermes"),
        ("qwq-32b", None, "hermes"),
        (
            "e2ee-mystery",
            {"modelSource": "https://huggingface.co/Qwen/Qwen3.5-35B-A3B"},
            "qwen3_xml",
        ),
        ("e2ee-mystery", {"modelSource": "https://huggingface.co/zai-org/GLM-4.6"}, "glm"),
        ("e2ee-mystery", {"name": "Hermes 3 Llama 3.1 405B"}, "hermes"),
        ("e2ee-mystery", {"name": 5}, "json"),
        ("llama-3.3-70b", None, "json"),
    ],
)
def test_family_table(model: str, spec: dict[str, Any] | None, expected: str) -> None:
    assert choose_convention(model, spec).name == expected


def test_override_wins() -> None:
    assert choose_convention("e2ee-glm-5-1", None, {"e2ee-glm-5-1": "json"}).name == "json"
    with pytest.raises(KeyError):
        choose_convention("m", None, {"m": "nope"})


def test_settings_literal_matches_the_registry() -> None:
    annotation = ToolsSettings.model_fields["conventions"].annotation
    assert annotation is not None
    assert set(CONVENTION_NAMES) == set(CONVENTIONS)
    assert set(annotation.__args__[1].__args__) == set(CONVENTIONS)


_KEYS = st.from_regex(r"[a-z][a-z_]{0,8}", fullmatch=True)
_SCALARS = st.one_of(
    st.text(st.characters(blacklist_categories=["Cs"]), max_size=20).filter(
        lambda s: "<" not in s and s.strip() == s and s != ""
    ),
    st.integers(-1000, 1000),
    st.booleans(),
)
_VALUES = st.one_of(
    _SCALARS, st.lists(st.integers(), max_size=3), st.dictionaries(_KEYS, st.integers(), max_size=2)
)


@settings(max_examples=150, deadline=None)
@given(
    name=st.sampled_from(CONVENTION_NAMES),
    calls=st.lists(
        st.tuples(
            st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True),
            st.dictionaries(_KEYS, _VALUES, max_size=4),
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_rendered_calls_parse_back(name: str, calls: list[tuple[str, dict[str, Any]]]) -> None:
    convention = CONVENTIONS[name]
    text = convention.render_calls(calls)
    schemas = {
        tool: {
            "type": "object",
            "properties": {
                key: {"type": "string"} for key, value in args.items() if isinstance(value, str)
            },
        }
        for tool, args in calls
    }
    # The last schema per name wins; keep names unique so typing is unambiguous.
    if len({tool for tool, _ in calls}) != len(calls):
        return
    parsed = parse_output(text, known={tool for tool, _ in calls}, schemas=schemas)
    assert not parsed.malformed
    assert [(c.name, c.arguments) for c in parsed.calls] == calls
    assert parsed.content == ""


def test_results_and_instructions_mention_the_format() -> None:
    for convention in CONVENTIONS.values():
        results = convention.render_results([("f", "18C"), (None, "ok")])
        assert results.count("<tool_response") == 2
        assert "18C" in results
    assert "<arg_key>" in CONVENTIONS["glm"].format_instructions()
    assert "<function=" in CONVENTIONS["qwen3_xml"].format_instructions()
    assert '"tool_calls"' in CONVENTIONS["json"].format_instructions()
    assert '"arguments"' in CONVENTIONS["hermes"].format_instructions()


_TOOLS = [ToolSpec("f", "Does é", {"type": "object"}), ToolSpec("g", "", None)]


def test_the_qwen3_xml_tools_section_in_full() -> None:
    assert CONVENTIONS["qwen3_xml"].instructions(_TOOLS) == (
        "# Tools\n"
        "\n"
        "You have access to the following functions:\n"
        "\n"
        "<tools>\n"
        '{"type": "function", "function": {"name": "f", "description": '
        '"Does é", "parameters": {"type": "object"}}}\n'
        '{"type": "function", "function": {"name": "g", "parameters": '
        '{"type": "object"}}}\n'
        "</tools>\n"
        "\n"
        "If you choose to call a function ONLY reply in the following "
        "format with NO suffix:\n"
        "\n"
        "<tool_call>\n"
        "<function=example_function_name>\n"
        "<parameter=example_parameter_1>\n"
        "value_1\n"
        "</parameter>\n"
        "<parameter=example_parameter_2>\n"
        "This is the value for the second parameter\n"
        "that can span\n"
        "multiple lines\n"
        "</parameter>\n"
        "</function>\n"
        "</tool_call>\n"
        "\n"
        "<IMPORTANT>\n"
        "Reminder:\n"
        "- Function calls MUST follow the specified format: an inner "
        "<function=...></function> block must be nested within "
        "<tool_call></tool_call> XML tags\n"
        "- Required parameters MUST be specified\n"
        "- Parameter values that are objects or arrays are written as "
        "JSON\n"
        "- You may provide optional reasoning for your function call in "
        "natural language BEFORE the function call, but NOT after\n"
        "- If there is no function call available, answer the question "
        "like normal with your current knowledge and do not tell the "
        "user about function calls\n"
        "</IMPORTANT>"
    )


def test_the_glm_tools_section_in_full() -> None:
    assert CONVENTIONS["glm"].instructions(_TOOLS) == (
        "# Tools\n"
        "\n"
        "You may call one or more functions to assist with the user "
        "query.\n"
        "\n"
        "You are provided with function signatures within "
        "<tools></tools> XML tags:\n"
        "<tools>\n"
        '{"type": "function", "function": {"name": "f", "description": '
        '"Does é", "parameters": {"type": "object"}}}\n'
        '{"type": "function", "function": {"name": "g", "parameters": '
        '{"type": "object"}}}\n'
        "</tools>\n"
        "\n"
        "For each function call, output the function name and arguments "
        "within the following XML format:\n"
        "<tool_call>{function-name}\n"
        "<arg_key>{arg-key-1}</arg_key>\n"
        "<arg_value>{arg-value-1}</arg_value>\n"
        "<arg_key>{arg-key-2}</arg_key>\n"
        "<arg_value>{arg-value-2}</arg_value>\n"
        "...\n"
        "</tool_call>\n"
        "Argument values that are objects or arrays are written as JSON."
    )


def test_calls_in_history_are_written_as_each_family_writes_them() -> None:
    calls: list[tuple[str, Any]] = [("f", {"s": "é", "n": [1, {"a": None}]}), ("g", "raw")]
    assert CONVENTIONS["qwen3_xml"].render_calls(calls) == (
        "<tool_call>\n<function=f>\n<parameter=s>\né\n</parameter>\n"
        '<parameter=n>\n[1, {"a": null}]\n</parameter>\n</function>\n</tool_call>\n'
        "<tool_call>\n<function=g>\n</function>\n</tool_call>"
    )
    assert CONVENTIONS["glm"].render_calls(calls) == (
        "<tool_call>f\n<arg_key>s</arg_key>\n<arg_value>é</arg_value>\n"
        '<arg_key>n</arg_key>\n<arg_value>[1, {"a": null}]</arg_value>\n</tool_call>\n'
        "<tool_call>g\n</tool_call>"
    )
    assert CONVENTIONS["hermes"].render_calls(calls) == (
        '<tool_call>\n{"name": "f", "arguments": {"s": "é", "n": [1, {"a": null}]}}\n</tool_call>\n'
        '<tool_call>\n{"name": "g", "arguments": "raw"}\n</tool_call>'
    )
    assert CONVENTIONS["json"].render_calls(calls) == (
        '{"tool_calls": [{"name": "f", "arguments": {"s": "é", "n": [1, {"a": null}]}}, '
        '{"name": "g", "arguments": "raw"}]}'
    )


def test_results_in_call_order() -> None:
    results: list[tuple[str | None, str]] = [("f", "18C"), (None, "ok")]
    tagged = "<tool_response>\n18C\n</tool_response>\n<tool_response>\nok\n</tool_response>"
    for name in ("hermes", "qwen3_xml", "glm"):
        assert CONVENTIONS[name].render_results(results) == tagged
    assert CONVENTIONS["json"].render_results(results) == (
        '<tool_response name="f">\n18C\n</tool_response>\n<tool_response>\nok\n</tool_response>'
    )


@pytest.mark.parametrize(
    ("model", "spec", "expected"),
    [
        ("QWEN3-Coder-Next", None, "qwen3_xml"),
        ("qwen3_coder", None, "qwen3_xml"),
        ("qwen3.6-plus", None, "qwen3_xml"),
        ("qwen3 5", None, "qwen3_xml"),
        ("qwen3-56b", None, "hermes"),
        ("nous-capybara", None, "hermes"),
        ("myglm", None, "json"),
        ("gpt-oss-qwen", None, "json"),
        ("m", {"name": "GLM 5"}, "glm"),
        ("m", {"modelSource": 3, "name": "Qwen2.5"}, "hermes"),
        ("m", ["qwen"], "json"),
    ],
)
def test_more_family_names(model: str, spec: Any, expected: str) -> None:
    assert choose_convention(model, spec).name == expected


def test_an_override_for_another_model_does_not_apply() -> None:
    assert choose_convention("e2ee-glm-5-1", None, {"other": "json"}).name == "glm"
    assert convention_named("hermes") is CONVENTIONS["hermes"]
