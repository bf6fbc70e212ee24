"""Intel DCAP verification of a TDX quote against collateral the caller already holds.

Input collateral is the JSON object PCCS/PCS collateral is saved as (the fixtures'
``collateral_*.json``; ``dcap_qvl.QuoteCollateralV3.to_json()`` writes the same form)::

    {"pck_crl_issuer_chain": PEM, "root_ca_crl": hex DER, "pck_crl": hex DER,
     "tcb_info_issuer_chain": PEM, "tcb_info": JSON text, "tcb_info_signature": hex,
     "qe_identity_issuer_chain": PEM, "qe_identity": JSON text, "qe_identity_signature": hex,
     ["pck_certificate_chain": PEM]}

``dcap_qvl`` checks the quote signature, the QE report, the PCK chain up to Intel's root (built
into dcap_qvl), the CRLs and the validity windows of every collateral item at ``now``; it
returns the TCB status (``UpToDate``, ``SWHardeningNeeded``, ``OutOfDate``, ``Revoked``, ...),
the advisory ids and the verified TD report.

When the collateral carries ``pck_certificate_chain``, dcap_qvl verifies that chain (to Intel's
root) and ignores the copy embedded in the quote; the QE report signature must still verify
under its leaf key, so another platform's chain fails.

Every failure of dcap_qvl (it raises ``ValueError``; a Rust panic surfaces as a
``BaseException``) becomes :class:`AttestationError` with code ``dcap_verification_failed`` and
dcap_qvl's one-line reason, which names public facts only ("TCBInfo expired").

Deliberately NOT done here: fetching collateral (I/O, the caller's job), judging the TCB status
(the ``dcap`` check in :mod:`.checks` applies the policy), and reading the wall clock: ``now``
is always passed in, so saved captures verify at their capture time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dcap_qvl

from proxy.attestation.quote import TdReport
from proxy.core.errors import AttestationError

DCAP_FAILED = "dcap_verification_failed"


@dataclass(frozen=True, slots=True)
class DcapResult:
    """What DCAP verified: the TCB status and the TD report as signed by the platform."""

    status: str
    advisory_ids: tuple[str, ...]
    report_type: str
    report: TdReport
    qe_status: str | None = None
    platform_status: str | None = None


def _failure(reason: str) -> AttestationError:
    lines = [line.strip() for line in reason.splitlines() if line.strip()]
    text = " ".join(lines).removeprefix("Verification failed: ")
    return AttestationError(f"DCAP verification failed: {text[:300]}", code=DCAP_FAILED)


def _collateral(collateral: Mapping[str, Any]) -> Any:
    if not isinstance(collateral, Mapping):
        raise AttestationError("DCAP collateral is not a JSON object", code=DCAP_FAILED)
    try:
        return dcap_qvl.QuoteCollateralV3.from_json(json.dumps(dict(collateral)))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # pyo3 panics are BaseException
        raise _failure(f"invalid collateral: {exc}") from exc


def verify_quote_dcap(quote: bytes, collateral: Mapping[str, Any], now: int) -> DcapResult:
    """Verify ``quote`` with ``collateral`` at unix time ``now``; raise on any failure."""
    built = _collateral(collateral)
    try:
        verified = dcap_qvl.verify(bytes(quote), built, int(now))
        document = json.loads(verified.to_json())
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # pyo3 panics are BaseException
        raise _failure(str(exc)) from exc
    return _result(document)


def _result(document: Any) -> DcapResult:
    try:
        report_variants = document["report"]
        report_type, fields = next(iter(report_variants.items()))
        if not str(report_type).startswith("TD"):
            raise _failure(f"the verified report is {report_type}, not a TDX TD report")

        def hex_field(name: str) -> bytes:
            return bytes.fromhex(fields[name])

        return DcapResult(
            status=str(document["status"]),
            advisory_ids=tuple(str(a) for a in document.get("advisory_ids") or ()),
            report_type=str(report_type),
            report=TdReport(
                tee_tcb_svn=hex_field("tee_tcb_svn"),
                mr_seam=hex_field("mr_seam"),
                mr_signer_seam=hex_field("mr_signer_seam"),
                seam_attributes=hex_field("seam_attributes"),
                td_attributes=hex_field("td_attributes"),
                xfam=hex_field("xfam"),
                mr_td=hex_field("mr_td"),
                mr_config_id=hex_field("mr_config_id"),
                mr_owner=hex_field("mr_owner"),
                mr_owner_config=hex_field("mr_owner_config"),
                rtmrs=(
                    hex_field("rt_mr0"),
                    hex_field("rt_mr1"),
                    hex_field("rt_mr2"),
                    hex_field("rt_mr3"),
                ),
                report_data=hex_field("report_data"),
            ),
            qe_status=_nested_status(document, "qe_status"),
            platform_status=_nested_status(document, "platform_status"),
        )
    except (KeyError, TypeError, ValueError, AttributeError, StopIteration) as exc:
        raise _failure("unexpected verified report layout") from exc


def _nested_status(document: Mapping[str, Any], key: str) -> str | None:
    part = document.get(key)
    if isinstance(part, Mapping) and isinstance(part.get("status"), str):
        status: str = part["status"]
        return status
    return None
