"""Request encryption and chunk decryption, with the real crypto on the enclave side."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from proxy.core import crypto
from proxy.core.errors import (
    DecryptionError,
    InvalidRequestError,
    PlaintextInStreamError,
    UnsupportedForE2EEError,
)
from proxy.core.protocol import (
    CLIENT_KEY_HEADER,
    MODEL_KEY_HEADER,
    SIGNING_ALGO_HEADER,
    ChunkDecryptor,
    check_e2ee_supported,
    encrypt_request,
)
from tests.support.fixtures import FIXTURES_DIR

FIXTURES = FIXTURES_DIR
_KAT = {v["name"]: v for v in json.loads((FIXTURES / "kat.json").read_text())["vectors"]}
MODEL_PRIVATE = bytes.fromhex(_KAT["KAT-2 encrypt"]["recipient_private_key"])
MODEL_PUBLIC = bytes.fromhex(_KAT["KAT-2 encrypt"]["recipient_public_key"])
CLIENT = crypto.keypair_from_private(bytes.fromhex("33" * 32))
CANARY = "canary-7f3a9c-do-not-leak"


def enclave_open(blob_hex: str) -> str:
    return crypto.open_text(MODEL_PRIVATE, blob_hex)


def body_with(messages: list[Any], **extra: Any) -> dict[str, Any]:
    return {"model": "e2ee-glm-5-1", "messages": messages, **extra}


def encrypt(body: dict[str, Any]) -> dict[str, Any]:
    return encrypt_request(
        body, model_key=MODEL_PUBLIC, upstream_model="up-model", client_keys=CLIENT
    ).body


# --- request ---------------------------------------------------------------------------------


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
    )
    snapshot = copy.deepcopy(body)
    encrypt(body)
    assert body == snapshot


def test_upstream_fields_and_unknown_fields_pass_through() -> None:
    body = body_with(
        [{"role": "user", "content": "hi"}],
        temperature=0.3,
        venice_parameters={"enable_e2ee": True},
        some_future_param=[1, 2],
    )
    out = encrypt(body)
    assert out["model"] == "up-model"
    assert out["stream"] is True
    assert out["stream_options"] == {"include_usage": True}
    assert out["temperature"] == 0.3
    assert out["venice_parameters"] == {"enable_e2ee": True}
    assert out["some_future_param"] == [1, 2]


def test_unknown_message_fields_pass_through() -> None:
    out = encrypt(body_with([{"role": "user", "content": "hi", "x_custom": 5}]))
    assert out["messages"][0]["x_custom"] == 5


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
    body = body_with([{"role": "user", "content": "hi"}])
    if stream is not None:
        body["stream"] = stream
    if stream_options is not None:
        body["stream_options"] = stream_options
    request = encrypt_request(body, model_key=MODEL_PUBLIC, upstream_model="m")
    assert request.client_stream is client_stream
    assert request.include_usage is include_usage
    assert request.body["stream"] is True
    assert request.body["stream_options"]["include_usage"] is True


def test_other_stream_options_are_kept() -> None:
    body = body_with([{"role": "user", "content": "hi"}], stream_options={"foo": 1})
    assert encrypt(body)["stream_options"] == {"foo": 1, "include_usage": True}


def test_headers_and_client_keys() -> None:
    request = encrypt_request(
        body_with([{"role": "user", "content": "hi"}]),
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
    body = body_with([{"role": "user", "content": "hi"}])
    first = encrypt_request(body, model_key=MODEL_PUBLIC, upstream_model="m")
    second = encrypt_request(body, model_key=MODEL_PUBLIC, upstream_model="m")
    assert first.client_keys.public != second.client_keys.public
    assert first.headers[CLIENT_KEY_HEADER] == first.client_keys.public_hex
    assert first.client_keys.private.hex() not in repr(first)


def test_canary_never_appears_in_encrypted_request() -> None:
    body = body_with(
        [
            {"role": "system", "content": CANARY},
            {"role": "user", "content": [{"type": "text", "text": CANARY}], "name": CANARY},
            {"role": "assistant", "content": CANARY, "reasoning_content": CANARY},
        ]
    )
    request = encrypt_request(body, model_key=MODEL_PUBLIC, upstream_model="m")
    wire = json.dumps(request.body) + json.dumps(request.headers) + repr(request)
    assert CANARY not in wire
    assert CANARY.encode().hex() not in wire


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (body_with([{"role": "user", "content": "x"}], tools=[{"type": "function"}]), "tools"),
        (body_with([{"role": "user", "content": "x"}], functions=[{"name": "f"}]), "functions"),
        (body_with([{"role": "user", "content": "x"}], tool_choice="auto"), "tool_choice"),
        (
            body_with(
                [{"role": "user", "content": "x"}],
                tool_choice={"type": "function", "function": {"name": "f"}},
            ),
            "tool_choice",
        ),
        (body_with([{"role": "user", "content": "x"}], function_call="auto"), "function_call"),
        (
            body_with(
                [{"role": "user", "content": "x"}],
                prediction={"type": "content", "content": "draft"},
            ),
            "prediction",
        ),
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
    ],
)
def test_unsupported_requests_are_rejected_with_param(body: dict[str, Any], param: str) -> None:
    with pytest.raises(UnsupportedForE2EEError) as info:
        check_e2ee_supported(body)
    assert info.value.param == param
    assert info.value.code == "e2ee_unsupported"
    with pytest.raises(UnsupportedForE2EEError):
        encrypt_request(body, model_key=MODEL_PUBLIC, upstream_model="m")


def test_harmless_tool_fields_are_accepted() -> None:
    check_e2ee_supported(
        body_with(
            [{"role": "user", "content": "x", "tool_calls": []}],
            tools=[],
            functions=[],
            tool_choice="none",
            function_call="none",
            prediction=None,
        )
    )


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        (None, "messages"),
        ([], "messages"),
        ("hi", "messages"),
        (["hi"], "messages[0]"),
        ([{"role": "user", "content": "x"}, {"content": "x"}], "messages[1].role"),
        ([{"role": 3, "content": "x"}], "messages[0].role"),
        ([{"role": "user", "content": 5}], "messages[0].content"),
        (
            [{"role": "user", "content": "a"}, {"role": "user", "content": True}],
            "messages[1].content",
        ),
        ([{"role": "user", "content": {"text": "x"}}], "messages[0].content"),
    ],
)
def test_malformed_messages_are_rejected(messages: Any, param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        encrypt_request(body_with(messages), model_key=MODEL_PUBLIC, upstream_model="m")
    assert info.value.param == param
    assert not isinstance(info.value, UnsupportedForE2EEError)


def test_lone_surrogate_content_is_an_invalid_request() -> None:
    body = json.loads('{"messages":[{"role":"user","content":"x\\ud800"}]}')
    with pytest.raises(InvalidRequestError) as info:
        encrypt_request(body, model_key=MODEL_PUBLIC, upstream_model="m")
    assert info.value.param == "messages[0].content"


# --- response --------------------------------------------------------------------------------


def sealed(text: str, *, ephemeral: bytes | None = None) -> str:
    return crypto.seal(CLIENT.public, text.encode(), ephemeral_private=ephemeral).hex()


def delta_chunk(**delta: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


def test_encrypted_delta_decrypts_in_place() -> None:
    chunk = delta_chunk(role="assistant", content=sealed("Hello é"))
    result = ChunkDecryptor(CLIENT.private).decrypt_chunk(chunk)
    assert result is chunk
    assert chunk["choices"][0]["delta"] == {"role": "assistant", "content": "Hello é"}


def test_reasoning_fields_decrypt() -> None:
    chunk = delta_chunk(reasoning_content=sealed("think"), reasoning=sealed("also"))
    ChunkDecryptor(CLIENT.private).decrypt_chunk(chunk)
    assert chunk["choices"][0]["delta"] == {"reasoning_content": "think", "reasoning": "also"}


def test_non_stream_message_decrypts() -> None:
    chunk: dict[str, Any] = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": sealed("hi")}}]
    }
    ChunkDecryptor(CLIENT.private).decrypt_chunk(chunk)
    assert chunk["choices"][0]["message"]["content"] == "hi"


def test_multiple_choices_decrypt() -> None:
    chunk: dict[str, Any] = {
        "choices": [
            {"index": 0, "delta": {"content": sealed("a")}},
            {"index": 1, "delta": {"content": sealed("b")}},
        ]
    }
    ChunkDecryptor(CLIENT.private).decrypt_chunk(chunk)
    assert [c["delta"]["content"] for c in chunk["choices"]] == ["a", "b"]


def test_list_content_parts_decrypt() -> None:
    chunk = delta_chunk(content=[{"type": "text", "text": sealed("part")}, {"type": "image"}])
    ChunkDecryptor(CLIENT.private).decrypt_chunk(chunk)
    assert chunk["choices"][0]["delta"]["content"] == [
        {"type": "text", "text": "part"},
        {"type": "image"},
    ]


def test_uppercase_hex_blob_is_accepted() -> None:
    blob = sealed("up")
    chunk = delta_chunk(content="04" + blob[2:].upper())
    ChunkDecryptor(CLIENT.private).decrypt_chunk(chunk)
    assert chunk["choices"][0]["delta"]["content"] == "up"


@pytest.mark.parametrize("position", [0, 70, 80, 100, -1])
def test_one_byte_tamper_fails(position: int) -> None:
    raw = bytearray(bytes.fromhex(sealed("secret text")))
    raw[position] ^= 0x01
    chunk = delta_chunk(content=raw.hex())
    with pytest.raises((DecryptionError, PlaintextInStreamError)) as info:
        ChunkDecryptor(CLIENT.private).decrypt_chunk(chunk)
    if position != 0:
        assert isinstance(info.value, DecryptionError)
    assert "secret" not in str(info.value)


def test_tampered_ciphertext_raises_decryption_error_without_detail() -> None:
    raw = bytearray(bytes.fromhex(sealed("secret text")))
    raw[90] ^= 0x80
    with pytest.raises(DecryptionError) as info:
        ChunkDecryptor(CLIENT.private).decrypt_chunk(delta_chunk(content=raw.hex()))
    assert info.value.message == DecryptionError.default_message


def test_wrong_recipient_fails() -> None:
    other = crypto.generate_keypair()
    blob = crypto.seal(other.public, b"not for you").hex()
    with pytest.raises(DecryptionError):
        ChunkDecryptor(CLIENT.private).decrypt_chunk(delta_chunk(content=blob))


def test_blob_with_invalid_point_fails() -> None:
    blob = "04" + "01" * 64 + "00" * 28
    with pytest.raises(DecryptionError):
        ChunkDecryptor(CLIENT.private).decrypt_chunk(delta_chunk(content=blob))


def test_invalid_utf8_plaintext_fails() -> None:
    blob = crypto.seal(CLIENT.public, b"\xff\xfe").hex()
    with pytest.raises(DecryptionError):
        ChunkDecryptor(CLIENT.private).decrypt_chunk(delta_chunk(content=blob))


@pytest.mark.parametrize(
    "plaintext",
    [
        " ",
        "\n",
        "Hello",
        "04abcdef",  # short hex
        "04" + "ab" * 91 + "a",  # odd length
        "05" + "ab" * 92,  # wrong prefix
        "04" + "zz" * 92,  # not hex
    ],
)
@pytest.mark.parametrize("field", ["content", "reasoning_content", "reasoning"])
def test_plaintext_in_stream_fails_closed(plaintext: str, field: str) -> None:
    with pytest.raises(PlaintextInStreamError):
        ChunkDecryptor(CLIENT.private).decrypt_chunk(delta_chunk(**{field: plaintext}))


@pytest.mark.parametrize("value", [5, True, {"text": "x"}])
def test_non_string_field_fails_closed(value: Any) -> None:
    with pytest.raises(PlaintextInStreamError):
        ChunkDecryptor(CLIENT.private).decrypt_chunk(delta_chunk(content=value))


def test_plaintext_text_part_fails_closed() -> None:
    chunk = delta_chunk(content=[{"type": "text", "text": "leak"}])
    with pytest.raises(PlaintextInStreamError):
        ChunkDecryptor(CLIENT.private).decrypt_chunk(chunk)


def test_empty_and_none_pass_unchanged() -> None:
    chunk = delta_chunk(role="assistant", content="", reasoning_content=None)
    before = copy.deepcopy(chunk)
    ChunkDecryptor(CLIENT.private).decrypt_chunk(chunk)
    assert chunk == before


def test_usage_and_error_chunks_pass_unchanged() -> None:
    usage = {"choices": [], "usage": {"prompt_tokens": 1}, "cost": {"usd": 0.0}}
    error = {"error": {"message": "overloaded", "code": "model_overloaded"}}
    decryptor = ChunkDecryptor(CLIENT.private)
    for chunk in (usage, error):
        before = copy.deepcopy(chunk)
        assert decryptor.decrypt_chunk(chunk) == before


def test_cached_key_path_with_repeated_ephemeral() -> None:
    ephemeral = bytes.fromhex("44" * 32)
    decryptor = ChunkDecryptor(CLIENT.private)
    words = ["one", " two", " three"]
    out = []
    for word in words:
        chunk = delta_chunk(content=sealed(word, ephemeral=ephemeral))
        out.append(decryptor.decrypt_chunk(chunk)["choices"][0]["delta"]["content"])
    assert out == words
    # A tampered blob under a cached key still fails.
    raw = bytearray(bytes.fromhex(sealed("four", ephemeral=ephemeral)))
    raw[-1] ^= 0x01
    with pytest.raises(DecryptionError):
        decryptor.decrypt_chunk(delta_chunk(content=raw.hex()))


def test_key_cache_is_bounded_and_stays_correct() -> None:
    decryptor = ChunkDecryptor(CLIENT.private)
    for i in range(40):
        chunk = delta_chunk(content=sealed(f"t{i}"))
        assert decryptor.decrypt_chunk(chunk)["choices"][0]["delta"]["content"] == f"t{i}"
    assert len(decryptor._keys) <= 8
    decryptor.clear()
    assert not decryptor._keys


def test_decryptor_repr_hides_key() -> None:
    assert CLIENT.private.hex() not in repr(ChunkDecryptor(CLIENT.private))


def test_end_to_end_with_request_keys() -> None:
    request = encrypt_request(
        body_with([{"role": "user", "content": "ping"}]), model_key=MODEL_PUBLIC, upstream_model="m"
    )
    # The enclave reads the prompt and answers to the header's client key.
    prompt = enclave_open(request.body["messages"][0]["content"])
    client_public = bytes.fromhex(request.headers[CLIENT_KEY_HEADER])
    answer = crypto.seal(client_public, f"pong to {prompt}".encode()).hex()
    chunk = delta_chunk(content=answer)
    ChunkDecryptor(request.client_keys.private).decrypt_chunk(chunk)
    assert chunk["choices"][0]["delta"]["content"] == "pong to ping"


def test_malformed_choices_fail_closed() -> None:
    """Shapes that could carry text past the decryptor are refused, not passed through."""
    from proxy.core.errors import SSEProtocolError

    decryptor = ChunkDecryptor(crypto.generate_keypair().private)
    for chunk in (
        {"choices": ["leaked text"]},
        {"choices": [{"index": 0, "delta": "leaked text"}]},
        {"choices": [{"index": 0, "message": ["leaked"]}]},
    ):
        with pytest.raises(SSEProtocolError):
            decryptor.decrypt_chunk(chunk)
    with pytest.raises(PlaintextInStreamError):
        decryptor.decrypt_chunk({"choices": [{"index": 0, "text": "completions-style leak"}]})


def test_completions_style_text_is_decrypted() -> None:
    client = crypto.generate_keypair()
    chunk = {"choices": [{"index": 0, "text": crypto.seal_text(client.public, "hi")}]}
    assert ChunkDecryptor(client.private).decrypt_chunk(chunk)["choices"][0]["text"] == "hi"
