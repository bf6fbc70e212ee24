"""Normalizing the three report shapes, the capture wrapper, and garbled bodies."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from coincurve import PublicKey

from proxy.attestation import parse_attestation, parse_tdx_quote, unwrap_capture
from proxy.core.crypto import address_hex, address_of, generate_keypair
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
    synthetic_quote,
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


# --- the shapes, told apart key by key ------------------------------------------------------

GLM_QUOTE = quote_of(body_of(GLM)).hex()
ADDRESS = "0x" + "12" * 20


def minimal(**fields: Any) -> dict[str, Any]:
    """The least a body needs to parse: a signing address and the fields given."""
    return {"signing_address": ADDRESS, **fields}


@pytest.mark.parametrize(
    ("body", "shape"),
    [
        (minimal(intel_quote=GLM_QUOTE), "near"),
        (minimal(intel_quote=GLM_QUOTE, event_log=[]), "near"),
        (minimal(quote=GLM_QUOTE), "phala_legacy"),
        (minimal(intel_quote=GLM_QUOTE, vm_config="{}"), "phala_legacy"),
        (minimal(intel_quote=GLM_QUOTE, event_log="[]"), "phala_legacy"),
        (minimal(quote=GLM_QUOTE, model_name="org/m"), "near"),
        (minimal(quote=GLM_QUOTE, signing_key=None), "near"),
        (minimal(quote=GLM_QUOTE, compose_manager_attestation={}), "near"),
        (minimal(intel_quote=GLM_QUOTE, api_version="aci/1", attestation={}), "aci"),
        (minimal(intel_quote=GLM_QUOTE, attestation={"evidence": {}}), "aci"),
        (minimal(intel_quote=GLM_QUOTE, attestation={"workload_keyset": {}}), "aci"),
        (
            minimal(intel_quote=GLM_QUOTE, api_version="aci/1", attestation={}, model_name="m"),
            "aci",
        ),
        (minimal(intel_quote=GLM_QUOTE, api_version="v1", attestation={"other": 1}), "near"),
    ],
)
def test_each_shape_rule(body: dict[str, Any], shape: str) -> None:
    assert parse_attestation(body).shape == shape


def test_an_aci_version_without_an_attestation_object_is_refused() -> None:
    body = minimal(intel_quote=GLM_QUOTE, api_version="aci/1", attestation="a string")
    with pytest.raises(AttestationError) as info:
        parse_attestation(body)
    assert info.value.code == "attestation_shape_unknown"
    assert info.value.message == "the aci attestation has no attestation object"


KNOWN = (
    "known shapes: near (model_name, signing_key or compose_manager_attestation), "
    "phala_legacy (quote, vm_config or a string event_log), "
    "aci (api_version aci/… or attestation.evidence)"
)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, f"the attestation matches no known report shape; top-level keys: none; {KNOWN}"),
        (
            {"model": "m", "signing_address": "0x00"},
            f"the attestation matches no known report shape; top-level keys: model, "
            f"signing_address; {KNOWN}",
        ),
        (
            {"_client_nonce": "00", "attestation": {}},
            "the attestation matches no known report shape (a capture wrapper: unwrap it first); "
            f"top-level keys: _client_nonce, attestation; {KNOWN}",
        ),
    ],
)
def test_an_unknown_shape_names_the_keys_it_saw(body: dict[str, Any], message: str) -> None:
    with pytest.raises(AttestationError) as info:
        parse_attestation(body)
    assert info.value.code == "attestation_shape_unknown"
    assert info.value.message == message


def test_an_unknown_shape_lists_at_most_20_keys_of_at_most_40_characters() -> None:
    body = {f"key{index:02d}": index for index in range(25)} | {"k" * 50: 0}
    with pytest.raises(AttestationError) as info:
        parse_attestation(body)
    keys = ", ".join([f"key{index:02d}" for index in range(20)])
    assert info.value.message == (
        f"the attestation matches no known report shape; top-level keys: {keys}; {KNOWN}"
    )
    with pytest.raises(AttestationError) as info:
        parse_attestation({"k" * 50: 0, "a": 1})
    assert f"top-level keys: a, {'k' * 40}; " in info.value.message


def test_a_non_object_body_is_refused_with_its_message() -> None:
    with pytest.raises(AttestationError) as info:
        parse_attestation("a string")  # type: ignore[arg-type]
    assert info.value.code == "attestation_shape_unknown"
    assert info.value.message == "the attestation is not a JSON object"


# --- signing_algo ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("algo", "shown"),
    [
        ("ed25519", "'ed25519'"),
        ("EdDSA", "'EdDSA'"),
        (" ED25519\n", "' ED25519\\n'"),
        (" " * 18 + "eddsa", "'                  ed'"),  # cut at 20 characters
    ],
)
def test_an_ed25519_report_is_refused_with_what_to_ask_for(algo: str, shown: str) -> None:
    body = body_of(GLM)
    body["signing_algo"] = algo
    with pytest.raises(AttestationError) as info:
        parse_attestation(body)
    assert info.value.code == "signing_algo_unsupported"
    assert info.value.message == (
        f"the attestation's signing_algo is {shown}: ed25519 is not supported (E2EE needs the "
        "secp256k1 key of an ecdsa report; ask for signing_algo=ecdsa)"
    )


@pytest.mark.parametrize("algo", ["ecdsa", "ECDSA", None, 25519, "ed25519-ish"])
def test_other_signing_algos_are_left_to_the_checks(algo: Any) -> None:
    body = body_of(GLM)
    body["signing_algo"] = algo
    assert parse_attestation(body).signing_public_key is not None


# --- the refusals, each with its message ----------------------------------------------------


def _refused(body: dict[str, Any]) -> AttestationError:
    with pytest.raises(AttestationError) as info:
        parse_attestation(body)
    return info.value


@pytest.mark.parametrize(
    ("fixture", "edit", "code", "message"),
    [
        (GLM, _drop("intel_quote"), "quote_missing", "the attestation has no intel_quote"),
        (
            GEMMA,
            _conflicting_quote,
            "quote_conflict",
            "the attestation carries two different quotes",
        ),
        (GLM, _drop("signing_address"), "signing_address_missing", None),
        (GLM, _set("signing_address", ""), "signing_address_missing", None),
        (
            GLM,
            _set("signing_key", "04" + "11" * 64),
            "signing_key_conflict",
            "signing_public_key and signing_key disagree",
        ),
        (
            GLM,
            _set("signing_public_key", 7),
            "signing_key_invalid",
            "signing_public_key is not a string",
        ),
        (GLM, _set("signing_key", ["04"]), "signing_key_invalid", "signing_key is not a string"),
        (
            GLM,
            _set("request_nonce", "00" * 32),
            "nonce_conflict",
            "the attestation echoes two different nonces",
        ),
        (
            GLM,
            _set("nvidia_payload", "{not json"),
            "nvidia_payload_invalid",
            "nvidia_payload is not valid JSON",
        ),
        (
            GLM,
            _set("nvidia_payload", "[1, 2]"),
            "nvidia_payload_invalid",
            "nvidia_payload is not a JSON object",
        ),
        (
            GLM,
            _set("nvidia_payload", 5),
            "nvidia_payload_invalid",
            "nvidia_payload is not a JSON object",
        ),
        (GEMMA, _set("event_log", "{not json"), "event_log_invalid", "event_log is not valid JSON"),
        (
            GLM,
            _set("event_log", "[1, 2]"),
            "event_log_invalid",
            "event_log is not a list of objects",
        ),
        (
            GLM,
            _set("event_log", {"a": 1}),
            "event_log_invalid",
            "event_log is not a list of objects",
        ),
        (GLM, _set("info", "a string"), "info_invalid", "info is not a JSON object"),
        (GLM, _set("info", [1]), "info_invalid", "info is not a JSON object"),
    ],
)
def test_each_refusal_has_its_code_and_message(
    fixture: Fixture, edit: Any, code: str, message: str | None
) -> None:
    body = body_of(fixture)
    edit(body)
    error = _refused(body)
    assert error.code == code
    assert error.message == (message or "the attestation has no signing_address")


@pytest.mark.parametrize(
    ("tcb_info", "message"),
    [
        ("{not json", "info.tcb_info is not valid JSON"),
        ("[1]", "info.tcb_info is not a JSON object"),
        (5, "info.tcb_info is not a JSON object"),
        (None, "info.tcb_info is not a JSON object"),
    ],
)
def test_a_tcb_info_that_is_not_an_object_is_refused(tcb_info: Any, message: str) -> None:
    body = body_of(GLM)
    body["info"]["tcb_info"] = tcb_info
    error = _refused(body)
    assert (error.code, error.message) == ("info_invalid", message)


# --- what is kept, and how ------------------------------------------------------------------


def test_the_upstream_model_falls_back_to_model_name() -> None:
    body = body_of(GLM)
    assert parse_attestation(body).upstream_model_name == body["upstream_model"]
    for value in (None, 5):
        body["upstream_model"] = value
        assert parse_attestation(body).upstream_model_name == body["model_name"]
    del body["model_name"]
    assert parse_attestation(body).upstream_model_name is None


@pytest.mark.parametrize(
    ("value", "kept"), [(True, True), (False, False), ("true", None), (1, None)]
)
def test_verified_is_kept_only_as_a_bool(value: Any, kept: bool | None) -> None:
    body = body_of(GLM)
    body["verified"] = value
    assert parse_attestation(body).verified is kept


def test_nonces_are_compared_without_case_and_kept_as_sent() -> None:
    body = body_of(GLM)
    body["nonce"] = body["request_nonce"].upper()
    assert parse_attestation(body).echoed_nonce == body["nonce"]
    del body["nonce"]
    assert parse_attestation(body).echoed_nonce == body["request_nonce"]
    del body["request_nonce"]
    assert parse_attestation(body).echoed_nonce is None
    body["nonce"] = 5
    assert parse_attestation(body).echoed_nonce is None


@pytest.mark.parametrize(
    ("public", "other"),
    [
        ("0x{key}", "{key}"),
        ("0X{upper}", "{key}"),
        ("{key}", "{bare}"),  # 64-byte X||Y is the same key
        ("0x{bare}", "{key}"),
        ("{key}", "{compressed}"),  # the same point, compressed
        ("0x{compressed}", "{bare}"),
    ],
)
def test_the_two_key_fields_agree_across_encodings(public: str, other: str) -> None:
    body = body_of(GLM)
    key = body["signing_public_key"].lower().removeprefix("0x")
    assert len(key) == 130
    compressed = PublicKey(bytes.fromhex(key)).format(compressed=True).hex()
    values = {"key": key, "upper": key.upper(), "bare": key[2:], "compressed": compressed}
    body["signing_public_key"] = public.format(**values)
    body["signing_key"] = other.format(**values)
    evidence = parse_attestation(body)
    assert evidence.signing_public_key == bytes.fromhex(key)
    assert evidence.signing_public_key_text == body["signing_public_key"]
    assert evidence.key_source == "signing_public_key"


@pytest.mark.parametrize(
    ("public", "other", "agree"),
    [
        ("0x04" + "11" * 64, "04" + "11" * 64, True),
        ("0X04" + "11" * 64, "04" + "11" * 64, True),
        ("04" + "11" * 64, "11" * 64, True),  # 64 bytes: X||Y
        ("04" + "11" * 64, "04" + "12" * 64, False),
        ("11" * 64, "0x" + "11" * 63 + "12", False),
    ],
)
def test_two_texts_that_are_no_key_are_compared_as_hex(
    public: str, other: str, agree: bool
) -> None:
    # Not points on the curve: the report is parsed (signing_key_valid then fails it) when the
    # two fields spell one value, and is a conflict when they do not.
    body = body_of(GLM)
    body["signing_public_key"], body["signing_key"] = public, other
    if not agree:
        assert _refused(body).code == "signing_key_conflict"
        return
    evidence = parse_attestation(body)
    assert evidence.signing_public_key is None
    assert evidence.signing_public_key_text == public


def test_another_valid_key_in_compressed_form_still_disagrees() -> None:
    body = body_of(GLM)
    other = generate_keypair().public
    body["signing_key"] = PublicKey(other).format(compressed=True).hex()
    assert _refused(body).code == "signing_key_conflict"


def test_a_key_with_0x_at_its_end_is_another_key() -> None:
    body = body_of(GLM)
    key = body["signing_public_key"].lower().removeprefix("0x")
    body["signing_public_key"] = key[:-2] + "0x"
    body["signing_key"] = key[:-2]
    assert _refused(body).code == "signing_key_conflict"


def test_signing_key_alone_is_the_key() -> None:
    body = body_of(GLM)
    del body["signing_public_key"]
    evidence = parse_attestation(body)
    assert evidence.key_source == "signing_key"
    assert evidence.signing_public_key_text == body["signing_key"]


@pytest.mark.parametrize("value", ["", None])
def test_an_empty_nvidia_payload_or_event_log_is_none(value: Any) -> None:
    body = body_of(GLM)
    body["nvidia_payload"] = value
    body["event_log"] = value
    evidence = parse_attestation(body)
    assert evidence.nvidia_payload is None
    assert evidence.event_log == []


def test_an_nvidia_payload_object_is_kept_as_a_copy() -> None:
    body = body_of(GLM)
    payload = json.loads(body["nvidia_payload"])
    body["nvidia_payload"] = payload
    evidence = parse_attestation(body)
    assert evidence.nvidia_payload == payload
    assert evidence.nvidia_payload is not payload


def test_a_tcb_info_json_string_is_decoded() -> None:
    body = body_of(GLM)
    tcb_info = body["info"]["tcb_info"]
    body["info"]["tcb_info"] = json.dumps(tcb_info)
    evidence = parse_attestation(body)
    assert evidence.info is not None
    assert evidence.info["tcb_info"] == tcb_info


def test_a_top_level_vm_config_fills_info_only_when_info_has_none() -> None:
    body = body_of(GEMMA)
    assert body["vm_config"] != "info's own"
    body["info"]["vm_config"] = "info's own"
    evidence = parse_attestation(body)
    assert evidence.info is not None
    assert evidence.info["vm_config"] == "info's own"
    del body["info"]["vm_config"]
    evidence = parse_attestation(body)
    assert evidence.info is not None
    assert evidence.info["vm_config"] == body["vm_config"]


def test_no_info_and_no_vm_config_is_no_info() -> None:
    body = body_of(GLM)
    del body["info"]
    assert parse_attestation(body).info is None
    body["info"] = {}
    assert parse_attestation(body).info is None
    body["vm_config"] = None
    assert parse_attestation(body).info is None


def test_the_aci_evidence_fills_info() -> None:
    body = body_of(ACI)
    evidence_part = body["attestation"]["evidence"]
    evidence_part |= {"app_compose": "{}", "compose_hash": "ab" * 32, "os_image_hash": "ef" * 32}
    assert parse_attestation(body).info == {
        "vm_config": evidence_part["vm_config"],
        "app_compose": "{}",
        "compose_hash": "ab" * 32,
        "os_image_hash": "ef" * 32,
    }
    # What info states itself is kept; what is not a string is not copied.
    evidence_part["os_image_hash"] = 5
    body["info"] = {"compose_hash": "cd" * 32, "vm_config": "info's own"}
    assert parse_attestation(body).info == {
        "compose_hash": "cd" * 32,
        "vm_config": "info's own",
        "app_compose": "{}",
    }


# --- the aci key ----------------------------------------------------------------------------


def aci_body(report_data_key: bytes, **attestation: Any) -> dict[str, Any]:
    """An aci body whose (synthetic) quote's REPORTDATA commits to ``report_data_key``."""
    report_data = address_of(report_data_key) + bytes(44)
    return {
        "api_version": "aci/1",
        "attestation": attestation,
        "intel_quote": synthetic_quote(report_data).hex(),
        "signing_address": address_hex(report_data_key),
    }


def test_an_aci_key_is_found_in_every_place_it_can_be() -> None:
    keys = generate_keypair()
    key = keys.public.hex()
    other = generate_keypair().public.hex()
    listed = aci_body(keys.public, workload_keyset={"e2ee_public_keys": [{"public_key": key}]})
    assert parse_attestation(listed).key_source == (
        "attestation.workload_keyset.e2ee_public_keys[0]"
    )
    custody = {
        "keys": [
            {"role": "e2ee", "public_key": other},
            {"role": "e2ee-v2", "public_key": key},
        ]
    }
    held = aci_body(keys.public, evidence={"key_custody": custody})
    evidence = parse_attestation(held)
    assert evidence.key_source == "attestation.evidence.key_custody.keys[1]"
    assert evidence.signing_public_key == keys.public
    for name in ("signing_public_key", "signing_key"):
        top = aci_body(keys.public, evidence={}) | {name: key}
        evidence = parse_attestation(top)
        assert (evidence.key_source, evidence.signing_public_key_text) == (name, key)
    both = aci_body(keys.public, evidence={}) | {"signing_public_key": key, "signing_key": key}
    assert parse_attestation(both).key_source == "signing_public_key"


@pytest.mark.parametrize(
    "entry",
    [
        {"role": "identity", "public_key": "{key}"},
        {"role": "E2EE", "public_key": "{key}"},
        {"role": 5, "public_key": "{key}"},
        {"public_key": "{key}"},
        {"role": "e2ee", "public_key": 5},
        {"role": "e2ee", "key": "{key}"},
        "{key}",
    ],
)
def test_only_e2ee_roles_of_the_custody_keys_are_candidates(entry: Any) -> None:
    keys = generate_keypair()
    key = keys.public.hex()
    filled = (
        {
            name: value.format(key=key) if isinstance(value, str) else value
            for name, value in entry.items()
        }
        if isinstance(entry, dict)
        else entry.format(key=key)
    )
    body = aci_body(keys.public, evidence={"key_custody": {"keys": [filled]}})
    evidence = parse_attestation(body)
    assert (evidence.signing_public_key, evidence.key_source) == (None, None)


@pytest.mark.parametrize(
    "attestation",
    [
        {"evidence": {"key_custody": {"keys": {"role": "e2ee"}}}},
        {"evidence": {"key_custody": "keys"}},
        {"evidence": "key_custody"},
        {"workload_keyset": {"e2ee_public_keys": {"public_key": "x"}}},
        {"workload_keyset": {"e2ee_public_keys": ["x", {"public_key": 5}]}},
        {"workload_keyset": "e2ee_public_keys"},
    ],
)
def test_malformed_key_lists_give_no_key(attestation: dict[str, Any]) -> None:
    keys = generate_keypair()
    evidence = parse_attestation(aci_body(keys.public, **attestation))
    assert (evidence.signing_public_key, evidence.key_source) == (None, None)


def test_an_aci_top_level_key_that_is_not_a_string_is_refused() -> None:
    keys = generate_keypair()
    body = aci_body(keys.public, evidence={}) | {"signing_key": 5}
    error = _refused(body)
    assert (error.code, error.message) == ("signing_key_invalid", "signing_key is not a string")


def test_an_aci_key_is_chosen_from_a_quote_of_another_tee_type() -> None:
    # The quote_tee_type check refuses such a quote; the key is still the one it binds.
    keys = generate_keypair()
    body = aci_body(
        keys.public, workload_keyset={"e2ee_public_keys": [{"public_key": keys.public.hex()}]}
    )
    report_data = address_of(keys.public) + bytes(44)
    body["intel_quote"] = synthetic_quote(report_data, tee_type=0).hex()
    assert parse_attestation(body).signing_public_key == keys.public


def test_an_aci_quote_that_does_not_parse_gives_no_key() -> None:
    keys = generate_keypair()
    body = aci_body(
        keys.public, workload_keyset={"e2ee_public_keys": [{"public_key": keys.public.hex()}]}
    )
    body["intel_quote"] = "00" * 10
    evidence = parse_attestation(body)
    assert (evidence.signing_public_key, evidence.signing_public_key_text) == (None, None)
