"""TDX v4 quote parsing and quote text decoding."""

from __future__ import annotations

import base64
import struct

import dcap_qvl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.attestation import decode_quote, parse_tdx_quote, verify_quote_dcap
from proxy.attestation import quote as q
from proxy.core.errors import AttestationError, QuoteParseError
from tests.support.attestation_helpers import (
    FIXTURE_IDS,
    FIXTURE_LIST,
    Fixture,
    body_of,
    collateral_of,
    quote_of,
    synthetic_quote,
    time_of,
)

REPORT_DATA = bytes(range(64))


def test_synthetic_quote_fields_sit_at_their_offsets() -> None:
    raw = synthetic_quote(REPORT_DATA)
    quote = parse_tdx_quote(raw)
    assert (quote.version, quote.attestation_key_type, quote.tee_type) == (4, 2, 0x81)
    assert (quote.qe_svn, quote.pce_svn) == (3, 4)
    assert quote.qe_vendor_id == b"\x11" * 16
    assert quote.user_data == b"\x22" * 20
    assert quote.report.td_attributes == bytes.fromhex("0000001000000000")
    assert quote.report.mr_td == bytes(range(48))
    assert quote.report.rtmrs == tuple(bytes([0xA0 + i]) * 48 for i in range(4))
    assert (quote.report.rtmr0, quote.report.rtmr3) == (b"\xa0" * 48, b"\xa3" * 48)
    assert quote.report.report_data == REPORT_DATA
    assert quote.signature_data_length == 64
    assert quote.raw == raw
    assert quote.is_tdx
    assert not quote.report.debug


def test_debug_bit_is_byte_zero_bit_zero_of_td_attributes() -> None:
    debug = parse_tdx_quote(synthetic_quote(REPORT_DATA, td_attributes=b"\x01" + bytes(7)))
    other_bits = parse_tdx_quote(synthetic_quote(REPORT_DATA, td_attributes=b"\xfe" + b"\xff" * 7))
    assert debug.report.debug
    assert not other_bits.report.debug


def test_offsets_are_exported() -> None:
    assert q.OFFSET_TD_ATTRIBUTES == 168
    assert q.OFFSET_REPORT_DATA == 568
    assert q.OFFSET_SIGNATURE_LENGTH == 632
    assert q.TD_REPORT_BODY_BYTES == 584
    assert (q.OFFSET_RTMR0, q.OFFSET_RTMR1, q.OFFSET_RTMR2, q.OFFSET_RTMR3) == (376, 424, 472, 520)


@pytest.mark.parametrize("fixture", FIXTURE_LIST, ids=FIXTURE_IDS)
def test_real_quote_parses_like_dcap_reads_it(fixture: Fixture) -> None:
    raw = quote_of(body_of(fixture))
    quote = parse_tdx_quote(raw)
    verified = verify_quote_dcap(raw, collateral_of(fixture), time_of(fixture))
    assert 5000 <= len(raw) <= 5012
    assert quote.report.td_attributes.hex() == "0000001000000000"
    assert not quote.report.debug
    assert quote.report.report_data == verified.report.report_data
    assert quote.report.mr_td == verified.report.mr_td
    assert quote.report.mr_config_id == verified.report.mr_config_id
    assert quote.report.rtmrs == verified.report.rtmrs
    assert quote.report.xfam == verified.report.xfam
    assert quote.report.mr_seam == verified.report.mr_seam
    header = dcap_qvl.parse_quote(raw).header
    assert (quote.version, quote.tee_type) == (header.version, header.tee_type)
    assert quote.qe_vendor_id == bytes(header.qe_vendor_id)


@pytest.mark.parametrize("length", [0, 1, 47, 48, 400, 631, 635])
def test_short_quotes_are_rejected(length: int) -> None:
    with pytest.raises(QuoteParseError):
        parse_tdx_quote(synthetic_quote(REPORT_DATA)[:length])


def test_signature_length_running_past_the_end_is_rejected() -> None:
    raw = bytearray(synthetic_quote(REPORT_DATA))
    struct.pack_into("<I", raw, 632, 65)
    with pytest.raises(QuoteParseError, match="signature length"):
        parse_tdx_quote(bytes(raw))
    struct.pack_into("<I", raw, 632, 64)
    assert parse_tdx_quote(bytes(raw) + bytes(70)).signature_data_length == 64


def test_wrong_version_is_rejected() -> None:
    with pytest.raises(QuoteParseError, match="version 3"):
        parse_tdx_quote(synthetic_quote(REPORT_DATA, version=3))


def test_wrong_tee_type_is_rejected_unless_asked_not_to() -> None:
    raw = synthetic_quote(REPORT_DATA, tee_type=0)
    with pytest.raises(QuoteParseError, match="tee_type"):
        parse_tdx_quote(raw)
    lenient = parse_tdx_quote(raw, require_tdx=False)
    assert lenient.tee_type == 0
    assert not lenient.is_tdx


def test_decode_quote_hex_first_then_base64() -> None:
    raw = synthetic_quote(REPORT_DATA)
    assert decode_quote(raw.hex()) == raw
    assert decode_quote(raw.hex().upper()) == raw
    assert decode_quote("0x" + raw.hex()) == raw
    assert decode_quote(" " + raw.hex() + "\n") == raw
    assert decode_quote(base64.b64encode(raw).decode()) == raw


@pytest.mark.parametrize("text", ["", "   ", "zz", "not a quote!", "abc"])
def test_decode_quote_rejects_text_that_is_neither(text: str) -> None:
    with pytest.raises(QuoteParseError) as info:
        decode_quote(text)
    assert info.value.code == "quote_encoding"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=1200))
def test_random_bytes_only_raise_quote_parse_error(raw: bytes) -> None:
    try:
        quote = parse_tdx_quote(raw)
    except QuoteParseError:
        return
    assert len(quote.report.report_data) == 64


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=700), st.binary(min_size=1, max_size=8))
def test_truncated_and_corrupted_synthetic_quotes(cut: int, noise: bytes) -> None:
    raw = bytearray(synthetic_quote(REPORT_DATA))
    raw[: len(noise)] = noise
    try:
        quote = parse_tdx_quote(bytes(raw[:cut]))
    except QuoteParseError:
        return
    assert cut >= 636 + 64
    assert quote.report.report_data == REPORT_DATA


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=300))
def test_random_text_only_raises_quote_parse_error(text: str) -> None:
    try:
        decoded = decode_quote(text)
    except QuoteParseError:
        return
    assert decoded


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=800))
def test_dcap_on_random_bytes_only_raises_attestation_error(raw: bytes) -> None:
    with pytest.raises(AttestationError) as info:
        verify_quote_dcap(raw, collateral_of(FIXTURE_LIST[0]), time_of(FIXTURE_LIST[0]))
    assert info.value.code == "dcap_verification_failed"
