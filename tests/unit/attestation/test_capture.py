"""The capture wrapper: which documents are wrappers, their nonce and epoch, and every refusal."""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import pytest

from proxy.attestation import unwrap_capture
from proxy.core.errors import AttestationError
from tests.support.attestation_helpers import FIXTURES_BY_NAME, body_of, load_json, nonce_of

GLM = FIXTURES_BY_NAME["glm_5_1"]
ACI = FIXTURES_BY_NAME["live_evidence_aci"]
NONCE = bytes(range(32))


def refusal(document: Any) -> str:
    """The message of the capture_invalid refusal ``document`` gets."""
    with pytest.raises(AttestationError) as info:
        unwrap_capture(document)
    assert info.value.code == "capture_invalid"
    return info.value.message


def test_a_real_wrapper_gives_its_body_nonce_and_epoch() -> None:
    document = load_json(GLM.attestation_file)
    capture = unwrap_capture(document)
    assert capture.body is document["attestation"]
    assert capture.client_nonce == nonce_of(GLM)
    assert capture.capture_epoch == 1780598249


def test_an_aci_body_with_its_own_attestation_member_is_not_a_wrapper() -> None:
    body = body_of(ACI)
    assert isinstance(body["attestation"], dict)
    capture = unwrap_capture(body)
    assert capture.body is body
    assert (capture.client_nonce, capture.capture_epoch) == (None, None)


@pytest.mark.parametrize(
    ("document", "nonce", "epoch"),
    [
        ({"_client_nonce": NONCE.hex(), "attestation": {"a": 1}}, NONCE, None),
        ({"_capture_epoch": 0, "attestation": {"a": 1}}, None, 0),
        ({"_capture_epoch": -5, "attestation": {"a": 1}}, None, -5),
        ({"_client_nonce": None, "_capture_epoch": 7, "attestation": {"a": 1}}, None, 7),
        ({"_client_nonce": NONCE.hex().upper(), "attestation": '{"a": 1}'}, NONCE, None),
    ],
)
def test_either_wrapper_key_alone_makes_a_wrapper(
    document: dict[str, Any], nonce: bytes | None, epoch: int | None
) -> None:
    capture = unwrap_capture(document)
    assert capture.body == {"a": 1}
    assert capture.client_nonce == nonce
    assert capture.capture_epoch == epoch


def test_a_json_string_body_is_decoded() -> None:
    capture = unwrap_capture({"_capture_epoch": 1, "attestation": json.dumps({"model": "m"})})
    assert capture.body == {"model": "m"}


def test_any_mapping_is_a_document() -> None:
    document: Mapping[str, Any] = MappingProxyType({"_capture_epoch": 3, "attestation": {}})
    capture = unwrap_capture(document)
    assert (capture.body, capture.capture_epoch) == ({}, 3)


def test_the_capture_repr_leaves_the_body_out() -> None:
    text = repr(unwrap_capture({"_capture_epoch": 3, "attestation": {"secret": "x" * 50}}))
    assert "x" * 50 not in text
    assert "capture_epoch=3" in text


@pytest.mark.parametrize("document", [[], "a string", None, 5])
def test_a_non_object_document_is_refused(document: Any) -> None:
    assert refusal(document) == "the saved attestation is not a JSON object"


@pytest.mark.parametrize("body", ["{not json", "[" * 100_000])
def test_an_attestation_string_that_is_not_json_is_refused(body: str) -> None:
    # The second is deep enough that the decoder gives up with a RecursionError.
    message = refusal({"_capture_epoch": 1, "attestation": body})
    assert message == "the capture's attestation is not valid JSON"


@pytest.mark.parametrize(
    "document",
    [
        {"_capture_epoch": 1},
        {"_capture_epoch": 1, "attestation": None},
        {"_capture_epoch": 1, "attestation": [1]},
        {"_capture_epoch": 1, "attestation": "[1]"},
        {"_client_nonce": NONCE.hex(), "attestation": 5},
    ],
)
def test_a_wrapper_without_an_attestation_object_is_refused(document: dict[str, Any]) -> None:
    assert refusal(document) == "the capture has no attestation object"


@pytest.mark.parametrize(
    "nonce",
    [
        "00" * 31,
        "00" * 33,
        "0" * 63,
        "zz" * 32,
        "",
        NONCE,  # bytes, not hex text
        32,
        ["00"] * 32,
    ],
)
def test_a_client_nonce_that_is_not_64_hex_is_refused(nonce: Any) -> None:
    message = refusal({"_client_nonce": nonce, "attestation": {}})
    assert message == "the capture's _client_nonce is not 64 hex"


@pytest.mark.parametrize("epoch", [True, False, 1.0, "1780598249", [1]])
def test_a_capture_epoch_that_is_not_an_integer_is_refused(epoch: Any) -> None:
    message = refusal({"_capture_epoch": epoch, "attestation": {}})
    assert message == "the capture's _capture_epoch is not an integer"
