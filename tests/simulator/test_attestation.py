"""The simulator's attestation: NEAR / Phala legacy shapes and every binding a verifier checks."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from typing import Any

import dcap_qvl
import pytest

from proxy.core.crypto import address_of, keccak256
from proxy.simulator import Faults, SimulatorState
from proxy.simulator.measurements import DSTACK_RUNTIME_EVENT_TYPE, replay_rtmrs
from proxy.simulator.quote import (
    MR_CONFIG_ID_OFFSET,
    MR_TD_OFFSET,
    REPORT_DATA_OFFSET,
    RTMR_OFFSETS,
    SIGNATURE_LENGTH_OFFSET,
    TD_ATTRIBUTES_OFFSET,
)
from tests.support.simulator_helpers import NEAR_MODEL, NONCE, PLAIN_MODEL, client_for

NEAR_KEYS = [
    "model_name",
    "signing_address",
    "signing_algo",
    "signing_public_key",
    "request_nonce",
    "intel_quote",
    "nvidia_payload",
    "event_log",
    "info",
    "ohttp_attestation",
    "compose_manager_attestation",
    "ohttp_key_config",
    "signing_key",
    "verified",
    "model",
    "nonce",
    "nonce_source",
    "tee_provider",
    "tee_hardware",
    "upstream_model",
    "server_verification",
    "candidates_evaluated",
    "candidates_available",
]


async def fetch(state: SimulatorState, **params: str) -> Any:
    async with client_for(state) as http:
        response = await http.get("/tee/attestation", params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def near_attestation(state: SimulatorState | None = None) -> tuple[Any, SimulatorState]:
    state = state or SimulatorState()
    return await fetch(state, model=NEAR_MODEL, nonce=NONCE.hex()), state


def quote_of(body: dict[str, Any]) -> bytes:
    return bytes.fromhex(body["intel_quote"])


def field48(quote: bytes, offset: int) -> bytes:
    return quote[offset : offset + 48]


async def test_near_shape_key_order_and_values() -> None:
    body, state = await near_attestation()
    assert list(body) == NEAR_KEYS
    key = state.enclave_public_key
    assert body["signing_public_key"] == body["signing_key"] == key.hex()
    assert len(body["signing_public_key"]) == 130
    assert body["signing_address"] == "0x" + keccak256(key[1:])[12:].hex()
    assert body["signing_algo"] == "ecdsa"
    assert body["request_nonce"] == body["nonce"] == NONCE.hex()
    assert body["nonce_source"] == "client"
    assert body["verified"] is True
    assert body["model"] == NEAR_MODEL
    assert body["model_name"] == body["upstream_model"]
    assert body["tee_provider"] == "simulator"
    assert isinstance(body["server_verification"], dict)
    assert body["server_verification"]["tdx"]["reportData"] == quote_of(body)[568:632].hex()


async def test_quote_header_and_report_data_binding() -> None:
    body, state = await near_attestation()
    quote = quote_of(body)
    version, key_type, tee_type = struct.unpack_from("<HHI", quote, 0)
    assert (version, key_type, tee_type) == (4, 2, 0x81)
    assert quote[12:28] == bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
    report_data = quote[REPORT_DATA_OFFSET : REPORT_DATA_OFFSET + 64]
    assert report_data[:20] == address_of(state.enclave_public_key)
    assert report_data[20:32] == bytes(12)
    assert report_data[32:] == NONCE
    assert quote[TD_ATTRIBUTES_OFFSET] & 1 == 0
    (sig_len,) = struct.unpack_from("<I", quote, SIGNATURE_LENGTH_OFFSET)
    assert SIGNATURE_LENGTH_OFFSET + 4 + sig_len == len(quote)


async def test_quote_parses_with_dcap_qvl() -> None:
    body, _ = await near_attestation()
    quote = quote_of(body)
    parsed = dcap_qvl.parse_quote(quote)
    assert parsed.is_tdx()
    assert parsed.report.report_data == quote[568:632]
    assert parsed.report.rt_mr3 == field48(quote, RTMR_OFFSETS[3])


async def test_rtmrs_replay_from_event_log_and_match_tcb_info() -> None:
    body, _ = await near_attestation()
    quote = quote_of(body)
    replayed = replay_rtmrs(body["event_log"])
    tcb = body["info"]["tcb_info"]
    for index, offset in enumerate(RTMR_OFFSETS):
        assert field48(quote, offset) == replayed[index]
        assert tcb[f"rtmr{index}"] == replayed[index].hex()
    assert tcb["event_log"] == body["event_log"]
    assert tcb["mrtd"] == field48(quote, MR_TD_OFFSET).hex()
    # An independent replay, written out: acc = sha384(acc || digest) from 48 zero bytes.
    acc = bytes(48)
    for event in body["event_log"]:
        if event["imr"] == 3:
            acc = hashlib.sha384(acc + bytes.fromhex(event["digest"])).digest()
    assert acc == field48(quote, RTMR_OFFSETS[3])


async def test_compose_hash_and_mr_config_id() -> None:
    body, _ = await near_attestation()
    tcb = body["info"]["tcb_info"]
    compose_hash = hashlib.sha256(tcb["app_compose"].encode()).digest()
    assert tcb["compose_hash"] == body["info"]["compose_hash"] == compose_hash.hex()
    mr_config_id = field48(quote_of(body), MR_CONFIG_ID_OFFSET)
    assert mr_config_id == b"\x01" + compose_hash + bytes(15)
    events = {e["event"]: e for e in body["event_log"] if e["imr"] == 3}
    compose_event = events["compose-hash"]
    assert compose_event["event_payload"] == compose_hash.hex()
    expected_digest = hashlib.sha384(
        struct.pack("<I", DSTACK_RUNTIME_EVENT_TYPE) + b":compose-hash:" + compose_hash
    ).hexdigest()
    assert compose_event["digest"] == expected_digest
    assert json.loads(tcb["app_compose"])["name"] == "venice-simulator"


async def test_vm_config_is_not_a_dev_image_and_gpu_payload_binds_nonce() -> None:
    body, _ = await near_attestation()
    vm_config = json.loads(body["info"]["vm_config"])
    assert "dev" not in vm_config["image"]
    assert vm_config["os_image_hash"] == body["info"]["os_image_hash"]
    payload = json.loads(body["nvidia_payload"])
    assert payload["arch"] == "HOPPER"
    assert payload["nonce"] == NONCE.hex()
    assert len(payload["evidence_list"]) == 1
    gpu = payload["evidence_list"][0]
    assert base64.b64decode(gpu["certificate"]).startswith(b"-----BEGIN CERTIFICATE-----")
    assert gpu["nonce"] == NONCE.hex()


async def test_same_seed_same_key_and_measurements() -> None:
    first, _ = await near_attestation(SimulatorState(seed=7))
    second, _ = await near_attestation(SimulatorState(seed=7))
    other, _ = await near_attestation(SimulatorState(seed=8))
    assert first["signing_key"] == second["signing_key"] != other["signing_key"]
    assert first["info"]["tcb_info"]["mrtd"] == other["info"]["tcb_info"]["mrtd"]
    assert first["info"]["compose_hash"] == other["info"]["compose_hash"]


async def test_debug_quote_fault_sets_debug_bit() -> None:
    state = SimulatorState()
    state.faults = Faults(debug_quote=True)
    body, _ = await near_attestation(state)
    quote = quote_of(body)
    assert quote[TD_ATTRIBUTES_OFFSET] & 1 == 1
    clean, _ = await near_attestation()
    # Only the debug bit differs in the quote body.
    assert quote[TD_ATTRIBUTES_OFFSET] ^ quote_of(clean)[TD_ATTRIBUTES_OFFSET] == 1


async def test_wrong_nonce_fault_echoes_and_binds_another_nonce() -> None:
    state = SimulatorState()
    state.faults = Faults(wrong_nonce=True)
    body, _ = await near_attestation(state)
    bound = quote_of(body)[600:632]
    assert bound != NONCE
    assert body["nonce"] == body["request_nonce"] == bound.hex()
    assert json.loads(body["nvidia_payload"])["nonce"] == bound.hex()


async def test_signing_key_missing_fault() -> None:
    state = SimulatorState()
    state.faults = Faults(signing_key_missing=True)
    body, _ = await near_attestation(state)
    assert "signing_public_key" not in body
    assert "signing_key" not in body
    assert quote_of(body)[568:588] == address_of(state.enclave_public_key)


async def test_phala_legacy_shape() -> None:
    state = SimulatorState()
    state.faults = Faults(phala_legacy=True)
    body, _ = await near_attestation(state)
    assert list(body)[:10] == [
        "signing_address",
        "signing_algo",
        "request_nonce",
        "intel_quote",
        "nvidia_payload",
        "info",
        "quote",
        "event_log",
        "vm_config",
        "signing_public_key",
    ]
    assert "signing_key" not in body
    assert "model_name" not in body
    address = body["signing_address"]
    assert address != address.lower(), "EIP-55 mixed case"
    assert address.lower() == "0x" + address_of(state.enclave_public_key).hex()
    assert body["quote"] == body["intel_quote"]
    assert isinstance(body["event_log"], str)
    events = json.loads(body["event_log"])
    assert replay_rtmrs(events)[3] == field48(quote_of(body), RTMR_OFFSETS[3])
    assert isinstance(body["vm_config"], str)
    assert json.loads(body["nvidia_payload"])["nonce"] == NONCE.hex()
    assert ", " in body["nvidia_payload"], "Python json.dumps style"


async def test_server_nonce_when_omitted() -> None:
    body = await fetch(SimulatorState(), model=NEAR_MODEL)
    assert body["nonce_source"] == "server"
    assert bytes.fromhex(body["nonce"]) == quote_of(body)[600:632]


@pytest.mark.parametrize("nonce", ["ab" * 16, "ab" * 33, "zz" * 32, "", "0x" + "ab" * 31])
async def test_bad_nonce_is_400(nonce: str) -> None:
    async with client_for(SimulatorState()) as http:
        response = await http.get("/tee/attestation", params={"model": NEAR_MODEL, "nonce": nonce})
    assert response.status_code == 400
    assert response.json()["error"] == "Nonce must be exactly 32 bytes"


async def test_non_tee_and_unknown_models() -> None:
    state = SimulatorState()
    async with client_for(state) as http:
        plain = await http.get(
            "/tee/attestation", params={"model": PLAIN_MODEL, "nonce": "00" * 32}
        )
        unknown = await http.get("/tee/attestation", params={"model": "nope", "nonce": "00" * 32})
    assert plain.status_code == 400
    assert plain.json()["error"] == "model does not support TEE attestation"
    assert unknown.status_code == 404
    assert "nope" in unknown.json()["error"]
    assert state.attestation_fetches == 2


async def test_attestation_needs_a_bearer_key() -> None:
    state = SimulatorState(api_key="right")
    async with client_for(state, api_key=None) as http:
        missing = await http.get("/tee/attestation", params={"model": NEAR_MODEL})
        wrong = await http.get(
            "/tee/attestation",
            params={"model": NEAR_MODEL},
            headers={"Authorization": "Bearer wrong"},
        )
        right = await http.get(
            "/tee/attestation",
            params={"model": NEAR_MODEL},
            headers={"Authorization": "Bearer right"},
        )
    assert (missing.status_code, wrong.status_code, right.status_code) == (401, 401, 200)
    assert isinstance(missing.json()["error"], str)
    assert state.attestation_fetches == 3
