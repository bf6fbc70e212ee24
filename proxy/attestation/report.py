"""The verification report: one named result per check, and the verdict derived from them.

A :class:`CheckResult` has a stable ``code`` (listed in :mod:`.checks`), ``ok`` (True, False, or
None when not evaluated), whether it is ``enforced``, a one-line ``detail`` with the value seen
(never key material beyond public keys and addresses, never prompt text) and its ``tier``.

Verdict: the report passes only when every enforced check is ``ok is True``, so an enforced
check that could not be evaluated (``ok is None``) fails closed. Unenforced checks are
informational.

``to_dict()`` is the JSON form served by ``GET /v1/attestation/{model}`` and printed by
``verify --json``::

    {"model", "nonce", "shape", "signing_address", "signing_public_key", "tcb_status",
     "advisory_ids", "tee_provider", "upstream_model", "trust_level": "enclave" | "gateway",
     "attested": str, "not_attested": [str, ...], "facts": {...}, "passed",
     "failures": [code, ...], "checks": [{"code", "ok", "enforced", "detail", "tier"}, ...]}

``facts`` holds what the checks saw, for people: the classification reasons, the measurements
and whether each is known, the compose's images, the gateway's custody facts, the compose
manager's deployments. Tiers, in report order: response, binding, quote, gpu, software,
measurements, custody (aci gateway key custody), trust.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from proxy.core.errors import AttestationError

TIER_RESPONSE: Final = "response"
TIER_BINDING: Final = "binding"
TIER_QUOTE: Final = "quote"
TIER_GPU: Final = "gpu"
TIER_SOFTWARE: Final = "software"
TIER_MEASUREMENTS: Final = "measurements"
TIER_CUSTODY: Final = "custody"
TIER_TRUST: Final = "trust"


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one named check."""

    code: str
    ok: bool | None
    enforced: bool
    detail: str
    tier: str

    @property
    def failed(self) -> bool:
        """True when this check blocks the attestation (enforced and not ok)."""
        return self.enforced and self.ok is not True

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "ok": self.ok,
            "enforced": self.enforced,
            "detail": self.detail,
            "tier": self.tier,
        }


@dataclass(frozen=True, slots=True)
class AttestationReport:
    """Every check run on one attestation, and what it attested."""

    model: str
    nonce: str
    shape: str
    signing_address: str
    signing_public_key: bytes | None
    tcb_status: str | None
    checks: tuple[CheckResult, ...]
    advisory_ids: tuple[str, ...] = ()
    tee_provider: str | None = None
    upstream_model: str | None = None
    trust_level: str | None = None
    attested: str = ""
    not_attested: tuple[str, ...] = ()
    facts: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def passed(self) -> bool:
        """True when every enforced check is ok (an empty report never passes)."""
        return bool(self.checks) and not self.failures

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        """The enforced checks that are not ok, in check order."""
        return tuple(check for check in self.checks if check.failed)

    def check(self, code: str) -> CheckResult:
        """The result with this code. Raises KeyError when the check was not run."""
        for result in self.checks:
            if result.code == code:
                return result
        raise KeyError(code)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe summary (bytes as lowercase hex)."""
        key = self.signing_public_key
        return {
            "model": self.model,
            "nonce": self.nonce,
            "shape": self.shape,
            "signing_address": self.signing_address,
            "signing_public_key": key.hex() if key is not None else None,
            "tcb_status": self.tcb_status,
            "advisory_ids": list(self.advisory_ids),
            "tee_provider": self.tee_provider,
            "upstream_model": self.upstream_model,
            "trust_level": self.trust_level,
            "attested": self.attested,
            "not_attested": list(self.not_attested),
            "facts": dict(self.facts),
            "passed": self.passed,
            "failures": [check.code for check in self.failures],
            "checks": [check.to_dict() for check in self.checks],
        }

    def raise_for_failure(self) -> None:
        """Raise :class:`AttestationError` unless it passed: code = the first failed check, the
        message names every failed check and the first one's detail (what failed, the value
        seen and, for a policy refusal, the setting or command that changes it)."""
        if self.passed:
            return
        failures = self.failures
        if not failures:
            raise AttestationError("the attestation report has no checks", code="no_checks")
        codes = ", ".join(check.code for check in failures)
        first = failures[0]
        raise AttestationError(
            f"attestation of {self.model} failed checks: {codes} ({first.code}: {first.detail})",
            code=first.code,
        )


def enclave_key(report: AttestationReport) -> bytes:
    """The 65-byte enclave key to encrypt to; raises unless the report passed."""
    report.raise_for_failure()
    if report.signing_public_key is None:
        raise AttestationError(
            "the attestation passed without an enclave key", code="signing_key_valid"
        )
    return report.signing_public_key
