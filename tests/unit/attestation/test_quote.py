"""TDX v4 quote parsing and quote text decoding."""

from __future__ import annotations

import base64
import struct
from dataclasses import replace
from typing import Any

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


# --- what mutation testing found unpinned (make mutation) ------------------------------------


def _distinct_body_quote() -> bytes:
    """A synthetic quote whose TD report body bytes all differ: byte i of the body is i % 251."""
    raw = bytearray(synthetic_quote(REPORT_DATA))
    raw[48:632] = bytes(i % 251 for i in range(584))
    return bytes(raw)


def test_every_td_report_field_is_read_from_its_offset_and_length() -> None:
    raw = _distinct_body_quote()
    report = parse_tdx_quote(raw).report
    expected = {
        "tee_tcb_svn": (48, 16),
        "mr_seam": (64, 48),
        "mr_signer_seam": (112, 48),
        "seam_attributes": (160, 8),
        "td_attributes": (168, 8),
        "xfam": (176, 8),
        "mr_td": (184, 48),
        "mr_config_id": (232, 48),
        "mr_owner": (280, 48),
        "mr_owner_config": (328, 48),
        "report_data": (568, 64),
    }
    for name, (offset, length) in expected.items():
        assert getattr(report, name) == raw[offset : offset + length], name
    assert report.rtmrs == tuple(raw[376 + 48 * i : 424 + 48 * i] for i in range(4))
    assert set(expected) | {"rtmrs"} == set(q.TD_REPORT_FIELDS)


def test_td_report_differences_name_each_differing_field_in_order() -> None:
    report = parse_tdx_quote(_distinct_body_quote()).report
    assert report.differences(report) == ()
    assert report.differences(parse_tdx_quote(_distinct_body_quote()).report) == ()
    for name in q.TD_REPORT_FIELDS:
        value = getattr(report, name)
        changed: Any = (bytes(48),) * 4 if name == "rtmrs" else bytes(len(value))
        other = replace(report, **{name: changed})
        assert report.differences(other) == (name,)
        assert other.differences(report) == (name,)
    both = replace(report, mr_td=bytes(48), report_data=bytes(64))
    assert report.differences(both) == ("mr_td", "report_data")


def test_header_integers_are_unsigned() -> None:
    raw = bytearray(synthetic_quote(REPORT_DATA))
    struct.pack_into("<HH", raw, 8, 0xFFFF, 0x8000)  # qe_svn, pce_svn
    quote = parse_tdx_quote(bytes(raw))
    assert (quote.qe_svn, quote.pce_svn) == (0xFFFF, 0x8000)
    struct.pack_into("<H", raw, 0, 0x8004)
    with pytest.raises(QuoteParseError) as info:
        parse_tdx_quote(bytes(raw))
    assert info.value.message == "quote version 32772 is not supported (expected 4)"
    struct.pack_into("<HHI", raw, 0, 4, 2, 0x80000081)
    with pytest.raises(QuoteParseError) as info:
        parse_tdx_quote(bytes(raw))
    assert info.value.message == "quote tee_type 0x80000081 is not TDX (0x81)"


@pytest.mark.parametrize("length", [2**31, 2**32 - 1, 2**31 + 64])
def test_a_signature_length_of_2_31_or_more_runs_past_the_end(length: int) -> None:
    raw = bytearray(synthetic_quote(REPORT_DATA))
    struct.pack_into("<I", raw, 632, length)
    with pytest.raises(QuoteParseError) as info:
        parse_tdx_quote(bytes(raw))
    assert info.value.message == (
        f"the quote's signature length {length} runs past its end ({len(raw)} bytes)"
    )


def test_the_smallest_quote_is_636_bytes_with_an_empty_signature() -> None:
    raw = synthetic_quote(REPORT_DATA, signature_data=b"")
    assert len(raw) == q.MIN_QUOTE_BYTES == 636
    quote = parse_tdx_quote(raw)
    assert quote.signature_data_length == 0
    assert quote.report.report_data == REPORT_DATA


@pytest.mark.parametrize(
    ("length", "message"),
    [
        (0, "the quote is 0 bytes, shorter than its 48-byte header"),
        (47, "the quote is 47 bytes, shorter than its 48-byte header"),
        (48, "the quote is 48 bytes, shorter than the 636-byte TDX v4 body"),
        (635, "the quote is 635 bytes, shorter than the 636-byte TDX v4 body"),
    ],
)
def test_a_short_quote_says_how_short(length: int, message: str) -> None:
    with pytest.raises(QuoteParseError) as info:
        parse_tdx_quote(synthetic_quote(REPORT_DATA, signature_data=b"")[:length])
    assert info.value.message == message
    assert info.value.code == "quote_parse"


@pytest.mark.parametrize("value", ["00" * 700, None, 636, ["quote"]])
def test_a_quote_that_is_not_bytes_is_refused(value: object) -> None:
    with pytest.raises(QuoteParseError) as info:
        parse_tdx_quote(value)  # type: ignore[arg-type]
    assert (info.value.code, info.value.message) == (
        "quote_parse",
        "the quote is not a byte string",
    )


def test_parse_accepts_bytearray_and_memoryview() -> None:
    raw = synthetic_quote(REPORT_DATA)
    for value in (bytearray(raw), memoryview(raw)):
        quote = parse_tdx_quote(value)  # type: ignore[arg-type]
        assert quote.raw == raw
        assert type(quote.raw) is bytes


@pytest.mark.parametrize("value", [None, 42, b"00", ["00"]])
def test_a_quote_text_that_is_not_a_string_is_an_encoding_error(value: object) -> None:
    with pytest.raises(QuoteParseError) as info:
        decode_quote(value)  # type: ignore[arg-type]
    assert (info.value.code, info.value.message) == ("quote_encoding", "the quote is not a string")


def test_decode_quote_accepts_an_upper_case_0x_prefix() -> None:
    raw = synthetic_quote(REPORT_DATA)
    assert decode_quote("0X" + raw.hex()) == raw
    assert decode_quote("0X" + raw.hex().upper()) == raw


@pytest.mark.parametrize(
    "text",
    [
        "QUJD!REVG",  # a character outside the alphabet in the middle
        "QUJD REVG",
        "QUJDREVG\x00",
        "QUJ-REVG",  # base64url is not base64
    ],
)
def test_base64_with_foreign_characters_is_refused(text: str) -> None:
    with pytest.raises(QuoteParseError) as info:
        decode_quote(text)
    assert (info.value.code, info.value.message) == (
        "quote_encoding",
        "the quote is neither hex nor base64",
    )


@pytest.mark.parametrize(
    ("text", "message"), [("", "the quote is empty"), ("  ", "the quote is empty")]
)
def test_an_empty_quote_text_says_so(text: str, message: str) -> None:
    with pytest.raises(QuoteParseError) as info:
        decode_quote(text)
    assert (info.value.code, info.value.message) == ("quote_encoding", message)
