"""OpenAI Responses request -> the chat completions request the proxy runs over E2EE. Pure.

Venice serves no ``/responses`` for E2EE models, so ``POST /v1/responses`` is translated to the
same encrypted chat path (:class:`proxy.service.chat.ChatService`). Every text the user wrote
(instructions, input messages, tool outputs, function-call history) becomes a chat message
``content``, which the chat path encrypts; identifiers, ``metadata``, ``user``,
``safety_identifier`` and ``prompt_cache_key`` stay on this machine.

Translation (Responses -> chat):

- ``instructions`` -> a leading ``system`` message.
- ``input`` as a string -> one ``user`` message. As a list of items:

  - messages (``{"role", "content"}`` with or without ``"type": "message"``; roles ``user``,
    ``assistant``, ``system``, ``developer``): a string stays a string; parts become chat
    parts: ``input_text`` / ``output_text`` -> ``{"type": "text"}``, ``input_image`` with an
    ``image_url`` -> ``{"type": "image_url", "image_url": {"url", "detail"}}``; ``refusal``
    parts of assistant history are dropped (the chat path drops ``refusal`` too);
  - ``function_call`` -> an assistant message with ``tool_calls`` (consecutive calls, and an
    assistant message right before them, are merged into one message);
  - ``function_call_output`` -> a ``tool`` message (``tool_call_id`` = ``call_id``; output as a
    string or ``input_text`` parts);
  - ``reasoning`` items are dropped (reasoning is never sent back upstream).

- ``tools`` (function tools only) -> chat ``tools``; ``tool_choice`` (``none`` / ``auto`` /
  ``required`` / a named function / ``allowed_tools``) -> chat ``tool_choice``;
  ``parallel_tool_calls`` kept.
- ``text.format``: ``json_schema`` -> ``response_format: {"type": "json_schema", "json_schema":
  {"name", "schema", "strict", "description"}}``, ``json_object`` -> ``{"type":
  "json_object"}``, ``text`` -> nothing. ``text.verbosity`` is accepted and not forwarded.
- ``max_output_tokens`` -> ``max_completion_tokens``; ``temperature``, ``top_p`` kept;
  ``reasoning.effort`` -> ``reasoning_effort`` (``reasoning.summary`` is accepted: raw reasoning,
  when the model streams it, is returned as ``reasoning_text`` content, never summarized).
- ``stream`` decides the answer's shape; upstream always streams.

Refused with a 400 naming the parameter (this proxy is stateless and runs no tools itself):
``previous_response_id``, ``conversation``, ``store: true``, ``background: true``, ``prompt``
(stored prompt templates), ``item_reference`` input items, hosted tools (web search, file search,
code interpreter, computer use, image generation, MCP, shells, apply-patch, tool search) and
custom tools, ``input_file`` and ``input_audio`` parts, images by ``file_id``, ``truncation:
"auto"``, ``top_logprobs`` > 0, ``max_tool_calls``, and any parameter not listed here
(``unknown_parameter``). ``include``, ``service_tier``, ``stream_options``, ``metadata`` (echoed
back), ``user``, ``safety_identifier``, ``prompt_cache_key`` and ``prompt_cache_retention`` are
accepted and not forwarded.

Whether the chat path can serve ``tools`` and ``response_format`` over E2EE is the chat path's
decision (:mod:`proxy.service.chat`); :attr:`ResponsesRequest.origins` maps each chat message
back to the Responses parameter it came from, so its refusals can name ``input[i]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.core.errors import InvalidRequestError, UnsupportedForE2EEError

STRUCTURED_OUTPUT_OVER_E2EE = True
"""Whether ``text.format`` (``json_schema`` / ``json_object``) is handed to the chat path.

The chat path emulates ``response_format`` inside the encrypted messages
(:mod:`proxy.core.tools`, :mod:`proxy.service.emulation`), so the schema never travels in
plaintext; with ``[tools] mode = "refuse"`` the chat path answers it with its 400. Set to False
to refuse ``text.format`` here whatever the chat path does (``e2ee_unsupported``).
"""

_ACCEPTED = frozenset(
    {
        "model",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "text",
        "max_output_tokens",
        "temperature",
        "top_p",
        "reasoning",
        "stream",
        "stream_options",
        "metadata",
        "store",
        "include",
        "user",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "service_tier",
        "truncation",
        "top_logprobs",
        "background",
        "previous_response_id",
        "conversation",
        "prompt",
        "max_tool_calls",
    }
)
_STATELESS = "this proxy keeps no state between requests"
_MESSAGE_ROLES = frozenset({"user", "assistant", "system", "developer"})
_HOSTED_TOOLS = frozenset(
    {
        "web_search",
        "web_search_preview",
        "web_search_2025_08_26",
        "web_search_preview_2025_03_11",
        "file_search",
        "code_interpreter",
        "computer",
        "computer_use",
        "computer_use_preview",
        "image_generation",
        "mcp",
        "local_shell",
        "shell",
        "apply_patch",
        "tool_search",
    }
)
_MAX_MODEL_NAME = 256


def _bad(message: str, param: str, code: str | None = None) -> InvalidRequestError:
    return InvalidRequestError(message, param=param, code=code)


def _unsupported(message: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=param, code="unsupported_parameter")


@dataclass(frozen=True, slots=True)
class ResponsesRequest:
    """A validated Responses request and the chat request that serves it."""

    chat: dict[str, Any]
    """The chat completions request (``stream: true``; usage is always requested upstream)."""
    stream: bool
    """Whether the client asked for the event stream."""
    echo: dict[str, Any]
    """The request fields the ``response`` object reports back (OpenAI's echo)."""
    origins: tuple[str, ...] = field(default=())
    """For each chat message, the Responses parameter it came from (``instructions``,
    ``input``, ``input[3]``)."""

    def input_param(self, chat_param: str | None) -> str | None:
        """A chat-side parameter name (``messages[2].tool_calls``) in Responses terms."""
        if chat_param is None or not chat_param.startswith("messages["):
            return chat_param
        index_text, _, _ = chat_param[len("messages[") :].partition("]")
        if index_text.isdigit() and int(index_text) < len(self.origins):
            return self.origins[int(index_text)]
        return "input"


def _number(body: Mapping[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise _bad(f"'{name}' must be a number from {low:g} to {high:g}", name)
    return value


def _text_parts(content: Any, param: str, role: str) -> str | list[dict[str, Any]]:
    """A Responses message ``content`` as chat content (a string or chat parts)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(f"{param} must be a string or an array of content parts", param)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        if not isinstance(part, Mapping):
            raise _bad(f"{where} must be an object", where)
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            text = part.get("text")
            if not isinstance(text, str):
                raise _bad(f"{where}.text must be a string", f"{where}.text")
            parts.append({"type": "text", "text": text})
        elif kind == "refusal" and role == "assistant":
            continue
        elif kind == "input_image":
            parts.append(_image_part(part, where))
        elif kind == "input_file":
            raise _unsupported(
                f"{where}: file inputs are not supported by end-to-end encrypted models", where
            )
        elif kind == "input_audio":
            raise _unsupported(f"{where}: audio inputs are not supported by this proxy", where)
        else:
            raise _bad(f"{where}.type '{str(kind)[:64]}' is not a supported content part", where)
    return parts


def _image_part(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    url = part.get("image_url")
    if not isinstance(url, str) or not url:
        if part.get("file_id") is not None:
            raise _unsupported(
                f"{where}: images by file_id need OpenAI's file store; {_STATELESS}, so send "
                "the image as image_url (a data: URL or an https URL)",
                where,
            )
        raise _bad(f"{where}.image_url must be a non-empty string", f"{where}.image_url")
    image: dict[str, Any] = {"url": url}
    detail = part.get("detail")
    if isinstance(detail, str):
        image["detail"] = detail
    return {"type": "image_url", "image_url": image}


class _Messages:
    """The chat messages being built, with the Responses parameter each came from."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.origins: list[str] = []
        self._open_calls: dict[str, Any] | None = None

    def add(self, message: dict[str, Any], origin: str) -> None:
        self.messages.append(message)
        self.origins.append(origin)
        self._open_calls = message if message.get("role") == "assistant" else None

    def add_call(self, call: dict[str, Any], origin: str) -> None:
        target = self._open_calls
        if target is None:
            target = {"role": "assistant", "content": None}
            self.add(target, origin)
        target.setdefault("tool_calls", []).append(call)


def _add_item(messages: _Messages, item: Any, index: int) -> None:
    where = f"input[{index}]"
    if not isinstance(item, Mapping):
        raise _bad(f"{where} must be an object", where)
    kind = item.get("type")
    if kind is None or kind == "message":
        role = item.get("role")
        if role not in _MESSAGE_ROLES:
            raise _bad(
                f"{where}.role must be one of {', '.join(sorted(_MESSAGE_ROLES))}",
                f"{where}.role",
            )
        content = _text_parts(item.get("content"), f"{where}.content", str(role))
        if role == "assistant" and isinstance(content, list):
            content = "".join(part["text"] for part in content if part.get("type") == "text")
        messages.add({"role": role, "content": content}, where)
    elif kind == "function_call":
        call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments")
        if not isinstance(call_id, str) or not call_id:
            raise _bad(f"{where}.call_id must be a non-empty string", f"{where}.call_id")
        if not isinstance(name, str) or not name:
            raise _bad(f"{where}.name must be a non-empty string", f"{where}.name")
        if not isinstance(arguments, str):
            raise _bad(f"{where}.arguments must be a string", f"{where}.arguments")
        messages.add_call(
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}},
            where,
        )
    elif kind == "function_call_output":
        call_id = item.get("call_id")
        if not isinstance(call_id, str) or not call_id:
            raise _bad(f"{where}.call_id must be a non-empty string", f"{where}.call_id")
        output = _text_parts(item.get("output"), f"{where}.output", "tool")
        if isinstance(output, list) and any(part.get("type") != "text" for part in output):
            raise _unsupported(f"{where}.output: a tool output can only hold text", where)
        messages.add({"role": "tool", "tool_call_id": call_id, "content": output}, where)
    elif kind == "reasoning":
        return
    elif kind == "item_reference":
        raise _unsupported(
            f"{where}: item_reference cannot be resolved: {_STATELESS}. Send the item itself "
            "(with the Vercel AI SDK, set providerOptions.openai.store = false)",
            where,
        )
    else:
        raise _unsupported(
            f"{where}.type '{str(kind)[:64]}' is not supported: this proxy runs no tools "
            "itself; only messages, function_call and function_call_output items are accepted",
            f"{where}.type",
        )


def _tools(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise _bad("'tools' must be an array", "tools")
    tools: list[dict[str, Any]] = []
    for i, tool in enumerate(value):
        where = f"tools[{i}]"
        if not isinstance(tool, Mapping):
            raise _bad(f"{where} must be an object", where)
        kind = tool.get("type")
        if kind != "function":
            raise _unsupported(
                f"{where}: the {str(kind)[:64]} tool is not available: Venice's end-to-end "
                "encrypted models run no hosted tools and this proxy keeps no state; define a "
                "function tool and run it in your application instead",
                where,
            )
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(f"{where}.name must be a non-empty string", f"{where}.name")
        function: dict[str, Any] = {"name": name}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        parameters = tool.get("parameters")
        if parameters is not None:
            if not isinstance(parameters, Mapping):
                raise _bad(f"{where}.parameters must be an object", f"{where}.parameters")
            function["parameters"] = dict(parameters)
        if isinstance(tool.get("strict"), bool):
            function["strict"] = tool["strict"]
        tools.append({"type": "function", "function": function})
    return tools


def _tool_choice(value: Any, tools: list[dict[str, Any]]) -> tuple[Any, list[dict[str, Any]]]:
    """The chat ``tool_choice`` and the tools it leaves available."""
    if value in ("none", "auto", "required"):
        return value, tools
    if not isinstance(value, Mapping):
        raise _bad("'tool_choice' must be none, auto, required or an object", "tool_choice")
    kind = value.get("type")
    if kind == "function":
        name = value.get("name")
        if not isinstance(name, str) or not name:
            raise _bad("'tool_choice.name' must be a non-empty string", "tool_choice.name")
        return {"type": "function", "function": {"name": name}}, tools
    if kind == "allowed_tools":
        mode = value.get("mode", "auto")
        listed = value.get("tools")
        if mode not in ("auto", "required") or not isinstance(listed, list):
            raise _bad("'tool_choice' allowed_tools needs a mode and a tools array", "tool_choice")
        names = set()
        for entry in listed:
            if not isinstance(entry, Mapping) or entry.get("type") != "function":
                raise _unsupported("allowed_tools can only name function tools", "tool_choice")
            names.add(entry.get("name"))
        return mode, [tool for tool in tools if tool["function"]["name"] in names]
    raise _unsupported(
        f"tool_choice type '{str(kind)[:64]}' is not available: only function tools are",
        "tool_choice",
    )


def _response_format(text: Any) -> dict[str, Any] | None:
    if not isinstance(text, Mapping):
        raise _bad("'text' must be an object", "text")
    fmt = text.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, Mapping):
        raise _bad("'text.format' must be an object", "text.format")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        name, schema = fmt.get("name"), fmt.get("schema")
        if not isinstance(name, str) or not name:
            raise _bad("'text.format.name' must be a non-empty string", "text.format.name")
        if not isinstance(schema, Mapping):
            raise _bad("'text.format.schema' must be an object", "text.format.schema")
        spec: dict[str, Any] = {"name": name, "schema": dict(schema)}
        if isinstance(fmt.get("strict"), bool):
            spec["strict"] = fmt["strict"]
        if isinstance(fmt.get("description"), str):
            spec["description"] = fmt["description"]
        return {"type": "json_schema", "json_schema": spec}
    raise _bad(
        f"'text.format.type' '{str(kind)[:64]}' is not one of text, json_object, json_schema",
        "text.format.type",
    )


def _refuse_stateful(body: Mapping[str, Any]) -> None:
    if body.get("previous_response_id") is not None:
        raise _unsupported(
            f"previous_response_id cannot be used: {_STATELESS}. Send the earlier turns "
            "(including the model's output items) in 'input' instead",
            "previous_response_id",
        )
    if body.get("conversation") is not None:
        raise _unsupported(
            f"conversation cannot be used: {_STATELESS}. Send the conversation in 'input'",
            "conversation",
        )
    if body.get("store") is True:
        raise _unsupported(
            f"store: true cannot be honoured: {_STATELESS} and stores no response. Omit it "
            "or send store: false",
            "store",
        )
    if body.get("background") is True:
        raise _unsupported(
            f"background responses need stored state: {_STATELESS}. Use stream: true instead",
            "background",
        )
    if body.get("prompt") is not None:
        raise _unsupported(
            "stored prompt templates live on OpenAI's servers; send the prompt as "
            "'instructions' and 'input'",
            "prompt",
        )
    if body.get("truncation") not in (None, "disabled"):
        raise _unsupported(
            "truncation 'auto' is not done by this proxy; shorten 'input' yourself",
            "truncation",
        )
    logprobs = body.get("top_logprobs")
    if logprobs not in (None, 0):
        raise _unsupported("top_logprobs is not available through this proxy", "top_logprobs")
    if body.get("max_tool_calls") is not None:
        raise _unsupported(
            "max_tool_calls is not enforced by this proxy; limit the tool loop in your application",
            "max_tool_calls",
        )


def _check_model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _bad("'model' is required and must be a non-empty string", "model")
    if len(model) > _MAX_MODEL_NAME:
        raise _bad(f"'model' is longer than {_MAX_MODEL_NAME} characters", "model")
    return model


def _echo(body: Mapping[str, Any], tools: list[dict[str, Any]] | None) -> dict[str, Any]:
    metadata = body.get("metadata")
    if metadata is not None and not (
        isinstance(metadata, Mapping)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    ):
        raise _bad("'metadata' must be an object of strings", "metadata")
    text = body.get("text")
    reasoning = body.get("reasoning")
    return {
        "instructions": body.get("instructions"),
        "metadata": dict(metadata) if metadata else {},
        "tools": [
            {
                "type": "function",
                "name": tool["function"]["name"],
                "description": tool["function"].get("description"),
                "parameters": tool["function"].get("parameters"),
                "strict": tool["function"].get("strict"),
            }
            for tool in tools or []
        ],
        "tool_choice": body.get("tool_choice", "auto"),
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "max_output_tokens": body.get("max_output_tokens"),
        "text": dict(text) if isinstance(text, Mapping) else {"format": {"type": "text"}},
        "reasoning": dict(reasoning) if isinstance(reasoning, Mapping) else None,
        "truncation": "disabled",
        "store": False,
        "background": False,
        "previous_response_id": None,
    }


def translate_request(body: Any) -> ResponsesRequest:
    """Validate a ``POST /v1/responses`` body and build the chat request that serves it.

    Raises :class:`InvalidRequestError` naming the Responses parameter at fault.
    """
    if not isinstance(body, Mapping):
        raise InvalidRequestError("the request body must be a JSON object")
    for name in body:
        if name not in _ACCEPTED:
            raise InvalidRequestError(
                f"unknown parameter '{str(name)[:64]}'",
                param=str(name)[:64],
                code="unknown_parameter",
            )
    model = _check_model(body)
    _refuse_stateful(body)
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise _bad("'stream' must be a boolean", "stream")

    messages = _Messages()
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise _bad("'instructions' must be a string", "instructions")
        messages.add({"role": "system", "content": instructions}, "instructions")
    given = body.get("input")
    if isinstance(given, str):
        messages.add({"role": "user", "content": given}, "input")
    elif isinstance(given, list):
        for index, item in enumerate(given):
            _add_item(messages, item, index)
    else:
        raise _bad("'input' is required: a string or an array of input items", "input")
    if not messages.messages:
        raise _bad("'input' holds no message", "input")

    chat: dict[str, Any] = {
        "model": model,
        "messages": messages.messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    tools: list[dict[str, Any]] | None = None
    if body.get("tools"):
        tools = _tools(body["tools"])
    tool_choice = body.get("tool_choice")
    if tool_choice is not None:
        tool_choice, tools = _tool_choice(tool_choice, tools or [])
        if tools or tool_choice != "none":
            chat["tool_choice"] = tool_choice
    if tools:
        chat["tools"] = tools
        parallel = body.get("parallel_tool_calls")
        if parallel is not None:
            if not isinstance(parallel, bool):
                raise _bad("'parallel_tool_calls' must be a boolean", "parallel_tool_calls")
            chat["parallel_tool_calls"] = parallel
    if body.get("text") is not None:
        response_format = _response_format(body["text"])
        if response_format is not None:
            if not STRUCTURED_OUTPUT_OVER_E2EE:
                raise UnsupportedForE2EEError(
                    "text.format (structured output) cannot be used with an end-to-end "
                    "encrypted model yet: its schema would travel unencrypted",
                    param="text.format",
                )
            chat["response_format"] = response_format
    max_output = body.get("max_output_tokens")
    if max_output is not None:
        if isinstance(max_output, bool) or not isinstance(max_output, int) or max_output < 1:
            raise _bad("'max_output_tokens' must be a positive integer", "max_output_tokens")
        chat["max_completion_tokens"] = max_output
    temperature = _number(body, "temperature", 0, 2)
    if temperature is not None:
        chat["temperature"] = temperature
    top_p = _number(body, "top_p", 0, 1)
    if top_p is not None:
        chat["top_p"] = top_p
    reasoning = body.get("reasoning")
    if reasoning is not None:
        if not isinstance(reasoning, Mapping):
            raise _bad("'reasoning' must be an object", "reasoning")
        effort = reasoning.get("effort")
        if effort is not None:
            if not isinstance(effort, str):
                raise _bad("'reasoning.effort' must be a string", "reasoning.effort")
            chat["reasoning_effort"] = effort
    return ResponsesRequest(
        chat=chat,
        stream=bool(stream),
        echo=_echo(body, tools),
        origins=tuple(messages.origins),
    )
