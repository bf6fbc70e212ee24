"""Running the verifier on a real capture with its own nonce, time and collateral."""

from __future__ import annotations

from typing import Any

from proxy.attestation import AttestationPolicy, AttestationReport, parse_attestation
from proxy.attestation import verify_evidence as _verify
from proxy.attestation.policy import TrustLevel
from tests.support.attestation_helpers import (
    Fixture,
    body_of,
    collateral_of,
    nonce_of,
    policy_for,
    time_of,
)


def verify(
    fixture: Fixture,
    body: dict[str, Any] | None = None,
    *,
    policy: AttestationPolicy | None = None,
    now: int | None = None,
    remembered: TrustLevel | None = None,
    model: str | None = None,
) -> AttestationReport:
    """Verify a (possibly tampered) body of ``fixture`` at its capture time."""
    return _verify(
        parse_attestation(body if body is not None else body_of(fixture)),
        expected_model=model or fixture.model,
        nonce=nonce_of(fixture),
        policy=policy if policy is not None else policy_for(fixture),
        now=now if now is not None else time_of(fixture),
        collateral=collateral_of(fixture),
        remembered_trust=remembered,
    )


def failed(report: AttestationReport) -> set[str]:
    return {check.code for check in report.failures}
