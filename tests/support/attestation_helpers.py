"""Shared pieces for the attestation tests: the real captures, tampering, synthetic quotes."""

from __future__ import annotations

import base64
import copy
import json
import struct
from dataclasses import dataclass
from functools import cache
from typing import Any

from proxy.attestation import AttestationPolicy, Evidence, parse_attestation, unwrap_capture
from proxy.core.crypto import KeyPair, address_hex
from tests.support.fixtures import FIXTURES_DIR

FIXTURES = FIXTURES_DIR / "attestations"

REPORT_DATA_OFFSET = 568
TD_ATTRIBUTES_OFFSET = 168
MR_TD_OFFSET = 184


@dataclass(frozen=True)
class Fixture:
    """One real capture and what is known to hold on it."""

    name: str
    attestation_file: str
    collateral_file: str
    shape: str
    model: str
    address: str
    nonce_hex: str | None  # None: the file records its own _client_nonce
    at: int | None  # None: the file records its own _capture_epoch
    other_collateral: str  # another capture's collateral that must NOT verify this quote
    dev_image: bool = False  # vm_config names a dstack dev image (a real finding on -p backends)

    @property
    def has_gpu(self) -> bool:
        return self.shape != "aci"


FIXTURE_LIST = (
    Fixture(
        "glm_5_1",
        "attestation_glm_5_1.json",
        "collateral_glm_5_1.json",
        "near",
        "e2ee-glm-5-1",
        "0xbb4d2e7ffe98eefcd9690e2139be41e92b95e333",
        None,
        None,
        "collateral_gpt_oss_120b_p.json",
    ),
    Fixture(
        "gemma_3_27b_p",
        "attestation_gemma_3_27b_p.json",
        "collateral_gemma_3_27b_p.json",
        "phala_legacy",
        "e2ee-gemma-3-27b-p",
        "0xa6df16ebbc510d97a32b99b4dfd33793acc90e2b",
        None,
        None,
        "collateral_glm_5_1.json",
        dev_image=True,
    ),
    Fixture(
        "gpt_oss_120b_p",
        "attestation_gpt_oss_120b_p.json",
        "collateral_gpt_oss_120b_p.json",
        "near",
        "e2ee-gpt-oss-120b-p",
        "0x56d070df1c6be444b007839ef9cf67cec7c12b8b",
        None,
        None,
        "collateral_glm_5_1.json",
    ),
    Fixture(
        "qwen3_vl_30b_a3b_p",
        "attestation_qwen3_vl_30b_a3b_p.json",
        "collateral_qwen3_vl_30b_a3b_p.json",
        "phala_legacy",
        "e2ee-qwen3-vl-30b-a3b-p",
        "0xa10befbf9cbef57f58a3a85ac9b6b9f5b6cffdda",
        None,
        None,
        "collateral_glm_5_1.json",
        dev_image=True,
    ),
    Fixture(
        "live_evidence_aci",
        "attestation_live_evidence.json",
        "collateral_live_evidence.json",
        "aci",
        "e2ee-venice-uncensored-24b-p",
        "0x79a5061efe5a46b0d1f33b11cf1c5adbedae6b79",
        None,
        None,
        "collateral_glm_5_1.json",
        dev_image=True,
    ),
    Fixture(
        "venice_qwen3_5_122b",
        "venice_qwen3_5_122b_20260424_attestation.json",
        "venice_qwen3_5_122b_20260424_collateral.json",
        "near",
        "e2ee-qwen3-5-122b-a10b",
        "0x6525e128afcffebf7eed05d485d7be983cdae934",
        "ac82eb750ec4cfbb273f90d33567776bfae8657e2a43f6dff2f3adad9b86095a",
        1776995921,
        "collateral_glm_5_1.json",
    ),
)
FIXTURES_BY_NAME = {fixture.name: fixture for fixture in FIXTURE_LIST}
FIXTURE_IDS = [fixture.name for fixture in FIXTURE_LIST]


@cache
def _load_json(file_name: str) -> Any:
    return json.loads((FIXTURES / file_name).read_text(encoding="utf-8"))


def load_json(file_name: str) -> Any:
    """A fresh deep copy of a fixture file, safe to mutate."""
    return copy.deepcopy(_load_json(file_name))


def body_of(fixture: Fixture) -> dict[str, Any]:
    """The attestation response body (unwrapped), as a mutable copy."""
    return dict(copy.deepcopy(unwrap_capture(_load_json(fixture.attestation_file)).body))


def nonce_of(fixture: Fixture) -> bytes:
    capture = unwrap_capture(_load_json(fixture.attestation_file))
    if capture.client_nonce is not None:
        return capture.client_nonce
    assert fixture.nonce_hex is not None
    return bytes.fromhex(fixture.nonce_hex)


def time_of(fixture: Fixture) -> int:
    capture = unwrap_capture(_load_json(fixture.attestation_file))
    if capture.capture_epoch is not None:
        return capture.capture_epoch
    assert fixture.at is not None
    return fixture.at


def collateral_of(fixture: Fixture) -> dict[str, Any]:
    collateral: dict[str, Any] = load_json(fixture.collateral_file)
    return collateral


def policy_for(fixture: Fixture) -> AttestationPolicy:
    """The strict default policy, minus the GPU check for the aci capture (it has no GPU), with
    dev images (and the unpinned images that come with them on the Phala backends) tolerated
    where the real capture runs one (``os_image_not_dev`` and ``compose_images_pinned`` are then
    reported, not enforced; their own tests use the default), and gateway trust allowed for the
    aci capture (the trust tests use the default ``refuse``)."""
    return AttestationPolicy(
        nvidia="nonce" if fixture.has_gpu else "off",
        allow_dev_image=fixture.dev_image,
        allow_unpinned_images=fixture.dev_image,
        gateway_models="allow" if fixture.shape == "aci" else "refuse",
    )


def evidence_of(fixture: Fixture) -> Evidence:
    return parse_attestation(body_of(fixture))


def quote_of(body: dict[str, Any]) -> bytes:
    return bytes.fromhex(body["intel_quote"])


def with_quote(body: dict[str, Any], quote: bytes) -> dict[str, Any]:
    """Replace every copy of the quote in a body (they must agree)."""
    text = quote.hex()
    body["intel_quote"] = text
    if "quote" in body:
        body["quote"] = text
    nested = body.get("attestation")
    if isinstance(nested, dict) and isinstance(nested.get("evidence"), dict):
        nested["evidence"]["quote"] = text
    return body


def flip_quote_byte(body: dict[str, Any], offset: int, mask: int = 0x01) -> dict[str, Any]:
    quote = bytearray(quote_of(body))
    quote[offset] ^= mask
    return with_quote(body, bytes(quote))


def with_signing_key(body: dict[str, Any], key_hex: str) -> dict[str, Any]:
    """Replace every direct copy of the signing key."""
    for name in ("signing_public_key", "signing_key"):
        if name in body:
            body[name] = key_hex
    return body


def synthetic_quote(
    report_data: bytes,
    *,
    version: int = 4,
    tee_type: int = 0x81,
    td_attributes: bytes = bytes.fromhex("0000001000000000"),
    mr_td: bytes = bytes(range(48)),
    signature_data: bytes = b"\xaa" * 64,
) -> bytes:
    """A v4-layout quote with a dummy signature: header, 584-byte body, length, signature."""
    assert len(report_data) == 64
    assert len(td_attributes) == 8
    assert len(mr_td) == 48
    header = struct.pack("<HHIHH", version, 2, tee_type, 3, 4) + b"\x11" * 16 + b"\x22" * 20
    body = bytearray(584)
    body[TD_ATTRIBUTES_OFFSET - 48 : TD_ATTRIBUTES_OFFSET - 48 + 8] = td_attributes
    body[MR_TD_OFFSET - 48 : MR_TD_OFFSET - 48 + 48] = mr_td
    for index in range(4):
        start = 376 + 48 * index - 48
        body[start : start + 48] = bytes([0xA0 + index]) * 48
    body[REPORT_DATA_OFFSET - 48 :] = report_data
    return header + bytes(body) + struct.pack("<I", len(signature_data)) + signature_data


def spdm_evidence(nonce: bytes, *, version: int = 0x11, param1: int = 0x01) -> str:
    """Base64 GPU evidence that starts like the real captures': an SPDM GET_MEASUREMENTS request
    (version, code 0xE0, param1 bit 0 = signature requested, param2 0xFF = all measurements, the
    32-byte nonce, slot 0), then a stand-in for the signed response."""
    request = bytes([version, 0xE0, param1, 0xFF]) + nonce + b"\x00"
    return base64.b64encode(request + bytes(64)).decode()


def gpu_entry(nonce: bytes, *, field: bytes | None = None) -> dict[str, Any]:
    """One ``evidence_list`` entry whose SPDM request carries ``nonce``; with ``field``, also a
    ``nonce`` field of that value (NEAR's entries have one, Phala's do not)."""
    entry: dict[str, Any] = {"arch": "HOPPER", "certificate": "", "evidence": spdm_evidence(nonce)}
    if field is not None:
        entry["nonce"] = field.hex()
    return entry


def synthetic_body(keys: KeyPair, nonce: bytes, *, model: str = "e2ee-test") -> dict[str, Any]:
    """A NEAR-shape body whose synthetic quote binds ``keys`` and ``nonce`` correctly."""
    address = address_hex(keys.public)
    report_data = bytes.fromhex(address[2:]) + bytes(12) + nonce
    return {
        "model_name": "org/test-model",
        "signing_address": address,
        "signing_algo": "ecdsa",
        "signing_public_key": keys.public.hex(),
        "request_nonce": nonce.hex(),
        "intel_quote": synthetic_quote(report_data).hex(),
        "nvidia_payload": json.dumps(
            {"arch": "HOPPER", "evidence_list": [gpu_entry(nonce)], "nonce": nonce.hex()}
        ),
        "event_log": [],
        "info": {"app_name": "test"},
        "verified": True,
        "model": model,
        "nonce": nonce.hex(),
        "tee_provider": "near-ai",
    }
