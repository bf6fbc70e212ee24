"""The simulator's synthetic TDX v4 quote (proxy/simulator/quote.py, docs/protocol.md#tdx-quote):
read back with the proxy's own quote parser, laid out like a real captured quote, with its
unsigned signature data in the v4 ECDSA structure, and dstack's mr_config_id against real
captures."""

from __future__ import annotations

import hashlib
import json
import re
import struct
from typing import Any

import pytest

from proxy.attestation.quote import TdxQuote, parse_tdx_quote
from proxy.simulator.quote import (
    SIMULATED_MR_SEAM,
    TdReportFields,
    build_tdx_quote,
    dstack_mr_config_id,
    report_data_for,
    with_debug_bit,
)
from tests.support.fixtures import FIXTURES_DIR

FIXTURES = FIXTURES_DIR / "attestations"
PRODUCTION = bytes.fromhex("0000001000000000")


def capture(name: str) -> dict[str, Any]:
    attestation: dict[str, Any] = json.loads((FIXTURES / name).read_text())["attestation"]
    return attestation


REAL = parse_tdx_quote(bytes.fromhex(capture("attestation_glm_5_1.json")["intel_quote"]))


def measurement(tag: int) -> bytes:
    return bytes([tag]) * 48


def fields(**changes: Any) -> TdReportFields:
    values: dict[str, Any] = {
        "mr_td": measurement(1),
        "mr_config_id": measurement(2),
        "rtmrs": (measurement(3), measurement(4), measurement(5), measurement(6)),
        "report_data": bytes(range(64)),
    }
    values.update(changes)
    return TdReportFields(**values)


def built(**changes: Any) -> TdxQuote:
    return parse_tdx_quote(build_tdx_quote(fields(**changes)))


# -- header and TD report ----------------------------------------------------------------------


def test_header_is_that_of_a_real_tdx_quote() -> None:
    quote = built()
    assert (quote.version, quote.attestation_key_type, quote.tee_type) == (4, 2, 0x81)
    assert (quote.qe_svn, quote.pce_svn) == (REAL.qe_svn, REAL.pce_svn) == (0, 0)
    assert quote.qe_vendor_id == REAL.qe_vendor_id
    assert len(quote.user_data) == 20


def test_report_carries_every_field_given() -> None:
    report = built(
        td_attributes=bytes.fromhex("0100001000000000"),
        xfam=bytes(range(8)),
        mr_owner=measurement(7),
        mr_owner_config=measurement(8),
    ).report
    assert report.td_attributes == bytes.fromhex("0100001000000000")
    assert report.xfam == bytes(range(8))
    assert report.mr_td == measurement(1)
    assert report.mr_config_id == measurement(2)
    assert report.mr_owner == measurement(7)
    assert report.mr_owner_config == measurement(8)
    assert report.rtmrs == (measurement(3), measurement(4), measurement(5), measurement(6))
    assert report.report_data == bytes(range(64))


def test_report_defaults_and_the_seam_fields() -> None:
    report = built().report
    assert report.td_attributes == PRODUCTION
    assert report.xfam == bytes.fromhex("e702060000000000")
    assert report.mr_owner == report.mr_owner_config == bytes(48)
    assert report.tee_tcb_svn == REAL.report.tee_tcb_svn
    assert report.mr_seam == SIMULATED_MR_SEAM
    assert report.mr_signer_seam == bytes(48)
    assert report.seam_attributes == bytes(8)


def test_the_quote_is_byte_stable() -> None:
    # Recorded evidence and the simulator's published measurements rely on the same fields
    # giving the same quote, filler included.
    raw = build_tdx_quote(fields())
    assert raw == build_tdx_quote(fields())
    assert hashlib.sha256(raw).hexdigest() == (
        "b1899c1cd4fb4b6f63c25c02a1da71a514454da46695318176667da7594d613e"
    )


# -- the signature data ------------------------------------------------------------------------


def signature_parts(raw: bytes) -> dict[str, Any]:
    """The v4 ECDSA signature data, read as Intel lays it out."""
    (length,) = struct.unpack_from("<I", raw, 632)
    data = raw[636:]
    assert length == len(data)
    cert_type, cert_size = struct.unpack_from("<HI", data, 128)
    cert = data[134:]
    assert cert_size == len(cert)
    (auth_size,) = struct.unpack_from("<H", cert, 384 + 64)
    offset = 384 + 64 + 2 + auth_size
    chain_type, chain_size = struct.unpack_from("<HI", cert, offset)
    chain = cert[offset + 6 :]
    assert chain_size == len(chain)
    return {
        "signature": data[:64],
        "attestation_key": data[64:128],
        "cert_type": cert_type,
        "qe_report": cert[:384],
        "qe_report_signature": cert[384:448],
        "auth_data": cert[450 : 450 + auth_size],
        "chain_type": chain_type,
        "chain": chain,
    }


def test_signature_data_has_the_v4_structure_with_nothing_signed() -> None:
    parts = signature_parts(build_tdx_quote(fields()))
    assert parts["signature"] == parts["attestation_key"] == bytes(64)
    assert parts["cert_type"] == 6
    assert parts["qe_report"] == bytes(384)
    assert parts["qe_report_signature"] == bytes(64)
    assert parts["chain_type"] == 5
    assert parts["chain"] == b"SIMULATED TDX QUOTE - NOT SIGNED BY INTEL - DCAP MUST BE STUBBED\n"
    assert b"BEGIN CERTIFICATE" not in parts["chain"]


def test_qe_auth_data_is_as_long_as_a_real_quotes() -> None:
    real_raw = REAL.raw
    real_cert = real_raw[636 + 134 :]
    (real_auth,) = struct.unpack_from("<H", real_cert, 448)
    assert signature_parts(build_tdx_quote(fields()))["auth_data"] == bytes(real_auth)


# -- helpers -----------------------------------------------------------------------------------


def test_debug_bit_sets_bit_zero_of_byte_zero_only() -> None:
    assert with_debug_bit(PRODUCTION) == bytes.fromhex("0100001000000000")
    assert with_debug_bit(bytes.fromhex("0201001000000000")) == bytes.fromhex("0301001000000000")
    assert with_debug_bit(bytes.fromhex("0100001000000000")) == bytes.fromhex("0100001000000000")


@pytest.mark.parametrize("name", ["attestation_glm_5_1.json", "attestation_gemma_3_27b_p.json"])
def test_mr_config_id_matches_real_dstack_captures(name: str) -> None:
    attestation = capture(name)
    quote = parse_tdx_quote(bytes.fromhex(attestation["intel_quote"]))
    app_compose = attestation["info"]["tcb_info"]["app_compose"]
    assert dstack_mr_config_id(app_compose) == quote.report.mr_config_id


def test_mr_config_id_hashes_utf8() -> None:
    sha_e_acute = hashlib.sha256("é".encode()).hexdigest()
    assert dstack_mr_config_id("é") == bytes.fromhex("01" + sha_e_acute + "00" * 15)


def test_report_data_is_address_zeros_nonce() -> None:
    assert report_data_for(b"\xaa" * 20, b"\xbb" * 32) == b"\xaa" * 20 + bytes(12) + b"\xbb" * 32
    with pytest.raises(ValueError, match=r"^address must be 20 bytes and nonce 32 bytes$"):
        report_data_for(bytes(19), bytes(32))


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"mr_td": bytes(47)}, "mr_td must be 48 bytes"),
        ({"mr_config_id": bytes(49)}, "mr_config_id must be 48 bytes"),
        ({"mr_owner": bytes(47)}, "mr_owner must be 48 bytes"),
        ({"mr_owner_config": bytes(0)}, "mr_owner_config must be 48 bytes"),
        ({"rtmrs": (bytes(48),) * 3}, "rtmrs must be four 48-byte values"),
        ({"rtmrs": (bytes(48),) * 5}, "rtmrs must be four 48-byte values"),
        (
            {"rtmrs": (bytes(48), bytes(48), bytes(48), bytes(49))},
            "rtmrs must be four 48-byte values",
        ),
        ({"report_data": bytes(65)}, "report_data must be 64 bytes"),
        ({"td_attributes": bytes(7)}, "td_attributes and xfam must be 8 bytes"),
        ({"xfam": bytes(9)}, "td_attributes and xfam must be 8 bytes"),
    ],
)
def test_fields_of_the_wrong_size_are_refused_by_name(
    changes: dict[str, Any], complaint: str
) -> None:
    # The whole message: it is all a developer who built a wrong field gets to see.
    with pytest.raises(ValueError, match=f"^{re.escape(complaint)}$"):
        fields(**changes)
