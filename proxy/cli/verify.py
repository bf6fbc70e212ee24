"""``venice-e2ee-proxy verify``: check a model's attestation and print a report.

Online (``verify MODEL``): a fresh attestation with a fresh nonce, with the configured policy,
collateral source and NRAS. Offline (``verify --offline --attestation FILE --nonce HEX
[--collateral FILE] [--nras-response FILE --nras-jwks FILE] [--at UNIX_TIME]``): the same checks
on a saved capture, with no network at all; the nonce and time default to the capture's own
``_client_nonce`` and ``_capture_epoch`` when the file records them.

Offline, nothing is skipped silently: without ``--collateral`` the ``dcap`` check is "not
checked" and fails unless ``--no-dcap`` is given; without ``--nras-response`` (and with
``attestation.nvidia = "nras"``) ``gpu_nras`` fails unless ``--no-nras`` is given. Knowing skips
are printed in a "not checked" section, and weakening settings in a "weakened" one.

Exit status: 0 only if every enforced check passed; 1 if any failed; 2 for unusable input (a
file that cannot be read, an unknown report shape, an ed25519 report, a malformed capture).
The text report starts with the trust level and what is and is not attested, then the checks
grouped in tiers; ``--json`` prints the report object (:meth:`AttestationReport.to_dict`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from proxy.attestation import (
    AttestationPolicy,
    AttestationReport,
    NrasEvidence,
    parse_attestation,
    unwrap_capture,
    verify_evidence,
)
from proxy.core.errors import ProxyError
from proxy.service.trust_state import TrustState

_MARKS = {True: "PASS", False: "FAIL", None: "SKIP"}
INPUT_ERROR_CODES = frozenset(
    {"attestation_shape_unknown", "signing_algo_unsupported", "capture_invalid"}
)
_HINTS = {
    "dcap": "give --collateral FILE (Intel collateral for this quote), or --no-dcap to skip "
    "DCAP knowingly",
    "gpu_nras": "give --nras-response FILE --nras-jwks FILE, or --no-nras to skip NRAS knowingly",
    "trust_level": 'set attestation.gateway_models = "allow" (or pass --allow-gateway) to '
    "accept gateway trust",
    "trust_not_downgraded": "run `venice-e2ee-proxy trust accept MODEL` to accept the downgrade",
}


class VerifyInputError(Exception):
    """A file or argument ``verify --offline`` cannot use."""


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise VerifyInputError(f"cannot read {what} {path}: {exc.strerror}") from None
    except ValueError:
        raise VerifyInputError(f"{what} {path} is not valid JSON") from None


def verify_offline(
    attestation: Path,
    policy: AttestationPolicy,
    *,
    nonce_hex: str | None,
    collateral: Path | None = None,
    nras_response: Path | None = None,
    nras_jwks: Path | None = None,
    at: int | None = None,
    model: str | None = None,
    trust_state: TrustState | None = None,
) -> AttestationReport:
    """Run every check on a saved attestation. Raises :class:`VerifyInputError` for bad input
    and :class:`ProxyError` when the body cannot be parsed at all."""
    capture = unwrap_capture(_read_json(attestation, "attestation"))
    if nonce_hex is not None:
        try:
            nonce = bytes.fromhex(nonce_hex)
        except ValueError:
            raise VerifyInputError("--nonce must be 64 hex characters") from None
        if len(nonce) != 32:
            raise VerifyInputError("--nonce must be 64 hex characters (32 bytes)")
    elif capture.client_nonce is not None:
        nonce = capture.client_nonce
    else:
        raise VerifyInputError("--nonce is required: the file does not record its nonce")
    now = at if at is not None else capture.capture_epoch
    if now is None:
        now = int(time.time())
    evidence = parse_attestation(capture.body)
    extra: dict[str, Any] = {}
    if collateral is not None:
        extra["collateral"] = _read_json(collateral, "collateral")
    if (nras_response is None) != (nras_jwks is None):
        raise VerifyInputError("--nras-response and --nras-jwks go together")
    if nras_response is not None and nras_jwks is not None:
        extra["nras"] = NrasEvidence(
            response=_read_json(nras_response, "NRAS response"),
            jwks=_read_json(nras_jwks, "NRAS JWKS"),
        )
    expected = model or evidence.model or ""
    if trust_state is not None:
        extra["remembered_trust"] = trust_state.get(expected)
        extra["remembered_source"] = f"remembered in {trust_state.where}"
    return verify_evidence(
        evidence,
        expected_model=expected,
        nonce=nonce,
        policy=policy,
        now=int(now),
        **extra,
    )


def render_text(
    report: Mapping[str, Any],
    *,
    skipped: list[str] | None = None,
    weakened: list[str] | None = None,
) -> str:
    """A readable, tiered report: the trust level and what it covers, then each check with its
    result, enforced or advisory, and the value seen."""
    lines = [
        f"model           {report.get('model')}",
        f"trust level     {str(report.get('trust_level')).upper()}",
        f"attested        {report.get('attested')}",
        *[f"NOT attested    {item}" for item in report.get("not_attested") or []],
        f"signing address {report.get('signing_address')}",
        f"report shape    {report.get('shape')}   TEE provider {report.get('tee_provider')}",
        f"TCB status      {report.get('tcb_status')}",
        "",
    ]
    if skipped:
        lines += ["[not checked]", *[f"  SKIP  {item}" for item in skipped], ""]
    if weakened:
        lines += ["[weakened by settings]", *[f"  WARN  {item}" for item in weakened], ""]
    tiers: dict[str, list[Mapping[str, Any]]] = {}
    for check in report.get("checks", []):
        tiers.setdefault(str(check.get("tier")), []).append(check)
    for tier, checks in tiers.items():
        lines.append(f"[{tier}]")
        for check in checks:
            mark = _MARKS.get(check.get("ok"), "????")
            if check.get("ok") is None and check.get("enforced"):
                mark = "FAIL"  # enforced but not evaluated: fails closed
            enforced = "enforced" if check.get("enforced") else "advisory"
            lines.append(f"  {mark}  {check.get('code')!s:26} {enforced:9} {check.get('detail')}")
        lines.append("")
    failures = list(report.get("failures") or [])
    for code in failures:
        if code in _HINTS:
            lines.append(f"to proceed ({code}): {_HINTS[code]}")
    level = report.get("trust_level")
    verdict = (
        f"PASSED (trust level {level})"
        if report.get("passed")
        else "FAILED: " + ", ".join(failures)
    )
    lines.append(f"attestation {verdict}")
    return "\n".join(lines)


def print_report(
    report: AttestationReport,
    *,
    as_json: bool,
    skipped: list[str] | None = None,
    weakened: list[str] | None = None,
) -> int:
    """Print the report; the exit status it calls for."""
    document = report.to_dict()
    if as_json:
        document["not_checked"] = list(skipped or [])
        document["weakened"] = list(weakened or [])
        print(json.dumps(document, indent=2))
    else:
        print(render_text(document, skipped=skipped, weakened=weakened))
    return 0 if report.passed else 1


PIN_NAMES = ("mrtd", "rtmr0", "rtmr1", "rtmr2", "compose_hash", "os_image_hash")


def render_pins(report: AttestationReport, *, offline: bool = False) -> str:
    """The report's measurements as a TOML ``[attestation.pins."MODEL"]`` table."""
    measurements = report.facts.get("measurements") or {}
    known = measurements.get("known") or {}
    lines = [
        f"# Measurements of {report.model} (trust level {report.trust_level}), "
        f"{'from a saved attestation' if offline else 'from a fresh attestation'}.",
        "# Paste into your config file to refuse any other value. Lists: during a rollout keep",
        "# the old value next to the new one. Check new values before you trust them.",
    ]
    if not report.passed:
        failed = ", ".join(check.code for check in report.failures)
        lines.append(f"# WARNING: this attestation did NOT pass ({failed}); do not pin blindly")
    lines.append(f'[attestation.pins."{report.model}"]')
    for name in PIN_NAMES:
        value = measurements.get(name)
        if not value:
            lines.append(f"# {name}: not bound by this attestation")
            continue
        note = ""
        if name in known:
            seen = known[name]
            note = f"  # known: {seen}" if seen else "  # NOT in the shipped policy"
        lines.append(f'{name} = ["{value}"]{note}')
    return "\n".join(lines)


def print_error(exc: ProxyError | VerifyInputError, *, as_json: bool) -> None:
    """Print why no report could be produced."""
    if isinstance(exc, ProxyError):
        text = json.dumps(exc.to_body(), indent=2) if as_json else f"error ({exc.code}): {exc}"
    else:
        text = json.dumps({"error": {"message": str(exc)}}) if as_json else f"error: {exc}"
    print(text)
