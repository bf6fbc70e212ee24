"""The aci gateway's key custody chain on the real capture: every link verifies, and each
tampered link fails with its own code."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from proxy.attestation import Evidence, parse_attestation
from proxy.attestation.custody import (
    CUSTODY_CHECK_CODES,
    GatewayFacts,
    canonical_keyset,
    custody_checks,
    jcs_digest,
)
from proxy.attestation.eventlog import parse_event_log, replay
from proxy.attestation.quote import TdxQuote, parse_tdx_quote
from tests.support.attestation_helpers import (
    FIXTURES_BY_NAME,
    body_of,
    policy_for,
    quote_of,
    time_of,
)
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


# --- every result as the report shows it (code, verdict, enforcement and the words) -----------
# custody_checks is called directly, on the real capture's parsed quote, so each case can also
# tamper with what DCAP would refuse (the quote's RTMRs) and with the parsed evidence.

_NOW = time_of(ACI)
_APP_KEY = "02cdcc3ffd3e22f60a0e4f7c0dfcc3fb62d4765295dd43997c538109b732bdb835"
_DIGEST = "sha256:c5c0f5827432d57e32103792c3ce72dea549b75b8a2c09330c5e9c2fcb8cd862"
_WORKLOAD_ID = "sha256:3def476b72026924f9d88f7b339b2e211553fc2486c6a974d5f330162f183eda"
_NOT_AFTER = 1786181275
_PASSED: dict[str, tuple[bool | None, bool, str]] = {
    "keyset_digest": (True, True, f"{_DIGEST} = sha256 of the RFC 8785 canonical keyset"),
    "keyset_membership": (True, True, "the key is e2ee key 'dstack-kms-e2ee-v1'"),
    "keyset_endorsement": (True, True, "identity key (ecdsa-secp256k1) endorses the keyset"),
    "custody_app_key": (True, True, f"app key {_APP_KEY} signs the E2EE and identity keys"),
    "custody_kms_root": (True, True, f"KMS root {KMS_ROOT} issued the app key for this app id"),
    "gateway_app_id": (True, True, f"app id {APP_ID} (RTMR3 app-id event) is accepted"),
    "keyset_expiry": (
        True,
        False,
        f"keyset valid until {_NOT_AFTER} (now {_NOW}); advisory: not_after is not hardware-bound",
    ),
}


def _quote(body: dict[str, Any]) -> TdxQuote:
    return parse_tdx_quote(quote_of(body))


def _run(
    body: dict[str, Any] | None = None,
    *,
    evidence: Evidence | None = None,
    quote: TdxQuote | str | None = "parsed",
    now: int = _NOW,
    kms_roots: frozenset[str] = frozenset({KMS_ROOT}),
    app_ids: frozenset[str] = frozenset({APP_ID}),
    **options: Any,
) -> tuple[dict[str, tuple[bool | None, bool, str]], GatewayFacts | None]:
    """The custody results by code (ok, enforced, detail), in their order, and the facts."""
    body = body if body is not None else body_of(ACI)
    evidence = evidence if evidence is not None else parse_attestation(body)
    tdx = _quote(body) if quote == "parsed" else quote
    assert not isinstance(tdx, str)
    results, facts = custody_checks(
        evidence, tdx, "tdx_quote", now=now, kms_roots=kms_roots, app_ids=app_ids, **options
    )
    assert [result.code for result in results] == list(CUSTODY_CHECK_CODES)
    assert {result.tier for result in results} == {"custody"}
    return {result.code: (result.ok, result.enforced, result.detail) for result in results}, facts


def _changed(body: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """The results that differ from the passing run."""
    results, _ = _run(body, **kwargs)
    return {code: value for code, value in results.items() if _PASSED[code] != value}


def _keyset(body: dict[str, Any]) -> dict[str, Any]:
    keyset: dict[str, Any] = body["attestation"]["workload_keyset"]
    return keyset


def test_the_real_capture_reports_every_link_and_its_facts() -> None:
    results, facts = _run()
    assert results == _PASSED
    assert facts is not None
    assert facts.to_dict() == {
        "app_id": APP_ID,
        "kms_root": KMS_ROOT,
        "app_key": _APP_KEY,
        "keyset_version": 1,
        "keyset_not_after": _NOT_AFTER,
        "workload_id": _WORKLOAD_ID,
        "downstream_tls": "api.redpill.ai",
        "source": "https://github.com/Dstack-TEE/private-ai-gateway.git"
        "@e1bfdcfd1f0996db268b2b2f462a1eb4c7519916",
    }


def test_enclave_reports_say_why_custody_does_not_apply() -> None:
    evidence = parse_attestation(body_of(FIXTURES_BY_NAME["glm_5_1"]))
    results, facts = custody_checks(
        evidence, None, "tdx_quote", now=_NOW, kms_roots=frozenset(), app_ids=frozenset()
    )
    detail = "not applicable: a near report has no workload keyset (the key is the host's own)"
    assert [(r.code, r.ok, r.enforced, r.detail) for r in results] == [
        (code, None, False, detail) for code in CUSTODY_CHECK_CODES
    ]
    assert facts is None


def test_facts_show_only_values_of_their_kind_and_cut_long_ones() -> None:
    body = body_of(ACI)
    body["workload_id"] = 7
    _keyset(body)["keyset_epoch"] = {"version": "1", "not_after": "soon"}
    body["attestation"]["evidence"]["downstream_tls_binding"] = {"domain": "d" * 300}
    body["attestation"]["source_provenance"] = {"repo_url": "u" * 400, "repo_commit": "c"}
    _, facts = _run(body, quote=None)
    assert facts is not None
    assert facts.to_dict() == {
        "app_id": None,  # no quote: no authenticated app id
        "kms_root": None,
        "app_key": _APP_KEY,
        "keyset_version": None,
        "keyset_not_after": None,
        "workload_id": None,
        "downstream_tls": "d" * 200,
        "source": "u" * 300,
    }
    body["attestation"]["evidence"]["downstream_tls_binding"] = {"domain": 5}
    body["attestation"]["source_provenance"] = {"repo_url": None, "repo_commit": "c"}
    _, facts = _run(body, quote=None)
    assert facts is not None
    assert (facts.downstream_tls, facts.source) == (None, None)


# keyset_digest


def test_a_stated_digest_may_differ_in_case_and_spaces_only() -> None:
    body = body_of(ACI)
    body["workload_keyset_digest"] = f"  {_DIGEST.upper()} "
    assert _changed(body) == {}
    body["workload_keyset_digest"] = "sha256:" + "ab" * 60
    assert _changed(body) == {
        "keyset_digest": (False, True, f"computed {_DIGEST}, stated sha256:{'ab' * 36}a"),
        "keyset_endorsement": (False, False, "not evaluated: keyset_digest failed"),
    }
    del body["workload_keyset_digest"]
    assert _changed(body)["keyset_digest"] == (False, True, f"computed {_DIGEST}, stated missing")


@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        (("tls_public_keys",), None, "tls_public_keys is not a list"),
        (("tls_public_keys", 1, "spki_sha256"), 5, "tls[1].spki_sha256 is not a string"),
        (("tls_public_keys", 2, "domain"), 5, "tls[2].domain is not a string"),
        (("receipt_signing_keys",), {}, "receipt_signing_keys is not a list"),
        (("e2ee_public_keys",), None, "e2ee_public_keys is not a list"),
        (
            ("receipt_signing_keys", 1, "key_id"),
            None,
            "receipt_signing_keys[1].key_id is not a string",
        ),
        (("e2ee_public_keys", 2, "algo"), 1, "e2ee_public_keys[2].algo is not a string"),
        (
            ("e2ee_public_keys", 0, "public_key"),
            [],
            "e2ee_public_keys[0].public_key is not a string",
        ),
        (
            ("workload_identity", "public_key", "algo"),
            None,
            "workload_identity.public_key.algo is not a string",
        ),
        (
            ("workload_identity", "subject"),
            5,
            "workload_identity.subject is neither null nor a string",
        ),
        (("keyset_epoch", "version"), True, "keyset_epoch.version is not an unsigned integer"),
        (("keyset_epoch", "version"), "1", "keyset_epoch.version is not an unsigned integer"),
        (("keyset_epoch", "not_after"), -1, "keyset_epoch.not_after is not an unsigned integer"),
        (
            ("keyset_epoch", "not_after"),
            2**64,
            "not canonicalizable under RFC 8785: 18446744073709551616 exceeds safe integer "
            "domain for JSON floats",
        ),
    ],
)
def test_a_keyset_of_the_wrong_shape_fails_its_digest_and_says_where(
    path: tuple[Any, ...], value: Any, problem: str
) -> None:
    body = body_of(ACI)
    target: Any = _keyset(body)
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    results, _ = _run(body)
    assert results["keyset_digest"] == (False, True, f"workload_keyset: {problem}")
    assert results["keyset_endorsement"] == (False, False, "not evaluated: keyset_digest failed")


def test_the_digest_covers_the_subject_an_epoch_of_zero_and_tls_without_a_domain() -> None:
    keyset = _keyset(body_of(ACI))
    keyset["workload_identity"]["subject"] = "app " + APP_ID
    keyset["keyset_epoch"]["version"] = 0
    del keyset["tls_public_keys"][0]["domain"]
    canonical = canonical_keyset(keyset)
    assert canonical["workload_identity"]["subject"] == "app " + APP_ID
    assert canonical["keyset_epoch"]["version"] == 0
    assert canonical["tls_public_keys"][0] == {
        "spki_sha256": keyset["tls_public_keys"][0]["spki_sha256"]
    }


# keyset_membership


def test_the_key_may_be_listed_without_its_04_prefix_or_with_0x_in_upper_case() -> None:
    body = body_of(ACI)
    entries = _keyset(body)["e2ee_public_keys"]
    legacy = [entry for entry in entries if entry["key_id"] == "dstack-kms-e2ee-v1-legacy-ecdsa"]
    _keyset(body)["e2ee_public_keys"] = legacy
    assert _run(_redigest(body))[0]["keyset_membership"] == (
        True,
        True,
        "the key is e2ee key 'dstack-kms-e2ee-v1-legacy-ecdsa'",
    )
    legacy[0]["public_key"] = " 0x04" + legacy[0]["public_key"].upper()
    assert _run(_redigest(body))[0]["keyset_membership"][0] is True


@pytest.mark.parametrize("entries", [None, {"not": "a list"}, [{"public_key": 5}, "x"]])
def test_a_key_missing_from_the_keyset_fails_membership(entries: Any) -> None:
    body = body_of(ACI)
    _keyset(body)["e2ee_public_keys"] = entries
    results, _ = _run(body)
    assert results["keyset_membership"] == (
        False,
        True,
        "the key bound in REPORTDATA is not in the keyset",
    )


def test_without_a_bound_key_the_key_checks_are_not_evaluated() -> None:
    evidence = replace(parse_attestation(body_of(ACI)), signing_public_key=None)
    assert _changed(evidence=evidence) == {
        "keyset_membership": (False, False, "not evaluated: signing_key_valid failed"),
        "custody_app_key": (False, False, "not evaluated: signing_key_valid failed"),
        "custody_kms_root": (False, False, "not evaluated: custody_app_key failed"),
    }


# keyset_endorsement


def _endorsement(body: dict[str, Any]) -> dict[str, Any]:
    endorsement: dict[str, Any] = body["attestation"]["keyset_endorsement"]
    return endorsement


def test_a_missing_endorsement_value_or_identity_key() -> None:
    body = body_of(ACI)
    del _endorsement(body)["value"]
    assert _changed(body) == {
        "keyset_endorsement": (False, True, "no identity key or no endorsement value")
    }


def test_an_endorsement_under_another_algorithm() -> None:
    body = body_of(ACI)
    _endorsement(body)["algo"] = "ed25519"
    assert _changed(body) == {
        "keyset_endorsement": (
            False,
            True,
            "endorsement algo 'ed25519' is not the identity's 'ecdsa-secp256k1'",
        )
    }


def test_an_endorsement_that_is_not_hex() -> None:
    body = body_of(ACI)
    _endorsement(body)["value"] = "zz"
    assert _changed(body) == {"keyset_endorsement": (False, True, "the endorsement is not hex")}


@pytest.mark.parametrize("value", ["00" * 64, "ab" * 63, "ab" * 65])
def test_an_endorsement_that_does_not_verify(value: str) -> None:
    body = body_of(ACI)
    _endorsement(body)["value"] = value
    assert _changed(body) == {
        "keyset_endorsement": (False, True, "the identity key's endorsement does not verify")
    }


def test_an_identity_key_that_is_no_key_does_not_verify() -> None:
    body = body_of(ACI)
    _keyset(body)["workload_identity"]["public_key"]["public_key"] = "04" + "zz" * 64
    results, _ = _run(_redigest(body))
    assert results["keyset_endorsement"] == (
        False,
        True,
        "the identity key's endorsement does not verify",
    )
    assert results["custody_app_key"] == (
        False,
        True,
        "the keyset's identity key is not a secp256k1 key",
    )


def test_an_unknown_identity_algorithm_is_named_and_cut() -> None:
    body = body_of(ACI)
    algo = "rsa-" + "x" * 60
    _keyset(body)["workload_identity"]["public_key"]["algo"] = algo
    _endorsement(body)["algo"] = algo
    results, _ = _run(_redigest(body))
    assert results["keyset_endorsement"] == (
        False,
        True,
        f"identity key algo {algo[:40]!r} unknown",
    )


def test_a_workload_id_that_is_not_the_identity_keys() -> None:
    body = body_of(ACI)
    body["workload_id"] = f" {_WORKLOAD_ID.upper()}"
    assert _changed(body) == {}
    body["workload_id"] = None
    assert _changed(body) == {
        "keyset_endorsement": (False, True, f"workload_id is not {_WORKLOAD_ID}")
    }


def _ed25519_gateway(sign: bytes | None = None) -> dict[str, Any]:
    """The capture with an ed25519 identity key that endorses its keyset (or signs ``sign``)."""
    identity = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    public = identity.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    body = body_of(ACI)
    _keyset(body)["workload_identity"]["public_key"] = {"algo": "ed25519", "public_key": public}
    digest = _redigest(body)["workload_keyset_digest"]
    payload = rfc8785.dumps(
        {"purpose": "aci.keyset.endorsement.v1", "workload_keyset_digest": digest}
    )
    signature = identity.sign(sign if sign is not None else payload)
    body["attestation"]["keyset_endorsement"] = {"algo": "ed25519", "value": signature.hex()}
    body["workload_id"] = jcs_digest({"algo": "ed25519", "public_key": public})
    return body


def test_an_ed25519_identity_key_endorses_the_keyset() -> None:
    results, _ = _run(_ed25519_gateway())
    assert results["keyset_endorsement"] == (
        True,
        True,
        "identity key (ed25519) endorses the keyset",
    )
    # Its custody chain is secp256k1 only: the app key cannot be recovered for it.
    assert results["custody_app_key"] == (
        False,
        True,
        "the keyset's identity key is not a secp256k1 key",
    )


def test_an_ed25519_signature_over_anything_else_does_not_verify() -> None:
    results, _ = _run(_ed25519_gateway(sign=b"another message"))
    assert results["keyset_endorsement"] == (
        False,
        True,
        "the identity key's endorsement does not verify",
    )


# custody_app_key and custody_kms_root

_NOT_EVALUATED_KMS = (False, False, "not evaluated: custody_app_key failed")


def _app_key_fails(detail: str) -> dict[str, tuple[bool | None, bool, str]]:
    return {"custody_app_key": (False, True, detail), "custody_kms_root": _NOT_EVALUATED_KMS}


@pytest.mark.parametrize(
    ("provider", "shown"),
    [("other-kms", "'other-kms'"), (None, "'None'"), ("k" * 60, repr("k" * 40))],
)
def test_another_custody_provider_is_named(provider: str | None, shown: str) -> None:
    body = body_of(ACI)
    body["attestation"]["evidence"]["key_custody"]["provider"] = provider
    assert _changed(body) == _app_key_fails(f"key custody provider {shown}, not dstack-kms")


@pytest.mark.parametrize(("keys", "role"), [(None, "e2ee"), ([], "e2ee"), ("identity", "identity")])
def test_a_missing_custody_entry_is_named(keys: Any, role: str) -> None:
    body = body_of(ACI)
    custody = body["attestation"]["evidence"]["key_custody"]
    custody["keys"] = [e for e in custody["keys"] if e["role"] != keys] if keys == role else keys
    assert _changed(body) == _app_key_fails(f"no {role} custody entry for the key")


@pytest.mark.parametrize("purpose", ["", None])
def test_a_custody_entry_without_a_purpose(purpose: str | None) -> None:
    body = body_of(ACI)
    _entry(body, "e2ee")["purpose"] = purpose
    assert _changed(body) == _app_key_fails("the custody entry has no purpose")


@pytest.mark.parametrize("chain", ["first", "three", "not a list"])
def test_a_signature_chain_that_is_not_two_hex_signatures(chain: str) -> None:
    body = body_of(ACI)
    entry = _entry(body, "e2ee")
    if chain == "first":
        entry["signature_chain"][0] = 5
    elif chain == "three":
        entry["signature_chain"].append(entry["signature_chain"][1])
    else:
        entry["signature_chain"] = entry["signature_chain"][0]
    assert _changed(body) == _app_key_fails("the signature_chain is not two hex signatures")


@pytest.mark.parametrize(
    ("last_byte", "detail"),
    [
        ("03", "a signature recovers no key"),
        ("04", "a signature has a recovery id above 3"),
        ("1e", "a signature recovers no key"),  # 30 - 27 = 3
    ],
)
def test_recovery_ids(last_byte: str, detail: str) -> None:
    body = body_of(ACI)
    chain = _entry(body, "e2ee")["signature_chain"]
    chain[0] = chain[0][:-2] + last_byte
    assert _changed(body) == _app_key_fails(detail)


def test_recovery_ids_may_be_written_with_27_added_and_signatures_with_0x() -> None:
    body = body_of(ACI)
    for role, v in (("identity", "1b"), ("e2ee", "1c")):  # 0 + 27 and 1 + 27
        chain = _entry(body, role)["signature_chain"]
        chain[0] = "0x" + chain[0][:-2] + v + " "
    assert _changed(body) == {}


@pytest.mark.parametrize(
    ("signature", "detail"),
    [
        ("zz", "a signature is not hex"),
        ("ab" * 64, "a signature is 64 bytes, not 65"),
        ("00" * 65, "a signature recovers no key"),
    ],
)
def test_malformed_app_signatures(signature: str, detail: str) -> None:
    body = body_of(ACI)
    _entry(body, "e2ee")["signature_chain"][0] = signature
    assert _changed(body) == _app_key_fails(detail)


def test_keys_that_recover_different_app_keys() -> None:
    body = body_of(ACI)
    chain = _entry(body, "identity")["signature_chain"]
    chain[0] = _flip(chain[0])
    assert _changed(body) == _app_key_fails(
        "the E2EE key and the identity key recover different app keys"
    )


def test_a_malformed_kms_signature_is_named() -> None:
    body = body_of(ACI)
    _entry(body, "e2ee")["signature_chain"][1] = "zz"
    assert _changed(body) == {"custody_kms_root": (False, True, "a signature is not hex")}


def test_an_unaccepted_kms_root_is_named_with_the_setting() -> None:
    roots = frozenset({"02" + "11" * 32, "03" + "22" * 32})
    assert _changed(kms_roots=roots) == {
        "custody_kms_root": (
            False,
            True,
            f"KMS root {KMS_ROOT} is not an accepted dstack KMS root (2 accepted); after "
            "checking it, add it to attestation.gateway_kms_roots",
        )
    }


# gateway_app_id (and custody_kms_root, which needs the app id)


def test_without_a_quote_the_app_id_is_not_evaluated() -> None:
    no_app_id = "not evaluated: no authenticated app id"
    # When event_log_replay is enforced it names the root cause; these only report.
    assert _changed(quote=None) == {
        "custody_kms_root": (False, False, no_app_id),
        "gateway_app_id": (False, False, "not evaluated: tdx_quote failed"),
    }
    # When it is not enforced (software checks off), the custody chain still must not pass.
    assert _changed(quote=None, replay_enforced=False) == {
        "custody_kms_root": (False, True, no_app_id),
        "gateway_app_id": (False, False, "not evaluated: tdx_quote failed"),
    }


def _with_log(events: list[dict[str, Any]]) -> tuple[Evidence, TdxQuote]:
    """The capture's evidence with ``events`` as its log, and a quote they replay to."""
    evidence = replace(parse_attestation(body_of(ACI)), event_log=events)
    quote = _quote(body_of(ACI))
    rtmrs = replay(parse_event_log(events, "test").events)
    return evidence, replace(quote, report=replace(quote.report, rtmrs=rtmrs))


@pytest.mark.parametrize("replay_enforced", [True, False])
def test_an_app_id_that_is_not_authenticated(replay_enforced: bool) -> None:
    events = parse_attestation(body_of(ACI)).event_log
    without = [event for event in events if event.get("event") != "app-id"]
    short = [
        {**event, "event_payload": APP_ID[:38], "digest": ""}
        if event.get("event") == "app-id"
        else event
        for event in events
    ]
    bad = [*events, {"imr": 9, "event_type": 1, "digest": "", "event_payload": ""}]
    evidence, quote = _with_log(events)
    stale = replace(quote, report=replace(quote.report, rtmrs=(bytes(48),) * 4))
    cases = [
        (*_with_log(without), "no 20-byte app-id event in RTMR3"),
        (*_with_log(short), "no 20-byte app-id event in RTMR3"),
        (evidence, stale, "the event log does not replay to the quote"),
        (replace(evidence, event_log=bad), quote, "event 30: imr 9 is not 0..3"),
    ]
    for case_evidence, case_quote, reason in cases:
        changed = _changed(
            evidence=case_evidence, quote=case_quote, replay_enforced=replay_enforced
        )
        assert changed == {
            "custody_kms_root": (
                False,
                not replay_enforced,
                "not evaluated: no authenticated app id",
            ),
            "gateway_app_id": (
                False,
                not replay_enforced,
                f"not evaluated: no authenticated app id ({reason})",
            ),
        }, reason


def test_the_keyset_subject_must_restate_the_app_id() -> None:
    body = body_of(ACI)
    _keyset(body)["workload_identity"]["subject"] = f"APP-ID:0x{APP_ID.upper()}"
    assert _run(body)[0]["gateway_app_id"] == _PASSED["gateway_app_id"]  # compared without case
    subject = "app-id:0x" + "33" * 20 + " " + "x" * 60
    _keyset(body)["workload_identity"]["subject"] = subject
    assert _run(body)[0]["gateway_app_id"] == (
        False,
        True,
        f"keyset subject {subject[:80]!r} is not app {APP_ID}",
    )


def test_an_unaccepted_app_id_is_named_with_the_setting() -> None:
    assert _changed(app_ids=frozenset({"22" * 20})) == {
        "gateway_app_id": (
            False,
            True,
            f"app id {APP_ID} (RTMR3 app-id event) is not an accepted gateway app (1 accepted); "
            "after checking it, add it to attestation.gateway_app_ids",
        )
    }


def test_replay_is_enforced_unless_told_otherwise() -> None:
    evidence = parse_attestation(body_of(ACI))
    results, _ = custody_checks(
        evidence, None, "tdx_quote", now=_NOW, kms_roots=frozenset(), app_ids=frozenset()
    )
    kms_root = next(result for result in results if result.code == "custody_kms_root")
    assert not kms_root.enforced  # event_log_replay names the root cause


# keyset_expiry (advisory)


def test_a_keyset_expires_at_its_not_after() -> None:
    assert _changed(now=_NOT_AFTER) == {
        "keyset_expiry": (
            False,
            False,
            f"keyset EXPIRED at {_NOT_AFTER} (now {_NOT_AFTER}); advisory: not_after is not "
            "hardware-bound",
        )
    }
    assert _run(now=_NOT_AFTER - 1)[0]["keyset_expiry"][0] is True


@pytest.mark.parametrize("epoch", [{"version": 1}, {"not_after": True}, {"not_after": "soon"}, "x"])
def test_a_keyset_without_a_not_after_has_no_expiry(epoch: Any) -> None:
    body = body_of(ACI)
    _keyset(body)["keyset_epoch"] = epoch
    results, _ = _run(body)
    assert results["keyset_expiry"] == (None, False, "the keyset states no not_after")


def test_a_keyset_without_an_identity_key_cannot_show_its_custody() -> None:
    body = body_of(ACI)
    del _keyset(body)["workload_identity"]["public_key"]["public_key"]
    results, _ = _run(body)
    assert results["keyset_digest"] == (
        False,
        True,
        "workload_keyset: workload_identity.public_key.public_key is not a string",
    )
    assert results["custody_app_key"] == (
        False,
        True,
        "the keyset's identity key is not a secp256k1 key",
    )
