"""Pure verification of Venice TEE attestations: parse a report, run named checks, decide.

Flow (no I/O anywhere in this package; the caller fetches the body and the collateral)::

    body = <GET /api/v1/tee/attestation?model=M&nonce=N>      (or unwrap_capture(saved).body)
    evidence = parse_attestation(body)                          # shapes: near, phala_legacy, aci
    report = verify_evidence(evidence, expected_model=M, nonce=N, policy=..., now=...,
                             collateral=..., nras=NrasEvidence(answer, jwks))
    key = enclave_key(report)                                   # raises unless report.passed

Modules: ``quote`` (TDX v4 layout), ``evidence`` (report shapes), ``capture`` (saved files),
``dcap`` (Intel DCAP via dcap_qvl), ``nras`` (NVIDIA NRAS JWTs), ``eventlog`` (RTMR replay),
``software`` (compose hash, OS image, pins), ``policy``, ``checks`` (the check list),
``report``.
"""

from proxy.attestation.capture import Capture, unwrap_capture
from proxy.attestation.checks import (
    CHECK_CODES,
    NRAS_NOT_FETCHED,
    NRAS_NOT_IMPLEMENTED,
    verify_evidence,
)
from proxy.attestation.dcap import DcapResult, verify_quote_dcap
from proxy.attestation.evidence import Evidence, Shape, parse_attestation
from proxy.attestation.nras import (
    NRAS_CODES,
    NRAS_ISSUER,
    NrasEvidence,
    NrasGpu,
    NrasResult,
    verify_nras_response,
)
from proxy.attestation.policy import (
    DEFAULT_ALLOWED_TCB_STATUS,
    KNOWN_TCB_STATUSES,
    AttestationPolicy,
    DcapMode,
    MeasurementPins,
    NvidiaMode,
    SoftwareMode,
)
from proxy.attestation.quote import TdxQuote, decode_quote, parse_tdx_quote
from proxy.attestation.report import AttestationReport, CheckResult, enclave_key

__all__ = [
    "CHECK_CODES",
    "DEFAULT_ALLOWED_TCB_STATUS",
    "KNOWN_TCB_STATUSES",
    "NRAS_CODES",
    "NRAS_ISSUER",
    "NRAS_NOT_FETCHED",
    "NRAS_NOT_IMPLEMENTED",
    "AttestationPolicy",
    "AttestationReport",
    "Capture",
    "CheckResult",
    "DcapMode",
    "DcapResult",
    "Evidence",
    "MeasurementPins",
    "NrasEvidence",
    "NrasGpu",
    "NrasResult",
    "NvidiaMode",
    "Shape",
    "SoftwareMode",
    "TdxQuote",
    "decode_quote",
    "enclave_key",
    "parse_attestation",
    "parse_tdx_quote",
    "unwrap_capture",
    "verify_evidence",
    "verify_nras_response",
    "verify_quote_dcap",
]
