"""What the measured compose runs: digest pinning, model binding, the compose manager's quote."""

from __future__ import annotations

import json
from dataclasses import replace

from proxy.attestation.compose import is_pinned, parse_compose
from tests.support.attestation_helpers import FIXTURES_BY_NAME, body_of, policy_for
from tests.support.trust_helpers import failed, verify

GLM = FIXTURES_BY_NAME["glm_5_1"]
GEMMA = FIXTURES_BY_NAME["gemma_3_27b_p"]
QWEN = FIXTURES_BY_NAME["venice_qwen3_5_122b"]
ACI = FIXTURES_BY_NAME["live_evidence_aci"]
DIGEST = "sha256:" + "ab" * 32


def _compose(services: str) -> str:
    return json.dumps({"name": "t", "docker_compose_file": "services:\n" + services})


def test_pinned_means_a_digest() -> None:
    assert is_pinned(f"nearaidev/compose-manager@{DIGEST}")
    assert is_pinned(f"ghcr.io/org/app:1.2@{DIGEST}")
    assert not is_pinned("dstacktee/dstack-ingress:1.2")
    assert not is_pinned("alpine:latest")
    assert not is_pinned("alpine@sha256:short")


def test_images_tags_and_builds_are_reported() -> None:
    facts = parse_compose(
        _compose(
            f"  a:\n    image: x/a@{DIGEST}\n  b:\n    image: x/b:latest\n  c:\n    build: .\n"
        )
    )
    assert [(i.service, i.pinned) for i in facts.images] == [
        ("a", True),
        ("b", False),
        ("c", False),
    ]
    assert facts.images[2].reference is None


def test_hostile_or_broken_manifests_never_raise() -> None:
    for text in ("{", "[]", json.dumps({"docker_compose_file": "services: [unclosed"}), "x" * 2):
        facts = parse_compose(text)
        assert facts.error is not None
        assert facts.images == ()


def test_near_captures_pin_every_image_by_digest() -> None:
    check = verify(GLM).check("compose_images_pinned")
    assert (check.ok, check.enforced) == (True, True)
    images = verify(GLM).facts["compose"]["images"]
    assert all(image["pinned"] for image in images)


def test_an_unpinned_compose_image_is_refused_by_default_and_names_the_setting() -> None:
    strict = replace(policy_for(GEMMA), allow_unpinned_images=False)
    report = verify(GEMMA, policy=strict)
    assert failed(report) == {"compose_images_pinned"}
    detail = report.check("compose_images_pinned").detail
    assert "dstacktee/dstack-ingress:1.2" in detail
    assert "attestation.allow_unpinned_images" in detail
    tolerant = verify(GEMMA).check("compose_images_pinned")
    assert (tolerant.ok, tolerant.enforced) == (False, False)


def test_the_aci_capture_shows_no_manifest_and_says_so() -> None:
    check = verify(ACI).check("compose_images_pinned")
    assert (check.ok, check.enforced) == (None, False)
    assert "no app_compose" in check.detail


def test_the_measured_compose_binds_the_served_model_where_it_names_one() -> None:
    check = verify(GEMMA).check("model_binding")
    assert (check.ok, check.enforced) == (True, True)
    assert "google/gemma-3-27b-it" in check.detail
    body = body_of(GEMMA)
    body["upstream_model"] = "meta-llama/Llama-3-70B"  # Venice's (unauthenticated) claim
    report = verify(GEMMA, body)
    assert failed(report) == {"model_binding"}


def test_where_nothing_measured_names_the_model_the_report_says_so() -> None:
    for fixture in (GLM, ACI):
        check = verify(fixture).check("model_binding")
        assert (check.ok, check.enforced) == (None, False)
        assert "unauthenticated label" in check.detail
    assert "GLM-5.1.yaml" in verify(GLM).check("model_binding").detail  # the manager's deploy
    assert "unauthenticated label" in verify(GLM).check("model_match").detail


def test_the_compose_managers_second_quote_verifies_with_its_own_reportdata() -> None:
    check = verify(GLM).check("compose_manager_quote")
    assert (check.ok, check.enforced, check.tier) == (True, True, "quote")
    assert "DCAP UpToDate" in check.detail
    assert "compose_up actions authenticated" in check.detail
    # The April capture was re-serialized (keys sorted): its actions are shown as unusable.
    assert "not used" in verify(QWEN).check("compose_manager_quote").detail


def test_a_tampered_compose_manager_attestation_fails() -> None:
    body = body_of(GLM)
    body["compose_manager_attestation"]["actions_hash"] = "00" * 32
    report = verify(GLM, body)
    assert failed(report) == {"compose_manager_quote"}
    assert "actions_hash" in report.check("compose_manager_quote").detail
    body = body_of(GLM)
    quote = bytearray(bytes.fromhex(body["compose_manager_attestation"]["quote"]))
    quote[700] ^= 0x01  # inside the signature
    body["compose_manager_attestation"]["quote"] = quote.hex()
    assert failed(verify(GLM, body)) == {"compose_manager_quote"}


def test_no_compose_manager_is_reported_not_failed() -> None:
    check = verify(GEMMA).check("compose_manager_quote")
    assert (check.ok, check.enforced) == (None, False)
