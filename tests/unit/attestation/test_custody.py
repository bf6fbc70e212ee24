"""The aci gateway's key custody chain on the real capture: every link verifies, and each
tampered link fails with its own code."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from proxy.attestation.custody import canonical_keyset, jcs_digest
from tests.support.attestation_helpers import FIXTURES_BY_NAME, body_of, policy_for, time_of
from tests.support.trust_helpers import failed, verify

ACI = FIXTURES_BY_NAME["live_evidence_aci"]
KMS_ROOT = "0334c76e0c3f52ec64cbf9bbf5c910c272330166fd656c0a86bb330963e46910e1"
APP_ID = "fdb7a14e5a6675f752e2cb69c9067a98ca402918"
CUSTODY = (
    "keyset_digest",
    "keyset_membership",
    "keyset_endorsement",
    "custody_app_key",
    "custody_kms_root",
    "gateway_app_id",
)


def _entry(body: dict[str, Any], role: str) -> dict[str, Any]:
    keys = body["attestation"]["evidence"]["key_custody"]["keys"]
    entry: dict[str, Any] = next(item for item in keys if item["role"] == role)
    return entry


def _flip(hex_text: str, index: int = 10) -> str:
    value = bytearray(bytes.fromhex(hex_text))
    value[index] ^= 0x01
    return value.hex()


def _redigest(body: dict[str, Any]) -> dict[str, Any]:
    body["workload_keyset_digest"] = jcs_digest(
        canonical_keyset(body["attestation"]["workload_keyset"])
    )
    return body


def test_every_link_verifies_on_the_real_capture() -> None:
    report = verify(ACI)
    assert report.passed
    for code in CUSTODY:
        check = report.check(code)
        assert (check.ok, check.enforced, check.tier) == (True, True, "custody"), code
    gateway = report.facts["gateway"]
    assert (gateway["kms_root"], gateway["app_id"]) == (KMS_ROOT, APP_ID)


def test_the_keyset_digest_is_sha256_of_the_rfc8785_canonical_keyset() -> None:
    body = body_of(ACI)
    canonical = canonical_keyset(body["attestation"]["workload_keyset"])
    assert jcs_digest(canonical) == body["workload_keyset_digest"]
    # Member order in the wire JSON does not matter; values do.
    shuffled = dict(reversed(list(body["attestation"]["workload_keyset"].items())))
    assert jcs_digest(canonical_keyset(shuffled)) == body["workload_keyset_digest"]


def test_a_changed_keyset_fails_its_digest() -> None:
    body = body_of(ACI)
    body["attestation"]["workload_keyset"]["keyset_epoch"]["version"] = 2
    assert failed(verify(ACI, body)) == {"keyset_digest"}


def test_a_key_not_in_the_keyset_fails_membership() -> None:
    body = body_of(ACI)
    keyset = body["attestation"]["workload_keyset"]
    keyset["e2ee_public_keys"] = [  # the key, and its legacy copy without the 04 prefix
        entry
        for entry in keyset["e2ee_public_keys"]
        if not entry["key_id"].startswith("dstack-kms-e2ee-v1")
    ]
    report = verify(ACI, _redigest(body))
    # The key is still found in the custody list; the re-digested keyset is no longer the one
    # the identity key endorsed.
    assert failed(report) == {"keyset_membership", "keyset_endorsement"}


def test_a_changed_endorsement_or_workload_id_fails_the_endorsement() -> None:
    body = body_of(ACI)
    endorsement = body["attestation"]["keyset_endorsement"]
    endorsement["value"] = _flip(endorsement["value"])
    assert failed(verify(ACI, body)) == {"keyset_endorsement"}
    body = body_of(ACI)
    body["workload_id"] = "sha256:" + "00" * 32
    assert failed(verify(ACI, body)) == {"keyset_endorsement"}


def test_a_changed_app_signature_fails_custody_app_key() -> None:
    body = body_of(ACI)
    entry = _entry(body, "e2ee")
    entry["signature_chain"][0] = _flip(entry["signature_chain"][0])
    report = verify(ACI, body)
    assert failed(report) == {"custody_app_key"}
    assert report.check("custody_kms_root").detail.startswith("not evaluated")


def test_a_changed_kms_signature_fails_custody_kms_root() -> None:
    body = body_of(ACI)
    entry = _entry(body, "e2ee")
    entry["signature_chain"][1] = _flip(entry["signature_chain"][1], 40)
    report = verify(ACI, body)
    assert failed(report) == {"custody_kms_root"}
    assert "attestation.gateway_kms_roots" in report.check("custody_kms_root").detail


def test_another_custody_provider_fails() -> None:
    body = body_of(ACI)
    body["attestation"]["evidence"]["key_custody"]["provider"] = "other-kms"
    assert failed(verify(ACI, body)) == {"custody_app_key"}


def test_an_unknown_kms_root_is_refused_and_names_the_setting() -> None:
    policy = replace(policy_for(ACI), gateway_kms_roots=frozenset({"02" + "11" * 32}))
    report = verify(ACI, policy=policy)
    assert failed(report) == {"custody_kms_root"}
    assert KMS_ROOT in report.check("custody_kms_root").detail


def test_an_unknown_app_id_is_refused_and_names_the_setting() -> None:
    policy = replace(policy_for(ACI), gateway_app_ids=frozenset({"22" * 20}))
    report = verify(ACI, policy=policy)
    assert failed(report) == {"gateway_app_id"}
    detail = report.check("gateway_app_id").detail
    assert APP_ID in detail
    assert "attestation.gateway_app_ids" in detail


def test_an_overridden_anchor_list_accepts_the_real_values() -> None:
    policy = replace(
        policy_for(ACI),
        gateway_kms_roots=frozenset({KMS_ROOT}),
        gateway_app_ids=frozenset({APP_ID}),
    )
    assert verify(ACI, policy=policy).passed


def test_an_expired_keyset_is_reported_as_advisory() -> None:
    not_after = body_of(ACI)["attestation"]["workload_keyset"]["keyset_epoch"]["not_after"]
    assert not_after > time_of(ACI)
    report = verify(ACI, now=not_after + 86_400)  # collateral still valid then
    check = report.check("keyset_expiry")
    assert (check.ok, check.enforced) == (False, False)
    assert "EXPIRED" in check.detail
    assert report.passed


def test_a_keyset_subject_that_names_another_app_fails() -> None:
    body = body_of(ACI)
    body["attestation"]["workload_keyset"]["workload_identity"]["subject"] = "app-id:0x" + "33" * 20
    report = verify(ACI, _redigest(body))
    assert "gateway_app_id" in failed(report)


@pytest.mark.parametrize("role", ["e2ee", "identity"])
def test_a_missing_custody_entry_fails_custody_app_key(role: str) -> None:
    body = body_of(ACI)
    keys = body["attestation"]["evidence"]["key_custody"]["keys"]
    body["attestation"]["evidence"]["key_custody"]["keys"] = [
        entry for entry in keys if entry["role"] != role
    ]
    report = verify(ACI, body)
    assert "custody_app_key" in failed(report)
    assert role in report.check("custody_app_key").detail


def test_custody_is_not_applicable_to_enclave_reports() -> None:
    report = verify(FIXTURES_BY_NAME["glm_5_1"])
    for code in CUSTODY:
        check = report.check(code)
        assert (check.ok, check.enforced) == (None, False)
        assert check.detail.startswith("not applicable")
