"""Calling conventions: how tools, calls and results are written inside the encrypted messages,
per model family, and which family a model belongs to. Pure.

Venice's E2EE API carries only message text (no ``tools``), so the model sees our system prompt
and must answer in text. Each family is asked to write calls the way it was trained to; the
parser reads every convention whichever was asked for (:mod:`.formats`).

============  ===========================================================  ==================
name          a call, as the model writes it                                families
============  ===========================================================  ==================
hermes        ``<tool_call>\\n{"name": N, "arguments": {...}}\\n</tool_call>``  Qwen2.5/Qwen3/QwQ,
                                                                           Qwen3-VL, Hermes
qwen3_xml     ``<tool_call>\\n<function=N>\\n<parameter=K>\\nV\\n</parameter>``   Qwen3-Coder,
              ``\\n</function>\\n</tool_call>``                                  Qwen3.5, Qwen3.6
glm           ``<tool_call>N\\n<arg_key>K</arg_key>\\n<arg_value>V</arg_value>``  GLM-4.5 .. GLM-5.x
              ``\\n</tool_call>``
json          ``{"tool_calls": [{"name": N, "arguments": {...}}]}`` alone       everything else,
                                                                           gpt-oss and Gemma
============  ===========================================================  ==================

Tool definitions are one JSON object per line inside ``<tools></tools>`` for every convention
(what the Qwen and GLM templates do). Tool results go back as a *user* turn of
``<tool_response>...</tool_response>`` blocks in call order (the Qwen and GLM templates wrap
results the same way; a ``tool`` role would need a plaintext ``tool_call_id``).

gpt-oss uses the JSON fallback on purpose: its native calls are harmony messages on the
``commentary`` channel addressed ``to=functions.NAME``, made of special tokens that the serving
stack parses or strips, and with no ``tools`` field upstream vLLM routes only the ``final``
channel into ``content``. A call must therefore be plain text in the final answer, and plain JSON
is what gpt-oss writes most reliably there. Gemma 3 has no trained format; Google's guidance is
prompted JSON. Mistral-family models (Venice Uncensored) mark calls with a control token that is
stripped from text, so they get JSON too.

The family comes from the model id and Venice's ``model_spec`` (``modelSource``, the Hugging Face
URL, and ``name``) matched against :data:`FAMILY_TABLE`; ``[tools] conventions`` in the settings
overrides it per model id.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from proxy.core.tools.validate import ToolSpec

CONVENTION_NAMES: Final = ("hermes", "qwen3_xml", "glm", "json")


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _text_value(value: Any) -> str:
    return value if isinstance(value, str) else _dumps(value)


def tool_definition(tool: ToolSpec) -> dict[str, Any]:
    """A tool in OpenAI's ``{"type": "function", "function": {...}}`` shape."""
    function: dict[str, Any] = {"name": tool.name}
    if tool.description:
        function["description"] = tool.description
    function["parameters"] = (
        dict(tool.parameters) if tool.parameters is not None else {"type": "object"}
    )
    return {"type": "function", "function": function}


def tools_block(tools: Sequence[ToolSpec]) -> str:
    """``<tools>`` with one JSON definition per line."""
    lines = "\n".join(_dumps(tool_definition(tool)) for tool in tools)
    return f"<tools>\n{lines}\n</tools>"


@dataclass(frozen=True, slots=True)
class Convention:
    """Base: the JSON fallback. Subclasses override how calls are written."""

    name: ClassVar[str] = "json"

    def format_instructions(self) -> str:
        """How to write a call (the part of the system prompt after the tool list)."""
        return (
            "To call tools, reply with ONLY one JSON object and nothing else (no prose before "
            "or after it, no code fence), in exactly this shape:\n"
            '{"tool_calls": [{"name": "<function-name>", "arguments": <args-json-object>}]}\n'
            "List several calls in the array to call several tools."
        )

    def render_calls(self, calls: Sequence[tuple[str, Any]]) -> str:
        """Earlier calls, as the assistant would have written them."""
        return _dumps({"tool_calls": [{"name": n, "arguments": a} for n, a in calls]})

    def render_results(self, results: Sequence[tuple[str | None, str]]) -> str:
        """Tool results (name when known, text), for a user turn."""
        return "\n".join(
            f'<tool_response name="{name}">\n{text}\n</tool_response>'
            if name
            else f"<tool_response>\n{text}\n</tool_response>"
            for name, text in results
        )

    def instructions(self, tools: Sequence[ToolSpec]) -> str:
        """The ``# Tools`` section: definitions and the calling format."""
        return (
            "# Tools\n\n"
            "You may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n"
            f"{tools_block(tools)}\n\n{self.format_instructions()}"
        )


@dataclass(frozen=True, slots=True)
class HermesConvention(Convention):
    """Hermes / Qwen2.5 / Qwen3: JSON inside ``<tool_call>`` tags."""

    name: ClassVar[str] = "hermes"

    def format_instructions(self) -> str:
        return (
            "For each function call, return a json object with function name and arguments "
            "within <tool_call></tool_call> XML tags:\n"
            '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
            "</tool_call>"
        )

    def render_calls(self, calls: Sequence[tuple[str, Any]]) -> str:
        return "\n".join(
            f"<tool_call>\n{_dumps({'name': n, 'arguments': a})}\n</tool_call>" for n, a in calls
        )

    def render_results(self, results: Sequence[tuple[str | None, str]]) -> str:
        return "\n".join(f"<tool_response>\n{text}\n</tool_response>" for _, text in results)


@dataclass(frozen=True, slots=True)
class Qwen3XmlConvention(Convention):
    """Qwen3-Coder / Qwen3.5: XML function and parameter tags inside ``<tool_call>``."""

    name: ClassVar[str] = "qwen3_xml"

    def format_instructions(self) -> str:
        return (
            "If you choose to call a function ONLY reply in the following format with NO "
            "suffix:\n\n<tool_call>\n<function=example_function_name>\n"
            "<parameter=example_parameter_1>\nvalue_1\n</parameter>\n"
            "<parameter=example_parameter_2>\nThis is the value for the second parameter\n"
            "that can span\nmultiple lines\n</parameter>\n</function>\n</tool_call>\n\n"
            "<IMPORTANT>\nReminder:\n"
            "- Function calls MUST follow the specified format: an inner "
            "<function=...></function> block must be nested within <tool_call></tool_call> "
            "XML tags\n"
            "- Required parameters MUST be specified\n"
            "- Parameter values that are objects or arrays are written as JSON\n"
            "- You may provide optional reasoning for your function call in natural language "
            "BEFORE the function call, but NOT after\n"
            "- If there is no function call available, answer the question like normal with "
            "your current knowledge and do not tell the user about function calls\n"
            "</IMPORTANT>"
        )

    def render_calls(self, calls: Sequence[tuple[str, Any]]) -> str:
        blocks = []
        for name, arguments in calls:
            params = (
                "".join(
                    f"<parameter={key}>\n{_text_value(value)}\n</parameter>\n"
                    for key, value in arguments.items()
                )
                if isinstance(arguments, Mapping)
                else ""
            )
            blocks.append(f"<tool_call>\n<function={name}>\n{params}</function>\n</tool_call>")
        return "\n".join(blocks)

    def render_results(self, results: Sequence[tuple[str | None, str]]) -> str:
        return "\n".join(f"<tool_response>\n{text}\n</tool_response>" for _, text in results)

    def instructions(self, tools: Sequence[ToolSpec]) -> str:
        return (
            "# Tools\n\nYou have access to the following functions:\n\n"
            f"{tools_block(tools)}\n\n{self.format_instructions()}"
        )


@dataclass(frozen=True, slots=True)
class GlmConvention(Convention):
    """GLM-4.5 and later: the name, then ``<arg_key>/<arg_value>`` pairs, in ``<tool_call>``."""

    name: ClassVar[str] = "glm"

    def format_instructions(self) -> str:
        return (
            "For each function call, output the function name and arguments within the "
            "following XML format:\n"
            "<tool_call>{function-name}\n<arg_key>{arg-key-1}</arg_key>\n"
            "<arg_value>{arg-value-1}</arg_value>\n<arg_key>{arg-key-2}</arg_key>\n"
            "<arg_value>{arg-value-2}</arg_value>\n...\n</tool_call>\n"
            "Argument values that are objects or arrays are written as JSON."
        )

    def render_calls(self, calls: Sequence[tuple[str, Any]]) -> str:
        blocks = []
        for name, arguments in calls:
            pairs = (
                "".join(
                    f"<arg_key>{key}</arg_key>\n<arg_value>{_text_value(value)}</arg_value>\n"
                    for key, value in arguments.items()
                )
                if isinstance(arguments, Mapping)
                else ""
            )
            blocks.append(f"<tool_call>{name}\n{pairs}</tool_call>")
        return "\n".join(blocks)

    def render_results(self, results: Sequence[tuple[str | None, str]]) -> str:
        return "\n".join(f"<tool_response>\n{text}\n</tool_response>" for _, text in results)


CONVENTIONS: Final[Mapping[str, Convention]] = {
    "hermes": HermesConvention(),
    "qwen3_xml": Qwen3XmlConvention(),
    "glm": GlmConvention(),
    "json": Convention(),
}

# First match wins; matched against "<model id> <modelSource> <name>", lowercased.
FAMILY_TABLE: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    (re.compile(r"gpt-oss"), "json"),
    (re.compile(r"\bglm"), "glm"),
    (re.compile(r"qwen3(?:[-_. ]?coder|[-_. ]?[56](?![0-9]))"), "qwen3_xml"),
    (re.compile(r"qwen|qwq|hermes|nous"), "hermes"),
)


def convention_named(name: str) -> Convention:
    """The convention called ``name``; :class:`KeyError` for an unknown name."""
    return CONVENTIONS[name]


def choose_convention(
    model_id: str,
    model_spec: Mapping[str, Any] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> Convention:
    """The convention for a model: the override for its id, else the first
    :data:`FAMILY_TABLE` match, else the JSON fallback."""
    if overrides and model_id in overrides:
        return convention_named(overrides[model_id])
    spec = model_spec if isinstance(model_spec, Mapping) else {}
    parts = [model_id]
    parts.extend(
        str(spec[key]) for key in ("modelSource", "name") if isinstance(spec.get(key), str)
    )
    haystack = " ".join(parts).lower()
    for pattern, name in FAMILY_TABLE:
        if pattern.search(haystack):
            return CONVENTIONS[name]
    return CONVENTIONS["json"]
