"""Trust levels: every capture classified, gateway refused unless allowed, no silent downgrade."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from proxy.attestation.evidence import Evidence, Shape
from proxy.attestation.policy import AttestationPolicy, TrustLevel
from proxy.attestation.trust import (
    ATTESTED,
    DOWNGRADE_COMMAND,
    NOT_ATTESTED,
    Classification,
    classify,
    trust_checks,
)
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


# --- classify and the two checks, exactly ----------------------------------------------------

MODEL = "e2ee-m"
ENCLAVE = Classification("enclave", ("a near report from the model's own CVM",))
GATEWAY = Classification("gateway", ("reason one", "reason two"))
REFUSE = AttestationPolicy()
ALLOW = AttestationPolicy(gateway_models="allow")
SETTING = f'attestation.trust_levels."{MODEL}" = "gateway"'
GATEWAY_STATEMENT = (
    f"gateway (reason one; reason two): attested is {ATTESTED['gateway']}; NOT attested: "
    f"{NOT_ATTESTED['gateway'][0]}"
)


def _with_vm_config(vm_config: object, shape: Shape = "near") -> Evidence:
    evidence = evidence_of(GLM)
    info = {**(evidence.info or {}), "vm_config": vm_config}
    return replace(evidence, shape=shape, info=info)


@pytest.mark.parametrize(
    "vm_config",
    [
        {"num_gpus": 0},
        json.dumps({"num_gpus": 0}),
    ],
)
def test_no_gpu_declared_makes_a_gateway(vm_config: object) -> None:
    assert classify(_with_vm_config(vm_config)) == Classification(
        "gateway", ("the attested VM declares no GPU, so it cannot be running the model",)
    )
    assert classify(_with_vm_config(vm_config, shape="aci")) == Classification(
        "gateway",
        (
            "an aci/1 report: the attested CVM is the private-ai-gateway",
            "the attested VM declares no GPU, so it cannot be running the model",
        ),
    )


@pytest.mark.parametrize(
    "vm_config",
    [
        {"num_gpus": 8},
        {"num_gpus": False},  # a boolean is not a count
        {"num_gpus": "0"},
        {"num_gpus": 0.0},
        {"num_gpus": None},
        {},
        "{not json",
        "[" * 100_000,
        json.dumps([0]),
        None,
    ],
)
def test_only_an_integer_zero_counts_as_no_gpu(vm_config: object) -> None:
    expected = Classification("enclave", ("a near report from the model's own CVM",))
    assert classify(_with_vm_config(vm_config)) == expected
    aci = classify(_with_vm_config(vm_config, shape="aci"))
    assert aci == Classification(
        "gateway", ("an aci/1 report: the attested CVM is the private-ai-gateway",)
    )


def test_a_report_without_info_is_classified_by_its_shape() -> None:
    evidence = replace(evidence_of(GLM), info=None)
    assert classify(evidence).level == "enclave"
    assert classify(replace(evidence, shape="aci")).level == "gateway"


def _checks(
    classification: Classification,
    policy: AttestationPolicy = REFUSE,
    remembered: TrustLevel | None = None,
    **kwargs: str,
) -> list[tuple[str, bool | None, bool, str, str]]:
    return [
        (check.code, check.ok, check.enforced, check.tier, check.detail)
        for check in trust_checks(
            classification, model=MODEL, policy=policy, remembered=remembered, **kwargs
        )
    ]


NOTHING_REMEMBERED = f"no earlier trust level known for {MODEL!r}; enclave will be remembered"


def test_trust_level_of_an_enclave() -> None:
    detail = f"enclave (a near report from the model's own CVM): attested is {ATTESTED['enclave']}"
    assert _checks(ENCLAVE) == [
        ("trust_level", True, True, "trust", detail),
        ("trust_not_downgraded", True, True, "trust", NOTHING_REMEMBERED),
    ]


def test_trust_level_of_a_gateway_refused_allowed_or_accepted() -> None:
    refused = (
        f'{GATEWAY_STATEMENT}. Refused (attestation.gateway_models = "refuse"). To accept '
        f'gateway trust set attestation.gateway_models = "allow" (every model) or {SETTING} '
        "(this model only)"
    )
    assert _checks(GATEWAY)[0] == ("trust_level", False, True, "trust", refused)
    allowed = f'{GATEWAY_STATEMENT}; allowed by attestation.gateway_models = "allow"'
    assert _checks(GATEWAY, ALLOW)[0] == ("trust_level", True, True, "trust", allowed)
    accepted = f"{GATEWAY_STATEMENT}; accepted by {SETTING}"
    pinned = AttestationPolicy(trust_levels={MODEL: "gateway"})
    assert _checks(GATEWAY, pinned)[0] == ("trust_level", True, True, "trust", accepted)
    # Another model's setting accepts nothing for this one.
    other = AttestationPolicy(trust_levels={"other": "gateway"})
    assert _checks(GATEWAY, other)[0] == ("trust_level", False, True, "trust", refused)


@pytest.mark.parametrize(
    ("level", "expected", "relation"),
    [
        ("enclave", "enclave", "same as"),
        ("gateway", "gateway", "same as"),
        ("enclave", "gateway", "upgrade from"),
    ],
)
def test_not_downgraded_same_level_or_upgrade(
    level: TrustLevel, expected: TrustLevel, relation: str
) -> None:
    classification = ENCLAVE if level == "enclave" else GATEWAY
    remembered = _checks(classification, ALLOW, remembered=expected)[1]
    assert remembered == (
        "trust_not_downgraded",
        True,
        True,
        "trust",
        f"{level}: {relation} {expected} (the trust state file)",
    )
    named = _checks(classification, ALLOW, expected, remembered_source="state.json")[1]
    assert named[4] == f"{level}: {relation} {expected} (state.json)"
    policy = AttestationPolicy(gateway_models="allow", trust_levels={MODEL: expected})
    configured = _checks(classification, policy, remembered="gateway")[1]
    assert configured[4] == (
        f"{level}: {relation} {expected} (attestation.trust_levels in the config)"
    )


def test_a_remembered_enclave_refuses_a_gateway() -> None:
    assert _checks(GATEWAY, ALLOW, remembered="enclave")[1] == (
        "trust_not_downgraded",
        False,
        True,
        "trust",
        f"DOWNGRADE: {MODEL!r} was attested as enclave (the trust state file) and now answers "
        "as gateway: its own host is no longer attested, only a gateway that forwards the "
        f"prompt; refused until accepted: to accept it run `venice-e2ee-proxy trust accept "
        f"{MODEL}` (or set {SETTING})",
    )


def test_a_configured_enclave_refuses_a_gateway_whatever_was_remembered() -> None:
    policy = AttestationPolicy(gateway_models="allow", trust_levels={MODEL: "enclave"})
    remembered: TrustLevel | None
    for remembered in (None, "gateway", "enclave"):
        assert _checks(GATEWAY, policy, remembered=remembered)[1] == (
            "trust_not_downgraded",
            False,
            True,
            "trust",
            f"DOWNGRADE: {MODEL!r} was attested as enclave (attestation.trust_levels in the "
            "config) and now answers as gateway: its own host is no longer attested, only a "
            "gateway that forwards the prompt; refused until accepted: change "
            f'attestation.trust_levels."{MODEL}" to "gateway" to accept it',
        )
