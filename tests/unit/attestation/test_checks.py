"""verify_evidence on hand-made edge cases: GPU evidence, long values, what details say."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from typing import Any

import pytest

from proxy.attestation import (
    AttestationPolicy,
    AttestationReport,
    NrasEvidence,
    parse_attestation,
    verify_evidence,
)
from proxy.attestation import checks as checks_module
from proxy.attestation.dcap import DcapResult, verify_quote_dcap
from proxy.core.crypto import KeyPair, address_hex, keypair_from_private
from tests.support.attestation_helpers import (
    FIXTURES_BY_NAME,
    Fixture,
    body_of,
    collateral_of,
    gpu_entry,
    load_json,
    nonce_of,
    policy_for,
    spdm_evidence,
    synthetic_body,
    time_of,
)

GLM = FIXTURES_BY_NAME["glm_5_1"]  # 8 GPUs, each with a nonce field and an SPDM request
QWEN = FIXTURES_BY_NAME["venice_qwen3_5_122b"]  # 8 GPUs, the nonce only in the SPDM request
GEMMA = FIXTURES_BY_NAME["gemma_3_27b_p"]  # 1 GPU, the nonce only in the SPDM request

KEYS = keypair_from_private(bytes(31) + b"\x07")
NONCE = bytes(range(32))
OTHER = bytes(range(1, 33))
# The synthetic body has no DCAP signature, event log or compose hash.
STRUCTURAL = AttestationPolicy(dcap="off", software="off")


def run(fixture: Fixture, body: dict[str, Any], **overrides: Any) -> AttestationReport:
    """Verify a tampered copy of a real capture with that capture's own inputs."""
    arguments: dict[str, Any] = {
        "expected_model": fixture.model,
        "nonce": nonce_of(fixture),
        "policy": policy_for(fixture),
        "now": time_of(fixture),
        "collateral": collateral_of(fixture),
    }
    arguments.update(overrides)
    return verify_evidence(parse_attestation(body), **arguments)


def synthetic(body: dict[str, Any], *, model: str = "e2ee-test") -> AttestationReport:
    """Verify a synthetic body (see ``synthetic_body``) for NONCE, structural checks only."""
    return verify_evidence(
        parse_attestation(body), expected_model=model, nonce=NONCE, policy=STRUCTURAL, now=0
    )


def failed(report: AttestationReport) -> set[str]:
    return {check.code for check in report.failures}


def with_payload(body: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    body["nvidia_payload"] = json.dumps(payload)
    return body


def payload_of(body: dict[str, Any]) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(body["nvidia_payload"])
    return payload


def with_entries(entries: Any, *, missing: bool = False) -> dict[str, Any]:
    """A synthetic body whose payload carries our nonce and ``entries`` as its evidence list."""
    body = synthetic_body(KEYS, NONCE)
    payload = payload_of(body)
    if missing:
        del payload["evidence_list"]
    else:
        payload["evidence_list"] = entries
    return with_payload(body, payload)


def resealed(evidence: str, nonce: bytes) -> str:
    """Real GPU evidence whose SPDM request carries ``nonce`` instead (a replay with the nonce
    patched in would be caught by NRAS; here it is the request itself that is stale)."""
    raw = bytearray(base64.b64decode(evidence))
    raw[4:36] = nonce
    return base64.b64encode(bytes(raw)).decode()


# --- GPU evidence: our nonce with no GPU proves nothing -------------------------------------


@pytest.mark.parametrize(
    ("entries", "missing"),
    [(None, True), ([], False), (None, False), ({"GPU-0": {}}, False), ("GPU-0", False)],
    ids=["absent", "empty", "null", "object", "string"],
)
def test_a_payload_with_our_nonce_and_no_gpu_evidence_fails(entries: Any, missing: bool) -> None:
    report = synthetic(with_entries(entries, missing=missing))
    assert failed(report) == {"gpu_nonce"}
    assert report.check("gpu_nonce").detail == "nvidia_payload lists no GPU evidence"
    assert not report.passed


def test_one_gpu_with_our_nonce_passes() -> None:
    report = synthetic(with_entries([gpu_entry(NONCE)]))
    assert report.passed
    check = report.check("gpu_nonce")
    assert check.detail == "nvidia_payload nonce matches (1 GPUs, each with our nonce)"


@pytest.mark.parametrize("fixture", [GLM, QWEN, GEMMA], ids=lambda f: f.name)
def test_real_gpu_evidence_carries_our_nonce_in_each_spdm_request(fixture: Fixture) -> None:
    body = body_of(fixture)
    count = len(payload_of(body)["evidence_list"])
    check = run(fixture, body).check("gpu_nonce")
    assert check.ok is True
    assert check.detail == f"nvidia_payload nonce matches ({count} GPUs, each with our nonce)"


@pytest.mark.parametrize("fixture", [QWEN, GEMMA], ids=lambda f: f.name)
def test_stale_gpu_evidence_under_a_fresh_top_level_nonce_fails(fixture: Fixture) -> None:
    # Entries without a nonce field: the SPDM request is the only place their nonce is stated.
    body = body_of(fixture)
    payload = payload_of(body)
    entries = payload["evidence_list"]
    entries[0]["evidence"] = resealed(entries[0]["evidence"], OTHER)
    report = run(fixture, with_payload(body, payload))
    assert failed(report) == {"gpu_nonce"}
    assert report.check("gpu_nonce").detail == (
        f"1 of {len(entries)} GPU evidence entries carry another nonce"
    )


def test_a_per_gpu_nonce_field_does_not_cover_a_stale_spdm_request() -> None:
    body = body_of(GLM)
    payload = payload_of(body)
    entry = payload["evidence_list"][2]
    assert entry["nonce"] == nonce_of(GLM).hex()
    entry["evidence"] = resealed(entry["evidence"], OTHER)
    report = run(GLM, with_payload(body, payload))
    assert failed(report) == {"gpu_nonce"}
    assert report.check("gpu_nonce").detail == "1 of 8 GPU evidence entries carry another nonce"


def _spdm(nonce: bytes, header: bytes = b"\x11\xe0\x01\xff", size: int = 100) -> str:
    raw = (header + nonce + bytes(size))[:size]
    return base64.b64encode(raw).decode()


@pytest.mark.parametrize(
    "entry",
    [
        {"arch": "HOPPER"},
        {"evidence": "not base64 at all!"},
        {"evidence": 42},
        {"evidence": _spdm(NONCE, b"\x11\xe0\x00\xff")},  # no signature asked: no nonce sent
        {"evidence": _spdm(NONCE, b"\x21\xe0\x01\xff")},  # not SPDM 1.x
        {"evidence": _spdm(NONCE, b"\x11\xe1\x01\xff")},  # not GET_MEASUREMENTS
        {"evidence": _spdm(NONCE, size=35)},  # cut inside the nonce
        "GPU-0",
        None,
    ],
    ids=[
        "no-evidence",
        "not-base64",
        "not-a-string",
        "unsigned-request",
        "spdm-2",
        "other-request",
        "cut-nonce",
        "string-entry",
        "null-entry",
    ],
)
def test_a_gpu_entry_that_states_no_nonce_fails(entry: Any) -> None:
    report = synthetic(with_entries([gpu_entry(NONCE), entry]))
    assert failed(report) == {"gpu_nonce"}
    assert report.check("gpu_nonce").detail == "1 of 2 GPU evidence entries carry no nonce"


@pytest.mark.parametrize(
    "evidence",
    [_spdm(NONCE, size=36), _spdm(NONCE, b"\x10\xe0\x03\x00"), _spdm(NONCE, b"\x12\xe0\x01\x01")],
    ids=["just-long-enough", "spdm-1.0", "spdm-1.2"],
)
def test_any_spdm_1x_signed_measurement_request_states_its_nonce(evidence: str) -> None:
    assert synthetic(with_entries([{"evidence": evidence}])).passed
    other = _spdm(OTHER, base64.b64decode(evidence)[:4], len(base64.b64decode(evidence)))
    report = synthetic(with_entries([{"evidence": other}]))
    assert report.check("gpu_nonce").detail == "1 of 1 GPU evidence entries carry another nonce"


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (NONCE.hex().upper(), True),
        (f"  {NONCE.hex()}\n", True),
        (OTHER.hex(), False),
        (42, False),
        (None, False),
        ("", False),
    ],
)
def test_a_per_gpu_nonce_field_must_be_ours(value: Any, ok: bool) -> None:
    entry = {"nonce": value}  # no SPDM evidence: the field alone states the nonce
    report = synthetic(with_entries([gpu_entry(NONCE, field=NONCE), entry]))
    assert report.check("gpu_nonce").ok is ok
    if not ok:
        assert report.check("gpu_nonce").detail == (
            "1 of 2 GPU evidence entries carry another nonce"
        )


def test_every_bad_gpu_entry_is_counted() -> None:
    entries = [
        gpu_entry(NONCE),
        gpu_entry(OTHER),
        gpu_entry(NONCE, field=OTHER),
        {"arch": "HOPPER"},
        gpu_entry(NONCE, field=NONCE),
    ]
    report = synthetic(with_entries(entries))
    assert report.check("gpu_nonce").detail == (
        "2 of 5 GPU evidence entries carry another nonce; "
        "1 of 5 GPU evidence entries carry no nonce"
    )


def test_the_top_level_nonce_must_still_be_ours() -> None:
    body = synthetic_body(KEYS, NONCE)
    payload = payload_of(body)
    payload["nonce"] = OTHER.hex()
    report = synthetic(with_payload(body, payload))
    assert report.check("gpu_nonce").detail == (
        f"nvidia_payload nonce {OTHER.hex()!r}, sent {NONCE.hex()}"
    )
    del payload["nonce"]
    report = synthetic(with_payload(body, payload))
    assert report.check("gpu_nonce").detail == f"nvidia_payload nonce missing, sent {NONCE.hex()}"


# --- nvidia = "nras": odd payloads never make verify_evidence raise --------------------------


def _nras() -> NrasEvidence:
    return NrasEvidence(
        load_json("venice_qwen3_5_122b_20260424_nras_response.json"),
        load_json("venice_qwen3_5_122b_20260424_nras_jwks.json"),
    )


@pytest.mark.parametrize(
    "change",
    ["no-payload", "no-list", "list-is-object", "list-is-string"],
)
def test_nras_with_a_payload_that_lists_no_gpus_fails_gpu_nonce(change: str) -> None:
    body = body_of(QWEN)
    payload = payload_of(body)
    if change == "no-payload":
        del body["nvidia_payload"]
    elif change == "no-list":
        del payload["evidence_list"]
    else:
        payload["evidence_list"] = {"GPU-0": {}} if change == "list-is-object" else "GPU-0"
    if change != "no-payload":
        with_payload(body, payload)
    report = run(QWEN, body, policy=AttestationPolicy(nvidia="nras"), nras=_nras())
    assert failed(report) == {"gpu_nonce"}
    assert report.check("gpu_nras").ok is True  # NRAS itself verified the 8 GPUs it was sent
    expected = (
        "no nvidia_payload in the attestation"
        if change == "no-payload"
        else "nvidia_payload lists no GPU evidence"
    )
    assert report.check("gpu_nonce").detail == expected


def test_nras_detail_names_the_gpus_and_when_the_tokens_expire() -> None:
    report = run(QWEN, body_of(QWEN), policy=AttestationPolicy(nvidia="nras"), nras=_nras())
    assert report.passed
    assert report.check("gpu_nras").detail == (
        "NRAS verified 8 GPUs (GH100) for our nonce; tokens expire at 1776999513"
    )


# --- long values are cut to 80 characters in details ----------------------------------------


def _named(value: str, limit: int = 80) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "…")


@pytest.mark.parametrize("length", [80, 81])
def test_a_long_response_model_is_cut_in_the_detail(length: int) -> None:
    model = "m" * length
    report = synthetic(synthetic_body(KEYS, NONCE, model=model), model="e2ee-test")
    detail = report.check("model_match").detail
    assert detail == f"response model {_named(model)}, requested 'e2ee-test'"
    assert ("m" * 81 in detail) is False
    assert detail.count("m") == 80 + 1  # the 80 kept, and "model"'s own m


@pytest.mark.parametrize("length", [80, 81])
def test_a_long_echoed_nonce_is_cut_in_the_detail(length: int) -> None:
    body = synthetic_body(KEYS, NONCE)
    body["nonce"] = body["request_nonce"] = "e" * length
    detail = synthetic(body).check("nonce_echo").detail
    assert detail == f"echoed {_named('e' * length)}, sent {NONCE.hex()}"


@pytest.mark.parametrize("length", [80, 81])
def test_a_long_gpu_nonce_is_cut_in_the_detail(length: int) -> None:
    body = synthetic_body(KEYS, NONCE)
    payload = payload_of(body)
    payload["nonce"] = "f" * length
    detail = synthetic(with_payload(body, payload)).check("gpu_nonce").detail
    assert detail == f"nvidia_payload nonce {_named('f' * length)}, sent {NONCE.hex()}"


def test_missing_response_fields_are_named_missing() -> None:
    body = synthetic_body(KEYS, NONCE)
    del body["model"], body["nonce"], body["request_nonce"]
    report = synthetic(body)
    assert report.check("model_match").detail == "response model missing, requested 'e2ee-test'"
    assert report.check("nonce_echo").detail == f"echoed missing, sent {NONCE.hex()}"


@pytest.mark.parametrize("length", [44, 45])
def test_a_long_signing_address_is_cut_at_44_characters(length: int) -> None:
    body = synthetic_body(KEYS, NONCE)
    body["signing_address"] = ("0x" + "a" * 60)[:length]
    detail = synthetic(body).check("signing_address_match").detail
    claimed = _named(body["signing_address"], 44)
    assert detail == f"signing_address {claimed} != key address {address_hex(KEYS.public)}"


# --- what the binding details say -----------------------------------------------------------


def _address(keys: KeyPair) -> str:
    return address_hex(keys.public)


def test_binding_details_say_equal_when_equal() -> None:
    report = synthetic(synthetic_body(KEYS, NONCE))
    address = _address(KEYS)
    assert report.check("signing_address_match").detail == (
        f"signing_address {address!r} == key address {address}"
    )
    assert report.check("report_data_address").detail == (
        f"REPORTDATA[0:20] {address} == key address {address}"
    )
    assert report.check("report_data_padding").detail == f"REPORTDATA[20:32] {bytes(12).hex()}"
    assert report.check("report_data_nonce").detail == (
        f"REPORTDATA[32:64] {NONCE.hex()} == nonce {NONCE.hex()}"
    )


def test_binding_details_say_different_when_different() -> None:
    other_keys = keypair_from_private(bytes(31) + b"\x09")
    body = synthetic_body(other_keys, NONCE)  # the quote binds other_keys and NONCE
    body["signing_public_key"] = KEYS.public.hex()
    body["signing_address"] = _address(other_keys)
    report = verify_evidence(
        parse_attestation(body), expected_model="e2ee-test", nonce=OTHER, policy=STRUCTURAL, now=0
    )
    assert report.check("signing_address_match").detail == (
        f"signing_address {_address(other_keys)!r} != key address {_address(KEYS)}"
    )
    assert report.check("report_data_address").detail == (
        f"REPORTDATA[0:20] {_address(other_keys)} != key address {_address(KEYS)}"
    )
    assert report.check("report_data_nonce").detail == (
        f"REPORTDATA[32:64] {NONCE.hex()} != nonce {OTHER.hex()}"
    )
    assert {"signing_address_match", "report_data_address", "report_data_nonce"} <= failed(report)


# --- DCAP's advisories reach the report -----------------------------------------------------


def test_dcap_advisories_are_in_the_report_and_its_detail(monkeypatch: pytest.MonkeyPatch) -> None:
    def with_advisories(quote: bytes, collateral: Any, now: int) -> DcapResult:
        result = verify_quote_dcap(quote, collateral, now)
        return replace(
            result, status="SWHardeningNeeded", advisory_ids=("INTEL-SA-00837", "INTEL-SA-00615")
        )

    monkeypatch.setattr(checks_module, "verify_quote_dcap", with_advisories)
    policy = AttestationPolicy(
        nvidia="nonce", allowed_tcb_status=frozenset({"UpToDate", "SWHardeningNeeded"})
    )
    report = run(GLM, body_of(GLM), policy=policy)
    assert report.passed
    assert report.tcb_status == "SWHardeningNeeded"
    assert report.advisory_ids == ("INTEL-SA-00837", "INTEL-SA-00615")
    assert report.to_dict()["advisory_ids"] == ["INTEL-SA-00837", "INTEL-SA-00615"]
    assert report.check("dcap").detail == (
        "TCB status SWHardeningNeeded; advisories INTEL-SA-00837, INTEL-SA-00615"
    )


def test_a_status_the_policy_refuses_is_named_in_the_detail() -> None:
    policy = AttestationPolicy(nvidia="nonce", allowed_tcb_status=frozenset({"OutOfDate"}))
    report = run(GLM, body_of(GLM), policy=policy)
    assert report.check("dcap").detail == "TCB status UpToDate (not allowed by policy)"
    assert report.advisory_ids == ()
    assert report.tcb_status == "UpToDate"


def test_no_advisories_leave_the_detail_plain() -> None:
    report = run(GLM, body_of(GLM))
    assert report.check("dcap").detail == "TCB status UpToDate"
    assert report.advisory_ids == ()


def test_spdm_helper_matches_the_real_evidence_layout() -> None:
    real = payload_of(body_of(QWEN))["evidence_list"][0]["evidence"]
    assert base64.b64decode(real)[:4] == base64.b64decode(spdm_evidence(NONCE))[:4]
    assert base64.b64decode(real)[4:36] == nonce_of(QWEN)
