"""Trust levels: what an attestation vouches for, said plainly, and no silent downgrade.

Two levels (:data:`TRUST_LEVELS`):

``enclave``
    the attested TD is the machine that runs the model (NEAR and Phala legacy reports: dstack's
    CVM with the GPUs, the inference software in its measured compose).
``gateway``
    only a gateway is attested (Venice's ``aci/1`` reports: Phala's private-ai-gateway CVM). The
    E2EE key is the gateway's; the gateway decrypts the prompt and forwards it over TLS to an
    inference host that nothing here attests.

:func:`classify` decides from the report: an ``aci`` shape is ``gateway``; so is any report
whose attested VM declares no GPU (``vm_config.num_gpus == 0``: it cannot be running the model;
a self-reported value that can only lower the level). Everything else is ``enclave``.

Checks (tier ``trust``):

``trust_level``
    ``enclave`` passes; ``gateway`` passes only when ``attestation.gateway_models = "allow"``
    or ``attestation.trust_levels`` names ``gateway`` for the model, otherwise it fails with what
    is and is not attested and both settings named.
``trust_not_downgraded``
    the level expected for the model (``attestation.trust_levels`` in the config, else the
    level remembered from earlier attestations, passed in by the caller from its state file) is
    not ``enclave`` while the report is ``gateway``. Upgrades pass. A refused downgrade names
    ``venice-e2ee-proxy trust accept MODEL`` and the setting.

Deliberately NOT here: reading or writing the remembered levels (the service's state file).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from proxy.attestation.evidence import Evidence
from proxy.attestation.policy import TRUST_LEVELS, AttestationPolicy, TrustLevel
from proxy.attestation.report import TIER_TRUST, CheckResult

TRUST_LEVEL: Final = "trust_level"
TRUST_NOT_DOWNGRADED: Final = "trust_not_downgraded"
TRUST_CHECK_CODES: Final = (TRUST_LEVEL, TRUST_NOT_DOWNGRADED)

ATTESTED: Final[Mapping[TrustLevel, str]] = {
    "enclave": (
        "the machine that runs the model: its Intel TDX quote, the E2EE key bound to it, its "
        "measured software and, with NRAS, its NVIDIA GPUs"
    ),
    "gateway": (
        "only Venice's aci/1 gateway (Phala's private-ai-gateway CVM): its Intel TDX quote, its "
        "measured software and the key custody chain of the E2EE key; the prompt is decrypted "
        "there"
    ),
}
NOT_ATTESTED: Final[Mapping[TrustLevel, tuple[str, ...]]] = {
    "enclave": (
        "the model weights the host loads",
        "what the measured software does with a prompt beyond what its images are",
    ),
    "gateway": (
        "the inference host: the gateway forwards the decrypted prompt over TLS to a machine "
        "nothing here attests, whose operator can read prompts and answers",
        "that relayed GPU evidence comes from the host that serves the request",
        "the gateway's downstream TLS pin and keyset expiry (self-asserted, not hardware-bound)",
        "the model weights",
    ),
}
DOWNGRADE_COMMAND: Final = "venice-e2ee-proxy trust accept"


@dataclass(frozen=True, slots=True)
class Classification:
    """A report's trust level and why."""

    level: TrustLevel
    reasons: tuple[str, ...]


def _num_gpus(evidence: Evidence) -> int | None:
    value = (evidence.info or {}).get("vm_config")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            return None
    gpus = value.get("num_gpus") if isinstance(value, Mapping) else None
    return gpus if isinstance(gpus, int) and not isinstance(gpus, bool) else None


def classify(evidence: Evidence) -> Classification:
    """The trust level of a report (see the module docstring)."""
    reasons: list[str] = []
    if evidence.shape == "aci":
        reasons.append("an aci/1 report: the attested CVM is the private-ai-gateway")
    if _num_gpus(evidence) == 0:
        reasons.append("the attested VM declares no GPU, so it cannot be running the model")
    if reasons:
        return Classification("gateway", tuple(reasons))
    return Classification("enclave", (f"a {evidence.shape} report from the model's own CVM",))


def _result(code: str, ok: bool | None, detail: str, enforced: bool = True) -> CheckResult:
    return CheckResult(code=code, ok=ok, enforced=enforced, detail=detail, tier=TIER_TRUST)


def _setting(model: str) -> str:
    return f'attestation.trust_levels."{model}" = "gateway"'


def trust_checks(
    classification: Classification,
    *,
    model: str,
    policy: AttestationPolicy,
    remembered: TrustLevel | None,
    remembered_source: str = "the trust state file",
) -> list[CheckResult]:
    """``trust_level`` and ``trust_not_downgraded`` for ``model``."""
    return [
        _trust_level(classification, model, policy),
        _not_downgraded(classification.level, model, policy, remembered, remembered_source),
    ]


def _trust_level(
    classification: Classification, model: str, policy: AttestationPolicy
) -> CheckResult:
    level = classification.level
    why = "; ".join(classification.reasons)
    if level == "enclave":
        return _result(TRUST_LEVEL, True, f"enclave ({why}): attested is {ATTESTED['enclave']}")
    statement = (
        f"gateway ({why}): attested is {ATTESTED['gateway']}; NOT attested: "
        f"{NOT_ATTESTED['gateway'][0]}"
    )
    configured = policy.trust_levels.get(model)
    if configured == "gateway":
        return _result(TRUST_LEVEL, True, f"{statement}; accepted by {_setting(model)}")
    if policy.gateway_models == "allow":
        detail = f'{statement}; allowed by attestation.gateway_models = "allow"'
        return _result(TRUST_LEVEL, True, detail)
    detail = (
        f'{statement}. Refused (attestation.gateway_models = "refuse"). To accept gateway trust '
        f'set attestation.gateway_models = "allow" (every model) or {_setting(model)} (this '
        "model only)"
    )
    return _result(TRUST_LEVEL, False, detail)


def _not_downgraded(
    level: TrustLevel,
    model: str,
    policy: AttestationPolicy,
    remembered: TrustLevel | None,
    remembered_source: str,
) -> CheckResult:
    configured = policy.trust_levels.get(model)
    expected = configured or remembered
    source = "attestation.trust_levels in the config" if configured else remembered_source
    if expected not in TRUST_LEVELS:
        detail = f"no earlier trust level known for {model!r}; {level} will be remembered"
        return _result(TRUST_NOT_DOWNGRADED, True, detail)
    if expected == "enclave" and level == "gateway":
        how = (
            f'change attestation.trust_levels."{model}" to "gateway" to accept it'
            if configured
            else f"to accept it run `{DOWNGRADE_COMMAND} {model}` (or set {_setting(model)})"
        )
        detail = (
            f"DOWNGRADE: {model!r} was attested as enclave ({source}) and now answers as "
            f"gateway: its own host is no longer attested, only a gateway that forwards the "
            f"prompt; refused until accepted: {how}"
        )
        return _result(TRUST_NOT_DOWNGRADED, False, detail)
    relation = "same as" if expected == level else "upgrade from"
    return _result(TRUST_NOT_DOWNGRADED, True, f"{level}: {relation} {expected} ({source})")
