"""The shipped measurement policy: enforced MRSEAM/MRTD, known/unknown RTMRs, data with sources."""

from __future__ import annotations

import json
from dataclasses import replace
from importlib import resources

import pytest

from proxy.attestation.measurements import shipped_policy
from tests.support.attestation_helpers import (
    FIXTURE_IDS,
    FIXTURE_LIST,
    FIXTURES_BY_NAME,
    Fixture,
    body_of,
    flip_quote_byte,
    policy_for,
)
from tests.support.trust_helpers import failed, verify

GLM = FIXTURES_BY_NAME["glm_5_1"]
GEMMA = FIXTURES_BY_NAME["gemma_3_27b_p"]
QWEN = FIXTURES_BY_NAME["venice_qwen3_5_122b"]
MR_SEAM_OFFSET = 48 + 16
MR_TD_OFFSET = 184


def _data() -> dict[str, object]:
    text = resources.files("proxy.attestation.data").joinpath("measurement_policy.json")
    document: dict[str, object] = json.loads(text.read_text("utf-8"))
    return document


@pytest.mark.parametrize("fixture", FIXTURE_LIST, ids=FIXTURE_IDS)
def test_every_capture_runs_a_known_tdx_module_firmware_and_known_registers(
    fixture: Fixture,
) -> None:
    report = verify(fixture)
    for code in ("mrseam_allowed", "mrtd_allowed"):
        check = report.check(code)
        assert (check.ok, check.enforced, check.tier) == (True, True, "measurements")
    known = report.check("measurements_known")
    assert (known.ok, known.enforced) == (True, False)


@pytest.mark.parametrize(
    ("offset", "code"), [(MR_SEAM_OFFSET, "mrseam_allowed"), (MR_TD_OFFSET, "mrtd_allowed")]
)
def test_a_measurement_not_in_the_policy_is_refused_and_names_the_setting(
    offset: int, code: str
) -> None:
    # GEMMA has no compose-manager quote, whose own MRTD would then differ too.
    body = flip_quote_byte(body_of(GEMMA), offset + 5)
    policy = replace(policy_for(GEMMA), dcap="off")  # isolate the policy check from the signature
    report = verify(GEMMA, body, policy=policy)
    assert failed(report) == {code}
    setting = "attestation.extra_mrseam" if code == "mrseam_allowed" else "attestation.extra_mrtd"
    assert setting in report.check(code).detail
    value = report.facts["measurements"]["mrseam" if code == "mrseam_allowed" else "mrtd"]
    extra = {"extra_mrseam" if code == "mrseam_allowed" else "extra_mrtd": frozenset({value})}
    assert verify(GEMMA, body, policy=replace(policy, **extra)).passed  # type: ignore[arg-type]


def test_the_june_2026_rtmr0_change_is_known_with_both_values() -> None:
    april = verify(QWEN).facts["measurements"]
    june = verify(GLM).facts["measurements"]
    assert april["rtmr0"] != june["rtmr0"]
    assert "2026-04-24" in april["known"]["rtmr0"]
    assert "2026-06-04" in june["known"]["rtmr0"]


def test_an_unknown_rtmr_is_flagged_but_not_enforced() -> None:
    body = flip_quote_byte(body_of(GLM), 376 + 1)  # RTMR0
    policy = replace(policy_for(GLM), dcap="off", software="off")
    check = verify(GLM, body, policy=policy).check("measurements_known")
    assert (check.ok, check.enforced) == (False, False)
    assert "unknown: rtmr0" in check.detail


def test_the_shipped_data_names_a_source_or_sighting_for_every_value() -> None:
    document = _data()
    assert document["updated"]
    for register, digits in (("mrseam", 96), ("mrtd", 96)):
        section = document[register]
        assert isinstance(section, dict)
        assert section["enforced"] is True
        for entry in section["values"]:
            assert len(entry["value"]) == digits
            assert entry["sources"]
    known = document["known"]
    assert isinstance(known, dict)
    for name, digits in (("rtmr0", 96), ("rtmr1", 96), ("rtmr2", 96), ("compose_hash", 64)):
        for entry in known[name]:
            assert len(entry["value"]) == digits
            assert entry["seen_on"]
    gateway = document["gateway"]
    assert isinstance(gateway, dict)
    for entry in [*gateway["kms_roots"], *gateway["app_ids"]]:
        assert entry["sources"]
    shipped = shipped_policy()
    assert len(shipped.mrseam) == 4
    assert len(shipped.kms_roots) == 1
