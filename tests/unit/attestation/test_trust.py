"""Trust levels: every capture classified, gateway refused unless allowed, no silent downgrade."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from proxy.attestation.trust import DOWNGRADE_COMMAND, classify
from tests.support.attestation_helpers import (
    FIXTURE_IDS,
    FIXTURE_LIST,
    FIXTURES_BY_NAME,
    Fixture,
    body_of,
    evidence_of,
    policy_for,
)
from tests.support.trust_helpers import failed, verify

ACI = FIXTURES_BY_NAME["live_evidence_aci"]
GLM = FIXTURES_BY_NAME["glm_5_1"]


@pytest.mark.parametrize("fixture", FIXTURE_LIST, ids=FIXTURE_IDS)
def test_every_capture_has_its_trust_level(fixture: Fixture) -> None:
    expected = "gateway" if fixture.shape == "aci" else "enclave"
    report = verify(fixture)
    assert report.passed, failed(report)
    assert report.trust_level == expected
    assert report.to_dict()["trust_level"] == expected
    assert report.not_attested
    if expected == "gateway":
        assert "inference host" in report.not_attested[0]


def test_gateway_is_refused_by_default_with_what_is_attested_and_the_setting() -> None:
    report = verify(ACI, policy=replace(policy_for(ACI), gateway_models="refuse"))
    assert failed(report) == {"trust_level"}
    detail = report.check("trust_level").detail
    assert "only Venice's aci/1 gateway" in detail
    assert "NOT attested: the inference host" in detail
    assert 'attestation.gateway_models = "allow"' in detail
    assert f'attestation.trust_levels."{ACI.model}" = "gateway"' in detail
    with pytest.raises(Exception, match="trust_level") as info:
        report.raise_for_failure()
    assert "gateway_models" in str(info.value)


def test_gateway_trust_accepted_for_one_model_in_the_config() -> None:
    policy = replace(policy_for(ACI), gateway_models="refuse", trust_levels={ACI.model: "gateway"})
    report = verify(ACI, policy=policy)
    assert report.passed
    assert "accepted by attestation.trust_levels" in report.check("trust_level").detail


def test_a_downgrade_from_enclave_to_gateway_is_refused_and_says_how_to_accept() -> None:
    report = verify(ACI, remembered="enclave")
    assert failed(report) == {"trust_not_downgraded"}
    detail = report.check("trust_not_downgraded").detail
    assert "DOWNGRADE" in detail
    assert f"{DOWNGRADE_COMMAND} {ACI.model}" in detail


def test_a_config_pinned_enclave_refuses_gateway_even_when_gateway_is_allowed() -> None:
    policy = replace(policy_for(ACI), trust_levels={ACI.model: "enclave"})
    report = verify(ACI, policy=policy)
    assert failed(report) == {"trust_not_downgraded"}
    assert "attestation.trust_levels" in report.check("trust_not_downgraded").detail


def test_an_upgrade_and_the_same_level_pass() -> None:
    assert verify(GLM, remembered="gateway").passed
    assert verify(GLM, remembered="enclave").passed
    assert verify(ACI, remembered="gateway").passed


def test_an_attested_vm_without_gpus_is_a_gateway_whatever_its_shape() -> None:
    body = body_of(GLM)
    vm_config = json.loads(body["info"]["vm_config"])
    vm_config["num_gpus"] = 0
    body["info"]["vm_config"] = json.dumps(vm_config)
    evidence = evidence_of(GLM)
    assert classify(evidence).level == "enclave"
    from proxy.attestation import parse_attestation

    classification = classify(parse_attestation(body))
    assert classification.level == "gateway"
    assert "declares no GPU" in classification.reasons[0]


def test_gpu_checks_on_a_gateway_without_relayed_evidence_are_reported_not_failed() -> None:
    report = verify(ACI, policy=replace(policy_for(ACI), nvidia="nras"))
    for code in ("gpu_nonce", "gpu_nras"):
        check = report.check(code)
        assert (check.ok, check.enforced) == (None, False)
        assert "relayed no GPU evidence" in check.detail
    assert report.passed
