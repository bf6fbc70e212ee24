"""Normalizing the three report shapes, the capture wrapper, and garbled bodies."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from proxy.attestation import parse_attestation, parse_tdx_quote, unwrap_capture
from proxy.core.crypto import address_hex, generate_keypair
from proxy.core.errors import AttestationError
from tests.support.attestation_helpers import (
    FIXTURE_IDS,
    FIXTURE_LIST,
    FIXTURES_BY_NAME,
    Fixture,
    body_of,
    load_json,
    nonce_of,
    quote_of,
)

ACI = FIXTURES_BY_NAME["live_evidence_aci"]
GLM = FIXTURES_BY_NAME["glm_5_1"]
GEMMA = FIXTURES_BY_NAME["gemma_3_27b_p"]
ACI_E2EE_KEY = (
    "04943cea0b4babf60f6e2031e9a00866a37c4ae696fb45895b3a9b38ab8cbb898f"
    "42c85b704aceaa0a396cf26f7fdf79d83205be7e11d3a5d70419a68277158c3d"
)


@pytest.mark.parametrize("fixture", FIXTURE_LIST, ids=FIXTURE_IDS)
def test_every_capture_parses_to_its_shape_and_key(fixture: Fixture) -> None:
    evidence = parse_attestation(body_of(fixture))
    assert evidence.shape == fixture.shape
    assert evidence.model == fixture.model
    assert evidence.signing_address.lower() == fixture.address
    assert evidence.signing_public_key is not None
    assert len(evidence.signing_public_key) == 65
    assert address_hex(evidence.signing_public_key) == fixture.address
    assert evidence.verified is True
    assert evidence.echoed_nonce == nonce_of(fixture).hex()
    assert evidence.intel_quote[:2] == b"\x04\x00"
    assert evidence.upstream_model_name
    assert evidence.tee_provider in ("near-ai", "phala")
    assert evidence.event_log
    assert all(isinstance(entry, dict) for entry in evidence.event_log)
    assert evidence.raw["signing_address"] == evidence.signing_address


@pytest.mark.parametrize("fixture", [f for f in FIXTURE_LIST if f.has_gpu], ids=lambda f: f.name)
def test_nvidia_payload_is_parsed_from_its_json_string(fixture: Fixture) -> None:
    evidence = parse_attestation(body_of(fixture))
    assert evidence.nvidia_payload is not None
    assert evidence.nvidia_payload["nonce"] == nonce_of(fixture).hex()
    assert isinstance(evidence.nvidia_payload["evidence_list"], list)
    assert evidence.info is not None
    assert isinstance(evidence.info["tcb_info"], dict)


def test_phala_legacy_keeps_vm_config_and_parses_the_string_event_log() -> None:
    body = body_of(GEMMA)
    assert isinstance(body["event_log"], str)
    evidence = parse_attestation(body)
    assert evidence.info is not None
    assert isinstance(evidence.info["vm_config"], str)
    assert evidence.event_log == json.loads(body["event_log"])
    assert evidence.signing_address == "0xa6df16ebBc510D97A32b99B4DFD33793acC90e2b"


def test_aci_picks_the_e2ee_key_bound_in_report_data() -> None:
    body = body_of(ACI)
    evidence = parse_attestation(body)
    report_data = parse_tdx_quote(evidence.intel_quote).report.report_data
    assert evidence.signing_public_key is not None
    assert evidence.signing_public_key.hex() == ACI_E2EE_KEY
    assert bytes.fromhex(address_hex(evidence.signing_public_key)[2:]) == report_data[:20]
    assert evidence.key_source == "attestation.workload_keyset.e2ee_public_keys[dstack-kms-e2ee-v1]"
    assert evidence.nvidia_payload is None
    assert evidence.info is not None
    assert "vm_config" in evidence.info


def test_aci_ignores_decoy_keys_listed_first() -> None:
    body = body_of(ACI)
    keyset = body["attestation"]["workload_keyset"]
    decoy = {"key_id": "decoy", "algo": "ecdsa", "public_key": generate_keypair().public.hex()}
    keyset["e2ee_public_keys"].insert(0, decoy)
    body["signing_public_key"] = generate_keypair().public.hex()
    evidence = parse_attestation(body)
    assert evidence.signing_public_key is not None
    assert evidence.signing_public_key.hex() == ACI_E2EE_KEY


def test_aci_without_a_matching_key_has_no_key() -> None:
    body = body_of(ACI)
    for entry in body["attestation"]["workload_keyset"]["e2ee_public_keys"]:
        entry["public_key"] = generate_keypair().public.hex()
    for entry in body["attestation"]["evidence"]["key_custody"]["keys"]:
        entry["public_key"] = generate_keypair().public.hex()
    evidence = parse_attestation(body)
    assert evidence.signing_public_key is None
    assert evidence.signing_public_key_text is None


def test_capture_wrapper_with_a_json_string_body() -> None:
    document = load_json(GLM.attestation_file)
    document["attestation"] = json.dumps(document["attestation"])
    capture = unwrap_capture(document)
    assert capture.client_nonce == nonce_of(GLM)
    assert capture.capture_epoch == 1780598249
    assert parse_attestation(capture.body).model == "e2ee-glm-5-1"


def test_raw_body_is_not_mistaken_for_a_wrapper() -> None:
    body = body_of(ACI)
    capture = unwrap_capture(body)
    assert capture.body is body
    assert capture.client_nonce is None
    assert capture.capture_epoch is None


@pytest.mark.parametrize(
    "document",
    [
        {"_client_nonce": "00" * 32},
        {"_client_nonce": "00" * 31, "attestation": {}},
        {"_capture_epoch": "soon", "attestation": {}},
        {"_capture_epoch": 1, "attestation": "{not json"},
    ],
)
def test_malformed_wrappers_raise(document: dict[str, Any]) -> None:
    with pytest.raises(AttestationError) as info:
        unwrap_capture(document)
    assert info.value.code == "capture_invalid"


def test_passing_the_wrapper_itself_is_an_unknown_shape() -> None:
    with pytest.raises(AttestationError, match="capture wrapper") as info:
        parse_attestation(load_json(GLM.attestation_file))
    assert info.value.code == "attestation_shape_unknown"


def test_base64_quote_and_64_byte_key_are_accepted() -> None:
    body = body_of(GLM)
    quote = quote_of(body)
    body["intel_quote"] = base64.b64encode(quote).decode()
    body["signing_public_key"] = body["signing_public_key"][2:]
    body["signing_key"] = body["signing_key"][2:]
    evidence = parse_attestation(body)
    assert evidence.intel_quote == quote
    assert evidence.signing_public_key is not None
    assert address_hex(evidence.signing_public_key) == GLM.address


def test_an_invalid_key_is_kept_as_text_for_the_check_to_report() -> None:
    body = body_of(GEMMA)
    body["signing_public_key"] = "04" + "00" * 64
    evidence = parse_attestation(body)
    assert evidence.signing_public_key is None
    assert evidence.signing_public_key_text == "04" + "00" * 64


def test_a_missing_key_is_none() -> None:
    body = body_of(GEMMA)
    del body["signing_public_key"]
    evidence = parse_attestation(body)
    assert evidence.signing_public_key is None
    assert evidence.signing_public_key_text is None


def _drop(key: str) -> Any:
    def edit(body: dict[str, Any]) -> None:
        del body[key]

    return edit


def _set(key: str, value: Any) -> Any:
    def edit(body: dict[str, Any]) -> None:
        body[key] = value

    return edit


def _conflicting_quote(body: dict[str, Any]) -> None:
    quote = bytearray(quote_of(body))
    quote[300] ^= 1
    body["intel_quote"] = quote.hex()


@pytest.mark.parametrize(
    ("fixture", "edit", "code"),
    [
        (GLM, _drop("intel_quote"), "quote_missing"),
        (GLM, _set("intel_quote", "this is not a quote"), "quote_encoding"),
        (GEMMA, _conflicting_quote, "quote_conflict"),
        (ACI, _conflicting_quote, "quote_conflict"),
        (GLM, _drop("signing_address"), "signing_address_missing"),
        (GLM, _set("signing_address", 42), "signing_address_missing"),
        (GLM, _set("signing_key", "04" + "11" * 64), "signing_key_conflict"),
        (GLM, _set("signing_public_key", 7), "signing_key_invalid"),
        (GLM, _set("request_nonce", "00" * 32), "nonce_conflict"),
        (GLM, _set("nvidia_payload", "{not json"), "nvidia_payload_invalid"),
        (GLM, _set("nvidia_payload", "[1, 2]"), "nvidia_payload_invalid"),
        (GLM, _set("event_log", "[1, 2]"), "event_log_invalid"),
        (GEMMA, _set("event_log", "{not json"), "event_log_invalid"),
        (GLM, _set("info", "a string"), "info_invalid"),
    ],
)
def test_garbled_bodies_raise_specific_codes(fixture: Fixture, edit: Any, code: str) -> None:
    body = body_of(fixture)
    edit(body)
    with pytest.raises(AttestationError) as info:
        parse_attestation(body)
    assert info.value.code == code


@pytest.mark.parametrize("body", [{}, {"model": "x"}, {"signing_address": "0x00"}])
def test_bodies_without_any_known_shape_raise(body: dict[str, Any]) -> None:
    with pytest.raises(AttestationError) as info:
        parse_attestation(body)
    assert info.value.code == "attestation_shape_unknown"


def test_non_mapping_body_raises() -> None:
    with pytest.raises(AttestationError) as info:
        parse_attestation([])  # type: ignore[arg-type]
    assert info.value.code == "attestation_shape_unknown"


def test_evidence_repr_carries_no_quote_or_raw_body() -> None:
    text = repr(parse_attestation(body_of(GLM)))
    assert len(text) < 1000
    assert body_of(GLM)["intel_quote"][:64] not in text
