"""verify_evidence on the real captures, on one-field tampered copies, and under each policy."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.attestation import (
    CHECK_CODES,
    NRAS_NOT_FETCHED,
    NRAS_NOT_IMPLEMENTED,
    AttestationPolicy,
    AttestationReport,
    enclave_key,
    parse_attestation,
    verify_evidence,
)
from proxy.attestation import checks as checks_module
from proxy.attestation.dcap import DcapResult, verify_quote_dcap
from proxy.core.crypto import address_hex, generate_keypair
from proxy.core.errors import AttestationError
from tests.support.attestation_helpers import (
    FIXTURE_IDS,
    FIXTURE_LIST,
    FIXTURES_BY_NAME,
    Fixture,
    body_of,
    collateral_of,
    flip_quote_byte,
    load_json,
    nonce_of,
    policy_for,
    synthetic_body,
    time_of,
    with_quote,
    with_signing_key,
)

GPU_FIXTURES = [fixture for fixture in FIXTURE_LIST if fixture.has_gpu]
GLM = FIXTURES_BY_NAME["glm_5_1"]
DAY = 86_400


def run(
    fixture: Fixture,
    body: dict[str, Any] | None = None,
    *,
    nonce: bytes | None = None,
    model: str | None = None,
    policy: AttestationPolicy | None = None,
    now: int | None = None,
    collateral: dict[str, Any] | None = None,
    without_collateral: bool = False,
) -> AttestationReport:
    """Verify a (possibly tampered) body of ``fixture`` with its own inputs unless overridden."""
    return verify_evidence(
        parse_attestation(body if body is not None else body_of(fixture)),
        expected_model=model if model is not None else fixture.model,
        nonce=nonce if nonce is not None else nonce_of(fixture),
        policy=policy if policy is not None else policy_for(fixture),
        now=now if now is not None else time_of(fixture),
        collateral=None if without_collateral else (collateral or collateral_of(fixture)),
    )


def failed(report: AttestationReport) -> set[str]:
    return {check.code for check in report.failures}


# --- the real captures ---------------------------------------------------------------------


@pytest.mark.parametrize("fixture", FIXTURE_LIST, ids=FIXTURE_IDS)
def test_every_real_capture_passes_every_check(fixture: Fixture) -> None:
    report = run(fixture)
    assert report.failures == ()
    assert report.passed
    assert report.tcb_status == "UpToDate"
    assert report.shape == fixture.shape
    assert report.signing_address == fixture.address
    assert report.nonce == nonce_of(fixture).hex()
    assert report.check("dcap").ok is True
    for code in (
        "report_data_address",
        "report_data_padding",
        "report_data_nonce",
        "signing_address_match",
    ):
        assert report.check(code).ok is True
    key = enclave_key(report)
    assert len(key) == 65
    assert address_hex(key) == fixture.address
    report.raise_for_failure()


@pytest.mark.parametrize("fixture", GPU_FIXTURES, ids=lambda f: f.name)
def test_gpu_nonce_passes_on_captures_with_gpu_evidence(fixture: Fixture) -> None:
    check = run(fixture).check("gpu_nonce")
    assert (check.ok, check.enforced, check.tier) == (True, True, "gpu")


def test_checks_run_in_the_documented_order() -> None:
    report = run(GLM, policy=AttestationPolicy(nvidia="nras"))
    assert tuple(check.code for check in report.checks) == CHECK_CODES


# --- one tamper at a time: each fails with its own code -------------------------------------


def _expect(fixture: Fixture, near: set[str], aci: set[str] | None = None) -> set[str]:
    return aci if (aci is not None and fixture.shape == "aci") else near


@pytest.mark.parametrize("fixture", FIXTURE_LIST, ids=FIXTURE_IDS)
def test_changed_quote_body_byte_fails_only_dcap(fixture: Fixture) -> None:
    report = run(fixture, flip_quote_byte(body_of(fixture), 184 + 7))
    # The byte is in MRTD, so the firmware is also not one the measurement policy knows.
    assert failed(report) == {"dcap", "mrtd_allowed"}
    assert "signature" in report.check("dcap").detail


@pytest.mark.parametrize("fixture", FIXTURE_LIST, ids=FIXTURE_IDS)
def test_report_data_address_byte(fixture: Fixture) -> None:
    report = run(fixture, flip_quote_byte(body_of(fixture), 568 + 3))
    # aci picks its key by REPORTDATA[0:20], so there no key is found at all.
    expected = _expect(
        fixture,
        {"report_data_address", "dcap"},
        {"signing_key_valid", "signing_address_match", "report_data_address", "dcap"},
    )
    assert failed(report) == expected
    assert report.failures[0].code == min(expected, key=CHECK_CODES.index)


@pytest.mark.parametrize("fixture", FIXTURE_LIST, ids=FIXTURE_IDS)
def test_report_data_padding_byte(fixture: Fixture) -> None:
    report = run(fixture, flip_quote_byte(body_of(fixture), 568 + 25))
    assert failed(report) == {"report_data_padding", "dcap"}
    assert report.failures[0].code == "report_data_padding"


@pytest.mark.parametrize("fixture", FIXTURE_LIST, ids=FIXTURE_IDS)
def test_report_data_nonce_byte(fixture: Fixture) -> None:
    report = run(fixture, flip_quote_byte(body_of(fixture), 568 + 63, 0x80))
    assert failed(report) == {"report_data_nonce", "dcap"}
    assert report.failures[0].code == "report_data_nonce"


@pytest.mark.parametrize("fixture", FIXTURE_LIST, ids=FIXTURE_IDS)
def test_debug_bit_set(fixture: Fixture) -> None:
    report = run(fixture, flip_quote_byte(body_of(fixture), 168))
    assert failed(report) == {"quote_debug_disabled", "dcap"}
    assert "debug on" in report.check("quote_debug_disabled").detail


@pytest.mark.parametrize("fixture", FIXTURE_LIST, ids=FIXTURE_IDS)
def test_wrong_nonce_passed_to_verify(fixture: Fixture) -> None:
    wrong = bytes(b ^ 0xFF for b in nonce_of(fixture))
    report = run(fixture, nonce=wrong)
    near = {"nonce_echo", "report_data_nonce", "gpu_nonce"}
    if "compose_manager_attestation" in body_of(fixture):
        near.add("compose_manager_quote")  # its own quote binds the nonce too
    assert failed(report) == _expect(fixture, near, {"nonce_echo", "report_data_nonce"})
    assert report.failures[0].code == "nonce_echo"


@pytest.mark.parametrize("fixture", FIXTURE_LIST, ids=FIXTURE_IDS)
def test_signing_address_altered(fixture: Fixture) -> None:
    body = body_of(fixture)
    address = body["signing_address"]
    body["signing_address"] = address[:-1] + ("1" if address[-1] != "1" else "2")
    report = run(fixture, body)
    assert failed(report) == {"signing_address_match"}


@pytest.mark.parametrize("fixture", FIXTURE_LIST, ids=FIXTURE_IDS)
def test_eip55_and_lowercase_addresses_both_match(fixture: Fixture) -> None:
    body = body_of(fixture)
    body["signing_address"] = body["signing_address"].lower()
    assert run(fixture, body).passed
    body["signing_address"] = "0x" + body["signing_address"][2:].upper()
    assert run(fixture, body).passed


@pytest.mark.parametrize("fixture", GPU_FIXTURES, ids=lambda f: f.name)
def test_signing_key_replaced_by_another_valid_key(fixture: Fixture) -> None:
    body = with_signing_key(body_of(fixture), generate_keypair().public.hex())
    report = run(fixture, body)
    assert failed(report) == {"signing_address_match", "report_data_address"}
    assert report.failures[0].code == "signing_address_match"
    with pytest.raises(AttestationError) as info:
        enclave_key(report)
    assert info.value.code == "signing_address_match"


@pytest.mark.parametrize("fixture", GPU_FIXTURES, ids=lambda f: f.name)
def test_signing_key_that_is_not_a_point(fixture: Fixture) -> None:
    body = with_signing_key(body_of(fixture), "04" + "ff" * 64)
    report = run(fixture, body)
    assert failed(report) == {"signing_key_valid", "signing_address_match", "report_data_address"}
    assert "not evaluated: signing_key_valid failed" in report.check("report_data_address").detail


def test_missing_signing_key_fails_closed() -> None:
    fixture = FIXTURES_BY_NAME["gemma_3_27b_p"]
    body = body_of(fixture)
    del body["signing_public_key"]
    report = run(fixture, body)
    assert report.failures[0].code == "signing_key_valid"
    assert report.signing_public_key is None


def test_aci_without_a_bound_e2ee_key_fails_closed() -> None:
    fixture = FIXTURES_BY_NAME["live_evidence_aci"]
    body = body_of(fixture)
    for entry in body["attestation"]["workload_keyset"]["e2ee_public_keys"]:
        entry["public_key"] = generate_keypair().public.hex()
    for entry in body["attestation"]["evidence"]["key_custody"]["keys"]:
        entry["public_key"] = generate_keypair().public.hex()
    report = run(fixture, body)
    assert failed(report) == {
        "signing_key_valid",
        "signing_address_match",
        "report_data_address",
        "keyset_digest",  # the keyset's keys changed, so its digest no longer matches
    }
    assert "REPORTDATA[0:20]" in report.check("signing_key_valid").detail


@pytest.mark.parametrize("fixture", FIXTURE_LIST, ids=FIXTURE_IDS)
@pytest.mark.parametrize("value", [False, None, "true", 1])
def test_verified_flag_not_true(fixture: Fixture, value: Any) -> None:
    body = body_of(fixture)
    if value is None:
        del body["verified"]
    else:
        body["verified"] = value
    assert failed(run(fixture, body)) == {"venice_verified_flag"}


@pytest.mark.parametrize("fixture", FIXTURE_LIST, ids=FIXTURE_IDS)
def test_wrong_model(fixture: Fixture) -> None:
    report = run(fixture, model="e2ee-some-other-model")
    assert failed(report) == {"model_match"}
    assert "e2ee-some-other-model" in report.check("model_match").detail


@pytest.mark.parametrize("fixture", GPU_FIXTURES, ids=lambda f: f.name)
def test_gpu_payload_nonce_altered(fixture: Fixture) -> None:
    body = body_of(fixture)
    payload = json.loads(body["nvidia_payload"])
    payload["nonce"] = "00" * 32
    body["nvidia_payload"] = json.dumps(payload)
    assert failed(run(fixture, body)) == {"gpu_nonce"}


def test_one_gpus_own_nonce_altered() -> None:
    body = body_of(GLM)
    payload = json.loads(body["nvidia_payload"])
    payload["evidence_list"][5]["nonce"] = "11" * 32
    body["nvidia_payload"] = json.dumps(payload)
    report = run(GLM, body)
    assert failed(report) == {"gpu_nonce"}
    assert "1 of 8" in report.check("gpu_nonce").detail


def test_missing_gpu_payload_fails_when_gpu_checks_are_on() -> None:
    body = body_of(GLM)
    del body["nvidia_payload"]
    assert failed(run(GLM, body)) == {"gpu_nonce"}
    assert run(GLM, body, policy=AttestationPolicy(nvidia="off")).passed


@pytest.mark.parametrize("fixture", FIXTURE_LIST, ids=FIXTURE_IDS)
def test_another_captures_collateral(fixture: Fixture) -> None:
    report = run(fixture, collateral=load_json(fixture.other_collateral))
    assert failed(report) == {"dcap"}
    assert report.tcb_status is None


@pytest.mark.parametrize("fixture", FIXTURE_LIST, ids=FIXTURE_IDS)
def test_now_past_the_collateral_expiry(fixture: Fixture) -> None:
    report = run(fixture, now=time_of(fixture) + 40 * DAY)
    assert failed(report) == {"dcap"}
    assert "expired" in report.check("dcap").detail


@pytest.mark.parametrize("fixture", FIXTURE_LIST, ids=FIXTURE_IDS)
def test_now_before_the_collateral_was_issued(fixture: Fixture) -> None:
    assert failed(run(fixture, now=time_of(fixture) - 40 * DAY)) == {"dcap"}


def test_a_non_tdx_quote_skips_the_td_report_checks() -> None:
    body = flip_quote_byte(body_of(GLM), 4, 0x81)  # tee_type 0x81 -> 0 (SGX)
    report = run(GLM, body)
    assert report.check("quote_parse").ok is True
    assert report.check("quote_tee_type").ok is False
    for code in ("quote_debug_disabled", "report_data_padding", "report_data_nonce"):
        assert report.check(code).detail == "not evaluated: quote_tee_type failed"
    assert report.check("dcap").ok is False


def test_an_unparseable_quote_fails_every_quote_dependent_check() -> None:
    body = body_of(GLM)
    body["intel_quote"] = body["intel_quote"][:1200]
    report = run(GLM, body)
    assert failed(report) == {
        "quote_parse",
        "quote_tee_type",
        "quote_debug_disabled",
        "report_data_address",
        "report_data_padding",
        "report_data_nonce",
        "dcap",
        "event_log_replay",
        "compose_hash_binding",
    }
    assert report.failures[0].code == "quote_parse"
    assert report.check("event_log_replay").detail == "not evaluated: quote_parse failed"


# --- policy ---------------------------------------------------------------------------------


def test_dcap_off_is_reported_but_not_enforced() -> None:
    report = run(GLM, policy=AttestationPolicy(dcap="off"), without_collateral=True)
    check = report.check("dcap")
    assert (check.ok, check.enforced) == (None, False)
    assert "DCAP is off" in check.detail
    assert report.passed
    assert report.tcb_status is None


def test_dcap_required_without_collateral_fails() -> None:
    report = run(GLM, without_collateral=True)
    check = report.check("dcap")
    assert (check.ok, check.enforced) == (None, True)
    assert check.detail.startswith("not checked: no DCAP collateral")
    assert failed(report) == {"dcap"}


def test_nvidia_off_reports_gpu_nonce_unenforced() -> None:
    check = run(GLM, policy=AttestationPolicy(nvidia="off")).check("gpu_nonce")
    assert (check.ok, check.enforced) == (None, False)


def test_nvidia_nras_without_a_fetched_answer_fails_closed() -> None:
    report = run(GLM, policy=AttestationPolicy(nvidia="nras"))
    nras = report.check("gpu_nras")
    assert (nras.ok, nras.enforced, nras.detail) == (None, True, NRAS_NOT_FETCHED)
    assert NRAS_NOT_IMPLEMENTED == NRAS_NOT_FETCHED  # the old name still imports
    assert report.check("gpu_nonce").ok is True
    assert failed(report) == {"gpu_nras"}
    assert not report.passed


def test_tcb_status_outside_the_allowed_set_fails() -> None:
    policy = AttestationPolicy(allowed_tcb_status=frozenset({"SWHardeningNeeded"}))
    report = run(GLM, policy=policy)
    assert failed(report) == {"dcap"}
    assert report.tcb_status == "UpToDate"
    assert "not allowed" in report.check("dcap").detail


def test_revoked_is_never_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    def revoked(quote: bytes, collateral: Any, now: int) -> DcapResult:
        return replace(verify_quote_dcap(quote, collateral, now), status="Revoked")

    monkeypatch.setattr(checks_module, "verify_quote_dcap", revoked)
    policy = AttestationPolicy(allowed_tcb_status=frozenset({"UpToDate", "Revoked"}))
    report = run(GLM, policy=policy)
    assert failed(report) == {"dcap"}
    assert report.tcb_status == "Revoked"
    assert not policy.tcb_status_allowed("Revoked")
    assert policy.tcb_status_allowed("UpToDate")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("report_data", bytes(64)),
        ("td_attributes", bytes(8)),
        ("mr_td", bytes(48)),
        ("mr_config_id", b"\x01" * 48),
        ("mr_seam", bytes(48)),
        ("rtmrs", (bytes(48),) * 4),
        ("xfam", bytes(8)),
        ("mr_owner", b"\x02" * 48),
    ],
)
def test_dcap_report_disagreeing_with_the_parsed_quote_fails(
    monkeypatch: pytest.MonkeyPatch, field: str, value: Any
) -> None:
    def skewed(quote: bytes, collateral: Any, now: int) -> DcapResult:
        result = verify_quote_dcap(quote, collateral, now)
        return replace(result, report=replace(result.report, **{field: value}))

    monkeypatch.setattr(checks_module, "verify_quote_dcap", skewed)
    report = run(GLM)
    assert failed(report) == {"dcap"}
    assert report.check("dcap").detail.endswith(f"differs from the parsed quote in {field}")


@pytest.mark.parametrize(
    ("dcap", "nvidia"), [("required", "nonce"), ("REQUIRE", "gpu"), ("", "NRAS")]
)
def test_unknown_policy_values_fall_back_to_strict(dcap: str, nvidia: str) -> None:
    policy = AttestationPolicy(dcap=dcap, nvidia=nvidia)  # type: ignore[arg-type]
    report = run(GLM, without_collateral=True, policy=policy)
    assert report.check("dcap").enforced
    assert report.check("gpu_nonce").enforced
    assert not report.passed


# --- the report -----------------------------------------------------------------------------


def test_report_to_dict_is_json_safe_and_complete() -> None:
    report = run(GLM, flip_quote_byte(body_of(GLM), 568 + 40))
    document = json.loads(json.dumps(report.to_dict()))
    assert document["passed"] is False
    assert document["failures"] == ["report_data_nonce", "dcap"]
    assert document["signing_address"] == GLM.address
    assert document["signing_public_key"].startswith("04")
    assert [c["code"] for c in document["checks"]] == [c.code for c in report.checks]
    assert set(document["checks"][0]) == {"code", "ok", "enforced", "detail", "tier"}
    assert {c["tier"] for c in document["checks"]} == {
        "response",
        "binding",
        "quote",
        "gpu",
        "software",
        "measurements",
        "custody",
        "trust",
    }
    assert document["trust_level"] == "enclave"
    assert document["not_attested"]


def test_raise_for_failure_names_every_failed_check() -> None:
    report = run(GLM, flip_quote_byte(body_of(GLM), 568 + 40), model="e2ee-other")
    with pytest.raises(AttestationError) as info:
        report.raise_for_failure()
    assert info.value.code == "model_match"
    assert "model_match, report_data_nonce, dcap" in info.value.message
    assert "\n" not in info.value.message


def test_an_empty_report_never_passes() -> None:
    report = replace(run(GLM), checks=())
    assert not report.passed
    with pytest.raises(AttestationError):
        enclave_key(report)


def test_check_lookup_of_an_unknown_code_raises_key_error() -> None:
    with pytest.raises(KeyError):
        run(GLM).check("no_such_check")


# --- a synthetic quote (the simulator's path) -----------------------------------------------


def test_synthetic_attestation_passes_structurally_and_fails_dcap() -> None:
    keys = generate_keypair()
    nonce = bytes(range(32))
    evidence = parse_attestation(synthetic_body(keys, nonce))
    # The synthetic body has no event log, compose hash or vm_config: software checks are off;
    # its made-up TDX module and firmware are allowed explicitly.
    base = AttestationPolicy(
        extra_mrseam=frozenset({bytes(48).hex()}), extra_mrtd=frozenset({bytes(range(48)).hex()})
    )
    relaxed = replace(base, dcap="off", software="off")

    def verify(policy: AttestationPolicy, **overrides: Any) -> AttestationReport:
        arguments: dict[str, Any] = {
            "expected_model": "e2ee-test",
            "nonce": nonce,
            "policy": policy,
            "now": time_of(GLM),
            "collateral": collateral_of(GLM),
        }
        arguments.update(overrides)
        return verify_evidence(evidence, **arguments)

    assert evidence.shape == "near"
    assert enclave_key(verify(relaxed)) == keys.public
    strict_software = replace(base, software="off")
    assert failed(verify(strict_software)) == {"dcap"}
    assert "failed" in verify(strict_software).check("dcap").detail.lower()
    missing = verify(replace(base, dcap="off"))
    assert failed(missing) == {"event_log_replay", "compose_hash_binding", "os_image_not_dev"}
    assert all(check.ok is None for check in missing.failures)
    assert failed(verify(relaxed, nonce=bytes(32))) == {
        "nonce_echo",
        "report_data_nonce",
        "gpu_nonce",
    }


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=900), st.sampled_from(["near", "aci"]))
def test_random_quotes_never_raise_past_parse_and_never_pass(raw: bytes, shape: str) -> None:
    fixture = GLM if shape == "near" else FIXTURES_BY_NAME["live_evidence_aci"]
    body = body_of(fixture)
    body = with_quote(body, raw) if raw else body | {"intel_quote": ""}
    try:
        evidence = parse_attestation(body)
    except AttestationError:
        return
    report = verify_evidence(
        evidence,
        expected_model=fixture.model,
        nonce=nonce_of(fixture),
        policy=policy_for(fixture),
        now=time_of(fixture),
        collateral=collateral_of(fixture),
    )
    assert not report.passed
    assert report.check("dcap").ok is False
