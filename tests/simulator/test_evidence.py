"""The attestation body the simulator builds (docs/protocol.md#near-shape and
#phala-legacy-shape), called directly: both shapes' keys against real captures, every value,
the GPU payload, the server's verification summary, and each switch (pure, no app)."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from proxy.core.crypto import address_of
from proxy.simulator.catalog import MODELS
from proxy.simulator.evidence import (
    TEE_HARDWARE,
    TEE_PROVIDER,
    build_attestation,
    nvidia_payload,
)
from proxy.simulator.measurements import build_measurements, replay_rtmrs
from proxy.simulator.quote import (
    MR_CONFIG_ID_OFFSET,
    MR_OWNER_CONFIG_OFFSET,
    MR_OWNER_OFFSET,
    MR_TD_OFFSET,
    REPORT_DATA_OFFSET,
    RTMR_OFFSETS,
    TD_ATTRIBUTES_OFFSET,
    TD_ATTRIBUTES_PRODUCTION,
    XFAM_DEFAULT,
    XFAM_OFFSET,
    dstack_mr_config_id,
    report_data_for,
    with_debug_bit,
)
from proxy.simulator.signing import eip55
from proxy.simulator.state import enclave_keypair
from tests.support.fixtures import FIXTURES_DIR

NEAR = MODELS[0]
KEY = enclave_keypair(0, 0).public
ADDRESS = address_of(KEY)
NONCE = bytes(range(32))
FAKE_CERT = (
    "-----BEGIN CERTIFICATE-----\n"
    "U0lNVUxBVEVEIEdQVSBDRVJUSUZJQ0FURSAtIE5PVCBJU1NVRUQgQlkgTlZJRElB\n"
    "-----END CERTIFICATE-----\n"
)


def capture(name: str) -> dict[str, Any]:
    path = FIXTURES_DIR / "attestations" / name
    body: dict[str, Any] = json.loads(path.read_text())["attestation"]
    return body


def near(**switches: Any) -> dict[str, Any]:
    return build_attestation(model=NEAR, enclave_public=KEY, nonce=NONCE, **switches)


def quote_field(body: dict[str, Any], offset: int, size: int = 48) -> bytes:
    return bytes.fromhex(body["intel_quote"])[offset : offset + size]


def gpu_item(nonce_hex: str) -> dict[str, str]:
    evidence = b"SIMULATED-GPU-EVIDENCE:" + hashlib.sha256(bytes.fromhex(nonce_hex)).digest()
    return {
        "arch": "HOPPER",
        "certificate": base64.b64encode(FAKE_CERT.encode()).decode(),
        "evidence": base64.b64encode(evidence).decode(),
        "nonce": nonce_hex,
    }


# -- the GPU payload ---------------------------------------------------------------------------


def test_near_gpu_payload_is_compact_and_bound_to_the_nonce() -> None:
    nonce_hex = NONCE.hex()
    text = nvidia_payload(nonce_hex, python_style=False)
    assert text == json.dumps(
        {"arch": "HOPPER", "evidence_list": [gpu_item(nonce_hex)], "nonce": nonce_hex},
        separators=(",", ":"),
    )
    real = json.loads(capture("attestation_glm_5_1.json")["nvidia_payload"])
    assert list(json.loads(text)) == list(real)
    assert list(json.loads(text)["evidence_list"][0]) == list(real["evidence_list"][0])


def test_phala_gpu_payload_is_python_json_dumps_style() -> None:
    nonce_hex = "ab" * 32
    text = nvidia_payload(nonce_hex, python_style=True)
    assert text == json.dumps(
        {"nonce": nonce_hex, "evidence_list": [gpu_item(nonce_hex)], "arch": "HOPPER"}
    )
    real = json.loads(capture("attestation_gemma_3_27b_p.json")["nvidia_payload"])
    assert list(json.loads(text)) == list(real)


def test_gpu_evidence_differs_per_nonce() -> None:
    one = json.loads(nvidia_payload("00" * 32, python_style=False))
    two = json.loads(nvidia_payload("01" * 32, python_style=False))
    assert one["evidence_list"][0]["evidence"] != two["evidence_list"][0]["evidence"]


# -- the NEAR shape ----------------------------------------------------------------------------


def test_near_shape_has_the_real_keys_in_the_real_order() -> None:
    assert list(near()) == list(capture("attestation_glm_5_1.json"))


def test_near_values() -> None:
    body = near(nonce_source="server", instance_seed=4, now=1767225600.25)
    m = build_measurements(NEAR.upstream_name, 4)
    assert body["model_name"] == "simulator/Simulated-NEAR-1B"
    assert body["signing_address"] == "0x" + ADDRESS.hex()
    assert body["signing_algo"] == "ecdsa"
    assert body["signing_public_key"] == KEY.hex()
    assert body["signing_key"] == KEY.hex()
    assert body["request_nonce"] == NONCE.hex()
    assert body["nvidia_payload"] == nvidia_payload(NONCE.hex(), python_style=False)
    assert body["event_log"] == m.event_log_json()
    assert (body["ohttp_attestation"], body["compose_manager_attestation"]) == (None, None)
    assert body["ohttp_key_config"] is None
    assert body["verified"] is True
    assert body["model"] == "e2ee-simulated-near"
    assert body["nonce"] == NONCE.hex()
    assert body["nonce_source"] == "server"
    assert (body["tee_provider"], body["tee_hardware"]) == ("simulator", "intel-tdx")
    assert (TEE_PROVIDER, TEE_HARDWARE) == ("simulator", "intel-tdx")
    assert body["upstream_model"] == "simulator/Simulated-NEAR-1B"
    assert (body["candidates_evaluated"], body["candidates_available"]) == (1, 1)
    assert body["server_verification"]["verifiedAt"] == "2026-01-01T00:00:00.250Z"
    assert body["info"] == {
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
    real_info = [k for k in capture("attestation_glm_5_1.json")["info"] if k != "app_cert"]
    assert list(body["info"]) == real_info


def test_defaults() -> None:
    body = near()
    assert body["nonce_source"] == "client"
    assert "signing_key" in body
    assert "model_name" in body
    assert (
        body["info"]["instance_id"] == build_measurements(NEAR.upstream_name, 0).instance_id.hex()
    )
    assert body["server_verification"]["verifiedAt"] == "1970-01-01T00:00:00.000Z"
    assert quote_field(body, TD_ATTRIBUTES_OFFSET, 8) == TD_ATTRIBUTES_PRODUCTION


def test_the_quote_binds_the_key_the_nonce_and_the_measurements() -> None:
    body = near(instance_seed=2)
    m = build_measurements(NEAR.upstream_name, 2)
    assert quote_field(body, REPORT_DATA_OFFSET, 64) == report_data_for(ADDRESS, NONCE)
    assert quote_field(body, REPORT_DATA_OFFSET, 64) == ADDRESS + bytes(12) + NONCE
    assert quote_field(body, MR_TD_OFFSET) == m.mr_td
    assert quote_field(body, MR_CONFIG_ID_OFFSET) == dstack_mr_config_id(m.app_compose)
    for index, offset in enumerate(RTMR_OFFSETS):
        assert quote_field(body, offset) == m.rtmrs[index]
    assert replay_rtmrs(body["event_log"]) == m.rtmrs
    assert quote_field(body, TD_ATTRIBUTES_OFFSET, 8) == TD_ATTRIBUTES_PRODUCTION
    assert quote_field(body, XFAM_OFFSET, 8) == XFAM_DEFAULT


def test_debug_sets_the_debug_bit_in_the_quote_and_the_summary() -> None:
    body = near(debug=True)
    assert quote_field(body, TD_ATTRIBUTES_OFFSET, 8) == with_debug_bit(TD_ATTRIBUTES_PRODUCTION)
    measurements = body["server_verification"]["tdx"]["measurements"]
    assert measurements["tdAttributes"] == with_debug_bit(TD_ATTRIBUTES_PRODUCTION).hex()


def test_without_the_signing_key() -> None:
    body = near(include_signing_key=False)
    assert "signing_public_key" not in body
    assert "signing_key" not in body
    assert list(body)[:3] == ["model_name", "signing_address", "signing_algo"]
    assert list(body)[3] == "request_nonce"


def test_the_instance_seed_changes_the_instance_only() -> None:
    one, two = near(instance_seed=1), near(instance_seed=2)
    assert one["info"]["instance_id"] != two["info"]["instance_id"]
    assert one["info"]["app_id"] == two["info"]["app_id"]


# -- the server's verification summary ---------------------------------------------------------


def test_server_verification_summary() -> None:
    body = near(now=1767225600.0)
    m = build_measurements(NEAR.upstream_name, 0)
    summary = body["server_verification"]
    assert summary == {
        "tdx": {
            "valid": True,
            "signatureValid": True,
            "certificateChainValid": True,
            "rootCaPinned": True,
            "attestationKeyMatch": True,
            "reportData": (ADDRESS + bytes(12) + NONCE).hex(),
            "measurements": {
                "mrtd": m.mr_td.hex(),
                "mrconfigid": dstack_mr_config_id(m.app_compose).hex(),
                "mrowner": quote_field(body, MR_OWNER_OFFSET).hex(),
                "mrownerconfig": quote_field(body, MR_OWNER_CONFIG_OFFSET).hex(),
                "rtmr0": m.rtmrs[0].hex(),
                "rtmr1": m.rtmrs[1].hex(),
                "rtmr2": m.rtmrs[2].hex(),
                "rtmr3": m.rtmrs[3].hex(),
                "tdAttributes": TD_ATTRIBUTES_PRODUCTION.hex(),
                "xfam": XFAM_DEFAULT.hex(),
            },
            "crlCheck": {"checked": True, "revoked": False},
        },
        "nvidia": {
            "valid": True,
            "signatureVerified": True,
            "certificateChainStatus": {"valid": True, "intermediatePinned": True},
        },
        "signingAddressBinding": {"bound": True, "reportDataAddress": "0x" + ADDRESS.hex()},
        "nonceBinding": {"bound": True, "method": "raw"},
        "nvidiaNonceBinding": {"bound": True, "method": "nvidia_payload"},
        "verifiedAt": "2026-01-01T00:00:00.000Z",
        "verificationDurationMs": 1,
    }
    assert quote_field(body, MR_OWNER_OFFSET) == bytes(48)
    real = capture("attestation_glm_5_1.json")["server_verification"]
    assert list(summary) == list(real)
    assert list(summary["tdx"]) == list(real["tdx"])
    assert list(summary["tdx"]["measurements"]) == list(real["tdx"]["measurements"])


# -- the Phala legacy shape --------------------------------------------------------------------


def test_phala_legacy_shape_has_the_real_keys_in_the_real_order() -> None:
    body = near(phala_legacy=True)
    assert list(body) == list(capture("attestation_gemma_3_27b_p.json"))


def test_phala_legacy_values() -> None:
    body = near(phala_legacy=True, nonce_source="server", instance_seed=3, now=1.5)
    m = build_measurements(NEAR.upstream_name, 3)
    assert body["signing_address"] == eip55(ADDRESS)
    assert body["signing_address"] != body["signing_address"].lower()
    assert body["signing_algo"] == "ecdsa"
    assert body["request_nonce"] == NONCE.hex()
    assert body["quote"] == body["intel_quote"]
    assert quote_field(body, REPORT_DATA_OFFSET, 64) == ADDRESS + bytes(12) + NONCE
    assert body["nvidia_payload"] == nvidia_payload(NONCE.hex(), python_style=True)
    assert body["info"] == near(instance_seed=3)["info"]
    assert body["event_log"] == json.dumps(m.event_log_json(), separators=(",", ":"))
    assert body["vm_config"] == m.vm_config
    assert body["signing_public_key"] == KEY.hex()
    assert body["verified"] is True
    assert body["model"] == "e2ee-simulated-near"
    assert body["nonce"] == NONCE.hex()
    assert body["nonce_source"] == "server"
    assert body["upstream_model"] == "simulator/Simulated-NEAR-1B"
    assert body["server_verification"]["verifiedAt"] == "1970-01-01T00:00:01.500Z"
    assert "signing_key" not in body
    assert "model_name" not in body


def test_phala_legacy_without_the_signing_key() -> None:
    body = near(phala_legacy=True, include_signing_key=False)
    assert "signing_public_key" not in body
    assert "signing_key" not in body
    assert list(body)[8:10] == ["vm_config", "verified"]


def test_phala_legacy_debug_quote() -> None:
    body = near(phala_legacy=True, debug=True)
    assert quote_field(body, TD_ATTRIBUTES_OFFSET, 8) == with_debug_bit(TD_ATTRIBUTES_PRODUCTION)


def test_another_model_and_key() -> None:
    key = enclave_keypair(9, 1).public
    body = build_attestation(model=MODELS[1], enclave_public=key, nonce=bytes(32))
    assert body["model"] == "e2ee-simulated-reasoning"
    assert body["model_name"] == body["upstream_model"] == "simulator/Simulated-Reasoning-1B"
    assert body["signing_address"] == "0x" + address_of(key).hex()
    assert body["info"]["app_id"] == build_measurements(MODELS[1].upstream_name, 0).app_id.hex()
