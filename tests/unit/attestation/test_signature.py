"""EIP-191 response signatures: a known answer, round trips with coincurve, tampering, shapes."""

from __future__ import annotations

from typing import Any

import pytest
from coincurve import PrivateKey

from proxy.attestation.signature import (
    SIGNATURE_CODES,
    SignatureError,
    SignatureEvidence,
    eip191_digest,
    parse_signature_response,
    recover_signer,
    verify_signature,
)
from proxy.core.crypto import address_hex, keccak256
from proxy.core.errors import AttestationError

# The web3.py documentation's sign_message example (EIP-191, "I♥SF").
KAT_PRIVATE = bytes.fromhex("b25c7db31feed9122727bf0939dc769a96564b2de4c4726d035b36ecf1e5b364")
KAT_TEXT = "I♥SF"
KAT_SIGNATURE = (
    "0xe6ca9bba58c88611fad66a6ce8f996908195593807c4b38bd528d2cff09d4eb3"
    "3e5bfbbf4d3e39b1a2fd816a7680c19ebebaf3a141b239934ad43cb33fcec8ce1c"
)
KAT_ADDRESS = "0x5ce9454909639D2D17A3F753ce7d93fa0b9aB12E"

TEXT = "Qwen/Qwen3.5-122B-A10B:" + "ab" * 32 + ":" + "cd" * 32


def sign(key: PrivateKey, text: str, *, ethereum_v: bool = True) -> str:
    """``0x`` r||s||v over the EIP-191 digest, as a TEE signing key would produce it."""
    raw = key.sign_recoverable(eip191_digest(text), hasher=None)
    v = raw[64] + 27 if ethereum_v else raw[64]
    return "0x" + (raw[:64] + bytes([v])).hex()


def address_of_key(key: PrivateKey) -> str:
    return address_hex(key.public_key.format(compressed=False))


def evidence(text: str, signature: str, address: str | None = None) -> SignatureEvidence:
    return SignatureEvidence(
        text=text, signature=signature, signing_address=address, model=None, request_id=None
    )


@pytest.fixture(scope="module")
def key() -> PrivateKey:
    return PrivateKey()


def test_known_answer() -> None:
    assert recover_signer(KAT_TEXT, KAT_SIGNATURE) == KAT_ADDRESS.lower()
    assert sign(PrivateKey(KAT_PRIVATE), KAT_TEXT) == KAT_SIGNATURE
    check = verify_signature(evidence(KAT_TEXT + ":x", KAT_SIGNATURE), KAT_ADDRESS)
    assert check.code == "signature_signer_mismatch"  # a changed text names another signer


def test_round_trip(key: PrivateKey) -> None:
    assert recover_signer(TEXT, sign(key, TEXT)) == address_of_key(key)


@pytest.mark.parametrize("ethereum_v", [True, False])
def test_v_as_27_28_or_0_1(key: PrivateKey, ethereum_v: bool) -> None:
    signature = sign(key, TEXT, ethereum_v=ethereum_v)
    assert recover_signer(TEXT, signature) == address_of_key(key)
    assert recover_signer(TEXT, signature.removeprefix("0x").upper()) == address_of_key(key)


def test_verify_accepts_the_attested_signer_in_any_case(key: PrivateKey) -> None:
    address = address_of_key(key)
    check = verify_signature(evidence(TEXT, sign(key, TEXT), address), address.upper())
    assert (check.ok, check.code) == (True, "signature_verified")
    assert check.code in SIGNATURE_CODES


def test_two_part_text_is_accepted(key: PrivateKey) -> None:
    text = "ab" * 32 + ":" + "cd" * 32
    assert verify_signature(evidence(text, sign(key, text)), address_of_key(key)).ok


def test_tampered_text_fails(key: PrivateKey) -> None:
    signature = sign(key, TEXT)
    tampered = TEXT[:-1] + ("0" if TEXT[-1] != "0" else "1")
    check = verify_signature(evidence(tampered, signature), address_of_key(key))
    assert (check.ok, check.code) == (False, "signature_signer_mismatch")


@pytest.mark.parametrize("index", [0, 31, 32, 63])
def test_tampered_signature_fails(key: PrivateKey, index: int) -> None:
    raw = bytearray(bytes.fromhex(sign(key, TEXT)[2:]))
    raw[index] ^= 0x01
    check = verify_signature(evidence(TEXT, raw.hex()), address_of_key(key))
    assert not check.ok
    assert check.code in {"signature_signer_mismatch", "signature_malformed"}


def test_flipped_recovery_id_fails(key: PrivateKey) -> None:
    raw = bytearray(bytes.fromhex(sign(key, TEXT)[2:]))
    raw[64] = 55 - raw[64]  # 27 <-> 28
    assert not verify_signature(evidence(TEXT, raw.hex()), address_of_key(key)).ok


def test_another_key_fails(key: PrivateKey) -> None:
    other = PrivateKey()
    check = verify_signature(evidence(TEXT, sign(other, TEXT)), address_of_key(key))
    assert (check.ok, check.code) == (False, "signature_signer_mismatch")
    assert address_of_key(other) in check.detail


def test_answer_naming_another_address_fails(key: PrivateKey) -> None:
    check = verify_signature(evidence(TEXT, sign(key, TEXT), "0x" + "11" * 20), address_of_key(key))
    assert (check.ok, check.code) == (False, "signature_address_mismatch")


@pytest.mark.parametrize("text", ["no-colons", "a:b:c:d", "a::b", ":a", "a:"])
def test_text_must_have_two_or_three_parts(key: PrivateKey, text: str) -> None:
    check = verify_signature(evidence(text, sign(key, text)), address_of_key(key))
    assert (check.ok, check.code) == (False, "signature_text_format")


@pytest.mark.parametrize(
    "signature",
    [
        "0x" + "00" * 64,  # 64 bytes
        "0x" + "ab" * 64 + "1d",  # v = 29
        "0x" + "zz" * 65,
        "",
        "0x" + "00" * 65,  # r = s = 0: nothing recovers
    ],
)
def test_malformed_signatures(signature: str) -> None:
    with pytest.raises(SignatureError) as info:
        recover_signer(TEXT, signature)
    assert isinstance(info.value, AttestationError)
    assert info.value.code == "signature_malformed"
    check = verify_signature(evidence(TEXT, signature), "0x" + "11" * 20)
    assert (check.ok, check.code) == (False, "signature_malformed")


def test_utf8_length_counts_bytes_not_characters() -> None:
    text = "modèle:" + "ab" * 32 + ":" + "cd" * 32
    data = text.encode("utf-8")
    prefix = b"\x19Ethereum Signed Message:\n"
    assert len(data) == len(text) + 1
    assert eip191_digest(text) == keccak256(prefix + str(len(data)).encode() + data)
    assert eip191_digest(text) != keccak256(prefix + str(len(text)).encode() + data)


# --- parsing the answer ---------------------------------------------------------------------


def test_parse_near_shape() -> None:
    body = {
        "text": TEXT,
        "signature": KAT_SIGNATURE,
        "signing_address": KAT_ADDRESS,
        "signing_algo": "ecdsa",
        "model": "e2ee-qwen3-5-122b-a10b",
        "requested_request_id": "chatcmpl-1",
        "tee_provider": "near-ai",
        "verification": {"attestation_endpoint": "/x", "description": "y"},
    }
    parsed = parse_signature_response(body)
    assert parsed == SignatureEvidence(
        text=TEXT,
        signature=KAT_SIGNATURE,
        signing_address=KAT_ADDRESS,
        model="e2ee-qwen3-5-122b-a10b",
        request_id="chatcmpl-1",
    )
    assert TEXT not in repr(parsed)


def test_parse_signature_object_and_request_id() -> None:
    body = {
        "text": "a:b",
        "signature": {"algorithm": "ecdsa", "value": KAT_SIGNATURE, "public_key": "04.."},
        "request_id": "chatcmpl-2",
        "payload": {"request_hash": "a", "response_hash": "b", "timestamp": 1},
    }
    parsed = parse_signature_response(body)
    assert (parsed.signature, parsed.request_id, parsed.signing_address) == (
        KAT_SIGNATURE,
        "chatcmpl-2",
        None,
    )


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        {"signature": KAT_SIGNATURE},
        {"text": "", "signature": KAT_SIGNATURE},
        {"text": "a:b"},
        {"text": "a:b", "signature": {"algo": "ecdsa"}},
        {"text": "a:b", "signature": 5},
    ],
)
def test_parse_rejects_unusable_answers(body: Any) -> None:
    with pytest.raises(SignatureError) as info:
        parse_signature_response(body)
    assert info.value.code == "signature_response_invalid"


def test_parsed_answer_verifies_end_to_end() -> None:
    key = PrivateKey()
    body = {"text": TEXT, "signature": sign(key, TEXT), "signing_address": address_of_key(key)}
    check = verify_signature(parse_signature_response(body), address_of_key(key))
    assert check.ok


# --- fixed keys: what a random key covers only by chance ------------------------------------

KAT_KEY = PrivateKey(KAT_PRIVATE)


def text_with_recovery_id(key: PrivateKey, recovery_id: int) -> str:
    """The first of TEXT-0, TEXT-1, ... whose signature by ``key`` has this recovery id
    (RFC 6979 signatures are deterministic, so this is always the same text)."""
    for index in range(64):
        text = f"{TEXT}-{index}"
        if key.sign_recoverable(eip191_digest(text), hasher=None)[64] == recovery_id:
            return text
    raise AssertionError("no text found")  # pragma: no cover


@pytest.mark.parametrize("recovery_id", [0, 1])
@pytest.mark.parametrize("ethereum_v", [True, False])
def test_both_recovery_ids_in_both_encodings(recovery_id: int, ethereum_v: bool) -> None:
    text = text_with_recovery_id(KAT_KEY, recovery_id)
    signature = sign(KAT_KEY, text, ethereum_v=ethereum_v)
    assert signature[-2:] == f"{recovery_id + (27 if ethereum_v else 0):02x}"
    assert recover_signer(text, signature) == KAT_ADDRESS.lower()


@pytest.mark.parametrize("prefix", ["0x", "0X", ""])
def test_hex_prefix_in_either_case_or_none(prefix: str) -> None:
    bare = KAT_SIGNATURE.removeprefix("0x")
    assert recover_signer(KAT_TEXT, prefix + bare) == KAT_ADDRESS.lower()
    assert recover_signer(KAT_TEXT, f"  {prefix}{bare}\n") == KAT_ADDRESS.lower()


@pytest.mark.parametrize(
    ("text", "signature", "message"),
    [
        (TEXT, 5, "the signature is not a string"),
        (TEXT, "0x" + "00" * 64, "the signature is not 130 hex digits"),
        (TEXT, "0x" + "00" * 66, "the signature is not 130 hex digits"),
        (TEXT, "0x" + "ab" * 64 + "1d", "the signature's v is 29, not 27/28 or 0/1"),
        (TEXT, "0x" + "ab" * 64 + "02", "the signature's v is 2, not 27/28 or 0/1"),
        (TEXT, "0x" + "00" * 65, "no public key recovers from the signature"),
        (b"a:b", KAT_SIGNATURE, "the signed text is not a string"),
    ],
)
def test_malformed_signature_messages(text: Any, signature: Any, message: str) -> None:
    with pytest.raises(SignatureError) as info:
        recover_signer(text, signature)
    assert (info.value.code, info.value.message) == ("signature_malformed", message)
    if isinstance(text, str) and isinstance(signature, str):
        check = verify_signature(evidence(text, signature), KAT_ADDRESS)
        assert (check.ok, check.code, check.detail) == (False, "signature_malformed", message)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (None, "the signature answer is not a JSON object"),
        (["text"], "the signature answer is not a JSON object"),
        ({"signature": KAT_SIGNATURE}, "the signature answer has no text"),
        ({"text": 5, "signature": KAT_SIGNATURE}, "the signature answer has no text"),
        ({"text": "a:b"}, "the signature answer has no signature"),
        ({"text": "a:b", "signature": {"value": ""}}, "the signature answer has no signature"),
    ],
)
def test_unusable_answer_messages(body: Any, message: str) -> None:
    with pytest.raises(SignatureError) as info:
        parse_signature_response(body)
    assert (info.value.code, info.value.message) == ("signature_response_invalid", message)


@pytest.mark.parametrize("value", ["", 5, ["0x" + "11" * 20], {"a": 1}, True])
def test_optional_fields_that_are_not_text_are_absent(value: Any) -> None:
    body = {
        "text": KAT_TEXT + ":x",
        "signature": KAT_SIGNATURE,
        "signing_address": value,
        "model": value,
        "requested_request_id": value,
        "request_id": value,
    }
    parsed = parse_signature_response(body)
    assert (parsed.signing_address, parsed.model, parsed.request_id) == (None, None, None)


def test_request_id_prefers_requested_request_id_and_falls_back() -> None:
    body = {"text": "a:b", "signature": KAT_SIGNATURE, "request_id": "chatcmpl-2"}
    assert parse_signature_response({**body, "requested_request_id": ""}).request_id == (
        "chatcmpl-2"
    )
    assert parse_signature_response({**body, "requested_request_id": "r"}).request_id == "r"


def test_verdict_details() -> None:
    """The details a log line and the status page show (sliced by the caller, so never None)."""
    text = text_with_recovery_id(KAT_KEY, 0)
    signature = sign(KAT_KEY, text)
    attested = KAT_ADDRESS.lower()
    check = verify_signature(evidence(text, signature, KAT_ADDRESS), KAT_ADDRESS.upper())
    assert (check.ok, check.detail) == (True, f"signed by the attested key {attested}")

    check = verify_signature(evidence("a:b:c:d", signature), KAT_ADDRESS)
    assert check.detail == "the signed text has 4 colon-separated parts, expected 2 or 3"

    other = "0x" + "11" * 20
    check = verify_signature(evidence(text, signature), other)
    assert check.detail == f"signed by {attested}, attested key is {other}"

    claimed = "0x" + "22" * 40  # 82 characters: the detail shows the first 44
    check = verify_signature(evidence(text, signature, claimed), KAT_ADDRESS)
    assert check.code == "signature_address_mismatch"
    assert check.detail == (
        f"the answer names signing_address {claimed[:44]!r}, attested {attested}"
    )
