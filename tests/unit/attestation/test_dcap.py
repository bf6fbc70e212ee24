"""verify_quote_dcap with the real captures' collateral, frozen at capture time."""

from __future__ import annotations

import json
from typing import Any

import dcap_qvl
import pytest

from proxy.attestation import KNOWN_TCB_STATUSES, verify_quote_dcap
from proxy.attestation.quote import parse_tdx_quote
from proxy.core.errors import AttestationError
from tests.support.attestation_helpers import (
    FIXTURE_IDS,
    FIXTURE_LIST,
    FIXTURES_BY_NAME,
    Fixture,
    body_of,
    collateral_of,
    load_json,
    nonce_of,
    quote_of,
    time_of,
)

GLM = FIXTURES_BY_NAME["glm_5_1"]


@pytest.mark.parametrize("fixture", FIXTURE_LIST, ids=FIXTURE_IDS)
def test_each_capture_verifies_up_to_date_at_its_capture_time(fixture: Fixture) -> None:
    result = verify_quote_dcap(quote_of(body_of(fixture)), collateral_of(fixture), time_of(fixture))
    assert result.status == "UpToDate"
    assert result.status in KNOWN_TCB_STATUSES
    assert result.advisory_ids == ()
    assert result.report_type == "TD10"
    assert result.report.report_data[:20].hex() == fixture.address[2:]
    assert result.report.report_data[20:32] == bytes(12)
    assert result.report.report_data[32:] == nonce_of(fixture)
    assert result.report.td_attributes[0] & 1 == 0
    assert len(result.report.mr_td) == 48
    assert all(len(rtmr) == 48 for rtmr in result.report.rtmrs)
    assert result.qe_status == "UpToDate"
    assert result.platform_status == "UpToDate"
    assert result.report == parse_tdx_quote(quote_of(body_of(fixture))).report


def _dcap_error(quote: bytes, collateral: Any, now: int) -> AttestationError:
    with pytest.raises(AttestationError) as info:
        verify_quote_dcap(quote, collateral, now)
    assert info.value.code == "dcap_verification_failed"
    assert "\n" not in info.value.message
    return info.value


@pytest.mark.parametrize("offset", [48, 184, 376, 568, 631, 700, 800])
def test_any_changed_byte_in_body_or_signature_fails(offset: int) -> None:
    quote = bytearray(quote_of(body_of(GLM)))
    quote[offset] ^= 0x01
    _dcap_error(bytes(quote), collateral_of(GLM), time_of(GLM))


def test_embedded_pck_chain_is_checked_when_collateral_has_none() -> None:
    # With "pck_certificate_chain" in the collateral dcap_qvl uses that chain instead of the
    # quote's embedded copy; without it, the embedded chain is what gets verified.
    quote = bytearray(quote_of(body_of(GLM)))
    offset = quote.index(b"-----BEGIN CERTIFICATE-----") + 100
    assert chr(quote[offset]).isalnum()
    quote[offset] ^= 0x01
    collateral = collateral_of(GLM)
    del collateral["pck_certificate_chain"]
    _dcap_error(bytes(quote), collateral, time_of(GLM))


def test_expired_collateral_fails() -> None:
    error = _dcap_error(quote_of(body_of(GLM)), collateral_of(GLM), time_of(GLM) + 60 * 86_400)
    assert "expired" in error.message


def test_mismatched_collateral_fails() -> None:
    _dcap_error(quote_of(body_of(GLM)), load_json("collateral_live_evidence.json"), time_of(GLM))


@pytest.mark.parametrize(
    "collateral",
    [
        {},
        {"pck_crl_issuer_chain": "x"},
        "not a mapping",
    ],
)
def test_malformed_collateral_fails(collateral: Any) -> None:
    error = _dcap_error(quote_of(body_of(GLM)), collateral, time_of(GLM))
    assert "collateral" in error.message


def test_collateral_with_a_corrupt_field_fails() -> None:
    collateral = collateral_of(GLM)
    collateral["root_ca_crl"] = "zz" + collateral["root_ca_crl"][2:]
    _dcap_error(quote_of(body_of(GLM)), collateral, time_of(GLM))


@pytest.mark.parametrize("quote", [b"", b"\x04\x00", b"\x00" * 700])
def test_garbage_quotes_fail(quote: bytes) -> None:
    _dcap_error(quote, collateral_of(GLM), time_of(GLM))


# --- what mutation testing found unpinned (make mutation) ------------------------------------


def test_failures_read_as_one_short_line() -> None:
    expired = _dcap_error(quote_of(body_of(GLM)), collateral_of(GLM), time_of(GLM) + 60 * 86_400)
    assert expired.message == "DCAP verification failed: TCBInfo expired"
    early = _dcap_error(quote_of(body_of(GLM)), collateral_of(GLM), time_of(GLM) - 60 * 86_400)
    assert early.message == "DCAP verification failed: TCBInfo issue date is in the future"
    missing = _dcap_error(quote_of(body_of(GLM)), {}, time_of(GLM))
    assert missing.message == (
        "DCAP verification failed: invalid collateral: Failed to parse JSON: missing field "
        "`pck_crl_issuer_chain` at line 1 column 2"
    )
    not_a_mapping = _dcap_error(quote_of(body_of(GLM)), "collateral", time_of(GLM))
    assert not_a_mapping.message == "DCAP collateral is not a JSON object"


class _Verified:
    """What ``dcap_qvl.verify`` returns, with a document of our choosing."""

    def __init__(self, document: Any) -> None:
        self._text = json.dumps(document)

    def to_json(self) -> str:
        return self._text


def _real_document() -> dict[str, Any]:
    collateral = dcap_qvl.QuoteCollateralV3.from_json(json.dumps(collateral_of(GLM)))
    document: dict[str, Any] = json.loads(
        dcap_qvl.verify(quote_of(body_of(GLM)), collateral, time_of(GLM)).to_json()
    )
    return document


def _verify_with(monkeypatch: pytest.MonkeyPatch, outcome: Any) -> Any:
    def fake_verify(quote: bytes, collateral: Any, now: int) -> Any:
        if isinstance(outcome, BaseException):
            raise outcome
        return _Verified(outcome)

    monkeypatch.setattr(dcap_qvl, "verify", fake_verify)
    return verify_quote_dcap(quote_of(body_of(GLM)), collateral_of(GLM), time_of(GLM))


def test_a_long_multi_line_reason_is_one_line_of_at_most_300_characters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reason = "Verification failed: " + "x" * 290 + "\n  second\n\n line " + "y" * 50
    with pytest.raises(AttestationError) as info:
        _verify_with(monkeypatch, ValueError(reason))
    shown = ("x" * 290 + " second line " + "y" * 50)[:300]
    assert info.value.message == f"DCAP verification failed: {shown}"


def test_advisories_and_nested_statuses_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    document = _real_document()
    document |= {"status": "SWHardeningNeeded", "advisory_ids": ["INTEL-SA-00837", 615]}
    document["qe_status"] = "UpToDate"  # not an object: no status
    document["platform_status"] = {"status": 3}  # not a string: no status
    result = _verify_with(monkeypatch, document)
    assert result.status == "SWHardeningNeeded"
    assert result.advisory_ids == ("INTEL-SA-00837", "615")
    assert (result.qe_status, result.platform_status) == (None, None)
    document["advisory_ids"] = None
    assert _verify_with(monkeypatch, document).advisory_ids == ()
    del document["advisory_ids"]
    assert _verify_with(monkeypatch, document).advisory_ids == ()


def test_a_verified_report_that_is_not_a_td_report_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    document = _real_document()
    document["report"] = {"SgxEnclave": next(iter(document["report"].values()))}
    with pytest.raises(AttestationError) as info:
        _verify_with(monkeypatch, document)
    assert info.value.message == (
        "DCAP verification failed: the verified report is SgxEnclave, not a TDX TD report"
    )
    assert info.value.code == "dcap_verification_failed"


@pytest.mark.parametrize("change", ["no-report", "empty-report", "missing-field", "bad-hex"])
def test_an_unexpected_verified_report_layout_fails(
    monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    document = _real_document()
    fields = next(iter(document["report"].values()))
    if change == "no-report":
        del document["report"]
    elif change == "empty-report":
        document["report"] = {}
    elif change == "missing-field":
        del fields["mr_td"]
    else:
        fields["rt_mr3"] = "zz"
    with pytest.raises(AttestationError) as info:
        _verify_with(monkeypatch, document)
    assert info.value.message == "DCAP verification failed: unexpected verified report layout"
