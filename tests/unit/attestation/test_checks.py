"""verify_evidence on hand-made edge cases: GPU evidence, long values, what details say."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import replace
from typing import Any

import pytest

from proxy.attestation import (
    NRAS_NOT_FETCHED,
    AttestationPolicy,
    AttestationReport,
    NrasEvidence,
    parse_attestation,
    verify_evidence,
)
from proxy.attestation import checks as checks_module
from proxy.attestation.compose import app_compose_of, parse_compose
from proxy.attestation.dcap import DcapResult, verify_quote_dcap
from proxy.attestation.measurements import known_status
from proxy.attestation.policy import NvidiaMode
from proxy.attestation.quote import parse_tdx_quote
from proxy.attestation.trust import ATTESTED, NOT_ATTESTED
from proxy.core.crypto import KeyPair, address_hex, generate_keypair, keypair_from_private
from tests.support.attestation_helpers import (
    FIXTURES_BY_NAME,
    Fixture,
    body_of,
    collateral_of,
    gpu_entry,
    load_json,
    nonce_of,
    policy_for,
    quote_of,
    spdm_evidence,
    synthetic_body,
    time_of,
    with_signing_key,
)

GLM = FIXTURES_BY_NAME["glm_5_1"]  # 8 GPUs, each with a nonce field and an SPDM request
QWEN = FIXTURES_BY_NAME["venice_qwen3_5_122b"]  # 8 GPUs, the nonce only in the SPDM request
GEMMA = FIXTURES_BY_NAME["gemma_3_27b_p"]  # 1 GPU, the nonce only in the SPDM request

KEYS = keypair_from_private(bytes(31) + b"\x07")
NONCE = bytes(range(32))
OTHER = bytes(range(1, 33))
# The synthetic body has no DCAP signature, event log or compose hash.
# The synthetic body's made-up TDX module and firmware are allowed explicitly (it has no event
# log or compose, so software checks are off; its quote carries no Intel signature).
STRUCTURAL = AttestationPolicy(
    dcap="off",
    software="off",
    extra_mrseam=frozenset({bytes(48).hex()}),
    extra_mrtd=frozenset({bytes(range(48)).hex()}),
)


MODEL_LABEL_NOTE = (
    " (Venice's unauthenticated label; "
    "model_binding says whether anything measured names the model)"
)


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
        {"evidence": "!" + spdm_evidence(NONCE)},  # not strictly base64
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
        "foreign-character",
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
    for missing in (None, 5, ["x"]):
        payload["nonce"] = missing
        report = synthetic(with_payload(body, payload))
        detail = report.check("gpu_nonce").detail
        assert detail == f"nvidia_payload nonce missing, sent {NONCE.hex()}"
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
    assert detail == f"response model {_named(model)}, requested 'e2ee-test'" + MODEL_LABEL_NOTE
    assert ("m" * 81 in detail) is False
    named = detail.split(", requested")[0]
    assert named.count("m") == 80 + 1  # the 80 kept, and "model"'s own m


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
    assert report.check("model_match").detail == (
        "response model missing, requested 'e2ee-test'" + MODEL_LABEL_NOTE
    )
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


# --- every check: its tier, a detail to read, False (not None) when it fails ----------------

TIER_OF = {
    "venice_verified_flag": "response",
    "model_match": "response",
    "nonce_echo": "response",
    "signing_key_valid": "binding",
    "signing_address_match": "binding",
    "quote_parse": "quote",
    "quote_tee_type": "quote",
    "quote_debug_disabled": "quote",
    "report_data_address": "binding",
    "report_data_padding": "binding",
    "report_data_nonce": "binding",
    "gpu_nonce": "gpu",
    "gpu_nras": "gpu",
    "dcap": "quote",
    "event_log_replay": "software",
    "compose_hash_binding": "software",
    "os_image_not_dev": "software",
    "measurements_pinned": "software",
    "compose_manager_quote": "quote",
    "compose_images_pinned": "software",
    "model_binding": "software",
    "mrseam_allowed": "measurements",
    "mrtd_allowed": "measurements",
    "measurements_known": "measurements",
    "keyset_digest": "custody",
    "keyset_membership": "custody",
    "keyset_endorsement": "custody",
    "custody_app_key": "custody",
    "custody_kms_root": "custody",
    "gateway_app_id": "custody",
    "keyset_expiry": "custody",
    "trust_level": "trust",
    "trust_not_downgraded": "trust",
}
# Checks that may report ok=None: not evaluated by policy, or informational (the trust-level
# checks added with the gateway work report None where they do not apply).
MAY_BE_NONE = {
    "gpu_nonce",
    "gpu_nras",
    "dcap",
    "compose_manager_quote",
    *[c for c, t in TIER_OF.items() if t in ("software", "measurements", "custody", "trust")],
}


def assert_well_formed(report: AttestationReport) -> None:
    """Each check in its tier with a detail; a failed one is False, not None, outside the
    software tier (which fails closed with None when it has nothing to evaluate) and an NRAS
    answer that was not fetched."""
    for check in report.checks:
        assert check.tier == TIER_OF[check.code], check
        assert isinstance(check.detail, str), check
        assert check.detail, check
        assert check.ok in (True, False) or check.code in MAY_BE_NONE, check
    for check in report.failures:
        not_checked = check.detail == NRAS_NOT_FETCHED or check.detail.startswith("not checked")
        if check.tier != "software" and not not_checked:
            assert check.ok is False, check


def _no_key(body: dict[str, Any]) -> dict[str, Any]:
    for name in ("signing_public_key", "signing_key"):
        body.pop(name, None)
    return body


def _bad_key(body: dict[str, Any]) -> dict[str, Any]:
    return with_signing_key(body, "04" + "00" * 64)


def _cut_quote(body: dict[str, Any]) -> dict[str, Any]:
    body["intel_quote"] = body["intel_quote"][:1000]
    return body


def _not_tdx(body: dict[str, Any]) -> dict[str, Any]:
    quote = bytearray(bytes.fromhex(body["intel_quote"]))
    quote[4] = 0
    body["intel_quote"] = quote.hex()
    return body


def _gpu_payload(change: Any) -> Any:
    def tamper(body: dict[str, Any]) -> dict[str, Any]:
        payload = payload_of(body)
        change(payload)
        return with_payload(body, payload)

    return tamper


def _no_payload(body: dict[str, Any]) -> dict[str, Any]:
    del body["nvidia_payload"]
    return body


TAMPERS = {
    "as-captured": lambda body: body,
    "no-key": _no_key,
    "bad-key": _bad_key,
    "cut-quote": _cut_quote,
    "not-tdx": _not_tdx,
    "no-gpu-payload": _no_payload,
    "no-gpu-evidence": _gpu_payload(lambda payload: payload.pop("evidence_list")),
    "other-gpu-nonce": _gpu_payload(lambda payload: payload.update(nonce=OTHER.hex())),
    "stale-gpu": _gpu_payload(lambda payload: payload["evidence_list"][0].update(nonce="00")),
}


@pytest.mark.parametrize("tamper", TAMPERS)
@pytest.mark.parametrize(
    "policy",
    [
        None,
        AttestationPolicy(dcap="off", nvidia="off", software="off"),
        AttestationPolicy(nvidia="nras"),
    ],
    ids=["default", "all-off", "nras"],
)
def test_every_check_has_its_tier_and_a_detail(tamper: str, policy: Any) -> None:
    body = TAMPERS[tamper](body_of(GLM))
    report = run(GLM, body, **({} if policy is None else {"policy": policy}))
    assert_well_formed(report)
    assert_well_formed(run(GLM, TAMPERS[tamper](body_of(GLM)), collateral=None))


@pytest.mark.parametrize("jwks", ["real", "empty"])
@pytest.mark.parametrize("tamper", ["as-captured", "seven-gpus"])
def test_every_check_has_its_tier_and_a_detail_with_nras(jwks: str, tamper: str) -> None:
    body = body_of(QWEN)
    if tamper == "seven-gpus":
        payload = payload_of(body)
        payload["evidence_list"] = payload["evidence_list"][:7]
        with_payload(body, payload)
    nras = _nras() if jwks == "real" else replace(_nras(), jwks={"keys": []})
    report = run(QWEN, body, policy=AttestationPolicy(nvidia="nras"), nras=nras)
    assert_well_formed(report)
    assert report.passed is (jwks == "real" and tamper == "as-captured")


def test_no_collateral_is_a_failed_quote_check() -> None:
    report = run(GLM, body_of(GLM), collateral=None)
    check = report.check("dcap")
    # Not checked is never passed: an enforced check without a verdict fails the report.
    assert (check.ok, check.enforced, check.tier, check.detail) == (
        None,
        True,
        "quote",
        "not checked: no DCAP collateral, so the quote's Intel signature was not verified",
    )
    assert check in report.failures
    assert not report.passed


def test_a_signing_key_that_is_missing_or_bad_is_named() -> None:
    missing = run(GLM, _no_key(body_of(GLM))).check("signing_key_valid")
    assert (missing.ok, missing.detail) == (False, "no signing_public_key in the attestation")
    bad = run(GLM, _bad_key(body_of(GLM))).check("signing_key_valid")
    assert (bad.ok, bad.detail) == (
        False,
        "signing_public_key is not a valid secp256k1 public key",
    )
    good = run(GLM, body_of(GLM)).check("signing_key_valid")
    assert (good.ok, good.detail) == (True, "secp256k1 key from signing_public_key")
    for code in ("signing_address_match", "report_data_address"):
        skipped = run(GLM, _no_key(body_of(GLM))).check(code)
        assert (skipped.ok, skipped.detail, skipped.tier) == (
            False,
            "not evaluated: signing_key_valid failed",
            "binding",
        )


def test_an_aci_report_without_a_key_bound_to_reportdata_says_so() -> None:
    aci = FIXTURES_BY_NAME["live_evidence_aci"]
    body = body_of(aci)
    keyset = body["attestation"]["workload_keyset"]
    for key in keyset["e2ee_public_keys"]:
        key["public_key"] = generate_keypair().public.hex()
    body["attestation"].get("evidence", {}).pop("key_custody", None)
    check = run(aci, body).check("signing_key_valid")
    assert (check.ok, check.detail) == (
        False,
        "no E2EE public key whose address equals REPORTDATA[0:20]",
    )


def test_quote_details_name_version_size_type_and_debug() -> None:
    body = body_of(GLM)
    report = run(GLM, body)
    size = len(body["intel_quote"]) // 2
    assert report.check("quote_parse").detail == f"TDX quote v4, {size} bytes"
    assert report.check("quote_tee_type").detail == "tee_type 0x81"
    assert (
        report.check("quote_debug_disabled").detail == "td_attributes 0000001000000000 (debug off)"
    )
    debug = synthetic_body(KEYS, NONCE)
    quote = bytearray(bytes.fromhex(debug["intel_quote"]))
    quote[168] |= 0x01
    debug["intel_quote"] = quote.hex()
    check = synthetic(debug).check("quote_debug_disabled")
    assert (check.ok, check.detail) == (False, "td_attributes 0100001000000000 (debug on)")


def test_a_quote_that_does_not_parse_is_named_and_its_dependents_skipped() -> None:
    report = run(GLM, _cut_quote(body_of(GLM)))
    parse = report.check("quote_parse")
    assert (parse.ok, parse.detail) == (
        False,
        "the quote is 500 bytes, shorter than the 636-byte TDX v4 body",
    )
    for code in ("quote_tee_type", "quote_debug_disabled", "dcap"):
        assert report.check(code).detail == "not evaluated: quote_parse failed", code
    not_tdx = run(GLM, _not_tdx(body_of(GLM)))
    assert not_tdx.check("quote_tee_type").detail == "tee_type 0x0"
    assert not_tdx.check("quote_debug_disabled").detail == "not evaluated: quote_tee_type failed"


@pytest.mark.parametrize(
    ("flag", "detail", "ok"),
    [
        (True, "verified=true", True),
        (False, "verified=false", False),
    ],
)
def test_venice_verified_flag_detail(flag: Any, detail: str, ok: bool) -> None:
    body = synthetic_body(KEYS, NONCE)
    body["verified"] = flag
    check = synthetic(body).check("venice_verified_flag")
    assert (check.ok, check.detail) == (ok, detail)
    del body["verified"]
    check = synthetic(body).check("venice_verified_flag")
    assert (check.ok, check.detail) == (False, "verified is missing")


def test_matching_response_fields_say_so() -> None:
    report = synthetic(synthetic_body(KEYS, NONCE))
    assert report.check("nonce_echo").detail == "echoed nonce matches"
    assert report.check("model_match").detail == (
        "response model 'e2ee-test', requested 'e2ee-test'" + MODEL_LABEL_NOTE
    )


def test_nvidia_and_dcap_off_say_so() -> None:
    policy = AttestationPolicy(dcap="off", nvidia="off")
    report = run(GLM, body_of(GLM), policy=policy)
    gpu = report.check("gpu_nonce")
    assert (gpu.ok, gpu.enforced, gpu.tier, gpu.detail) == (
        None,
        False,
        "gpu",
        "NVIDIA checks are off",
    )
    dcap = report.check("dcap")
    assert (dcap.ok, dcap.enforced, dcap.tier, dcap.detail) == (
        None,
        False,
        "quote",
        "DCAP is off: the quote signature was not verified",
    )
    assert report.tcb_status is None
    assert report.advisory_ids == ()


def test_dcap_names_every_field_that_differs(monkeypatch: pytest.MonkeyPatch) -> None:
    def skewed(quote: bytes, collateral: Any, now: int) -> DcapResult:
        result = verify_quote_dcap(quote, collateral, now)
        return replace(result, report=replace(result.report, mr_td=bytes(48), xfam=bytes(8)))

    monkeypatch.setattr(checks_module, "verify_quote_dcap", skewed)
    check = run(GLM, body_of(GLM)).check("dcap")
    assert (check.ok, check.tier) == (False, "quote")
    assert (
        check.detail == "the DCAP-verified TD report differs from the parsed quote in xfam, mr_td"
    )


def test_the_report_names_the_model_provider_and_upstream_model() -> None:
    report = run(GLM, body_of(GLM))
    assert (report.model, report.tee_provider, report.upstream_model) == (
        "e2ee-glm-5-1",
        "near-ai",
        "zai-org/GLM-5.1-FP8",
    )
    pinned = report.check("measurements_pinned")
    assert pinned.detail.startswith("no pins for 'e2ee-glm-5-1'; seen ")


# --- the report's facts, and how verify_evidence wires the measured and trust checks ----------

ACI = FIXTURES_BY_NAME["live_evidence_aci"]  # the gateway: no GPU, no compose, a key custody chain
GEMMA = FIXTURES_BY_NAME["gemma_3_27b_p"]  # a compose that names its models, unpinned images


def check_of(report: AttestationReport, code: str) -> tuple[bool | None, bool, str, str]:
    check = report.check(code)
    return check.ok, check.enforced, check.tier, check.detail


def test_the_facts_of_a_near_report_are_what_its_quote_and_compose_show() -> None:
    body = body_of(GLM)
    report = run(GLM, body)
    facts = report.facts
    assert set(facts) == {
        "classification",
        "measurements",
        "compose",
        "compose_bound",
        "compose_manager",
        "gateway",
    }
    assert facts["classification"] == ["a near report from the model's own CVM"]
    td = parse_tdx_quote(quote_of(body)).report
    app_compose = app_compose_of(parse_attestation(body).info)
    assert app_compose is not None
    measurements = dict(facts["measurements"])
    known = measurements.pop("known")
    assert measurements == {
        "mrseam": td.mr_seam.hex(),
        "mrtd": td.mr_td.hex(),
        "rtmr0": td.rtmr0.hex(),
        "rtmr1": td.rtmr1.hex(),
        "rtmr2": td.rtmr2.hex(),
        "rtmr3": td.rtmr3.hex(),
        "compose_hash": hashlib.sha256(app_compose.encode()).hexdigest(),
        "os_image_hash": "9b69bb1698bacbb6985409a2c272bcb892e09cdcea63d5399c6768b67d3ff677",
    }
    assert known == {
        name: known_status(measurements[name], name)
        for name in ("rtmr0", "rtmr1", "rtmr2", "compose_hash")
    }
    assert known["compose_hash"] == "e2ee-glm-5-1 (near-ai, compose-manager) 2026-06-04"
    assert known["rtmr1"] == "near-ai on dstack-nvidia-0.5.5, 2026-04-24 .. 2026-06-04"
    assert facts["compose"] == parse_compose(app_compose).to_dict()
    assert facts["compose_bound"] is True
    assert facts["compose_manager"] == {
        "deployed": [
            "GLM-5.1.yaml (proxy-glm51)",
            "GLM-5.1.yaml (model-proxy-registrar)",
            "GLM-5.1.yaml (proxy-glm51, model-proxy-registrar)",
        ],
        "actions_authenticated": True,
    }
    assert facts["gateway"] is None
    assert (report.attested, report.not_attested) == (ATTESTED["enclave"], NOT_ATTESTED["enclave"])


def test_the_measured_checks_of_a_near_report_see_its_compose_and_deployment() -> None:
    report = run(GLM, body_of(GLM))
    assert check_of(report, "compose_images_pinned") == (
        True,
        True,
        "software",
        "4 of 4 images pinned by digest",
    )
    ok, enforced, _, detail = check_of(report, "model_binding")
    assert (ok, enforced) == (None, False)
    assert detail.startswith(
        "nothing measured names the served model: model_match rests on Venice's unauthenticated "
        "label (upstream model zai-org/GLM-5.1-FP8); the measured deployment ran "
        "GLM-5.1.yaml (proxy-glm51)"
    )
    assert report.check("measurements_known").detail.startswith("all known; rtmr0 known (")
    assert "compose_hash known (e2ee-glm-5-1" in report.check("measurements_known").detail
    assert report.check("trust_not_downgraded").detail == (
        "no earlier trust level known for 'e2ee-glm-5-1'; enclave will be remembered"
    )


def test_a_compose_the_quote_does_not_bind_is_reported_but_not_bound() -> None:
    body = body_of(GLM)
    tcb = body["info"]["tcb_info"]
    tcb["app_compose"] += " "
    changed = tcb["app_compose"]
    facts = run(GLM, body).facts
    assert facts["compose"] == parse_compose(changed).to_dict()
    assert facts["compose_bound"] is False


def test_the_facts_of_the_gateway_name_its_custody_and_no_compose() -> None:
    report = run(ACI, body_of(ACI), policy=policy_for(ACI))
    facts = report.facts
    assert facts["classification"] == [
        "an aci/1 report: the attested CVM is the private-ai-gateway",
        "the attested VM declares no GPU, so it cannot be running the model",
    ]
    assert (facts["compose"], facts["compose_bound"], facts["compose_manager"]) == (
        None,
        False,
        None,
    )
    assert facts["gateway"]["app_id"] == "fdb7a14e5a6675f752e2cb69c9067a98ca402918"
    assert facts["measurements"]["os_image_hash"] == (
        "de9c74f0c85d0820ce075cb4a99f8e39f7b681be632907c5bf8bdc95ea72feb9"
    )
    assert (report.attested, report.not_attested) == (ATTESTED["gateway"], NOT_ATTESTED["gateway"])
    for code in ("keyset_digest", "keyset_membership", "custody_app_key", "gateway_app_id"):
        assert report.check(code).ok is True, code


def test_a_compose_that_names_the_model_binds_it_and_its_unpinned_images_are_named() -> None:
    strict = replace(policy_for(GEMMA), allow_unpinned_images=False)
    report = run(GEMMA, body_of(GEMMA), policy=strict)
    assert check_of(report, "model_binding")[:2] == (True, True)
    assert report.check("model_binding").detail.startswith(
        "the measured compose serves google/gemma-3-27b-it"
    )
    ok, enforced, _, detail = check_of(report, "compose_images_pinned")
    assert (ok, enforced) == (False, True)
    assert detail.startswith("0 of 11 images pinned by digest; not pinned: ")


def test_the_requested_model_binds_when_venice_names_no_upstream_model() -> None:
    body = body_of(GEMMA)
    for name in ("upstream_model", "model_name"):
        body.pop(name, None)
    report = run(GEMMA, body, expected_model="google/gemma-3-27b-it")
    assert report.check("model_binding").ok is True


@pytest.mark.parametrize("nvidia", ["nonce", "nras"])
def test_gpu_checks_on_a_gateway_that_relays_no_gpu_evidence_are_not_evaluated(
    nvidia: NvidiaMode,
) -> None:
    report = run(ACI, body_of(ACI), policy=replace(policy_for(ACI), nvidia=nvidia))
    detail = (
        "not evaluated: the gateway relayed no GPU evidence (and relayed evidence would not be "
        "bound to the attested CPU: the inference host is not attested either way)"
    )
    codes = ["gpu_nonce", "gpu_nras"] if nvidia == "nras" else ["gpu_nonce"]
    assert [check.code for check in report.checks if check.tier == "gpu"] == codes
    for code in codes:
        assert check_of(report, code) == (None, False, "gpu", detail)


def test_gpu_evidence_a_gateway_relays_is_checked() -> None:
    body = with_payload(body_of(ACI), {"nonce": nonce_of(ACI).hex(), "evidence_list": []})
    report = run(ACI, body, policy=replace(policy_for(ACI), nvidia="nonce"))
    assert report.check("gpu_nonce").ok is False
    assert report.check("gpu_nonce").enforced is True


def test_a_compose_manager_quote_under_a_failed_dcap_is_not_counted_twice() -> None:
    report = run(GLM, body_of(GLM), collateral=load_json(GLM.other_collateral))
    assert report.check("dcap").failed
    assert check_of(report, "compose_manager_quote") == (
        False,
        False,
        "quote",
        "not evaluated: dcap failed (its quote: DCAP verification failed: Signature is invalid "
        "for qe_report in quote)",
    )


def test_the_measured_checks_name_a_quote_that_does_not_parse() -> None:
    report = run(GLM, _cut_quote(body_of(GLM)))
    for code in ("compose_manager_quote", "mrseam_allowed", "measurements_known"):
        assert report.check(code).detail == "not evaluated: quote_parse failed", code
    assert report.facts["measurements"] == {}


def test_a_downgrade_names_where_the_earlier_level_was_remembered() -> None:
    report = run(ACI, body_of(ACI), policy=policy_for(ACI), remembered_trust="enclave")
    assert report.check("trust_not_downgraded").failed
    assert report.check("trust_not_downgraded").detail.startswith(
        f"DOWNGRADE: {ACI.model!r} was attested as enclave (the trust state file) and now"
    )
    elsewhere = run(
        ACI,
        body_of(ACI),
        policy=policy_for(ACI),
        remembered_trust="enclave",
        remembered_source="/var/lib/proxy/trust.json",
    )
    assert (
        "as enclave (/var/lib/proxy/trust.json)" in elsewhere.check("trust_not_downgraded").detail
    )


@pytest.mark.parametrize("software", ["require", "off"])
def test_a_gateway_log_that_does_not_replay_is_enforced_once(software: Any) -> None:
    # The app id comes from the event log; when the log fails, event_log_replay is the enforced
    # failure and the custody checks that needed the app id fail without being enforced. With
    # the software checks off, those custody checks are what refuses the report.
    body = body_of(ACI)
    evidence = body["attestation"]["evidence"]
    log = json.loads(evidence["event_log"])
    log[-1]["event_payload"] = "00" + log[-1]["event_payload"]
    evidence["event_log"] = json.dumps(log)
    report = run(ACI, body, policy=replace(policy_for(ACI), software=software))
    replay_enforced = software != "off"
    assert report.check("event_log_replay").enforced is replay_enforced
    assert report.check("event_log_replay").ok is False
    for code in ("gateway_app_id", "custody_kms_root"):
        ok, enforced, _, detail = check_of(report, code)
        assert (ok, enforced) == (False, not replay_enforced), code
        assert detail.startswith("not evaluated: no authenticated app id"), code


def test_a_gateway_quote_that_does_not_parse_leaves_the_app_id_unevaluated() -> None:
    body = body_of(ACI)
    body["intel_quote"] = body["attestation"]["evidence"]["quote"] = body["intel_quote"][:1000]
    report = run(ACI, body, policy=policy_for(ACI))
    assert check_of(report, "gateway_app_id")[::3] == (False, "not evaluated: quote_parse failed")
