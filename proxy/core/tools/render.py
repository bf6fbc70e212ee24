"""OpenAI request with tools / structured outputs -> a plain-text chat request + a plan. Pure.

:func:`prepare` reads (and validates, 400 naming the parameter):

- ``tools`` (``type: "function"`` only; names ``[A-Za-z0-9_.:-]{1,128}``, unique; ``parameters``
  a valid JSON Schema) or the legacy ``functions``;
- ``tool_choice`` (``auto`` | ``none`` | ``required`` | ``{"type": "function", "function":
  {"name"}}`` | ``{"type": "allowed_tools", "allowed_tools": {"mode", "tools"}}``) or the legacy
  ``function_call``; ``parallel_tool_calls`` (bool, default true);
- ``response_format`` ``json_object`` / ``json_schema`` (``schema``, ``strict``);
- history: assistant ``tool_calls`` / ``function_call`` and ``tool`` / ``function`` results.

and returns a request where all of that is text in the messages, to be encrypted like any
other message content:

- the first ``system``/``developer`` message gets the tools section (definitions, calling
  format, ``tool_choice`` and parallel rules) and the response-format section appended; without
  one, a system message is inserted first. ``developer`` becomes ``system``;
- an assistant message with calls becomes text: its content, then the calls as the convention
  writes them; ``tool``/``function`` results become one ``user`` message per run of results;
- ``tools``, ``tool_choice``, ``parallel_tool_calls``, ``functions``, ``function_call`` and
  ``response_format`` are removed, and so are ``tool_calls``, ``function_call`` and
  ``tool_call_id`` on messages. Nothing tool-related is left outside the message contents.

Other fields and other messages pass unchanged (content-part lists of user messages included).
Deliberately not supported: ``n > 1`` with emulation (one answer is parsed and repaired at a
time), non-function tool types, and ``response_format`` ``json_schema`` without a schema is
treated as ``json_object``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from proxy.core.errors import InvalidRequestError, UnsupportedForE2EEError
from proxy.core.tools.conventions import Convention, choose_convention, tools_block
from proxy.core.tools.plan import EmulationPlan, ResponseSpec, ToolChoice, ToolsConfig
from proxy.core.tools.validate import ToolSpec, compile_schema

EMULATED_FIELDS: Final = (
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "functions",
    "function_call",
    "response_format",
)
_MESSAGE_TOOL_FIELDS: Final = ("tool_calls", "function_call", "tool_call_id")
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
SCHEMA_OPEN = "<json_schema>"
SCHEMA_CLOSE = "</json_schema>"


@dataclass(frozen=True, slots=True)
class Prepared:
    """The request to encrypt and send, and the plan to read its answer (None: relay as is)."""

    request: dict[str, Any]
    plan: EmulationPlan | None


def _bad(message: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=param)


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"]
            for part in content
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        )
    return str(content)


def _history_needs_emulation(messages: Any) -> str | None:
    if not isinstance(messages, list):
        return None
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            continue
        if message.get("tool_calls"):
            return f"messages[{i}].tool_calls"
        if message.get("function_call"):
            return f"messages[{i}].function_call"
        if message.get("role") in ("tool", "function"):
            return f"messages[{i}]"
    return None


def _response_kind(request: Mapping[str, Any]) -> str | None:
    response_format = request.get("response_format")
    if isinstance(response_format, Mapping):
        kind = response_format.get("type")
        if kind in ("json_object", "json_schema"):
            return str(kind)
    return None


def emulation_param(request: Mapping[str, Any]) -> str | None:
    """The first request field that needs emulation (tools, history, JSON output), or None."""
    if request.get("tools"):
        return "tools"
    if request.get("functions"):
        return "functions"
    history = _history_needs_emulation(request.get("messages"))
    if history is not None:
        return history
    if _response_kind(request) is not None:
        return "response_format"
    return None


def _read_tool(raw: Any, param: str) -> ToolSpec:
    if not isinstance(raw, Mapping):
        raise _bad(f"'{param}' must be an object", param)
    if raw.get("type", "function") != "function":
        raise _bad(
            f"'{param}.type' {raw.get('type')!r} is not supported; only function tools can be "
            "emulated inside the encryption",
            f"{param}.type",
        )
    function = raw.get("function")
    if not isinstance(function, Mapping):
        raise _bad(f"'{param}.function' must be an object", f"{param}.function")
    return _read_function(function, f"{param}.function")


def _read_function(function: Mapping[str, Any], param: str) -> ToolSpec:
    name = function.get("name")
    if not isinstance(name, str) or not _TOOL_NAME.match(name):
        raise _bad(
            f"'{param}.name' must be 1-128 characters of letters, digits, _ . : -",
            f"{param}.name",
        )
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise _bad(f"'{param}.description' must be a string", f"{param}.description")
    parameters = function.get("parameters")
    compiled = None
    if parameters is not None:
        compiled = compile_schema(parameters, param=f"{param}.parameters")
    return ToolSpec(name, description, parameters, compiled)


def _read_tools(request: Mapping[str, Any]) -> dict[str, ToolSpec]:
    tools: dict[str, ToolSpec] = {}
    raw_tools = request.get("tools")
    if raw_tools is not None:
        if not isinstance(raw_tools, list):
            raise _bad("'tools' must be an array", "tools")
        specs = [_read_tool(raw, f"tools[{i}]") for i, raw in enumerate(raw_tools)]
    else:
        raw_functions = request.get("functions") or []
        if not isinstance(raw_functions, list):
            raise _bad("'functions' must be an array", "functions")
        specs = []
        for i, raw in enumerate(raw_functions):
            if not isinstance(raw, Mapping):
                raise _bad(f"'functions[{i}]' must be an object", f"functions[{i}]")
            specs.append(_read_function(raw, f"functions[{i}]"))
    for i, spec in enumerate(specs):
        if spec.name in tools:
            raise _bad(f"tool name {spec.name!r} is declared twice", f"tools[{i}]")
        tools[spec.name] = spec
    return tools


def _named(value: Any, tools: Mapping[str, ToolSpec], param: str) -> str:
    function = value.get("function") if isinstance(value, Mapping) else None
    name = function.get("name") if isinstance(function, Mapping) else None
    if name is None and isinstance(value, Mapping):
        name = value.get("name")
    if not isinstance(name, str) or name not in tools:
        raise _bad(f"'{param}' names a function that is not among the tools", param)
    return name


def _read_choice(request: Mapping[str, Any], tools: Mapping[str, ToolSpec]) -> ToolChoice:
    param = "tool_choice" if "tool_choice" in request else "function_call"
    raw = request.get(param)
    if raw is None:
        return ToolChoice("auto")
    if isinstance(raw, str):
        if raw in ("auto", "none", "required"):
            return ToolChoice(raw)  # type: ignore[arg-type]
        raise _bad(f"'{param}' must be auto, none, required or a named function", param)
    if not isinstance(raw, Mapping):
        raise _bad(f"'{param}' must be a string or an object", param)
    if raw.get("type") == "allowed_tools":
        allowed = raw.get("allowed_tools")
        if not isinstance(allowed, Mapping) or not isinstance(allowed.get("tools"), list):
            raise _bad("'tool_choice.allowed_tools.tools' must be an array", param)
        mode = allowed.get("mode", "auto")
        if mode not in ("auto", "required"):
            raise _bad("'tool_choice.allowed_tools.mode' must be auto or required", param)
        names = tuple(
            _named(item, tools, f"{param}.allowed_tools.tools[{i}]")
            for i, item in enumerate(allowed["tools"])
        )
        return ToolChoice(mode, allowed=names)
    return ToolChoice("named", name=_named(raw, tools, param))


def _read_response(request: Mapping[str, Any]) -> ResponseSpec | None:
    kind = _response_kind(request)
    if kind is None:
        raw = request.get("response_format")
        if raw is None or (isinstance(raw, Mapping) and raw.get("type") == "text"):
            return None
        raise _bad(
            "'response_format.type' must be text, json_object or json_schema", "response_format"
        )
    if kind == "json_object":
        return ResponseSpec("json_object")
    spec = request["response_format"].get("json_schema")
    if not isinstance(spec, Mapping):
        raise _bad("'response_format.json_schema' must be an object", "response_format.json_schema")
    name = spec.get("name")
    schema = spec.get("schema")
    compiled = (
        compile_schema(schema, param="response_format.json_schema.schema")
        if schema is not None
        else None
    )
    strict = spec.get("strict") is True
    return ResponseSpec(
        "json_schema",
        name=name if isinstance(name, str) else None,
        schema=compiled,
        strict=strict,
        raw_schema=schema if compiled is not None else None,
    )


def _rules(choice: ToolChoice, parallel: bool) -> str:
    lines = []
    if choice.mode == "auto":
        lines.append(
            "Call a function only when it helps to answer; otherwise answer directly in plain "
            "text without mentioning functions."
        )
    elif choice.mode == "required":
        lines.append("You MUST call at least one function in your next reply.")
    elif choice.mode == "named":
        lines.append(f"You MUST call the function {choice.name} in your next reply.")
    if choice.allowed is not None:
        lines.append("You may only call these functions: " + ", ".join(choice.allowed) + ".")
    lines.append(
        "Call at most one function per reply."
        if not parallel
        else "You may call several functions in one reply when the calls are independent."
    )
    lines.append(
        "Function results come back inside <tool_response></tool_response> tags; use them to "
        "continue."
    )
    return "\n".join(lines)


def _response_section(response: ResponseSpec, with_tools: bool) -> str:
    lead = "When you answer without calling a function, your" if with_tools else "Your"
    if response.raw_schema is None:
        return (
            "# Response format\n\n"
            f"{lead} reply must be ONLY one valid JSON object: no prose before or after it, "
            "no code fence."
        )
    title = f' named "{response.name}"' if response.name else ""
    schema = json.dumps(response.raw_schema, ensure_ascii=False)
    return (
        "# Response format\n\n"
        f"{lead} reply must be ONLY one JSON value that conforms to the JSON Schema{title} "
        "below: no prose before or after it, no code fence, every required property present, "
        f"no property the schema does not allow.\n{SCHEMA_OPEN}\n{schema}\n{SCHEMA_CLOSE}"
    )


def system_text(
    convention: Convention,
    tools: Sequence[ToolSpec],
    choice: ToolChoice,
    parallel: bool,
    response: ResponseSpec | None,
) -> str:
    """The emulation sections of the system prompt."""
    sections = []
    if tools and choice.mode != "none":
        sections.append(convention.instructions(tools) + "\n\n" + _rules(choice, parallel))
    elif tools:
        sections.append(
            "# Tools\n\nThese functions exist, but do not call any of them in your next reply: "
            f"answer in plain text.\n{tools_block(tools)}"
        )
    if response is not None:
        sections.append(_response_section(response, bool(tools) and choice.mode != "none"))
    return "\n\n".join(sections)


def _arguments_value(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw if raw is not None else {}


def _calls_of(message: Mapping[str, Any], index: int) -> list[tuple[str | None, str, Any]]:
    """(id, name, arguments) of an assistant message's calls."""
    calls: list[tuple[str | None, str, Any]] = []
    raw_calls = message.get("tool_calls") or []
    if not isinstance(raw_calls, list):
        raise _bad(f"'messages[{index}].tool_calls' must be an array", f"messages[{index}]")
    legacy = message.get("function_call")
    if legacy:
        raw_calls = [*raw_calls, {"id": None, "function": legacy}]
    for j, call in enumerate(raw_calls):
        function = call.get("function") if isinstance(call, Mapping) else None
        name = function.get("name") if isinstance(function, Mapping) else None
        if not isinstance(name, str) or not name:
            raise _bad(
                f"'messages[{index}].tool_calls[{j}].function.name' must be a string",
                f"messages[{index}].tool_calls[{j}]",
            )
        assert isinstance(function, Mapping)
        call_id = call.get("id") if isinstance(call.get("id"), str) else None
        calls.append((call_id, name, _arguments_value(function.get("arguments"))))
    return calls


def render_messages(
    messages: Sequence[Any], convention: Convention, system: str
) -> list[dict[str, Any]]:
    """The conversation as plain-text system/user/assistant messages (see module docstring)."""
    out: list[dict[str, Any]] = []
    names_by_id: dict[str, str] = {}
    results: list[tuple[str | None, str]] | None = None
    for index, raw in enumerate(messages):
        if not isinstance(raw, Mapping):
            raise _bad(f"messages[{index}] must be an object", f"messages[{index}]")
        role = raw.get("role")
        if role in ("tool", "function"):
            call_id = raw.get("tool_call_id")
            name = names_by_id.get(call_id) if isinstance(call_id, str) else None
            if name is None and isinstance(raw.get("name"), str):
                name = raw["name"]
            if results is None:
                results = []
                out.append({"role": "user", "content": ""})
            results.append((name, _text_of(raw.get("content"))))
            out[-1]["content"] = convention.render_results(results)
            continue
        results = None
        message = {k: v for k, v in raw.items() if k not in _MESSAGE_TOOL_FIELDS}
        if role == "developer":
            message["role"] = "system"
        if role == "assistant" and (raw.get("tool_calls") or raw.get("function_call")):
            calls = _calls_of(raw, index)
            for call_id, name, _ in calls:
                if call_id is not None:
                    names_by_id[call_id] = name
            text = _text_of(raw.get("content")).rstrip()
            rendered = convention.render_calls([(name, args) for _, name, args in calls])
            message["content"] = f"{text}\n\n{rendered}" if text else rendered
        out.append(message)
    if system:
        if out and out[0].get("role") == "system":
            head = _text_of(out[0].get("content")).rstrip()
            out[0] = {**out[0], "content": f"{head}\n\n{system}" if head else system}
        else:
            out.insert(0, {"role": "system", "content": system})
    return out


def prepare(
    request: Mapping[str, Any],
    *,
    model_id: str,
    config: ToolsConfig,
    model_spec: Mapping[str, Any] | None = None,
) -> Prepared:
    """Render a client request for an E2EE model (see module docstring); never mutates it.

    Raises :class:`UnsupportedForE2EEError` when the request needs emulation but it is off
    (``mode = "refuse"`` or the model is in ``disabled_models``), and
    :class:`InvalidRequestError` for malformed tool fields.
    """
    param = emulation_param(request)
    stripped = {k: v for k, v in request.items() if k not in EMULATED_FIELDS}
    if param is None:
        # Nothing to emulate; drop the leftovers (a tool_choice without tools, type "text").
        _read_response(request)
        return Prepared(stripped if len(stripped) != len(request) else dict(request), None)
    if config.mode == "refuse" or model_id in config.disabled_models:
        raise UnsupportedForE2EEError(
            "tools and structured outputs are not enabled for this model on this proxy "
            '([tools] mode = "refuse" or disabled_models); they would have to travel '
            "unencrypted",
            param=param,
        )
    n = request.get("n")
    if n is not None and n != 1:
        raise _bad("'n' must be 1 when tools or response_format are used", "n")
    parallel = request.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise _bad("'parallel_tool_calls' must be a boolean", "parallel_tool_calls")
    tools = _read_tools(request)
    choice = _read_choice(request, tools) if tools else ToolChoice("none")
    response = _read_response(request)
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty array", "messages")
    convention = choose_convention(model_id, model_spec, config.conventions)
    system = system_text(convention, list(tools.values()), choice, parallel, response)
    stripped["messages"] = render_messages(messages, convention, system)
    plan = EmulationPlan(
        convention=convention,
        tools=tools,
        tool_choice=choice,
        parallel_tool_calls=parallel,
        response=response,
        repair_attempts=config.repair_attempts,
        stream=request.get("stream") is True,
    )
    if not plan.calls_enabled and response is None:
        return Prepared(stripped, None)
    return Prepared(stripped, plan)
