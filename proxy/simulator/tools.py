"""The simulated model's tool calling and structured outputs: deterministic, read from the
decrypted prompt only. Pure.

What the simulator reads in the (first) system message:

- tools: the ``<tools>`` block, one ``{"type": "function", "function": {...}}`` per line;
- the calling convention, from the format instructions: ``<function=example_function_name>``
  means Qwen3 XML, ``<arg_key>`` GLM, ``{"tool_calls": [`` the JSON fallback, ``<tool_call>``
  Hermes;
- ``tool_choice``: "MUST call the function NAME", "MUST call at least one function", "do not call
  any of them"; "Call at most one function per reply";
- a response schema between ``<json_schema>`` and ``</json_schema>``, or a request for "ONLY one
  valid JSON object".

How it answers (the conversation's last message decides):

- a user turn with ``<tool_response>`` blocks: text that quotes the results ("The tool returned:
  ..."), or a JSON answer when one is required;
- any other user turn: a call to each declared tool the text names (word match, in order of
  first mention; the one required by ``tool_choice``, or the first tool when any call is
  required and none is named), written in the convention with arguments generated from the
  tool's schema (required properties, type-correct values); with no call, an object generated
  from the response schema (``{"answer": ...}`` for plain JSON mode), or None (the ordinary echo
  answer). A re-ask (a user turn starting "Your previous reply could not be used") is answered
  as the user turn before it.

Faults (:attr:`~proxy.simulator.faults.Faults.tool_fault`): ``invalid_arguments`` (a required
property left out, else a non-string property of the wrong type, else an undeclared tool),
``malformed_call`` (a call block that does not parse), ``no_call`` (text instead of the call),
``broken_object`` (JSON answers that do not parse). The budget is consumed by the first answer
that holds a call or a JSON object.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.simulator.answer import message_text

REASK_PREFIX = "Your previous reply could not be used"
NO_CALL_TEXT = "I would rather answer without calling a tool."

_TOOLS = re.compile(r"<tools>\n(.*?)\n</tools>", re.DOTALL)
_SCHEMA = re.compile(r"<json_schema>\n(.*?)\n</json_schema>", re.DOTALL)
_MUST_CALL = re.compile(r"You MUST call the function (\S+) in your next reply")
_RESPONSE = re.compile(r"<tool_response[^>]*>\n(.*?)\n</tool_response>", re.DOTALL)


@dataclass(frozen=True, slots=True)
class _Prompt:
    tools: dict[str, Mapping[str, Any]]
    convention: str
    forced: str | None
    must_call: bool
    no_calls: bool
    single: bool
    schema: Mapping[str, Any] | None
    json_mode: bool


def _system_text(messages: Sequence[Any]) -> str:
    for message in messages:
        if isinstance(message, Mapping) and message.get("role") == "system":
            return message_text(message.get("content"))
    return ""


def _read_prompt(system: str) -> _Prompt:
    tools: dict[str, Mapping[str, Any]] = {}
    block = _TOOLS.search(system)
    if block is not None:
        for line in block.group(1).splitlines():
            try:
                definition = json.loads(line)
            except ValueError:
                continue
            function = definition.get("function") if isinstance(definition, dict) else None
            if isinstance(function, dict) and isinstance(function.get("name"), str):
                parameters = function.get("parameters")
                tools[function["name"]] = parameters if isinstance(parameters, dict) else {}
    if "<function=example_function_name>" in system:
        convention = "qwen3_xml"
    elif "<arg_key>" in system:
        convention = "glm"
    elif '{"tool_calls": [' in system:
        convention = "json"
    else:
        convention = "hermes"
    forced = _MUST_CALL.search(system)
    schema_match = _SCHEMA.search(system)
    schema: Mapping[str, Any] | None = None
    if schema_match is not None:
        try:
            loaded = json.loads(schema_match.group(1))
        except ValueError:
            loaded = None
        schema = loaded if isinstance(loaded, dict) else None
    return _Prompt(
        tools=tools,
        convention=convention,
        forced=forced.group(1) if forced else None,
        must_call="MUST call at least one function" in system,
        no_calls="do not call any of them" in system,
        single="Call at most one function per reply" in system,
        schema=schema,
        json_mode=schema is not None or "ONLY one valid JSON object" in system,
    )


# -- values from schemas --------------------------------------------------------------------

_FORMATS = {
    "date-time": "2026-01-01T00:00:00Z",
    "date": "2026-01-01",
    "time": "12:00:00",
    "email": "user@example.com",
    "uri": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, Mapping) else None
        if isinstance(target, Mapping):
            return target
    return schema


def example_value(
    schema: Any, root: Mapping[str, Any] | None = None, *, key: str = "value", depth: int = 0
) -> Any:
    """A deterministic value that the schema accepts (common keywords only)."""
    if not isinstance(schema, Mapping) or depth > 12:
        return f"example {key}"
    root = root if root is not None else schema
    schema = _resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    for combinator in ("anyOf", "oneOf", "allOf"):
        options = schema.get(combinator)
        if isinstance(options, list) and options:
            non_null = [
                o for o in options if not (isinstance(o, Mapping) and o.get("type") == "null")
            ]
            return example_value((non_null or options)[0], root, key=key, depth=depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        properties = schema.get("properties")
        properties = properties if isinstance(properties, Mapping) else {}
        required = schema.get("required")
        names = required if isinstance(required, list) else []
        return {
            name: example_value(properties.get(name), root, key=name, depth=depth + 1)
            for name in names
            if isinstance(name, str)
        }
    if kind == "array":
        count = schema.get("minItems", 1)
        count = count if isinstance(count, int) and count > 0 else 1
        return [
            example_value(schema.get("items"), root, key=key, depth=depth + 1) for _ in range(count)
        ]
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        value = int(low) + 1 if isinstance(low, int | float) else 1
        high = schema.get("maximum")
        if isinstance(high, int | float) and value > high:
            value = int(high)
        return value if kind == "integer" else float(value)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    text = _FORMATS.get(str(schema.get("format")), f"example {key}")
    min_length = schema.get("minLength")
    if isinstance(min_length, int) and len(text) < min_length:
        text += "x" * (min_length - len(text))
    return text


def _wrong_type(prop: Mapping[str, Any]) -> Any:
    return "not a number" if prop.get("type") != "null" else 12345


# -- writing calls --------------------------------------------------------------------------


def _value_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def render_call(convention: str, name: str, arguments: Mapping[str, Any]) -> str:
    """One call as the model family writes it."""
    if convention == "qwen3_xml":
        params = "".join(
            f"<parameter={k}>\n{_value_text(v)}\n</parameter>\n" for k, v in arguments.items()
        )
        return f"<tool_call>\n<function={name}>\n{params}</function>\n</tool_call>"
    if convention == "glm":
        pairs = "".join(
            f"<arg_key>{k}</arg_key>\n<arg_value>{_value_text(v)}</arg_value>\n"
            for k, v in arguments.items()
        )
        return f"<tool_call>{name}\n{pairs}</tool_call>"
    payload = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"<tool_call>\n{payload}\n</tool_call>"


def _render_calls(convention: str, calls: list[tuple[str, Mapping[str, Any]]]) -> str:
    if convention == "json":
        return json.dumps(
            {"tool_calls": [{"name": n, "arguments": a} for n, a in calls]}, ensure_ascii=False
        )
    return "\n".join(render_call(convention, name, args) for name, args in calls)


def _malformed(convention: str, name: str) -> str:
    if convention == "qwen3_xml":
        return "<tool_call>\n<parameter=x>\n1\n</parameter>\n</tool_call>"
    if convention == "glm":
        return f"<tool_call>{name}\n<arg_key>x</arg_key>\n<arg_value>1\n</tool_call>"
    if convention == "json":
        return f'{{"tool_calls": [{{"name": "{name}", "arguments": {{'
    return f'<tool_call>\n{{"name": "{name}", "arguments": {{\n</tool_call>'


def _arguments(prompt: _Prompt, name: str, fault: str | None) -> tuple[str, Mapping[str, Any]]:
    schema = prompt.tools.get(name, {})
    arguments = example_value(schema, key=name)
    if not isinstance(arguments, dict):
        arguments = {}
    if fault != "invalid_arguments":
        return name, arguments
    required = schema.get("required") if isinstance(schema, Mapping) else None
    if isinstance(required, list) and required and required[0] in arguments:
        # A missing required property survives every convention (a wrong-typed string value
        # would be read back as text by the XML and GLM readers).
        return name, {k: v for k, v in arguments.items() if k != required[0]}
    properties = schema.get("properties") if isinstance(schema, Mapping) else None
    if isinstance(properties, Mapping):
        for key, prop in properties.items():
            if isinstance(prop, Mapping) and prop.get("type") not in (None, "string"):
                return name, {**arguments, key: _wrong_type(prop)}
    return f"{name}_undeclared", arguments


# -- answering ------------------------------------------------------------------------------


def _user_turn(messages: Sequence[Any]) -> tuple[str, bool]:
    """The text that drives the answer, and whether it carries tool results."""
    users = [
        message_text(m.get("content"))
        for m in messages
        if isinstance(m, Mapping) and m.get("role") == "user"
    ]
    last = messages[-1] if messages else None
    if not users or not isinstance(last, Mapping) or last.get("role") != "user":
        return "", False
    text = users[-1]
    if text.startswith(REASK_PREFIX) and len(users) > 1:
        text = users[-2]
    return text, "<tool_response" in text


def _mentioned(tools: Mapping[str, Any], text: str) -> list[str]:
    found = []
    for name in tools:
        match = re.search(rf"(?<![\w.:-]){re.escape(name)}(?![\w:-]|\.\w)", text)
        if match is not None:
            found.append((match.start(), name))
    return [name for _, name in sorted(found)]


def _json_answer(prompt: _Prompt, text: str, fault: Callable[[], str | None]) -> str:
    if fault() == "broken_object":
        return '{"answer": "broken'
    value = example_value(prompt.schema) if prompt.schema is not None else {"answer": text}
    return json.dumps(value, ensure_ascii=False)


def tool_answer(
    messages: Sequence[Any], take_fault: Callable[[], str | None] | None = None
) -> str | None:
    """The simulated model's answer text when the prompt asks for tools or JSON, else None.

    ``take_fault`` is called once when a fault could apply and returns the fault to inject (it
    consumes the simulator's fault budget).
    """
    prompt = _read_prompt(_system_text(messages))
    if not prompt.tools and not prompt.json_mode:
        return None
    fault = take_fault if take_fault is not None else (lambda: None)
    text, has_results = _user_turn(messages)
    if has_results:
        results = [r.strip() for r in _RESPONSE.findall(text)]
        if prompt.json_mode:
            return _json_answer(prompt, "; ".join(results), fault)
        return "The tool returned: " + "; ".join(results)
    names: list[str] = []
    if prompt.tools and not prompt.no_calls:
        if prompt.forced is not None and prompt.forced in prompt.tools:
            names = [prompt.forced]
        else:
            names = _mentioned(prompt.tools, text)
            if not names and prompt.must_call:
                names = [next(iter(prompt.tools))]
        if prompt.single:
            names = names[:1]
    if names:
        injected = fault()
        if injected == "no_call":
            return NO_CALL_TEXT
        if injected == "malformed_call":
            return _malformed(prompt.convention, names[0])
        calls = [_arguments(prompt, name, injected) for name in names]
        return _render_calls(prompt.convention, calls)
    if prompt.json_mode:
        return _json_answer(prompt, text, fault)
    return None
