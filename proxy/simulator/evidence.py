"""The attestation body the simulator serves (docs/protocol.md#near-shape and #phala-legacy-shape).
Pure: a function of (model, enclave key, nonce, switches, instance seed, time).

NEAR shape, keys in this order: ``model_name, signing_address (lowercase), signing_algo,
signing_public_key (130 hex), request_nonce, intel_quote (hex), nvidia_payload (JSON string),
event_log (list), info, ohttp_attestation, compose_manager_attestation, ohttp_key_config``, then
Venice's ``signing_key, verified, model, nonce, nonce_source, tee_provider, tee_hardware,
upstream_model, server_verification, candidates_evaluated, candidates_available``.

Phala legacy shape: ``signing_address`` (EIP-55), ``signing_algo, request_nonce, intel_quote,
nvidia_payload`` (Python ``json.dumps`` style), ``info, quote`` (= intel_quote), ``event_log``
(a JSON string), ``vm_config`` (string), ``signing_public_key``, then Venice's fields; there is
no ``signing_key`` and no ``model_name``.

Bindings that hold, exactly as on real captures: REPORTDATA = address || 00*12 || nonce; the
quote's RTMRs are the replay of ``event_log``; mr_config_id = 01 || sha256(app_compose);
``compose_hash`` = sha256(app_compose); the NVIDIA payload nonce = the request nonce.
What is fake: the quote's Intel signature (see :mod:`proxy.simulator.quote`), the GPU evidence
and certificate (NRAS would reject them), and ``server_verification`` (which is unauthenticated
on the real service too).
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from proxy.core.crypto import address_of
from proxy.simulator.catalog import SimModel
from proxy.simulator.measurements import Measurements, build_measurements
from proxy.simulator.quote import (
    TD_ATTRIBUTES_PRODUCTION,
    XFAM_DEFAULT,
    TdReportFields,
    build_tdx_quote,
    dstack_mr_config_id,
    report_data_for,
    with_debug_bit,
)
from proxy.simulator.signing import eip55

TEE_PROVIDER = "simulator"
TEE_HARDWARE = "intel-tdx"
_FAKE_GPU_CERT = (
    "-----BEGIN CERTIFICATE-----\n"
    "U0lNVUxBVEVEIEdQVSBDRVJUSUZJQ0FURSAtIE5PVCBJU1NVRUQgQlkgTlZJRElB\n"
    "-----END CERTIFICATE-----\n"
)


def nvidia_payload(nonce_hex: str, *, python_style: bool) -> str:
    """The GPU evidence as a JSON string: one fake H100, bound to the nonce."""
    evidence = b"SIMULATED-GPU-EVIDENCE:" + hashlib.sha256(bytes.fromhex(nonce_hex)).digest()
    gpu = {
        "arch": "HOPPER",
        "certificate": base64.b64encode(_FAKE_GPU_CERT.encode()).decode(),
        "evidence": base64.b64encode(evidence).decode(),
        "nonce": nonce_hex,
    }
    if python_style:
        return json.dumps({"nonce": nonce_hex, "evidence_list": [gpu], "arch": "HOPPER"})
    return json.dumps(
        {"arch": "HOPPER", "evidence_list": [gpu], "nonce": nonce_hex}, separators=(",", ":")
    )


def _info(m: Measurements) -> dict[str, Any]:
    return {
        "app_id": m.app_id.hex(),
        "app_name": "venice-simulator",
        "compose_hash": m.compose_hash.hex(),
        "device_id": m.device_id.hex(),
        "instance_id": m.instance_id.hex(),
        "key_provider_info": m.key_provider_info,
        "mr_aggregated": m.mr_aggregated.hex(),
        "os_image_hash": m.os_image_hash.hex(),
        "tcb_info": m.tcb_info(),
        "vm_config": m.vm_config,
    }


def _server_verification(
    fields: TdReportFields, address: bytes, verified_at: datetime
) -> dict[str, Any]:
    return {
        "tdx": {
            "valid": True,
            "signatureValid": True,
            "certificateChainValid": True,
            "rootCaPinned": True,
            "attestationKeyMatch": True,
            "reportData": fields.report_data.hex(),
            "measurements": {
                "mrtd": fields.mr_td.hex(),
                "mrconfigid": fields.mr_config_id.hex(),
                "mrowner": fields.mr_owner.hex(),
                "mrownerconfig": fields.mr_owner_config.hex(),
                "rtmr0": fields.rtmrs[0].hex(),
                "rtmr1": fields.rtmrs[1].hex(),
                "rtmr2": fields.rtmrs[2].hex(),
                "rtmr3": fields.rtmrs[3].hex(),
                "tdAttributes": fields.td_attributes.hex(),
                "xfam": fields.xfam.hex(),
            },
            "crlCheck": {"checked": True, "revoked": False},
        },
        "nvidia": {
            "valid": True,
            "signatureVerified": True,
            "certificateChainStatus": {"valid": True, "intermediatePinned": True},
        },
        "signingAddressBinding": {"bound": True, "reportDataAddress": "0x" + address.hex()},
        "nonceBinding": {"bound": True, "method": "raw"},
        "nvidiaNonceBinding": {"bound": True, "method": "nvidia_payload"},
        "verifiedAt": verified_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "verificationDurationMs": 1,
    }


def build_attestation(
    *,
    model: SimModel,
    enclave_public: bytes,
    nonce: bytes,
    nonce_source: str = "client",
    phala_legacy: bool = False,
    debug: bool = False,
    include_signing_key: bool = True,
    instance_seed: int = 0,
    now: float = 0.0,
) -> dict[str, Any]:
    """The ``GET /tee/attestation`` body binding ``enclave_public`` and ``nonce``."""
    m = build_measurements(model.upstream_name, instance_seed)
    address = address_of(enclave_public)
    attributes = with_debug_bit(TD_ATTRIBUTES_PRODUCTION) if debug else TD_ATTRIBUTES_PRODUCTION
    fields = TdReportFields(
        mr_td=m.mr_td,
        mr_config_id=dstack_mr_config_id(m.app_compose),
        rtmrs=m.rtmrs,
        report_data=report_data_for(address, nonce),
        td_attributes=attributes,
        xfam=XFAM_DEFAULT,
    )
    quote_hex = build_tdx_quote(fields).hex()
    nonce_hex = nonce.hex()
    key_hex = enclave_public.hex()
    venice_tail: dict[str, Any] = {
        "verified": True,
        "model": model.id,
        "nonce": nonce_hex,
        "nonce_source": nonce_source,
        "tee_provider": TEE_PROVIDER,
        "tee_hardware": TEE_HARDWARE,
        "upstream_model": model.upstream_name,
        "server_verification": _server_verification(
            fields, address, datetime.fromtimestamp(now, UTC)
        ),
        "candidates_evaluated": 1,
        "candidates_available": 1,
    }
    body: dict[str, Any]
    if phala_legacy:
        body = {
            "signing_address": eip55(address),
            "signing_algo": "ecdsa",
            "request_nonce": nonce_hex,
            "intel_quote": quote_hex,
            "nvidia_payload": nvidia_payload(nonce_hex, python_style=True),
            "info": _info(m),
            "quote": quote_hex,
            "event_log": json.dumps(m.event_log_json(), separators=(",", ":")),
            "vm_config": m.vm_config,
        }
        if include_signing_key:
            body["signing_public_key"] = key_hex
        return body | venice_tail
    body = {
        "model_name": model.upstream_name,
        "signing_address": "0x" + address.hex(),
        "signing_algo": "ecdsa",
    }
    if include_signing_key:
        body["signing_public_key"] = key_hex
    body |= {
        "request_nonce": nonce_hex,
        "intel_quote": quote_hex,
        "nvidia_payload": nvidia_payload(nonce_hex, python_style=False),
        "event_log": m.event_log_json(),
        "info": _info(m),
        "ohttp_attestation": None,
        "compose_manager_attestation": None,
        "ohttp_key_config": None,
    }
    if include_signing_key:
        body["signing_key"] = key_hex
    return body | venice_tail
