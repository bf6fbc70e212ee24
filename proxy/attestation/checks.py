"""Verify normalized evidence: a pure function of (evidence, nonce, policy, now, collateral, nras).

Checks, in the order they run (tier in brackets). Each always yields exactly one result; a check
whose input failed an earlier check reports ``ok=False`` with "not evaluated: <code> failed".

=======================  =========  ==========================================================
code                     tier       passes when
=======================  =========  ==========================================================
venice_verified_flag     response   Venice's own (unauthenticated) ``verified`` is ``true``
model_match              response   the response ``model`` equals the model we asked for
nonce_echo               response   the echoed ``nonce``/``request_nonce`` equals ours
signing_key_valid        binding    a signing/E2EE public key is present and on secp256k1
signing_address_match    binding    keccak address of that key == ``signing_address``
                                    (case-insensitive, so EIP-55 mixed case is accepted)
quote_parse              quote      ``intel_quote`` is a well-formed TDX v4 quote
quote_tee_type           quote      the quote's tee_type is TDX (0x81)
quote_debug_disabled     quote      td_attributes DEBUG bit (byte 0, bit 0) is clear
report_data_address      binding    REPORTDATA[0:20] == keccak address of the key
report_data_padding      binding    REPORTDATA[20:32] is twelve zero bytes
report_data_nonce        binding    REPORTDATA[32:64] == our 32-byte nonce
gpu_nonce                gpu        nvidia_payload ``nonce`` equals ours and its
                                    ``evidence_list`` has at least one GPU, each carrying our
                                    nonce (its own ``nonce`` and the nonce of the SPDM request
                                    its ``evidence`` starts with, whichever it states, all of
                                    them); not enforced when nvidia is "off"
gpu_nras                 gpu        only with nvidia "nras": the NRAS answer the caller fetched
                                    (``nras=``) verifies (:mod:`.nras`) for our nonce at
                                    ``now`` and covers as many GPUs as ``nvidia_payload``
                                    lists; without ``nras`` it fails closed ("not fetched")
dcap                     quote      Intel DCAP verifies the quote with the given collateral at
                                    ``now``, its report matches the parsed one, and the TCB
                                    status is allowed (never ``Revoked``); not enforced when
                                    dcap is "off"; fails with "no collateral" when required
                                    and none was given
event_log_replay         software   every event log replays to RTMR0-3 (:mod:`.software`)
compose_hash_binding     software   the quote binds sha256(app_compose) = compose_hash
os_image_not_dev         software   vm_config names no dstack dev image
measurements_pinned      software   pinned measurements for this model match (informational
                                    without pins: the detail lists the values seen)
compose_manager_quote    quote      NEAR's second quote (:mod:`.manager`) verifies with its own
                                    REPORTDATA rule; informational when absent
compose_images_pinned    software   every image of the measured compose is digest-pinned
model_binding            software   the measured compose names the served model (:mod:`.compose`)
mrseam_allowed           measure.   MRSEAM is a known Intel TDX module (:mod:`.measurements`)
mrtd_allowed             measure.   MRTD is a known dstack firmware
measurements_known       measure.   RTMR0-2 and compose hash known or unknown (informational)
keyset_digest ..         custody    the aci gateway's key custody chain (:mod:`.custody`):
  keyset_expiry                     keyset_digest, keyset_membership, keyset_endorsement,
                                    custody_app_key, custody_kms_root, gateway_app_id,
                                    keyset_expiry (advisory); not applicable to enclave reports
trust_level              trust      enclave, or gateway when allowed (:mod:`.trust`)
trust_not_downgraded     trust      not gateway where enclave was expected or remembered
=======================  =========  ==========================================================

GPU evidence on a ``gateway`` report proves only that real GPUs answered somewhere: when the
gateway relays none, ``gpu_nonce`` (and ``gpu_nras``) are reported as not evaluated and not
enforced instead of failing; when it relays some, they are checked like an enclave's.

Why both address checks: ``signing_address_match`` ties the advertised address to the key and
``report_data_address`` ties the key to the hardware-signed REPORTDATA; only the second one is
authenticated, and only once ``dcap`` passes.

The software tier (:mod:`.software`) follows ``policy.software``, ``policy.allow_dev_image``
and ``policy.pins``.

Deliberately NOT checked here: the GPU evidence itself without NRAS (only the nonces it states),
the EIP-55 checksum of a mixed-case address, and any of Venice's ``server_verification``
claims.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, Final

from proxy.attestation.compose import (
    COMPOSE_CHECK_CODES,
    ComposeFacts,
    app_compose_of,
    compose_images_check,
    model_binding_check,
    parse_compose,
)
from proxy.attestation.custody import CUSTODY_CHECK_CODES, custody_checks
from proxy.attestation.dcap import DcapResult, verify_quote_dcap
from proxy.attestation.evidence import Evidence
from proxy.attestation.manager import COMPOSE_MANAGER_QUOTE, compose_manager_check
from proxy.attestation.measurements import (
    MEASUREMENT_CHECK_CODES,
    known_status,
    measurement_checks,
    shipped_policy,
)
from proxy.attestation.nras import NrasEvidence, verify_nras_response
from proxy.attestation.policy import AttestationPolicy, TrustLevel
from proxy.attestation.quote import TEE_TYPE_TDX, TdxQuote, parse_tdx_quote
from proxy.attestation.report import (
    TIER_BINDING,
    TIER_GPU,
    TIER_QUOTE,
    TIER_RESPONSE,
    AttestationReport,
    CheckResult,
)
from proxy.attestation.software import (
    COMPOSE_HASH_BINDING,
    EVENT_LOG_REPLAY,
    MEASUREMENTS_PINNED,
    OS_IMAGE_NOT_DEV,
    bound_compose_hash,
    measured_claim,
    software_checks,
)
from proxy.attestation.trust import (
    ATTESTED,
    NOT_ATTESTED,
    TRUST_CHECK_CODES,
    Classification,
    classify,
    trust_checks,
)
from proxy.core.crypto import ADDRESS_BYTES, address_of
from proxy.core.errors import AttestationError, QuoteParseError

VENICE_VERIFIED_FLAG: Final = "venice_verified_flag"
MODEL_MATCH: Final = "model_match"
NONCE_ECHO: Final = "nonce_echo"
SIGNING_KEY_VALID: Final = "signing_key_valid"
SIGNING_ADDRESS_MATCH: Final = "signing_address_match"
QUOTE_PARSE: Final = "quote_parse"
QUOTE_TEE_TYPE: Final = "quote_tee_type"
QUOTE_DEBUG_DISABLED: Final = "quote_debug_disabled"
REPORT_DATA_ADDRESS: Final = "report_data_address"
REPORT_DATA_PADDING: Final = "report_data_padding"
REPORT_DATA_NONCE: Final = "report_data_nonce"
GPU_NONCE: Final = "gpu_nonce"
GPU_NRAS: Final = "gpu_nras"
DCAP: Final = "dcap"

CHECK_CODES: Final = (
    VENICE_VERIFIED_FLAG,
    MODEL_MATCH,
    NONCE_ECHO,
    SIGNING_KEY_VALID,
    SIGNING_ADDRESS_MATCH,
    QUOTE_PARSE,
    QUOTE_TEE_TYPE,
    QUOTE_DEBUG_DISABLED,
    REPORT_DATA_ADDRESS,
    REPORT_DATA_PADDING,
    REPORT_DATA_NONCE,
    GPU_NONCE,
    GPU_NRAS,
    DCAP,
    COMPOSE_MANAGER_QUOTE,
    EVENT_LOG_REPLAY,
    COMPOSE_HASH_BINDING,
    OS_IMAGE_NOT_DEV,
    MEASUREMENTS_PINNED,
    *COMPOSE_CHECK_CODES,
    *MEASUREMENT_CHECK_CODES,
    *CUSTODY_CHECK_CODES,
    *TRUST_CHECK_CODES,
)

NRAS_NOT_FETCHED: Final = "not evaluated: the NRAS answer was not fetched"
# The old name, kept for callers written before NRAS was implemented.
NRAS_NOT_IMPLEMENTED: Final = NRAS_NOT_FETCHED

_PADDING = bytes(12)

# SPDM GET_MEASUREMENTS request, the start of each GPU's ``evidence``: version 0x1x, request
# code 0xE0, param1 (bit 0: signature requested), param2, then the requester's 32-byte nonce.
_SPDM_MAJOR_VERSION = 1
_SPDM_GET_MEASUREMENTS = 0xE0
_SPDM_SIGNATURE_REQUESTED = 0x01
_SPDM_NONCE_START = 4
_SPDM_NONCE_END = 36


def _result(
    code: str, tier: str, ok: bool | None, detail: str, *, enforced: bool = True
) -> CheckResult:
    return CheckResult(code=code, ok=ok, enforced=enforced, detail=detail, tier=tier)


def _skipped(code: str, tier: str, because: str) -> CheckResult:
    return _result(code, tier, False, f"not evaluated: {because} failed")


def _shown(value: str | None, limit: int = 80) -> str:
    if value is None:
        return "missing"
    return repr(value if len(value) <= limit else value[:limit] + "…")


def verify_evidence(
    evidence: Evidence,
    *,
    expected_model: str,
    nonce: bytes,
    policy: AttestationPolicy,
    now: int,
    collateral: Mapping[str, Any] | None = None,
    nras: NrasEvidence | None = None,
    remembered_trust: TrustLevel | None = None,
    remembered_source: str = "the trust state file",
) -> AttestationReport:
    """Run every check and return the report. Never raises for a failed check.

    ``remembered_trust`` is the trust level the caller remembers for ``expected_model`` (its
    state file), for ``trust_not_downgraded``.
    """
    nonce_hex = nonce.hex()
    key = evidence.signing_public_key
    classification = classify(evidence)
    results: list[CheckResult] = [
        _verified_flag(evidence),
        _model_match(evidence, expected_model),
        _nonce_echo(evidence, nonce_hex),
        _signing_key_valid(evidence),
        _signing_address_match(evidence),
    ]
    quote, parse_result = _parse(evidence)
    results += [parse_result, _tee_type(quote), _debug(quote)]
    results += _report_data(quote, key, nonce)
    results += _gpu(evidence, nonce, policy, now, nras, classification)
    dcap_result, verified = _dcap(evidence, quote, policy, now, collateral)
    results.append(dcap_result)
    tdx, quote_failure = _tdx(quote)
    manager_result, manager = compose_manager_check(
        evidence.raw,
        tdx,
        quote_failure,
        nonce=nonce,
        policy=policy,
        now=now,
        collateral=collateral,
        enforced=policy.software_enforced,
    )
    if dcap_result.failed and manager_result.failed:
        # Same collateral, same platform: the main quote's DCAP failure decides the verdict.
        manager_result = _result(
            COMPOSE_MANAGER_QUOTE,
            TIER_QUOTE,
            False,
            f"not evaluated: dcap failed ({manager_result.detail})",
            enforced=False,
        )
    results.append(manager_result)
    software = software_checks(evidence, tdx, quote_failure, policy, expected_model)
    results += software
    compose, bound = _compose(evidence, software)
    results.append(
        compose_images_check(
            compose,
            bound,
            enforced=policy.software_enforced,
            allow_unpinned=policy.allow_unpinned_images,
        )
    )
    results.append(
        model_binding_check(
            compose,
            bound,
            claimed=evidence.upstream_model_name,
            requested=expected_model,
            deployed=manager.deployed if manager is not None else (),
        )
    )
    compose_hash = bound_compose_hash(tdx)
    results += measurement_checks(
        tdx.report if tdx is not None else None,
        quote_failure,
        compose_hash,
        extra_mrseam=policy.extra_mrseam,
        extra_mrtd=policy.extra_mrtd,
    )
    shipped = shipped_policy()
    custody, gateway = custody_checks(
        evidence,
        tdx,
        quote_failure,
        now=now,
        kms_roots=policy.gateway_kms_roots or frozenset(shipped.kms_roots),
        app_ids=policy.gateway_app_ids or frozenset(shipped.app_ids),
        replay_enforced=policy.software_enforced,
    )
    results += custody
    results += trust_checks(
        classification,
        model=expected_model,
        policy=policy,
        remembered=remembered_trust,
        remembered_source=remembered_source,
    )
    facts: dict[str, Any] = {
        "classification": list(classification.reasons),
        "measurements": _measurement_facts(
            tdx, compose_hash, measured_claim(evidence, tdx, "os-image-hash")
        ),
        "compose": compose.to_dict() if compose is not None else None,
        "compose_bound": bound,
        "compose_manager": (
            {
                "deployed": list(manager.deployed),
                "actions_authenticated": manager.actions_authenticated,
            }
            if manager is not None
            else None
        ),
        "gateway": gateway.to_dict() if gateway is not None else None,
    }
    level = classification.level
    return AttestationReport(
        model=expected_model,
        nonce=nonce_hex,
        shape=evidence.shape,
        signing_address=_lower_address(evidence.signing_address),
        signing_public_key=key,
        tcb_status=verified.status if verified is not None else None,
        checks=tuple(results),
        advisory_ids=verified.advisory_ids if verified is not None else (),
        tee_provider=evidence.tee_provider,
        upstream_model=evidence.upstream_model_name,
        trust_level=level,
        attested=ATTESTED[level],
        not_attested=NOT_ATTESTED[level],
        facts=facts,
    )


def _compose(evidence: Evidence, software: list[CheckResult]) -> tuple[ComposeFacts | None, bool]:
    """The compose manifest's facts, and whether the quote binds that manifest."""
    text = app_compose_of(evidence.info)
    if text is None:
        return None, False
    binding = next(check for check in software if check.code == COMPOSE_HASH_BINDING)
    return parse_compose(text), binding.ok is True


def _measurement_facts(
    quote: TdxQuote | None, compose_hash: str | None, os_image_hash: bytes | None
) -> dict[str, Any]:
    if quote is None:
        return {}
    report = quote.report
    values = {
        "mrseam": report.mr_seam.hex(),
        "mrtd": report.mr_td.hex(),
        "rtmr0": report.rtmr0.hex(),
        "rtmr1": report.rtmr1.hex(),
        "rtmr2": report.rtmr2.hex(),
        "rtmr3": report.rtmr3.hex(),
        "compose_hash": compose_hash,
        "os_image_hash": os_image_hash.hex() if os_image_hash is not None else None,
    }
    known = {
        name: known_status(values[name], name)
        for name in ("rtmr0", "rtmr1", "rtmr2", "compose_hash")
    }
    return {**values, "known": known}


def _lower_address(address: str) -> str:
    bare = address.strip().lower().removeprefix("0x")
    return "0x" + bare


def _verified_flag(evidence: Evidence) -> CheckResult:
    flag = evidence.verified
    detail = "verified is missing" if flag is None else f"verified={str(flag).lower()}"
    return _result(VENICE_VERIFIED_FLAG, TIER_RESPONSE, flag is True, detail)


def _model_match(evidence: Evidence, expected: str) -> CheckResult:
    ok = evidence.model == expected
    detail = (
        f"response model {_shown(evidence.model)}, requested {expected!r} (Venice's "
        "unauthenticated label; model_binding says whether anything measured names the model)"
    )
    return _result(MODEL_MATCH, TIER_RESPONSE, ok, detail)


def _nonce_echo(evidence: Evidence, nonce_hex: str) -> CheckResult:
    echoed = evidence.echoed_nonce
    ok = echoed is not None and echoed.strip().lower() == nonce_hex
    detail = "echoed nonce matches" if ok else f"echoed {_shown(echoed)}, sent {nonce_hex}"
    return _result(NONCE_ECHO, TIER_RESPONSE, ok, detail)


def _signing_key_valid(evidence: Evidence) -> CheckResult:
    if evidence.signing_public_key is not None:
        detail = f"secp256k1 key from {evidence.key_source}"
        return _result(SIGNING_KEY_VALID, TIER_BINDING, True, detail)
    if evidence.signing_public_key_text is not None:
        detail = f"{evidence.key_source} is not a valid secp256k1 public key"
    elif evidence.shape == "aci":
        detail = "no E2EE public key whose address equals REPORTDATA[0:20]"
    else:
        detail = "no signing_public_key in the attestation"
    return _result(SIGNING_KEY_VALID, TIER_BINDING, False, detail)


def _signing_address_match(evidence: Evidence) -> CheckResult:
    key = evidence.signing_public_key
    if key is None:
        return _skipped(SIGNING_ADDRESS_MATCH, TIER_BINDING, SIGNING_KEY_VALID)
    derived = "0x" + address_of(key).hex()
    claimed = evidence.signing_address.strip()
    ok = claimed.lower() == derived
    relation = "==" if ok else "!="
    detail = f"signing_address {_shown(claimed, 44)} {relation} key address {derived}"
    return _result(SIGNING_ADDRESS_MATCH, TIER_BINDING, ok, detail)


def _parse(evidence: Evidence) -> tuple[TdxQuote | None, CheckResult]:
    try:
        quote = parse_tdx_quote(evidence.intel_quote, require_tdx=False)
    except QuoteParseError as exc:
        return None, _result(QUOTE_PARSE, TIER_QUOTE, False, exc.message)
    detail = f"TDX quote v{quote.version}, {len(quote.raw)} bytes"
    return quote, _result(QUOTE_PARSE, TIER_QUOTE, True, detail)


def _tee_type(quote: TdxQuote | None) -> CheckResult:
    if quote is None:
        return _skipped(QUOTE_TEE_TYPE, TIER_QUOTE, QUOTE_PARSE)
    detail = f"tee_type 0x{quote.tee_type:x}"
    return _result(QUOTE_TEE_TYPE, TIER_QUOTE, quote.tee_type == TEE_TYPE_TDX, detail)


def _tdx(quote: TdxQuote | None) -> tuple[TdxQuote | None, str]:
    """The quote when its TD report fields can be trusted to sit at TDX offsets."""
    if quote is None:
        return None, QUOTE_PARSE
    if not quote.is_tdx:
        return None, QUOTE_TEE_TYPE
    return quote, ""


def _debug(quote: TdxQuote | None) -> CheckResult:
    tdx, failed = _tdx(quote)
    if tdx is None:
        return _skipped(QUOTE_DEBUG_DISABLED, TIER_QUOTE, failed)
    report = tdx.report
    detail = f"td_attributes {report.td_attributes.hex()} (debug {'on' if report.debug else 'off'})"
    return _result(QUOTE_DEBUG_DISABLED, TIER_QUOTE, not report.debug, detail)


def _report_data(quote: TdxQuote | None, key: bytes | None, nonce: bytes) -> list[CheckResult]:
    tdx, failed = _tdx(quote)
    if tdx is None:
        return [
            _skipped(code, TIER_BINDING, failed)
            for code in (REPORT_DATA_ADDRESS, REPORT_DATA_PADDING, REPORT_DATA_NONCE)
        ]
    report_data = tdx.report.report_data
    bound = report_data[:ADDRESS_BYTES]
    if key is None:
        address = _skipped(REPORT_DATA_ADDRESS, TIER_BINDING, SIGNING_KEY_VALID)
    else:
        derived = address_of(key)
        relation = "==" if bound == derived else "!="
        detail = f"REPORTDATA[0:20] 0x{bound.hex()} {relation} key address 0x{derived.hex()}"
        address = _result(REPORT_DATA_ADDRESS, TIER_BINDING, bound == derived, detail)
    padding = report_data[ADDRESS_BYTES:32]
    padding_result = _result(
        REPORT_DATA_PADDING, TIER_BINDING, padding == _PADDING, f"REPORTDATA[20:32] {padding.hex()}"
    )
    bound_nonce = report_data[32:]
    relation = "==" if bound_nonce == nonce else "!="
    nonce_result = _result(
        REPORT_DATA_NONCE,
        TIER_BINDING,
        bound_nonce == nonce,
        f"REPORTDATA[32:64] {bound_nonce.hex()} {relation} nonce {nonce.hex()}",
    )
    return [address, padding_result, nonce_result]


def _gpu(
    evidence: Evidence,
    nonce: bytes,
    policy: AttestationPolicy,
    now: int,
    nras: NrasEvidence | None,
    classification: Classification,
) -> list[CheckResult]:
    if policy.nvidia == "off":
        return [_result(GPU_NONCE, TIER_GPU, None, "NVIDIA checks are off", enforced=False)]
    if classification.level == "gateway" and evidence.nvidia_payload is None:
        detail = (
            "not evaluated: the gateway relayed no GPU evidence (and relayed evidence would "
            "not be bound to the attested CPU: the inference host is not attested either way)"
        )
        results = [_result(GPU_NONCE, TIER_GPU, None, detail, enforced=False)]
        if policy.nvidia == "nras":
            results.append(_result(GPU_NRAS, TIER_GPU, None, detail, enforced=False))
        return results
    results = [_gpu_nonce(evidence.nvidia_payload, nonce.hex())]
    if policy.nvidia == "nras":
        results.append(_gpu_nras(evidence.nvidia_payload, nonce, now, nras))
    return results


def _gpu_nras(
    payload: Mapping[str, Any] | None, nonce: bytes, now: int, nras: NrasEvidence | None
) -> CheckResult:
    if nras is None:
        return _result(GPU_NRAS, TIER_GPU, None, NRAS_NOT_FETCHED)
    try:
        verified = verify_nras_response(nras.response, nras.jwks, nonce=nonce, now=now)
    except AttestationError as exc:
        return _result(GPU_NRAS, TIER_GPU, False, f"{exc.code}: {exc.message}")
    entries = payload.get("evidence_list") if payload is not None else None
    if isinstance(entries, list) and len(entries) != len(verified.gpus):
        detail = f"NRAS verified {len(verified.gpus)} GPUs, nvidia_payload lists {len(entries)}"
        return _result(GPU_NRAS, TIER_GPU, False, detail)
    models = sorted({gpu.hwmodel or "unknown model" for gpu in verified.gpus})
    detail = (
        f"NRAS verified {len(verified.gpus)} GPUs ({', '.join(models)}) for our nonce; "
        f"tokens expire at {verified.expires_at}"
    )
    return _result(GPU_NRAS, TIER_GPU, True, detail)


def _gpu_nonce(payload: Mapping[str, Any] | None, nonce_hex: str) -> CheckResult:
    if payload is None:
        return _result(GPU_NONCE, TIER_GPU, False, "no nvidia_payload in the attestation")
    top = payload.get("nonce")
    if not isinstance(top, str) or top.strip().lower() != nonce_hex:
        detail = f"nvidia_payload nonce {_shown(top if isinstance(top, str) else None)}"
        return _result(GPU_NONCE, TIER_GPU, False, f"{detail}, sent {nonce_hex}")
    entries = payload.get("evidence_list")
    if not isinstance(entries, list) or not entries:
        # A nonce with no GPU evidence proves nothing about any GPU.
        return _result(GPU_NONCE, TIER_GPU, False, "nvidia_payload lists no GPU evidence")
    stated = [_stated_gpu_nonces(entry) for entry in entries]
    silent = sum(1 for nonces in stated if not nonces)
    other = sum(1 for nonces in stated if any(value != nonce_hex for value in nonces))
    if silent or other:
        count = len(entries)
        problems = [f"{other} of {count} GPU evidence entries carry another nonce"] if other else []
        problems += [f"{silent} of {count} GPU evidence entries carry no nonce"] if silent else []
        detail = "; ".join(problems)
        return _result(GPU_NONCE, TIER_GPU, False, detail)
    detail = f"nvidia_payload nonce matches ({len(entries)} GPUs, each with our nonce)"
    return _result(GPU_NONCE, TIER_GPU, True, detail)


def _stated_gpu_nonces(entry: Any) -> list[str | None]:
    """The nonces one ``evidence_list`` entry states, normalized (None: not a string).

    Its ``nonce`` field when present, and the nonce of the SPDM GET_MEASUREMENTS request its
    base64 ``evidence`` starts with (docs/protocol.md#gpu-evidence). An entry that is not an
    object states none.
    """
    if not isinstance(entry, Mapping):
        return []
    stated: list[str | None] = []
    if "nonce" in entry:
        value = entry["nonce"]
        stated.append(value.strip().lower() if isinstance(value, str) else None)
    spdm_nonce = _spdm_request_nonce(entry.get("evidence"))
    if spdm_nonce is not None:
        stated.append(spdm_nonce.hex())
    return stated


def _spdm_request_nonce(evidence: Any) -> bytes | None:
    """The 32-byte nonce of an SPDM 1.x GET_MEASUREMENTS request that asks for a signature."""
    if not isinstance(evidence, str):
        return None
    try:
        raw = base64.b64decode(evidence, validate=True)
    except ValueError:
        return None
    if (
        len(raw) < _SPDM_NONCE_END
        or raw[0] >> 4 != _SPDM_MAJOR_VERSION
        or raw[1] != _SPDM_GET_MEASUREMENTS
        or not raw[2] & _SPDM_SIGNATURE_REQUESTED
    ):
        return None
    return raw[_SPDM_NONCE_START:_SPDM_NONCE_END]


def _dcap(
    evidence: Evidence,
    quote: TdxQuote | None,
    policy: AttestationPolicy,
    now: int,
    collateral: Mapping[str, Any] | None,
) -> tuple[CheckResult, DcapResult | None]:
    if policy.dcap == "off":
        detail = "DCAP is off: the quote signature was not verified"
        return _result(DCAP, TIER_QUOTE, None, detail, enforced=False), None
    if collateral is None:
        detail = "not checked: no DCAP collateral, so the quote's Intel signature was not verified"
        return _result(DCAP, TIER_QUOTE, None, detail), None
    if quote is None:
        return _skipped(DCAP, TIER_QUOTE, QUOTE_PARSE), None
    try:
        verified = verify_quote_dcap(evidence.intel_quote, collateral, now)
    except AttestationError as exc:
        return _result(DCAP, TIER_QUOTE, False, exc.message), None
    differing = verified.report.differences(quote.report)
    if differing:
        # The other checks read the parsed copy: every field they read must be the signed one.
        detail = (
            f"the DCAP-verified TD report differs from the parsed quote in {', '.join(differing)}"
        )
        return _result(DCAP, TIER_QUOTE, False, detail), verified
    advisories = f"; advisories {', '.join(verified.advisory_ids)}" if verified.advisory_ids else ""
    allowed = policy.tcb_status_allowed(verified.status)
    verdict = "" if allowed else " (not allowed by policy)"
    detail = f"TCB status {verified.status}{verdict}{advisories}"
    return _result(DCAP, TIER_QUOTE, allowed, detail), verified
