"""The field policy on requests, and request encryption, with the real crypto on the enclave side.

Cases carried over from the former ``test_protocol.py`` keep their names; where behaviour changed
on purpose (unknown fields and message keys no longer pass through, other ``stream_options``
keys are no longer sent) the test says so.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from proxy.core import crypto
from proxy.core.errors import InvalidRequestError, UnsupportedForE2EEError
from proxy.core.fields import (
    CONTENT_PART_TYPES,
    REQUEST_FIELDS,
    UNKNOWN_MESSAGE_KEY,
    UNKNOWN_PART_TYPE,
    VENICE_PARAMETERS,
    FieldRule,
    Rule,
)
from proxy.core.request import (
    CLIENT_KEY_HEADER,
    MODEL_KEY_HEADER,
    SIGNING_ALGO_HEADER,
    ChatRequest,
    check_messages_for_emulation,
    check_upstream_model,
    encrypt_request,
    parse_chat_request,
    parses_as_json_array,
    plaintext_body,
    shown,
)
from proxy.simulator.decrypt import decrypt_messages_near
from tests.support.fixtures import FIXTURES_DIR

_KAT = {v["name"]: v for v in json.loads((FIXTURES_DIR / "kat.json").read_text())["vectors"]}
MODEL_PRIVATE = bytes.fromhex(_KAT["KAT-2 encrypt"]["recipient_private_key"])
MODEL_PUBLIC = bytes.fromhex(_KAT["KAT-2 encrypt"]["recipient_public_key"])
CLIENT = crypto.keypair_from_private(bytes.fromhex("33" * 32))
CANARY = "canary-7f3a9c-do-not-leak"


def enclave_open(blob_hex: str) -> str:
    return crypto.open_text(MODEL_PRIVATE, blob_hex)


def body_with(messages: Any, **extra: Any) -> dict[str, Any]:
    return {"model": "e2ee-glm-5-1", "messages": messages, **extra}


def parse(body: dict[str, Any], **options: Any) -> ChatRequest:
    return parse_chat_request(body, **options)


def encrypt(body: dict[str, Any], **options: Any) -> dict[str, Any]:
    return encrypt_request(
        parse(body, **options),
        model_key=MODEL_PUBLIC,
        upstream_model="up-model",
        client_keys=CLIENT,
    ).body


USER = [{"role": "user", "content": "hi"}]


# --- message content -------------------------------------------------------------------------


def test_model_public_key_matches_kat() -> None:
    assert crypto.keypair_from_private(MODEL_PRIVATE).public == MODEL_PUBLIC


def test_every_role_content_is_encrypted() -> None:
    roles = ["system", "developer", "user", "assistant", "tool"]
    messages = [{"role": r, "content": f"{r} says {CANARY}"} for r in roles]
    out = encrypt(body_with(messages))
    for role, message in zip(roles, out["messages"], strict=True):
        assert message["role"] == role
        assert crypto.looks_like_ciphertext(message["content"])
        assert enclave_open(message["content"]) == f"{role} says {CANARY}"


def test_empty_string_content_is_encrypted_to_minimum_blob() -> None:
    out = encrypt(body_with([{"role": "user", "content": ""}]))
    blob = out["messages"][0]["content"]
    assert len(blob) == crypto.MIN_BLOB_HEX == 186
    assert enclave_open(blob) == ""


def test_list_content_round_trips_as_json() -> None:
    parts = [
        {"type": "text", "text": f"look {CANARY} é"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]
    out = encrypt(body_with([{"role": "user", "content": parts}]))
    plaintext = enclave_open(out["messages"][0]["content"])
    assert json.loads(plaintext) == parts
    assert "é" in plaintext  # ensure_ascii=False
    assert plaintext == json.dumps(parts, ensure_ascii=False, separators=(",", ":"))


def test_part_bookkeeping_and_unknown_part_keys_are_stripped_before_encryption() -> None:
    parts = [
        {"type": "text", "text": "a", "prompt_cache_breakpoint": {"mode": "explicit"}},
        {"type": "text", "text": "b", "cache_control": {"type": "ephemeral"}},
    ]
    out = encrypt(body_with([{"role": "user", "content": parts}]))
    assert json.loads(enclave_open(out["messages"][0]["content"])) == [
        {"type": "text", "text": "a"},
        {"type": "text", "text": "b"},
    ]


@pytest.mark.parametrize(
    "text",
    ['["a", "b"]', "[]", ' [1, {"x": 2}]\n', "[" * 5000 + "]" * 5000],
)
def test_a_string_that_parses_as_a_json_array_is_sent_as_one_text_part(text: str) -> None:
    out = encrypt(body_with([{"role": "user", "content": text}]))
    sealed = out["messages"][0]["content"]
    assert json.loads(enclave_open(sealed)) == [{"type": "text", "text": text}]
    # What NEAR does with it (json.loads of the decrypted content): the user's string, intact.
    (opened,) = decrypt_messages_near(out["messages"], MODEL_PRIVATE)
    assert opened["content"] == [{"type": "text", "text": text}]


@pytest.mark.parametrize("text", ["[not json", "x [1]", '{"a": 1}', "[1] trailing", ""])
def test_other_strings_are_sent_as_they_are(text: str) -> None:
    assert not parses_as_json_array(text)
    out = encrypt(body_with([{"role": "user", "content": text}]))
    assert enclave_open(out["messages"][0]["content"]) == text


def test_none_content_stays_none_and_missing_stays_missing() -> None:
    out = encrypt(
        body_with([{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}])
    )
    assert out["messages"][1]["content"] is None
    out = encrypt(body_with([{"role": "user", "content": "hi"}, {"role": "assistant"}]))
    assert "content" not in out["messages"][1]


def test_fresh_ephemeral_per_field() -> None:
    out = encrypt(
        body_with([{"role": "user", "content": "same"}, {"role": "user", "content": "same"}])
    )
    first, second = (m["content"] for m in out["messages"])
    assert first != second
    assert first[:130] != second[:130]  # different ephemeral public keys
    assert enclave_open(first) == enclave_open(second) == "same"


def test_callers_body_is_not_mutated() -> None:
    body = body_with(
        [
            {"role": "user", "content": "hi", "name": "bob"},
            {"role": "assistant", "content": [{"type": "text", "text": "x"}], "reasoning": "r"},
        ],
        stream=False,
        stream_options={"include_usage": False, "other": 1},
        venice_parameters={"disable_thinking": True, "enable_web_search": "off"},
    )
    snapshot = copy.deepcopy(body)
    encrypt(body)
    assert body == snapshot


def test_history_reasoning_refusal_and_name_are_dropped() -> None:
    message = {
        "role": "assistant",
        "content": "answer",
        "reasoning_content": CANARY,
        "reasoning": CANARY,
        "refusal": CANARY,
        "name": CANARY,
    }
    out = encrypt(body_with([{"role": "user", "content": "q", "name": "me"}, message]))
    assert "name" not in out["messages"][0]
    assert set(out["messages"][1]) == {"role", "content"}


def test_unknown_message_keys_are_refused() -> None:
    # Previously passed through in plaintext.
    with pytest.raises(UnsupportedForE2EEError) as info:
        encrypt(body_with([{"role": "user", "content": "hi", "x_custom": 5}]))
    assert info.value.param == "messages[0].x_custom"
    assert "no setting allows it" in info.value.message
    # null carries nothing: dropped.
    out = encrypt(body_with([{"role": "user", "content": "hi", "x_custom": None}]))
    assert set(out["messages"][0]) == {"role", "content"}


# --- top-level fields ------------------------------------------------------------------------


def test_upstream_body_shape() -> None:
    out = encrypt(body_with(USER, temperature=0.3, venice_parameters={"disable_thinking": True}))
    assert list(out)[:4] == ["model", "messages", "stream", "stream_options"]
    assert out["model"] == "up-model"
    assert out["stream"] is True
    assert out["stream_options"] == {"include_usage": True}
    assert out["temperature"] == 0.3
    assert out["venice_parameters"] == {"disable_thinking": True}


def test_unknown_scalar_fields_are_forwarded_and_others_refused() -> None:
    out = encrypt(body_with(USER, some_future_param=2, some_switch=False))
    assert out["some_future_param"] == 2
    assert out["some_switch"] is False
    for value in ([1, 2], "text", {"a": 1}):
        with pytest.raises(UnsupportedForE2EEError) as info:
            encrypt(body_with(USER, some_future_param=value))
        assert info.value.param == "some_future_param"
        assert "privacy.forward_fields" in info.value.message
    # A name that is not a lower-case identifier could itself be text.
    with pytest.raises(UnsupportedForE2EEError):
        encrypt(body_with(USER, **{CANARY: 1}))


def test_forward_fields_lets_listed_fields_through() -> None:
    out = encrypt(
        body_with(
            USER,
            some_future_param=[1, 2],
            logit_bias={"42": -100},
            venice_parameters={"new_knob": "fast"},
        ),
        forward_fields={"some_future_param", "logit_bias", "venice_parameters.new_knob"},
    )
    assert out["some_future_param"] == [1, 2]
    assert out["logit_bias"] == {"42": -100}
    assert out["venice_parameters"] == {"new_knob": "fast"}


@pytest.mark.parametrize(
    "name",
    ["user", "metadata", "safety_identifier", "store", "service_tier", "prompt_cache_key"],
)
def test_local_only_fields_are_never_sent(name: str) -> None:
    assert REQUEST_FIELDS[name].rule is Rule.LOCAL_ONLY
    out = encrypt(body_with(USER, **{name: CANARY}))
    assert name not in out
    assert CANARY not in json.dumps(out)


def test_forwarded_fields_must_have_their_kind() -> None:
    good = encrypt(
        body_with(
            USER,
            temperature=1,
            top_p=0.5,
            max_tokens=10,
            seed=-3,
            reasoning_effort="high",
            n=2,
            top_k=40,
        )
    )
    assert good["reasoning_effort"] == "high"
    assert good["n"] == 2
    for name, value in [
        ("temperature", "hot"),
        ("temperature", True),
        ("max_tokens", 1.5),
        ("seed", "42"),
        ("reasoning_effort", CANARY),
        ("verbosity", "loud"),
    ]:
        with pytest.raises(InvalidRequestError) as info:
            encrypt(body_with(USER, **{name: value}))
        assert info.value.param == name
        assert not isinstance(info.value, UnsupportedForE2EEError)


def test_venice_parameters_keep_only_what_carries_no_text() -> None:
    out = encrypt(
        body_with(
            USER,
            venice_parameters={
                "strip_thinking_response": True,
                "include_venice_system_prompt": False,
                "enable_web_search": "off",
                "enable_e2ee": True,
                "enable_web_citations": False,
                "new_number": 3,
            },
        )
    )
    assert out["venice_parameters"] == {
        "strip_thinking_response": True,
        "include_venice_system_prompt": False,
        "new_number": 3,
    }
    # Only inert values: nothing to send at all.
    out = encrypt(body_with(USER, venice_parameters={"enable_web_search": "off"}))
    assert "venice_parameters" not in out


@pytest.mark.parametrize(
    ("parameters", "param"),
    [
        ({"enable_web_search": "auto"}, "venice_parameters.enable_web_search"),
        ({"enable_web_search": "on"}, "venice_parameters.enable_web_search"),
        ({"enable_web_scraping": True}, "venice_parameters.enable_web_scraping"),
        (
            {"include_search_results_in_stream": True},
            "venice_parameters.include_search_results_in_stream",
        ),
        ({"character_slug": "venice"}, "venice_parameters.character_slug"),
        ({"enable_e2ee": False}, "venice_parameters.enable_e2ee"),
        ({"disable_thinking": "yes"}, "venice_parameters.disable_thinking"),
        ({"web_query": CANARY}, "venice_parameters.web_query"),
    ],
)
def test_venice_parameters_that_would_leak_are_refused(
    parameters: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        encrypt(body_with(USER, venice_parameters=parameters))
    assert info.value.param == param


@pytest.mark.parametrize(
    ("stream", "stream_options", "client_stream", "include_usage"),
    [
        (None, None, False, False),
        (False, {"include_usage": True}, False, False),
        (True, None, True, False),
        (True, {"include_usage": False}, True, False),
        (True, {"include_usage": True}, True, True),
    ],
)
def test_stream_flags(
    stream: bool | None,
    stream_options: dict[str, Any] | None,
    client_stream: bool,
    include_usage: bool,
) -> None:
    body = body_with(USER)
    if stream is not None:
        body["stream"] = stream
    if stream_options is not None:
        body["stream_options"] = stream_options
    request = parse(body)
    assert request.client_stream is client_stream
    assert request.include_usage is include_usage
    out = encrypt_request(request, model_key=MODEL_PUBLIC, upstream_model="m").body
    assert out["stream"] is True
    assert out["stream_options"] == {"include_usage": True}


def test_other_stream_options_are_not_sent() -> None:
    # Previously merged into the upstream's stream_options; now the proxy sends its own only.
    body = body_with(USER, stream_options={"foo": CANARY, "include_obfuscation": True})
    assert encrypt(body)["stream_options"] == {"include_usage": True}


def test_stop_is_enforced_locally_and_never_sent() -> None:
    request = parse(body_with(USER, stop=[CANARY, "b", "", CANARY]))
    assert request.stops == (CANARY, "b")
    assert "stop" not in request.forwarded
    assert parse(body_with(USER, stop="x")).stops == ("x",)
    assert parse(body_with(USER, stop=None)).stops == ()
    assert parse(body_with(USER, stop=[])).stops == ()
    assert CANARY not in repr(request)


@pytest.mark.parametrize(
    "stop",
    [5, [1], ["a", 2], {"a": 1}, ["a", "b", "c", "d", "e"], ["x" * 257]],
)
def test_bad_stop_values_are_refused(stop: Any) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse(body_with(USER, stop=stop))
    assert info.value.param == "stop"


def test_headers_and_client_keys() -> None:
    request = encrypt_request(
        parse(body_with(USER)),
        model_key=MODEL_PUBLIC[1:],  # 64-byte form is normalised
        upstream_model="m",
        client_keys=CLIENT,
    )
    assert request.headers == {
        CLIENT_KEY_HEADER: CLIENT.public.hex(),
        MODEL_KEY_HEADER: MODEL_PUBLIC.hex(),
        SIGNING_ALGO_HEADER: "ecdsa",
    }
    assert request.client_keys is CLIENT
    assert CLIENT.private.hex() not in repr(request)


def test_fresh_client_keys_per_request() -> None:
    request = parse(body_with(USER))
    first = encrypt_request(request, model_key=MODEL_PUBLIC, upstream_model="m")
    second = encrypt_request(request, model_key=MODEL_PUBLIC, upstream_model="m")
    assert first.client_keys.public != second.client_keys.public
    assert first.headers[CLIENT_KEY_HEADER] == first.client_keys.public_hex
    assert first.client_keys.private.hex() not in repr(first)


def test_canary_never_appears_in_encrypted_request() -> None:
    body = body_with(
        [
            {"role": "system", "content": CANARY},
            {"role": "user", "content": [{"type": "text", "text": CANARY}], "name": CANARY},
            {"role": "assistant", "content": CANARY, "reasoning_content": CANARY},
        ],
        user=CANARY,
        metadata={"k": CANARY},
        stop=CANARY,
        prompt_cache_key=CANARY,
        stream_options={"include_usage": True, "x": CANARY},
    )
    request = encrypt_request(parse(body), model_key=MODEL_PUBLIC, upstream_model="m")
    wire = json.dumps(request.body) + json.dumps(request.headers) + repr(request)
    assert CANARY not in wire
    assert CANARY.encode().hex() not in wire


def test_plaintext_body_applies_the_same_policy() -> None:
    body = body_with(
        [{"role": "user", "content": "hi", "name": "bob"}], user=CANARY, temperature=0.1
    )
    out = plaintext_body(parse(body), upstream_model="plain-model")
    assert out == {
        "model": "plain-model",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.1,
    }


# --- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (body_with(USER, tools=[{"type": "function"}]), "tools"),
        (body_with(USER, functions=[{"name": "f"}]), "functions"),
        (body_with(USER, tool_choice="auto"), "tool_choice"),
        (
            body_with(USER, tool_choice={"type": "function", "function": {"name": "f"}}),
            "tool_choice",
        ),
        (body_with(USER, function_call="auto"), "function_call"),
        (body_with(USER, prediction={"type": "content", "content": "draft"}), "prediction"),
        (body_with(USER, response_format={"type": "json_object"}), "response_format"),
        (
            body_with(USER, response_format={"type": "json_schema", "json_schema": {"name": "x"}}),
            "response_format",
        ),
        (body_with(USER, logprobs=True), "logprobs"),
        (body_with(USER, top_logprobs=3), "top_logprobs"),
        (body_with(USER, logit_bias={"50256": -100}), "logit_bias"),
        (body_with(USER, stop_token_ids=[151643]), "stop_token_ids"),
        (body_with(USER, web_search_options={"search_context_size": "low"}), "web_search_options"),
        (body_with(USER, audio={"voice": "alloy", "format": "wav"}), "audio"),
        (body_with(USER, modalities=["text", "audio"]), "modalities"),
        (body_with(USER, moderation={"model": "omni-moderation-latest"}), "moderation"),
        (
            body_with(
                [
                    {"role": "user", "content": "x"},
                    {"role": "user", "content": "y"},
                    {"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]},
                ]
            ),
            "messages[2].tool_calls",
        ),
        (
            body_with([{"role": "assistant", "content": None, "function_call": {"name": "f"}}]),
            "messages[0].function_call",
        ),
        (
            body_with([{"role": "tool", "content": "result", "tool_call_id": "call_1"}]),
            "messages[0].tool_call_id",
        ),
        (
            body_with([{"role": "function", "content": "result", "name": "f"}]),
            "messages[0].name",
        ),
        (
            body_with([{"role": "assistant", "content": "x", "audio": {"id": "audio_1"}}]),
            "messages[0].audio",
        ),
        (
            body_with(
                [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "see"},
                            {"type": "file", "file": {"file_id": "f"}},
                        ],
                    }
                ]
            ),
            "messages[0].content[1]",
        ),
        (
            body_with([{"role": "user", "content": [{"type": "video_url", "video_url": "u"}]}]),
            "messages[0].content[0]",
        ),
    ],
)
def test_unsupported_requests_are_rejected_with_param(body: dict[str, Any], param: str) -> None:
    with pytest.raises(UnsupportedForE2EEError) as info:
        parse(body)
    assert info.value.param == param
    assert info.value.code == "e2ee_unsupported"
    assert f"'{param}' cannot be used with an end-to-end encrypted model" in info.value.message


def test_refusals_say_which_setting_allows_them() -> None:
    def message(**extra: Any) -> str:
        with pytest.raises(UnsupportedForE2EEError) as info:
            parse(body_with(USER, **extra))
        return info.value.message

    assert "privacy.forward_fields" in message(logit_bias={"1": 1})
    assert "tools.mode" in message(tools=[{"type": "function"}])
    assert "tools.mode" in message(response_format={"type": "json_object"})
    assert "no setting allows it" in message(logprobs=True)
    assert "no setting allows it" in message(web_search_options={})


def test_harmless_values_are_accepted_and_not_sent() -> None:
    out = encrypt(
        body_with(
            [
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": "y", "tool_calls": [], "function_call": None},
            ],
            tools=[],
            functions=[],
            tool_choice="none",
            function_call="none",
            parallel_tool_calls=False,
            prediction=None,
            response_format={"type": "text"},
            logprobs=False,
            top_logprobs=0,
            logit_bias={},
            modalities=["text"],
            web_search_options=None,
        )
    )
    assert set(out) == {"model", "messages", "stream", "stream_options"}
    assert [set(m) for m in out["messages"]] == [{"role", "content"}] * 2
    # tool_calls is an assistant key: on a user message it is an unknown key, refused.
    with pytest.raises(UnsupportedForE2EEError):
        parse(body_with([{"role": "user", "content": "x", "tool_calls": []}]))


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        (None, "messages"),
        ([], "messages"),
        ("hi", "messages"),
        (["hi"], "messages[0]"),
        ([{"role": "user", "content": "x"}, {"content": "x"}], "messages[1].role"),
        ([{"role": 3, "content": "x"}], "messages[0].role"),
        ([{"role": "wizard", "content": "x"}], "messages[0].role"),
        ([{"role": "user", "content": 5}], "messages[0].content"),
        (
            [{"role": "user", "content": "a"}, {"role": "user", "content": True}],
            "messages[1].content",
        ),
        ([{"role": "user", "content": {"text": "x"}}], "messages[0].content"),
        ([{"role": "user", "content": ["x"]}], "messages[0].content[0]"),
        ([{"role": "user", "content": [{"text": "x"}]}], "messages[0].content[0]"),
    ],
)
def test_malformed_messages_are_rejected(messages: Any, param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse(body_with(messages))
    assert info.value.param == param
    assert not isinstance(info.value, UnsupportedForE2EEError)


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ([], None),
        ({"messages": USER}, "model"),
        ({"model": " ", "messages": USER}, "model"),
        ({"model": "m" * 257, "messages": USER}, "model"),
        (body_with(USER, stream="yes"), "stream"),
        (body_with(USER, n=0), "n"),
        (body_with(USER, n=True), "n"),
        (body_with(USER, n=129), "n"),
        (body_with(USER, stream_options="usage"), "stream_options"),
        (body_with(USER, stream_options={"include_usage": "yes"}), "stream_options.include_usage"),
        (body_with(USER, venice_parameters="web"), "venice_parameters"),
    ],
)
def test_malformed_requests_are_rejected(payload: Any, param: str | None) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse(payload)
    assert info.value.param == param


def test_model_feature_suffix_is_refused() -> None:
    check_upstream_model("e2ee-glm-5-1")
    with pytest.raises(UnsupportedForE2EEError) as info:
        check_upstream_model("e2ee-glm-5-1:enable_web_search=on")
    assert info.value.param == "model"


def test_lone_surrogate_content_is_an_invalid_request() -> None:
    body = json.loads('{"model":"m","messages":[{"role":"user","content":"x\\ud800"}]}')
    with pytest.raises(InvalidRequestError) as info:
        encrypt_request(parse(body), model_key=MODEL_PUBLIC, upstream_model="m")
    assert info.value.param == "messages[0].content"


def test_end_to_end_with_request_keys() -> None:
    from proxy.core.response import ChunkDecryptor

    request = encrypt_request(
        parse(body_with([{"role": "user", "content": "ping"}])),
        model_key=MODEL_PUBLIC,
        upstream_model="m",
    )
    # The enclave reads the prompt and answers to the header's client key.
    prompt = enclave_open(request.body["messages"][0]["content"])
    client_public = bytes.fromhex(request.headers[CLIENT_KEY_HEADER])
    answer = crypto.seal(client_public, f"pong to {prompt}".encode()).hex()
    chunk = {"id": "c", "choices": [{"index": 0, "delta": {"content": answer}}]}
    out = ChunkDecryptor(request.client_keys.private).rebuild(chunk)
    assert out["choices"][0]["delta"]["content"] == "pong to ping"


def test_client_chosen_names_are_shown_safely_in_errors() -> None:
    assert shown("x_custom") == "x_custom"
    assert shown("\ud800") == "\\ud800"
    assert shown("é" * 100) == "\\xe9" * 16
    assert shown("") == "''"
    with pytest.raises(UnsupportedForE2EEError) as info:
        parse(json.loads('{"model": "m", "messages": [{"role": "user"}], "\\ud800": "x"}'))
    assert info.value.param == "\\ud800"
    info.value.message.encode("utf-8")  # no lone surrogate left to break the JSON answer


def test_messages_tool_emulation_rebuilds_keep_the_policy() -> None:
    history: dict[str, Any] = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]},
            {"role": "tool", "tool_call_id": "c", "content": "r"},
            {"role": "function", "name": "f", "content": "r"},
        ],
    }
    check_messages_for_emulation(history)  # the keys emulation consumes are not refused
    history["messages"][2]["x_note"] = "text"
    with pytest.raises(UnsupportedForE2EEError) as info:
        check_messages_for_emulation(history)
    assert info.value.param == "messages[2].x_note"


# --- what the user reads (pinned by mutation testing) ---------------------------------------

_E2EE = "cannot be used with an end-to-end encrypted model"
_UNKNOWN = (
    "is not a field this proxy knows, and it can hold text that would travel to Venice "
    "unencrypted; list it in privacy.forward_fields to send it in plaintext (unknown numbers "
    "and booleans are forwarded)"
)
_ROLES = "assistant, developer, function, system, tool, user"


@pytest.mark.parametrize(
    ("payload", "param", "message"),
    [
        ([], None, "the request body must be a JSON object"),
        ({"messages": USER}, "model", "'model' is required and must be a non-empty string"),
        (
            {"model": 5, "messages": USER},
            "model",
            "'model' is required and must be a non-empty string",
        ),
        ({"model": "m" * 257, "messages": USER}, "model", "'model' is longer than 256 characters"),
        (body_with(USER, stream="yes"), "stream", "'stream' must be a boolean"),
        (body_with(USER, stream_options=1), "stream_options", "'stream_options' must be an object"),
        (
            body_with(USER, stream_options={"include_usage": 1}),
            "stream_options.include_usage",
            "'stream_options.include_usage' must be a boolean",
        ),
        (body_with(USER, n=0), "n", "'n' must be an integer from 1 to 128"),
        (body_with(USER, n=1.0), "n", "'n' must be an integer from 1 to 128"),
        (body_with(USER, stop=5), "stop", "'stop' must be a string or an array of strings"),
        (
            body_with(USER, stop=["x" * 257]),
            "stop",
            "each 'stop' string must be at most 256 characters",
        ),
        (body_with(USER, temperature="hot"), "temperature", "'temperature' must be a number"),
        (body_with(USER, max_tokens=True), "max_tokens", "'max_tokens' must be an integer"),
        (
            body_with(USER, reasoning_effort="x"),
            "reasoning_effort",
            "'reasoning_effort' must be one of none, minimal, low, medium, high, xhigh, max",
        ),
        (
            body_with(USER, venice_parameters=1),
            "venice_parameters",
            "'venice_parameters' must be an object",
        ),
        (
            body_with(USER, venice_parameters={"disable_thinking": "y"}),
            "venice_parameters.disable_thinking",
            "'venice_parameters.disable_thinking' must be a boolean",
        ),
        (body_with(None), "messages", "'messages' is required and must be a non-empty array"),
        (body_with([1]), "messages[0]", "messages[0] must be an object"),
        (
            body_with([{"role": "x"}]),
            "messages[0].role",
            f"messages[0].role must be one of {_ROLES}",
        ),
        (
            body_with([{"role": "user", "content": 5}]),
            "messages[0].content",
            "messages[0].content must be a string, an array or null",
        ),
        (
            body_with([{"role": "user", "content": [{"type": 5}]}]),
            "messages[0].content[0]",
            "'messages[0].content[0]' must be an object with a string 'type'",
        ),
    ],
)
def test_invalid_requests_say_what_is_wrong(payload: Any, param: str | None, message: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse(payload)
    assert not isinstance(info.value, UnsupportedForE2EEError)
    assert (info.value.param, info.value.message) == (param, message)


def test_too_many_stops_has_its_own_code() -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse(body_with(USER, stop=["a", "b", "c", "d", "e"]))
    assert (info.value.param, info.value.code) == ("stop", "too_many_stops")
    assert info.value.message == "'stop' takes at most 4 strings"


def test_a_lone_surrogate_in_the_model_is_named() -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse(json.loads('{"model": "x\\ud800", "messages": [{"role": "user"}]}'))
    assert (info.value.param, info.value.code) == ("model", "invalid_unicode")
    assert info.value.message == "'model' contains invalid Unicode (a lone surrogate)"


def test_lone_surrogate_content_says_which_message() -> None:
    body = json.loads(
        '{"model":"m","messages":[{"role":"user","content":"ok"},'
        '{"role":"user","content":"x\\ud800"}]}'
    )
    with pytest.raises(InvalidRequestError) as info:
        encrypt_request(parse(body), model_key=MODEL_PUBLIC, upstream_model="m")
    assert info.value.message == "messages[1].content is not valid Unicode"


@pytest.mark.parametrize(
    ("extra", "param", "suffix"),
    [
        ({"logprobs": True}, "logprobs", "; no setting allows it"),
        (
            {"logit_bias": {"1": 1}},
            "logit_bias",
            "; list 'logit_bias' in privacy.forward_fields to send it to Venice in plaintext",
        ),
        ({"tools": [{"type": "function"}]}, "tools", ""),  # its why names tools.mode
        (
            {"venice_parameters": {"enable_web_search": "on"}},
            "venice_parameters.enable_web_search",
            "; no setting allows it",
        ),
    ],
)
def test_a_refusal_names_the_field_why_and_what_allows_it(
    extra: dict[str, Any], param: str, suffix: str
) -> None:
    with pytest.raises(UnsupportedForE2EEError) as info:
        parse(body_with(USER, **extra))
    top, _, key = param.partition(".")
    rule = VENICE_PARAMETERS[key] if key else REQUEST_FIELDS[top]
    assert info.value.param == param
    assert info.value.message == f"'{param}' {_E2EE}: {rule.why}{suffix}"


@pytest.mark.parametrize(
    ("messages", "param", "rule"),
    [
        (
            [{"role": "user", "content": "x", "x_note": "y"}],
            "messages[0].x_note",
            UNKNOWN_MESSAGE_KEY,
        ),
        (
            [{"role": "user", "content": [{"type": "file", "file": {}}]}],
            "messages[0].content[0]",
            CONTENT_PART_TYPES["file"],
        ),
        (
            [{"role": "user", "content": [{"type": "video_url"}]}],
            "messages[0].content[0]",
            UNKNOWN_PART_TYPE,
        ),
    ],
)
def test_message_refusals_say_why_and_that_no_setting_allows_them(
    messages: list[Any], param: str, rule: FieldRule
) -> None:
    with pytest.raises(UnsupportedForE2EEError) as info:
        parse(body_with(messages))
    assert info.value.message == f"'{param}' {_E2EE}: {rule.why}; no setting allows it"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"foo": "x"}, "foo"),
        ({"venice_parameters": {"web_query": "x"}}, "venice_parameters.web_query"),
    ],
)
def test_an_unknown_field_that_can_hold_text_says_how_to_send_it(
    extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(UnsupportedForE2EEError) as info:
        parse(body_with(USER, **extra))
    assert (info.value.param, info.value.message) == (param, f"'{param}' {_UNKNOWN}")


def test_a_model_feature_suffix_says_what_to_do() -> None:
    with pytest.raises(UnsupportedForE2EEError) as info:
        check_upstream_model("e2ee-glm-5-1:enable_web_search=on")
    assert info.value.message == (
        "'e2ee-glm-5-1:enable_web_search=on' carries a Venice model feature suffix (after ':'), "
        "which would switch on Venice features outside this proxy's field policy; use the plain "
        "model id and the fields the proxy forwards"
    )


def test_limits_are_inclusive() -> None:
    assert parse({"model": "m" * 256, "messages": USER}).model == "m" * 256
    assert parse(body_with(USER, stop=["x" * 256])).stops == ("x" * 256,)
    assert parse(body_with(USER, n=128)).n == 128
    request = parse(body_with(USER, n=1))
    assert (request.n, request.forwarded) == (1, {"n": 1})


def test_the_parsed_request_keeps_the_model_and_n() -> None:
    request = parse(body_with(USER))
    assert (request.model, request.n, request.forwarded) == ("e2ee-glm-5-1", 1, {})
    assert parse(body_with(USER, n=3)).n == 3


def test_a_null_venice_parameter_is_skipped_not_the_rest() -> None:
    out = encrypt(
        body_with(
            USER, venice_parameters={"disable_thinking": None, "strip_thinking_response": True}
        )
    )
    assert out["venice_parameters"] == {"strip_thinking_response": True}


def test_emulation_checks_every_message_after_one_it_skips() -> None:
    check_messages_for_emulation([])  # not a request: left to parse_chat_request
    check_messages_for_emulation({"messages": "x"})
    history: dict[str, Any] = {
        "model": "m",
        "messages": ["not an object", {"role": "wizard"}, {"role": "user", "x_note": "text"}],
    }
    with pytest.raises(UnsupportedForE2EEError) as info:
        check_messages_for_emulation(history)
    assert info.value.param == "messages[2].x_note"


@pytest.mark.parametrize("text", ["", 5, None, {"nested": CANARY}])
def test_a_text_part_of_any_value_travels_only_inside_the_encryption(text: Any) -> None:
    parts = [{"type": "text", "text": text}, {"type": "text", "text": CANARY}]
    out = encrypt(body_with([{"role": "user", "content": parts}]))
    assert json.loads(enclave_open(out["messages"][0]["content"])) == parts
    assert CANARY not in json.dumps(out)


def test_every_key_pair_comes_from_fresh_once_client_first_then_one_per_message() -> None:
    handed: list[crypto.KeyPair] = []

    def fresh() -> crypto.KeyPair:
        pair = crypto.generate_keypair()
        handed.append(pair)
        return pair

    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None},
        {"role": "user", "content": [{"type": "text", "text": "again"}]},
    ]
    request = encrypt_request(
        parse(body_with(messages)), model_key=MODEL_PUBLIC, upstream_model="m", fresh=fresh
    )
    # The client pair, then one per sealed message (the null content is not sealed).
    assert len(handed) == 4
    assert request.client_keys is handed[0]
    sealed = [m["content"] for m in request.body["messages"] if m["content"] is not None]
    assert [bytes.fromhex(blob)[:65] for blob in sealed] == [pair.public for pair in handed[1:]]
    assert [enclave_open(blob) for blob in sealed] == [
        "be brief",
        "hi",
        '[{"type":"text","text":"again"}]',
    ]
