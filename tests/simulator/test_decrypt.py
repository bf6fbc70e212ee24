"""The simulated enclave's request decryption (proxy/simulator/decrypt.py), NEAR and Phala legacy,
against real sealing (docs/protocol.md#request-fields): what each message field becomes, and the
exact 400 body each backend answers a field it cannot open with."""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxy.core.crypto import KeyPair, generate_keypair, seal, seal_text
from proxy.simulator.decrypt import decrypt_messages_near, decrypt_messages_phala, is_hex
from proxy.simulator.http_errors import SimulatedHTTPError

ENCLAVE = generate_keypair()
OTHER = generate_keypair()


def sealed(text: str, key: KeyPair = ENCLAVE) -> str:
    return seal_text(key.public, text)


def near_body(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "bad_request", "param": None, "code": None}}


def phala_body(message: str, error_type: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": None, "code": None}}


def near_refusal(messages: list[Any]) -> SimulatedHTTPError:
    with pytest.raises(SimulatedHTTPError) as caught:
        decrypt_messages_near(messages, ENCLAVE.private)
    assert caught.value.status_code == 400
    return caught.value


def phala_refusal(messages: list[Any]) -> SimulatedHTTPError:
    with pytest.raises(SimulatedHTTPError) as caught:
        decrypt_messages_phala(messages, ENCLAVE.private)
    assert caught.value.status_code == 400
    return caught.value


# -- is_hex ------------------------------------------------------------------------------------


def test_is_hex_takes_both_cases_and_nothing_else() -> None:
    assert is_hex("0123456789abcdefABCDEF")
    assert not is_hex("0g")
    assert not is_hex("0x00")
    assert not is_hex("a")


# -- NEAR --------------------------------------------------------------------------------------


def test_near_opens_every_role_and_both_reasoning_fields() -> None:
    messages: list[Any] = [
        {"role": "system", "content": sealed("be brief")},
        {
            "role": "assistant",
            "content": sealed("earlier answer"),
            "reasoning_content": sealed("thought one"),
            "reasoning": sealed("thought two"),
        },
        {"role": "user", "content": sealed('  ["not" json')},
    ]
    opened = decrypt_messages_near(messages, ENCLAVE.private)
    assert opened == [
        {"role": "system", "content": "be brief"},
        {
            "role": "assistant",
            "content": "earlier answer",
            "reasoning_content": "thought one",
            "reasoning": "thought two",
        },
        {"role": "user", "content": '  ["not" json'},
    ]


def test_near_restores_a_json_array_after_leading_whitespace() -> None:
    parts = [{"type": "text", "text": "x"}]
    opened = decrypt_messages_near(
        [{"role": "user", "content": sealed(" \n" + json.dumps(parts))}], ENCLAVE.private
    )
    assert opened == [{"role": "user", "content": parts}]


def test_near_passes_empty_none_and_non_string_fields() -> None:
    messages: list[Any] = [
        {"role": "assistant", "content": "", "reasoning_content": "", "reasoning": ""},
        {"role": "assistant", "content": None, "reasoning_content": None},
        {"role": "user", "content": [{"type": "text", "text": "plain"}]},
    ]
    assert decrypt_messages_near(messages, ENCLAVE.private) == messages


def test_near_goes_on_after_a_message_that_is_not_an_object() -> None:
    messages: list[Any] = ["stray", None, {"role": "user", "content": sealed("after")}]
    opened = decrypt_messages_near(messages, ENCLAVE.private)
    assert opened == ["stray", None, {"role": "user", "content": "after"}]
    assert messages[2]["content"] != "after", "the input is not changed"


@pytest.mark.parametrize("field", ["content", "reasoning_content", "reasoning"])
def test_near_refuses_plaintext_in_any_sealed_field(field: str) -> None:
    message: dict[str, Any] = {"role": "assistant", "content": sealed("ok"), field: "plain words"}
    refusal = near_refusal([message])
    assert refusal.body == near_body("Encrypted field is not valid hex")


@pytest.mark.parametrize("field", ["content", "reasoning_content", "reasoning"])
def test_near_refuses_a_blob_sealed_to_another_key(field: str) -> None:
    message: dict[str, Any] = {"role": "user", "content": sealed("ok"), field: sealed("x", OTHER)}
    assert near_refusal([message]).body == near_body("Decryption failed")


def test_near_refuses_a_blob_too_short_or_tampered() -> None:
    assert near_refusal([{"role": "user", "content": "00" * 40}]).body == near_body(
        "Decryption failed"
    )
    blob = sealed("secret words")
    tampered = blob[:-2] + f"{int(blob[-2:], 16) ^ 1:02x}"
    refusal = near_refusal([{"role": "user", "content": tampered}])
    assert refusal.body == near_body("Decryption failed")
    assert "secret" not in json.dumps(refusal.body)


def test_near_refuses_a_plaintext_that_is_not_utf8() -> None:
    blob = seal(ENCLAVE.public, b"\xff\xfe").hex()
    assert near_refusal([{"role": "user", "content": blob}]).body == near_body(
        "Decrypted content is not valid UTF-8"
    )


# -- Phala legacy ------------------------------------------------------------------------------


def test_phala_opens_string_content_and_keeps_it_a_string() -> None:
    parts_text = json.dumps([{"type": "text", "text": "x"}])
    messages: list[Any] = [
        {"role": "system", "content": sealed("be brief")},
        {"role": "user", "content": sealed(parts_text).upper()},
    ]
    assert decrypt_messages_phala(messages, ENCLAVE.private) == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": parts_text},
    ]


def test_phala_leaves_reasoning_fields_and_null_content_alone() -> None:
    messages: list[Any] = [
        {"role": "assistant", "content": None, "reasoning_content": "plain", "reasoning": "r"},
    ]
    assert decrypt_messages_phala(messages, ENCLAVE.private) == messages


def test_phala_opens_each_text_part_and_passes_the_others() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:,"}}
    text_part = {"type": "text", "text": sealed("first"), "extra": 1}
    not_a_string = {"type": "text", "text": None}
    messages: list[Any] = [
        {"role": "user", "content": [text_part, image, "stray", not_a_string]},
        {"role": "user", "content": [{"type": "text", "text": sealed("second")}]},
    ]
    opened = decrypt_messages_phala(messages, ENCLAVE.private)
    assert opened == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "first", "extra": 1},
                image,
                "stray",
                not_a_string,
            ],
        },
        {"role": "user", "content": [{"type": "text", "text": "second"}]},
    ]
    assert text_part["text"] != "first", "the input part is not changed"


def test_phala_leaves_a_part_that_is_not_text_even_if_it_has_text() -> None:
    part = {"type": "input_text", "text": "plain"}
    untyped = {"text": "plain too"}
    messages: list[Any] = [{"role": "user", "content": [part, untyped]}]
    assert decrypt_messages_phala(messages, ENCLAVE.private) == messages


def test_phala_goes_on_after_a_message_that_is_not_an_object() -> None:
    messages: list[Any] = [7, {"role": "user", "content": sealed("after")}]
    opened = decrypt_messages_phala(messages, ENCLAVE.private)
    assert opened == [7, {"role": "user", "content": "after"}]
    assert messages[1]["content"] != "after", "the input is not changed"


@pytest.mark.parametrize("content", ["", "plain words", "abc", "zz"])
def test_phala_refuses_content_that_is_not_hex_empty_included(content: str) -> None:
    assert phala_refusal([{"role": "user", "content": content}]).body == phala_body(
        "Encrypted message content must be hex-encoded", "invalid_e2ee_request"
    )


@pytest.mark.parametrize("text", ["", "plain words"])
def test_phala_refuses_a_text_part_that_is_not_hex(text: str) -> None:
    refusal = phala_refusal([{"role": "user", "content": [{"type": "text", "text": text}]}])
    assert refusal.body == phala_body(
        "Encrypted message text content must be hex-encoded", "invalid_e2ee_request"
    )


def test_phala_refuses_blobs_that_do_not_open() -> None:
    failed = phala_body("Decryption failed", "e2ee_decryption_failed")
    assert phala_refusal([{"role": "user", "content": sealed("x", OTHER)}]).body == failed
    part = {"type": "text", "text": sealed("x", OTHER)}
    assert phala_refusal([{"role": "user", "content": [part]}]).body == failed
    not_utf8 = seal(ENCLAVE.public, b"\xc3").hex()
    assert phala_refusal([{"role": "user", "content": not_utf8}]).body == phala_body(
        "Decrypted content is not valid UTF-8", "e2ee_decryption_failed"
    )
