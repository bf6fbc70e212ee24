"""Conventions: the family table, overrides, and calls written by each convention read back."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.tools.conventions import CONVENTION_NAMES, CONVENTIONS, choose_convention
from proxy.core.tools.parser import parse_output
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
