"""The report: which checks block, the verdict, its JSON form and the refusal it raises."""

from __future__ import annotations

import pytest

from proxy.attestation import AttestationReport, CheckResult, enclave_key
from proxy.attestation.report import (
    TIER_BINDING,
    TIER_CUSTODY,
    TIER_GPU,
    TIER_MEASUREMENTS,
    TIER_QUOTE,
    TIER_RESPONSE,
    TIER_SOFTWARE,
    TIER_TRUST,
)
from proxy.core.errors import AttestationError

KEY = bytes([4]) + bytes(range(64))


def check(code: str, ok: bool | None, enforced: bool = True, detail: str = "") -> CheckResult:
    return CheckResult(code=code, ok=ok, enforced=enforced, detail=detail or code, tier="quote")


def report(*checks: CheckResult, key: bytes | None = KEY) -> AttestationReport:
    return AttestationReport(
        model="e2ee-m",
        nonce="ab" * 32,
        shape="near",
        signing_address="0x" + "12" * 20,
        signing_public_key=key,
        tcb_status="UpToDate",
        checks=checks,
    )


def test_the_tiers_are_named_as_the_json_form_shows_them() -> None:
    tiers = (TIER_RESPONSE, TIER_BINDING, TIER_QUOTE, TIER_GPU, TIER_SOFTWARE)
    assert tiers == ("response", "binding", "quote", "gpu", "software")
    assert (TIER_MEASUREMENTS, TIER_CUSTODY, TIER_TRUST) == ("measurements", "custody", "trust")


@pytest.mark.parametrize(
    ("ok", "enforced", "failed"),
    [
        (True, True, False),
        (False, True, True),
        (None, True, True),  # not evaluated but enforced: fails closed
        (True, False, False),
        (False, False, False),
        (None, False, False),
    ],
)
def test_only_an_enforced_check_that_is_not_ok_blocks(
    ok: bool | None, enforced: bool, failed: bool
) -> None:
    assert check("c", ok, enforced).failed is failed


@pytest.mark.parametrize("ok", [1, "yes", [True]])
def test_only_ok_is_true_passes_an_enforced_check(ok: object) -> None:
    # Fail closed: a truthy value that is not True (a check that returned the wrong type) blocks.
    assert check("c", ok).failed is True  # type: ignore[arg-type]
    assert report(check("c", ok)).passed is False  # type: ignore[arg-type]


def test_a_check_in_json() -> None:
    result = CheckResult(code="dcap", ok=None, enforced=False, detail="skipped", tier="quote")
    assert result.to_dict() == {
        "code": "dcap",
        "ok": None,
        "enforced": False,
        "detail": "skipped",
        "tier": "quote",
    }


def test_a_report_passes_when_every_enforced_check_is_ok() -> None:
    passing = report(check("a", True), check("b", False, enforced=False), check("c", None, False))
    assert passing.passed is True
    assert passing.failures == ()
    passing.raise_for_failure()  # no refusal


def test_an_empty_report_never_passes_and_names_no_check() -> None:
    empty = report()
    assert empty.passed is False
    assert empty.failures == ()
    with pytest.raises(AttestationError) as info:
        empty.raise_for_failure()
    assert info.value.code == "no_checks"
    assert info.value.message == "the attestation report has no checks"


@pytest.mark.parametrize("ok", [False, None])
def test_one_enforced_check_not_ok_fails_the_report(ok: bool | None) -> None:
    failing = report(check("a", True), check("b", ok), check("c", True))
    assert failing.passed is False
    assert [result.code for result in failing.failures] == ["b"]


def test_failures_keep_check_order_and_the_refusal_names_every_one() -> None:
    failing = report(
        check("dcap", False, detail="TCB status OutOfDate is not allowed"),
        check("gpu_nonce", True),
        check("trust_level", None, detail="gateway refused; set x"),
        check("info", False, enforced=False),
    )
    assert [result.code for result in failing.failures] == ["dcap", "trust_level"]
    with pytest.raises(AttestationError) as info:
        failing.raise_for_failure()
    assert info.value.code == "dcap"
    assert info.value.message == (
        "attestation of e2ee-m failed checks: dcap, trust_level "
        "(dcap: TCB status OutOfDate is not allowed)"
    )


def test_check_finds_the_first_result_with_its_code() -> None:
    first, second = check("a", True, detail="first"), check("a", False, detail="second")
    assert report(check("b", True), first, second).check("a") is first
    with pytest.raises(KeyError, match="missing"):
        report(first).check("missing")


def test_the_json_form_carries_every_field() -> None:
    full = AttestationReport(
        model="e2ee-m",
        nonce="ab" * 32,
        shape="aci",
        signing_address="0x" + "12" * 20,
        signing_public_key=KEY,
        tcb_status="SWHardeningNeeded",
        checks=(check("dcap", True), check("trust_level", False)),
        advisory_ids=("INTEL-SA-1", "INTEL-SA-2"),
        tee_provider="phala",
        upstream_model="org/model",
        trust_level="gateway",
        attested="the gateway",
        not_attested=("the model server",),
        facts={"compose": {"images": []}},
    )
    assert full.to_dict() == {
        "model": "e2ee-m",
        "nonce": "ab" * 32,
        "shape": "aci",
        "signing_address": "0x" + "12" * 20,
        "signing_public_key": KEY.hex(),
        "tcb_status": "SWHardeningNeeded",
        "advisory_ids": ["INTEL-SA-1", "INTEL-SA-2"],
        "tee_provider": "phala",
        "upstream_model": "org/model",
        "trust_level": "gateway",
        "attested": "the gateway",
        "not_attested": ["the model server"],
        "facts": {"compose": {"images": []}},
        "passed": False,
        "failures": ["trust_level"],
        "checks": [check("dcap", True).to_dict(), check("trust_level", False).to_dict()],
    }


def test_the_json_form_of_a_bare_report() -> None:
    bare = report(check("a", True), key=None).to_dict()
    assert bare["signing_public_key"] is None
    assert bare["passed"] is True
    assert bare["failures"] == []
    assert (bare["advisory_ids"], bare["not_attested"], bare["facts"]) == ([], [], {})
    assert (bare["tee_provider"], bare["upstream_model"], bare["trust_level"]) == (None,) * 3
    assert bare["attested"] == ""


def test_the_enclave_key_of_a_passing_report() -> None:
    assert enclave_key(report(check("a", True))) == KEY


def test_no_enclave_key_from_a_failing_report() -> None:
    with pytest.raises(AttestationError) as info:
        enclave_key(report(check("a", True), check("signing_key_valid", None, detail="no key")))
    assert info.value.code == "signing_key_valid"
    assert info.value.message.endswith("(signing_key_valid: no key)")


def test_a_passing_report_without_a_key_gives_no_enclave_key() -> None:
    with pytest.raises(AttestationError) as info:
        enclave_key(report(check("a", True), key=None))
    assert info.value.code == "signing_key_valid"
    assert info.value.message == "the attestation passed without an enclave key"
