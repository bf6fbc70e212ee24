"""``venice-e2ee-proxy verify``: check a model's attestation and print a report.

Online (``verify MODEL``): a fresh attestation with a fresh nonce, with the configured policy,
collateral source and NRAS. Offline (``verify --offline --attestation FILE --nonce HEX
[--collateral FILE] [--nras-response FILE --nras-jwks FILE] [--at UNIX_TIME]``): the same checks
on a saved capture, with no network at all; the nonce and time default to the capture's own
``_client_nonce`` and ``_capture_epoch`` when the file records them.

Exit status: 0 only if every enforced check passed; 1 if any failed; 2 for unusable input.
The text report is grouped in tiers (binding, quote, gpu, software); ``--json`` prints one
object per check with ``code``, ``ok``, ``enforced``, ``detail`` and ``tier``.
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

_MARKS = {True: "PASS", False: "FAIL", None: "SKIP"}


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
    return verify_evidence(
        evidence,
        expected_model=model or evidence.model or "",
        nonce=nonce,
        policy=policy,
        now=int(now),
        **extra,
    )


def render_text(report: Mapping[str, Any]) -> str:
    """A readable, tiered report: check, result, enforced or advisory, the value seen."""
    lines = [
        f"model           {report.get('model')}",
        f"signing address {report.get('signing_address')}",
        f"report shape    {report.get('shape')}   TEE provider {report.get('tee_provider')}",
        f"TCB status      {report.get('tcb_status')}",
        "",
    ]
    tiers: dict[str, list[Mapping[str, Any]]] = {}
    for check in report.get("checks", []):
        tiers.setdefault(str(check.get("tier")), []).append(check)
    for tier, checks in tiers.items():
        lines.append(f"[{tier}]")
        for check in checks:
            mark = _MARKS.get(check.get("ok"), "????")
            enforced = "enforced" if check.get("enforced") else "advisory"
            lines.append(f"  {mark}  {check.get('code')!s:26} {enforced:9} {check.get('detail')}")
        lines.append("")
    verdict = "PASSED" if report.get("passed") else "FAILED: " + ", ".join(report["failures"])
    lines.append(f"attestation {verdict}")
    return "\n".join(lines)


def print_report(report: AttestationReport, *, as_json: bool) -> int:
    """Print the report; the exit status it calls for."""
    document = report.to_dict()
    print(json.dumps(document, indent=2) if as_json else render_text(document))
    return 0 if report.passed else 1


def print_error(exc: ProxyError | VerifyInputError, *, as_json: bool) -> None:
    """Print why no report could be produced."""
    if isinstance(exc, ProxyError):
        text = json.dumps(exc.to_body(), indent=2) if as_json else f"error ({exc.code}): {exc}"
    else:
        text = json.dumps({"error": {"message": str(exc)}}) if as_json else f"error: {exc}"
    print(text)
