"""``POST /v1/responses`` bodies -> chat requests, in detail: every refusal (its exact message,
``param``, ``code`` and status, as a client reads them), every accepted form of each parameter,
the echo the ``response`` object reports back, and where chat-side errors point in ``input``.

The broad translation and the event sequence are in ``test_responses.py``; this file pins the
edges (made to kill the mutants of ``make mutation`` on ``proxy/core/responses/request.py``).
"""

from __future__ import annotations

from typing import Any

import pytest

from proxy.core.errors import InvalidRequestError, UnsupportedForE2EEError
from proxy.core.responses import ResponsesRequest, translate_request
from proxy.core.responses import request as request_module

_STATELESS = "this proxy keeps no state between requests"
_NO_TOOLS = (
    "this proxy runs no tools itself; only messages, function_call and function_call_output "
    "items are accepted"
)


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "input": "x", **fields}


def refused(given: Any) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as info:
        translate_request(given)
    assert info.value.http_status == 400
    assert info.value.error_type == "invalid_request_error"
    return info.value


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def call(call_id: str = "c1", name: str = "f", arguments: str = "{}") -> dict[str, Any]:
    return {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments}


def chat_call(call_id: str = "c1", name: str = "f", arguments: str = "{}") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


LONG = "y" * 100
_POSITIVE = "'max_output_tokens' must be a positive integer"

# (body, param, code, message): every refusal a client can meet, as it reads it.
REFUSALS: list[tuple[dict[str, Any], str | None, str | None, str]] = [
    # -- the body and the parameter names
    (
        body(frequency_penalty=1),
        "frequency_penalty",
        "unknown_parameter",
        "unknown parameter 'frequency_penalty'",
    ),
    (body(**{LONG: 1}), "y" * 64, "unknown_parameter", f"unknown parameter '{'y' * 64}'"),
    # -- model
    ({"input": "x"}, "model", None, "'model' is required and must be a non-empty string"),
    (body(model=3), "model", None, "'model' is required and must be a non-empty string"),
    (body(model=" \t"), "model", None, "'model' is required and must be a non-empty string"),
    (body(model="m" * 257), "model", None, "'model' is longer than 256 characters"),
    # -- stateful features
    (
        body(previous_response_id="resp_1"),
        "previous_response_id",
        "unsupported_parameter",
        f"previous_response_id cannot be used: {_STATELESS}. Send the earlier turns (including "
        "the model's output items) in 'input' instead",
    ),
    (
        body(conversation={"id": "conv_1"}),
        "conversation",
        "unsupported_parameter",
        f"conversation cannot be used: {_STATELESS}. Send the conversation in 'input'",
    ),
    (
        body(store=True),
        "store",
        "unsupported_parameter",
        f"store: true cannot be honoured: {_STATELESS} and stores no response. Omit it or send "
        "store: false",
    ),
    (
        body(background=True),
        "background",
        "unsupported_parameter",
        f"background responses need stored state: {_STATELESS}. Use stream: true instead",
    ),
    (
        body(prompt={"id": "pmpt_1"}),
        "prompt",
        "unsupported_parameter",
        "stored prompt templates live on OpenAI's servers; send the prompt as 'instructions' "
        "and 'input'",
    ),
    (
        body(truncation="auto"),
        "truncation",
        "unsupported_parameter",
        "truncation 'auto' is not done by this proxy; shorten 'input' yourself",
    ),
    (
        body(top_logprobs=1),
        "top_logprobs",
        "unsupported_parameter",
        "top_logprobs is not available through this proxy",
    ),
    (
        body(max_tool_calls=1),
        "max_tool_calls",
        "unsupported_parameter",
        "max_tool_calls is not enforced by this proxy; limit the tool loop in your application",
    ),
    # -- stream, instructions, input
    (body(stream="yes"), "stream", None, "'stream' must be a boolean"),
    (body(stream=1), "stream", None, "'stream' must be a boolean"),
    (body(instructions=["be brief"]), "instructions", None, "'instructions' must be a string"),
    (
        {"model": "m"},
        "input",
        None,
        "'input' is required: a string or an array of input items",
    ),
    (
        body(input={"role": "user", "content": "x"}),
        "input",
        None,
        "'input' is required: a string or an array of input items",
    ),
    (body(input=[]), "input", None, "'input' holds no message"),
    (body(input=[{"type": "reasoning", "summary": []}]), "input", None, "'input' holds no message"),
    (body(input=["hi"]), "input[0]", None, "input[0] must be an object"),
    (
        body(input=[user("a"), {"role": "tool", "content": "x"}]),
        "input[1].role",
        None,
        "input[1].role must be one of assistant, developer, system, user",
    ),
    (
        body(input=[{"content": "x"}]),
        "input[0].role",
        None,
        "input[0].role must be one of assistant, developer, system, user",
    ),
    (
        body(input=[{"type": "message", "role": "user", "content": {"type": "input_text"}}]),
        "input[0].content",
        None,
        "input[0].content must be a string or an array of content parts",
    ),
    (
        body(input=[{"role": "user"}]),
        "input[0].content",
        None,
        "input[0].content must be a string or an array of content parts",
    ),
    # -- content parts
    (
        body(input=[user([{"type": "input_text", "text": "a"}, "b"])]),
        "input[0].content[1]",
        None,
        "input[0].content[1] must be an object",
    ),
    (
        body(input=[user([{"type": "input_text", "text": 1}])]),
        "input[0].content[0].text",
        None,
        "input[0].content[0].text must be a string",
    ),
    (
        body(input=[user([{"type": "output_text"}])]),
        "input[0].content[0].text",
        None,
        "input[0].content[0].text must be a string",
    ),
    (
        body(input=[user([{"type": "refusal", "refusal": "no"}])]),
        "input[0].content[0]",
        None,
        "input[0].content[0].type 'refusal' is not a supported content part",
    ),
    (
        body(input=[user([{"type": LONG}])]),
        "input[0].content[0]",
        None,
        f"input[0].content[0].type '{'y' * 64}' is not a supported content part",
    ),
    (
        body(input=[user([{"text": "untyped"}])]),
        "input[0].content[0]",
        None,
        "input[0].content[0].type 'None' is not a supported content part",
    ),
    (
        body(input=[user([{"type": "input_file", "file_data": "data:..."}])]),
        "input[0].content[0]",
        "unsupported_parameter",
        "input[0].content[0]: file inputs are not supported by end-to-end encrypted models",
    ),
    (
        body(input=[user([{"type": "input_audio", "input_audio": {}}])]),
        "input[0].content[0]",
        "unsupported_parameter",
        "input[0].content[0]: audio inputs are not supported by this proxy",
    ),
    (
        body(input=[user([{"type": "input_image", "file_id": "file_1"}])]),
        "input[0].content[0]",
        "unsupported_parameter",
        "input[0].content[0]: images by file_id need OpenAI's file store; "
        f"{_STATELESS}, so send the image as image_url (a data: URL or an https URL)",
    ),
    (
        body(input=[user([{"type": "input_image", "image_url": "", "file_id": "file_1"}])]),
        "input[0].content[0]",
        "unsupported_parameter",
        "input[0].content[0]: images by file_id need OpenAI's file store; "
        f"{_STATELESS}, so send the image as image_url (a data: URL or an https URL)",
    ),
    (
        body(input=[user([{"type": "input_image", "detail": "low"}])]),
        "input[0].content[0].image_url",
        None,
        "input[0].content[0].image_url must be a non-empty string",
    ),
    (
        body(input=[user([{"type": "input_image", "image_url": ""}])]),
        "input[0].content[0].image_url",
        None,
        "input[0].content[0].image_url must be a non-empty string",
    ),
    (
        body(input=[user([{"type": "input_image", "image_url": {"url": "https://x/y.png"}}])]),
        "input[0].content[0].image_url",
        None,
        "input[0].content[0].image_url must be a non-empty string",
    ),
    # -- function calls and their outputs
    (
        body(input=[{"type": "function_call", "name": "f", "arguments": "{}"}]),
        "input[0].call_id",
        None,
        "input[0].call_id must be a non-empty string",
    ),
    (
        body(input=[call(call_id="")]),
        "input[0].call_id",
        None,
        "input[0].call_id must be a non-empty string",
    ),
    (
        body(input=[{"type": "function_call", "call_id": "c1", "arguments": "{}"}]),
        "input[0].name",
        None,
        "input[0].name must be a non-empty string",
    ),
    (
        body(input=[call(name="")]),
        "input[0].name",
        None,
        "input[0].name must be a non-empty string",
    ),
    (
        body(input=[{"type": "function_call", "call_id": "c1", "name": "f", "arguments": {}}]),
        "input[0].arguments",
        None,
        "input[0].arguments must be a string",
    ),
    (
        body(input=[{"type": "function_call", "call_id": "c1", "name": "f"}]),
        "input[0].arguments",
        None,
        "input[0].arguments must be a string",
    ),
    (
        body(input=[call(), {"type": "function_call_output", "output": "ok"}]),
        "input[1].call_id",
        None,
        "input[1].call_id must be a non-empty string",
    ),
    (
        body(input=[call(), {"type": "function_call_output", "call_id": "", "output": "ok"}]),
        "input[1].call_id",
        None,
        "input[1].call_id must be a non-empty string",
    ),
    (
        body(input=[call(), {"type": "function_call_output", "call_id": "c1"}]),
        "input[1].output",
        None,
        "input[1].output must be a string or an array of content parts",
    ),
    (
        body(
            input=[
                call(),
                {
                    "type": "function_call_output",
                    "call_id": "c1",
                    "output": [{"type": "input_image", "image_url": "https://x/y.png"}],
                },
            ]
        ),
        "input[1]",
        "unsupported_parameter",
        "input[1].output: a tool output can only hold text",
    ),
    (
        body(
            input=[
                call(),
                {
                    "type": "function_call_output",
                    "call_id": "c1",
                    "output": [{"type": "refusal", "refusal": "no"}],
                },
            ]
        ),
        "input[1].output[0]",
        None,
        "input[1].output[0].type 'refusal' is not a supported content part",
    ),
    # -- other input items
    (
        body(input=[user("a"), {"type": "item_reference", "id": "msg_1"}]),
        "input[1]",
        "unsupported_parameter",
        f"input[1]: item_reference cannot be resolved: {_STATELESS}. Send the item itself "
        "(with the Vercel AI SDK, set providerOptions.openai.store = false)",
    ),
    (
        body(input=[{"type": "web_search_call", "id": "ws_1"}]),
        "input[0].type",
        "unsupported_parameter",
        f"input[0].type 'web_search_call' is not supported: {_NO_TOOLS}",
    ),
    (
        body(input=[{"type": LONG}]),
        "input[0].type",
        "unsupported_parameter",
        f"input[0].type '{'y' * 64}' is not supported: {_NO_TOOLS}",
    ),
    # -- tools
    (body(tools={"type": "function"}), "tools", None, "'tools' must be an array"),
    (body(tools="f"), "tools", None, "'tools' must be an array"),
    (
        body(tools=[{"type": "function", "name": "f"}, "g"]),
        "tools[1]",
        None,
        "tools[1] must be an object",
    ),
    (
        body(tools=[{"type": "web_search"}]),
        "tools[0]",
        "unsupported_parameter",
        "tools[0]: the web_search tool is not available: Venice's end-to-end encrypted models "
        "run no hosted tools and this proxy keeps no state; define a function tool and run it "
        "in your application instead",
    ),
    (
        body(tools=[{"type": LONG}]),
        "tools[0]",
        "unsupported_parameter",
        f"tools[0]: the {'y' * 64} tool is not available: Venice's end-to-end encrypted models "
        "run no hosted tools and this proxy keeps no state; define a function tool and run it "
        "in your application instead",
    ),
    (
        body(tools=[{"name": "f"}]),
        "tools[0]",
        "unsupported_parameter",
        "tools[0]: the None tool is not available: Venice's end-to-end encrypted models "
        "run no hosted tools and this proxy keeps no state; define a function tool and run it "
        "in your application instead",
    ),
    (
        body(tools=[{"type": "function"}]),
        "tools[0].name",
        None,
        "tools[0].name must be a non-empty string",
    ),
    (
        body(tools=[{"type": "function", "name": ""}]),
        "tools[0].name",
        None,
        "tools[0].name must be a non-empty string",
    ),
    (
        body(tools=[{"type": "function", "name": "f", "parameters": ["a"]}]),
        "tools[0].parameters",
        None,
        "tools[0].parameters must be an object",
    ),
    # -- tool_choice
    (
        body(tool_choice="any"),
        "tool_choice",
        None,
        "'tool_choice' must be none, auto, required or an object",
    ),
    (
        body(tool_choice=["auto"]),
        "tool_choice",
        None,
        "'tool_choice' must be none, auto, required or an object",
    ),
    (
        body(tool_choice={"type": "function"}),
        "tool_choice.name",
        None,
        "'tool_choice.name' must be a non-empty string",
    ),
    (
        body(tool_choice={"type": "function", "name": ""}),
        "tool_choice.name",
        None,
        "'tool_choice.name' must be a non-empty string",
    ),
    (
        body(tool_choice={"type": "allowed_tools", "mode": "none", "tools": []}),
        "tool_choice",
        None,
        "'tool_choice' allowed_tools needs a mode and a tools array",
    ),
    (
        body(tool_choice={"type": "allowed_tools", "mode": "auto"}),
        "tool_choice",
        None,
        "'tool_choice' allowed_tools needs a mode and a tools array",
    ),
    (
        body(tool_choice={"type": "allowed_tools", "tools": [{"type": "web_search"}]}),
        "tool_choice",
        "unsupported_parameter",
        "allowed_tools can only name function tools",
    ),
    (
        body(tool_choice={"type": "allowed_tools", "tools": ["f"]}),
        "tool_choice",
        "unsupported_parameter",
        "allowed_tools can only name function tools",
    ),
    (
        body(tool_choice={"type": "file_search"}),
        "tool_choice",
        "unsupported_parameter",
        "tool_choice type 'file_search' is not available: only function tools are",
    ),
    (
        body(tool_choice={"type": LONG}),
        "tool_choice",
        "unsupported_parameter",
        f"tool_choice type '{'y' * 64}' is not available: only function tools are",
    ),
    # -- text (structured output)
    (body(text="json"), "text", None, "'text' must be an object"),
    (body(text={"format": "json"}), "text.format", None, "'text.format' must be an object"),
    (
        body(text={"format": {"type": "json_schema", "schema": {}}}),
        "text.format.name",
        None,
        "'text.format.name' must be a non-empty string",
    ),
    (
        body(text={"format": {"type": "json_schema", "name": "", "schema": {}}}),
        "text.format.name",
        None,
        "'text.format.name' must be a non-empty string",
    ),
    (
        body(text={"format": {"type": "json_schema", "name": "out"}}),
        "text.format.schema",
        None,
        "'text.format.schema' must be an object",
    ),
    (
        body(text={"format": {"type": "json_schema", "name": "out", "schema": "{}"}}),
        "text.format.schema",
        None,
        "'text.format.schema' must be an object",
    ),
    (
        body(text={"format": {"type": "grammar"}}),
        "text.format.type",
        None,
        "'text.format.type' 'grammar' is not one of text, json_object, json_schema",
    ),
    (
        body(text={"format": {"type": LONG}}),
        "text.format.type",
        None,
        f"'text.format.type' '{'y' * 64}' is not one of text, json_object, json_schema",
    ),
    # -- sampling and limits
    *[
        (body(max_output_tokens=v), "max_output_tokens", None, _POSITIVE)
        for v in (0, -1, True, 10.0, "10")
    ],
    (body(temperature=2.01), "temperature", None, "'temperature' must be a number from 0 to 2"),
    (body(temperature=-0.01), "temperature", None, "'temperature' must be a number from 0 to 2"),
    (body(temperature=True), "temperature", None, "'temperature' must be a number from 0 to 2"),
    (body(temperature="1"), "temperature", None, "'temperature' must be a number from 0 to 2"),
    (body(top_p=1.5), "top_p", None, "'top_p' must be a number from 0 to 1"),
    (body(top_p=-1), "top_p", None, "'top_p' must be a number from 0 to 1"),
    (body(reasoning="high"), "reasoning", None, "'reasoning' must be an object"),
    (
        body(reasoning={"effort": 3}),
        "reasoning.effort",
        None,
        "'reasoning.effort' must be a string",
    ),
    # -- metadata
    (body(metadata={"a": 1}), "metadata", None, "'metadata' must be an object of strings"),
    (body(metadata=["a"]), "metadata", None, "'metadata' must be an object of strings"),
    (body(metadata={1: "a"}), "metadata", None, "'metadata' must be an object of strings"),
]


@pytest.mark.parametrize(("given", "param", "code", "message"), REFUSALS)
def test_every_refusal_reads_as_openai_would_say_it(
    given: dict[str, Any], param: str | None, code: str | None, message: str
) -> None:
    error = refused(given)
    assert type(error) is InvalidRequestError
    assert (error.message, error.param, error.code) == (message, param, code)


@pytest.mark.parametrize("given", [None, [], "x", 3])
def test_a_body_that_is_not_an_object_is_refused(given: Any) -> None:
    error = refused(given)
    assert (error.message, error.param, error.code) == (
        "the request body must be a JSON object",
        None,
        None,
    )


def test_unknown_parameters_are_refused_before_the_model_is_read() -> None:
    error = refused({"frequency_penalty": 1})
    assert error.param == "frequency_penalty"


def test_the_stateful_refusals_come_in_order() -> None:
    everything = body(
        previous_response_id="r",
        conversation="c",
        store=True,
        background=True,
        prompt={"id": "p"},
        truncation="auto",
        top_logprobs=2,
        max_tool_calls=1,
    )
    order = [
        "previous_response_id",
        "conversation",
        "store",
        "background",
        "prompt",
        "truncation",
        "top_logprobs",
        "max_tool_calls",
    ]
    for name in order:
        assert refused(everything).param == name
        del everything[name]
    translate_request(everything)


def test_structured_output_refused_here_when_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(request_module, "STRUCTURED_OUTPUT_OVER_E2EE", False)
    for fmt in ({"type": "json_object"}, {"type": "json_schema", "name": "o", "schema": {}}):
        with pytest.raises(UnsupportedForE2EEError) as info:
            translate_request(body(text={"format": fmt}))
        assert info.value.message == (
            "text.format (structured output) cannot be used with an end-to-end encrypted model "
            "yet: its schema would travel unencrypted"
        )
        assert (info.value.param, info.value.code) == ("text.format", "e2ee_unsupported")
    # Plain text needs no structured output: it is still served.
    assert "response_format" not in translate_request(body(text={"format": {"type": "text"}})).chat


# -- what is accepted ----------------------------------------------------------------------------

MINIMAL_CHAT = {
    "model": "m",
    "messages": [{"role": "user", "content": "x"}],
    "stream": True,
    "stream_options": {"include_usage": True},
}


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"store": False, "background": False, "truncation": "disabled", "top_logprobs": 0},
        {"previous_response_id": None, "conversation": None, "prompt": None},
        {"max_tool_calls": None, "top_logprobs": None, "truncation": None, "store": None},
        {"stream": None, "instructions": None, "tools": None, "tool_choice": None},
        {"text": None, "max_output_tokens": None, "temperature": None, "top_p": None},
        {"reasoning": None, "metadata": None, "parallel_tool_calls": None},
        {"include": ["message.output_text.logprobs"], "service_tier": "auto", "user": "u"},
        {"safety_identifier": "s", "prompt_cache_key": "k", "prompt_cache_retention": "24h"},
        {"stream_options": {"include_obfuscation": True}, "metadata": {}},
        {"tools": [], "parallel_tool_calls": True},
        {"tool_choice": "none"},
        {"tool_choice": "none", "parallel_tool_calls": "not read without tools"},
        {"text": {}, "reasoning": {}},
        {"text": {"format": None, "verbosity": "low"}, "reasoning": {"summary": "auto"}},
        {"text": {"format": {"type": "text"}}, "reasoning": {"effort": None}},
    ],
)
def test_accepted_parameters_that_add_nothing_upstream(fields: dict[str, Any]) -> None:
    translated = translate_request(body(**fields))
    assert translated.chat == MINIMAL_CHAT
    assert translated.stream is False
    assert translated.origins == ("input",)


def test_the_model_name_is_kept_as_given_up_to_256_characters() -> None:
    name = " venice/" + "m" * 248
    assert len(name) == 256
    assert translate_request(body(model=name)).chat["model"] == name


@pytest.mark.parametrize(("given", "expected"), [(True, True), (False, False), (None, False)])
def test_stream_decides_the_shape(given: Any, expected: bool) -> None:
    translated = translate_request(body(stream=given))
    assert translated.stream is expected
    assert translated.chat["stream"] is True


def test_instructions_lead_even_when_empty() -> None:
    translated = translate_request(body(instructions=""))
    assert translated.chat["messages"] == [
        {"role": "system", "content": ""},
        {"role": "user", "content": "x"},
    ]
    assert translated.origins == ("instructions", "input")


def test_an_empty_string_input_is_one_empty_user_message() -> None:
    assert translate_request(body(input="")).chat["messages"] == [{"role": "user", "content": ""}]


def test_message_items_with_and_without_type() -> None:
    translated = translate_request(
        body(
            input=[
                {"type": "message", "role": "system", "content": "s"},
                {"role": "developer", "content": [{"type": "input_text", "text": "d"}]},
                {"type": None, "role": "user", "content": [{"type": "text", "text": "u"}]},
                {"role": "assistant", "content": "a"},
            ]
        )
    )
    assert translated.chat["messages"] == [
        {"role": "system", "content": "s"},
        {"role": "developer", "content": [{"type": "text", "text": "d"}]},
        {"role": "user", "content": [{"type": "text", "text": "u"}]},
        {"role": "assistant", "content": "a"},
    ]
    assert translated.origins == ("input[0]", "input[1]", "input[2]", "input[3]")


def test_user_parts_stay_parts_and_assistant_parts_become_one_string() -> None:
    parts = [
        {"type": "output_text", "text": "one "},
        {"type": "input_text", "text": "two"},
        {"type": "text", "text": "!"},
    ]
    translated = translate_request(
        body(input=[user(parts), {"role": "assistant", "content": parts}, user([])])
    )
    assert translated.chat["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "one "},
                {"type": "text", "text": "two"},
                {"type": "text", "text": "!"},
            ],
        },
        {"role": "assistant", "content": "one two!"},
        {"role": "user", "content": []},
    ]


def test_assistant_history_drops_refusals_and_images() -> None:
    translated = translate_request(
        body(
            input=[
                user("q"),
                {
                    "role": "assistant",
                    "content": [
                        {"type": "refusal", "refusal": "no"},
                        {"type": "output_text", "text": "yes"},
                        {"type": "input_image", "image_url": "https://x/y.png"},
                    ],
                },
            ]
        )
    )
    assert translated.chat["messages"][1] == {"role": "assistant", "content": "yes"}


@pytest.mark.parametrize(
    ("part", "image_url"),
    [
        ({"image_url": "https://x/y.png"}, {"url": "https://x/y.png"}),
        ({"image_url": "https://x/y.png", "detail": None}, {"url": "https://x/y.png"}),
        ({"image_url": "https://x/y.png", "detail": 2}, {"url": "https://x/y.png"}),
        (
            {"image_url": "data:image/png;base64,AA", "detail": "high", "file_id": None},
            {"url": "data:image/png;base64,AA", "detail": "high"},
        ),
        (
            {"image_url": "https://x/y.png", "detail": "auto", "file_id": "file_1"},
            {"url": "https://x/y.png", "detail": "auto"},
        ),
    ],
)
def test_image_parts(part: dict[str, Any], image_url: dict[str, Any]) -> None:
    translated = translate_request(body(input=[user([{"type": "input_image", **part}])]))
    assert translated.chat["messages"][0]["content"] == [
        {"type": "image_url", "image_url": image_url}
    ]


def test_function_calls_open_an_assistant_message_where_none_is_open() -> None:
    translated = translate_request(
        body(
            input=[
                call("c1"),
                {"type": "function_call_output", "call_id": "c1", "output": "one"},
                call("c2", "g", '{"a":1}'),
                call("c3", "h", ""),
                {"type": "reasoning", "summary": []},
                call("c4"),
                user("more"),
                call("c5"),
            ]
        )
    )
    assert translated.chat["messages"] == [
        {"role": "assistant", "content": None, "tool_calls": [chat_call("c1")]},
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                chat_call("c2", "g", '{"a":1}'),
                chat_call("c3", "h", ""),
                chat_call("c4"),
            ],
        },
        {"role": "user", "content": "more"},
        {"role": "assistant", "content": None, "tool_calls": [chat_call("c5")]},
    ]
    assert translated.origins == ("input[0]", "input[1]", "input[2]", "input[6]", "input[7]")


def test_a_function_call_joins_the_assistant_message_right_before_it() -> None:
    translated = translate_request(
        body(
            instructions="sys",
            input=[
                {"role": "assistant", "content": "let me look"},
                call("c1"),
                {"role": "system", "content": "s"},
                call("c2"),
            ],
        )
    )
    assert translated.chat["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "assistant", "content": "let me look", "tool_calls": [chat_call("c1")]},
        {"role": "system", "content": "s"},
        {"role": "assistant", "content": None, "tool_calls": [chat_call("c2")]},
    ]
    assert translated.origins == ("instructions", "input[0]", "input[2]", "input[3]")


def test_function_call_outputs_as_text_parts() -> None:
    translated = translate_request(
        body(
            input=[
                call(),
                {
                    "type": "function_call_output",
                    "call_id": "c1",
                    "output": [
                        {"type": "input_text", "text": "a"},
                        {"type": "output_text", "text": "b"},
                    ],
                },
                {"type": "function_call_output", "call_id": "c1", "output": []},
            ]
        )
    )
    assert translated.chat["messages"][1:] == [
        {
            "role": "tool",
            "tool_call_id": "c1",
            "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": []},
    ]


def test_function_tools_keep_only_what_chat_knows() -> None:
    translated = translate_request(
        body(
            tools=[
                {"type": "function", "name": "a"},
                {
                    "type": "function",
                    "name": "b",
                    "description": 3,
                    "parameters": None,
                    "strict": "yes",
                },
                {
                    "type": "function",
                    "name": "c",
                    "description": "",
                    "parameters": {},
                    "strict": False,
                },
            ]
        )
    )
    assert translated.chat["tools"] == [
        {"type": "function", "function": {"name": "a"}},
        {"type": "function", "function": {"name": "b"}},
        {
            "type": "function",
            "function": {"name": "c", "description": "", "parameters": {}, "strict": False},
        },
    ]
    assert "tool_choice" not in translated.chat
    assert "parallel_tool_calls" not in translated.chat


TOOLS = [{"type": "function", "name": name} for name in ("a", "b", "c")]


@pytest.mark.parametrize(
    ("choice", "chat_choice", "names"),
    [
        ("auto", "auto", ["a", "b", "c"]),
        ("none", "none", ["a", "b", "c"]),
        ("required", "required", ["a", "b", "c"]),
        ({"type": "function", "name": "b"}, {"type": "function", "function": {"name": "b"}}, None),
        (
            {"type": "allowed_tools", "tools": [{"type": "function", "name": "c"}]},
            "auto",
            ["c"],
        ),
        (
            {
                "type": "allowed_tools",
                "mode": "auto",
                "tools": [{"type": "function", "name": "a"}, {"type": "function", "name": "c"}],
            },
            "auto",
            ["a", "c"],
        ),
        (
            {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function"}]},
            "required",
            [],
        ),
    ],
)
def test_tool_choice(choice: Any, chat_choice: Any, names: list[str] | None) -> None:
    translated = translate_request(body(tools=TOOLS, tool_choice=choice, parallel_tool_calls=True))
    assert translated.chat["tool_choice"] == chat_choice
    expected = ["a", "b", "c"] if names is None else names
    assert [t["function"]["name"] for t in translated.chat.get("tools", [])] == expected
    assert translated.chat.get("parallel_tool_calls") is (True if expected else None)
    # The response reports the tools that were offered.
    assert [t["name"] for t in translated.echo["tools"]] == expected
    assert translated.echo["tool_choice"] == choice


@pytest.mark.parametrize(
    ("choice", "in_chat"),
    [
        ("none", False),
        ("auto", True),
        ("required", True),
        ({"type": "function", "name": "f"}, True),
    ],
)
def test_tool_choice_without_tools(choice: Any, in_chat: bool) -> None:
    # The chat path drops a tool_choice without tools; "none" is not even handed on.
    chat = translate_request(body(tool_choice=choice)).chat
    assert ("tool_choice" in chat) is in_chat
    assert "tools" not in chat


def test_parallel_tool_calls_with_tools() -> None:
    for value in (True, False):
        chat = translate_request(body(tools=TOOLS[:1], parallel_tool_calls=value)).chat
        assert chat["parallel_tool_calls"] is value
    error = refused(body(tools=TOOLS[:1], parallel_tool_calls="yes"))
    assert (error.message, error.param, error.code) == (
        "'parallel_tool_calls' must be a boolean",
        "parallel_tool_calls",
        None,
    )


@pytest.mark.parametrize(
    ("fmt", "response_format"),
    [
        ({"type": "json_object"}, {"type": "json_object"}),
        (
            {"type": "json_schema", "name": "o", "schema": {"type": "object"}},
            {"type": "json_schema", "json_schema": {"name": "o", "schema": {"type": "object"}}},
        ),
        (
            {
                "type": "json_schema",
                "name": "o",
                "schema": {},
                "strict": False,
                "description": "the answer",
            },
            {
                "type": "json_schema",
                "json_schema": {
                    "name": "o",
                    "schema": {},
                    "strict": False,
                    "description": "the answer",
                },
            },
        ),
        (
            {"type": "json_schema", "name": "o", "schema": {}, "strict": None, "description": 1},
            {"type": "json_schema", "json_schema": {"name": "o", "schema": {}}},
        ),
    ],
)
def test_text_format(fmt: dict[str, Any], response_format: dict[str, Any]) -> None:
    chat = translate_request(body(text={"format": fmt, "verbosity": "low"})).chat
    assert chat["response_format"] == response_format


@pytest.mark.parametrize(
    ("fields", "chat"),
    [
        ({"max_output_tokens": 1}, {"max_completion_tokens": 1}),
        ({"temperature": 0, "top_p": 0}, {"temperature": 0, "top_p": 0}),
        ({"temperature": 2, "top_p": 1}, {"temperature": 2, "top_p": 1}),
        ({"temperature": 1.5, "top_p": 0.5}, {"temperature": 1.5, "top_p": 0.5}),
        (
            {"reasoning": {"effort": "minimal", "summary": "detailed"}},
            {"reasoning_effort": "minimal"},
        ),
        ({"reasoning": {"effort": ""}}, {"reasoning_effort": ""}),
    ],
)
def test_sampling_and_limits(fields: dict[str, Any], chat: dict[str, Any]) -> None:
    assert translate_request(body(**fields)).chat == {**MINIMAL_CHAT, **chat}


def test_the_chat_request_is_built_from_copies() -> None:
    schema = {"type": "object"}
    parameters = {"type": "object"}
    given = body(
        tools=[{"type": "function", "name": "f", "parameters": parameters}],
        text={"format": {"type": "json_schema", "name": "o", "schema": schema}},
    )
    chat = translate_request(given).chat
    chat["tools"][0]["function"]["parameters"]["extra"] = 1
    chat["response_format"]["json_schema"]["schema"]["extra"] = 1
    assert parameters == {"type": "object"}
    assert schema == {"type": "object"}


# -- the echo ------------------------------------------------------------------------------------


def test_the_echo_of_a_minimal_request() -> None:
    assert translate_request(body()).echo == {
        "instructions": None,
        "metadata": {},
        "tools": [],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "temperature": None,
        "top_p": None,
        "max_output_tokens": None,
        "text": {"format": {"type": "text"}},
        "reasoning": None,
        "truncation": "disabled",
        "store": False,
        "background": False,
        "previous_response_id": None,
    }


def test_the_echo_reports_the_request_back() -> None:
    text = {"format": {"type": "json_object"}, "verbosity": "low"}
    reasoning = {"effort": "high", "summary": "auto"}
    metadata = {"k": "v", "n": ""}
    echo = translate_request(
        body(
            instructions="be brief",
            metadata=metadata,
            tools=[
                {"type": "function", "name": "a"},
                {
                    "type": "function",
                    "name": "b",
                    "description": "d",
                    "parameters": {"type": "object"},
                    "strict": True,
                },
            ],
            tool_choice="required",
            parallel_tool_calls=False,
            temperature=0.5,
            top_p=0.25,
            max_output_tokens=99,
            text=text,
            reasoning=reasoning,
            store=False,
            background=False,
            truncation="disabled",
        )
    ).echo
    assert echo == {
        "instructions": "be brief",
        "metadata": {"k": "v", "n": ""},
        "tools": [
            {
                "type": "function",
                "name": "a",
                "description": None,
                "parameters": None,
                "strict": None,
            },
            {
                "type": "function",
                "name": "b",
                "description": "d",
                "parameters": {"type": "object"},
                "strict": True,
            },
        ],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "temperature": 0.5,
        "top_p": 0.25,
        "max_output_tokens": 99,
        "text": {"format": {"type": "json_object"}, "verbosity": "low"},
        "reasoning": {"effort": "high", "summary": "auto"},
        "truncation": "disabled",
        "store": False,
        "background": False,
        "previous_response_id": None,
    }
    # Copies: the response object cannot change the request, nor the request the response.
    assert echo["metadata"] is not metadata
    assert echo["text"] is not text
    assert echo["reasoning"] is not reasoning


# -- chat-side parameters in Responses terms -----------------------------------------------------


@pytest.mark.parametrize(
    ("chat_param", "param"),
    [
        (None, None),
        ("tools", "tools"),
        ("response_format", "response_format"),
        ("messages", "messages"),
        ("messages[0]", "instructions"),
        ("messages[1].content", "input[0]"),
        ("messages[2].tool_calls[0].function.arguments", "input[1]"),
        ("messages[3]", "input[3]"),
        ("messages[4]", "input"),
        ("messages[12]", "input"),
        ("messages[x]", "input"),
        ("messages[-1]", "input"),
        ("messages[]", "input"),
    ],
)
def test_input_param(chat_param: str | None, param: str | None) -> None:
    translated = translate_request(
        body(instructions="i", input=[user("a"), call("c1"), call("c2"), user("b")])
    )
    assert translated.origins == ("instructions", "input[0]", "input[1]", "input[3]")
    assert translated.input_param(chat_param) == param


def test_input_param_without_origins() -> None:
    bare = ResponsesRequest(chat={}, stream=False, echo={})
    assert bare.origins == ()
    assert bare.input_param("messages[0]") == "input"
