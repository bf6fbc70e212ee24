"""Intel TDX quote v4: a structural parser (no signature checks) and the text decoding.

Wire format (little-endian integers; docs/protocol.md#tdx-quote)::

    0    u16  version                  = 4
    2    u16  attestation key type     (2 = ECDSA-P256; recorded, not checked here)
    4    u32  tee_type                 = 0x81 (TDX)
    8    u16  qe_svn,  10 u16 pce_svn
    12   16   QE vendor id
    28   20   user data
    48   ---  TD report body (584 bytes):
    48   16   tee_tcb_svn         64  48 mr_seam        112 48 mr_signer_seam
    160  8    seam_attributes     168 8  td_attributes  176 8  xfam
    184  48   mr_td               232 48 mr_config_id   280 48 mr_owner
    328  48   mr_owner_config     376/424/472/520 48 each: rtmr0..rtmr3
    568  64   report_data
    632  u32  signature data length, then that many bytes (ECDSA signature, attestation key,
              QE report and certification data with the PCK chain)

``td_attributes`` byte 0 bit 0 is the TD's DEBUG flag: a debug TD's memory is readable by the
host, so its attestation is worthless.

Deliberately NOT checked here: the attestation key type, the signature, the certification data
and everything after the declared signature length (real quotes end with 70 zero bytes of
padding, which Intel's verifier ignores too). Those belong to DCAP (:mod:`.dcap`). The parser
only guarantees that every offset it reads lies inside the buffer.

The quote travels as text: Venice sends **hex**; its docs claim base64. :func:`decode_quote`
tries hex first and falls back to base64.
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass, field

from proxy.core.errors import QuoteParseError

QUOTE_VERSION = 4
TEE_TYPE_TDX = 0x81

OFFSET_VERSION = 0
OFFSET_ATTESTATION_KEY_TYPE = 2
OFFSET_TEE_TYPE = 4
OFFSET_QE_SVN = 8
OFFSET_PCE_SVN = 10
OFFSET_QE_VENDOR_ID = 12
OFFSET_USER_DATA = 28
HEADER_BYTES = 48

OFFSET_TEE_TCB_SVN = 48
OFFSET_MR_SEAM = 64
OFFSET_MR_SIGNER_SEAM = 112
OFFSET_SEAM_ATTRIBUTES = 160
OFFSET_TD_ATTRIBUTES = 168
OFFSET_XFAM = 176
OFFSET_MR_TD = 184
OFFSET_MR_CONFIG_ID = 232
OFFSET_MR_OWNER = 280
OFFSET_MR_OWNER_CONFIG = 328
OFFSET_RTMR0 = 376
OFFSET_RTMR1 = 424
OFFSET_RTMR2 = 472
OFFSET_RTMR3 = 520
OFFSET_REPORT_DATA = 568
OFFSET_SIGNATURE_LENGTH = 632
OFFSET_SIGNATURE_DATA = 636

MEASUREMENT_BYTES = 48
REPORT_DATA_BYTES = 64
TD_REPORT_BODY_BYTES = OFFSET_SIGNATURE_LENGTH - HEADER_BYTES
MIN_QUOTE_BYTES = OFFSET_SIGNATURE_DATA

DEBUG_BIT = 0x01

_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


@dataclass(frozen=True, slots=True)
class TdReport:
    """The TD report body (584 bytes at offset 48): the TD's measurements and report data.

    One type for both copies of it: the one parsed from the quote (:func:`parse_tdx_quote`) and
    the one DCAP returns after checking the platform's signature over it
    (:class:`~proxy.attestation.dcap.DcapResult`). :meth:`differences` compares them field by
    field. Nothing here is authenticated until DCAP says so.
    """

    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes

    @property
    def debug(self) -> bool:
        """True when the TD runs in debug mode (td_attributes byte 0, bit 0)."""
        return bool(self.td_attributes[0] & DEBUG_BIT)

    @property
    def rtmr0(self) -> bytes:
        return self.rtmrs[0]

    @property
    def rtmr1(self) -> bytes:
        return self.rtmrs[1]

    @property
    def rtmr2(self) -> bytes:
        return self.rtmrs[2]

    @property
    def rtmr3(self) -> bytes:
        return self.rtmrs[3]

    def differences(self, other: TdReport) -> tuple[str, ...]:
        """The names of the fields whose values differ between ``self`` and ``other``."""
        return tuple(
            name for name in TD_REPORT_FIELDS if getattr(self, name) != getattr(other, name)
        )


TD_REPORT_FIELDS: tuple[str, ...] = (
    "tee_tcb_svn",
    "mr_seam",
    "mr_signer_seam",
    "seam_attributes",
    "td_attributes",
    "xfam",
    "mr_td",
    "mr_config_id",
    "mr_owner",
    "mr_owner_config",
    "rtmrs",
    "report_data",
)


@dataclass(frozen=True, slots=True)
class TdxQuote:
    """A TDX v4 quote: its header fields and its TD report. Nothing here is authenticated until
    DCAP says so."""

    version: int
    attestation_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes
    report: TdReport
    signature_data_length: int
    raw: bytes = field(repr=False)

    @property
    def is_tdx(self) -> bool:
        """True when the header says TDX (tee_type 0x81)."""
        return self.tee_type == TEE_TYPE_TDX


def _u16(raw: bytes, offset: int) -> int:
    value: int = struct.unpack_from("<H", raw, offset)[0]
    return value


def _u32(raw: bytes, offset: int) -> int:
    value: int = struct.unpack_from("<I", raw, offset)[0]
    return value


def _take(raw: bytes, offset: int, length: int) -> bytes:
    return bytes(raw[offset : offset + length])


def parse_tdx_quote(raw: bytes, *, require_tdx: bool = True) -> TdxQuote:
    """Parse a TDX v4 quote's header and TD report body.

    Raises :class:`QuoteParseError` when the buffer is shorter than the fixed part, the version
    is not 4, the tee_type is not TDX (unless ``require_tdx`` is False, which lets the verifier
    report a wrong TEE type as its own check), or the signature length runs past the end.
    """
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise QuoteParseError("the quote is not a byte string")
    raw = bytes(raw)
    if len(raw) < HEADER_BYTES:
        raise QuoteParseError(f"the quote is {len(raw)} bytes, shorter than its 48-byte header")
    version = _u16(raw, OFFSET_VERSION)
    if version != QUOTE_VERSION:
        raise QuoteParseError(f"quote version {version} is not supported (expected 4)")
    tee_type = _u32(raw, OFFSET_TEE_TYPE)
    if require_tdx and tee_type != TEE_TYPE_TDX:
        raise QuoteParseError(f"quote tee_type 0x{tee_type:x} is not TDX (0x81)")
    if len(raw) < MIN_QUOTE_BYTES:
        raise QuoteParseError(
            f"the quote is {len(raw)} bytes, shorter than the {MIN_QUOTE_BYTES}-byte TDX v4 body"
        )
    signature_length = _u32(raw, OFFSET_SIGNATURE_LENGTH)
    if OFFSET_SIGNATURE_DATA + signature_length > len(raw):
        raise QuoteParseError(
            f"the quote's signature length {signature_length} runs past its end ({len(raw)} bytes)"
        )
    return TdxQuote(
        version=version,
        attestation_key_type=_u16(raw, OFFSET_ATTESTATION_KEY_TYPE),
        tee_type=tee_type,
        qe_svn=_u16(raw, OFFSET_QE_SVN),
        pce_svn=_u16(raw, OFFSET_PCE_SVN),
        qe_vendor_id=_take(raw, OFFSET_QE_VENDOR_ID, 16),
        user_data=_take(raw, OFFSET_USER_DATA, 20),
        report=parse_td_report(raw),
        signature_data_length=signature_length,
        raw=raw,
    )


def parse_td_report(raw: bytes) -> TdReport:
    """The TD report body of a quote whose length was already checked."""
    return TdReport(
        tee_tcb_svn=_take(raw, OFFSET_TEE_TCB_SVN, 16),
        mr_seam=_take(raw, OFFSET_MR_SEAM, MEASUREMENT_BYTES),
        mr_signer_seam=_take(raw, OFFSET_MR_SIGNER_SEAM, MEASUREMENT_BYTES),
        seam_attributes=_take(raw, OFFSET_SEAM_ATTRIBUTES, 8),
        td_attributes=_take(raw, OFFSET_TD_ATTRIBUTES, 8),
        xfam=_take(raw, OFFSET_XFAM, 8),
        mr_td=_take(raw, OFFSET_MR_TD, MEASUREMENT_BYTES),
        mr_config_id=_take(raw, OFFSET_MR_CONFIG_ID, MEASUREMENT_BYTES),
        mr_owner=_take(raw, OFFSET_MR_OWNER, MEASUREMENT_BYTES),
        mr_owner_config=_take(raw, OFFSET_MR_OWNER_CONFIG, MEASUREMENT_BYTES),
        rtmrs=(
            _take(raw, OFFSET_RTMR0, MEASUREMENT_BYTES),
            _take(raw, OFFSET_RTMR1, MEASUREMENT_BYTES),
            _take(raw, OFFSET_RTMR2, MEASUREMENT_BYTES),
            _take(raw, OFFSET_RTMR3, MEASUREMENT_BYTES),
        ),
        report_data=_take(raw, OFFSET_REPORT_DATA, REPORT_DATA_BYTES),
    )


def decode_quote(text: str) -> bytes:
    """Quote text to bytes: hex (what Venice sends, optional ``0x``) first, then base64.

    Raises :class:`QuoteParseError` with code ``quote_encoding`` when it is neither.
    """
    if not isinstance(text, str):
        raise QuoteParseError("the quote is not a string", code="quote_encoding")
    stripped = text.strip()
    hex_text = stripped[2:] if stripped[:2] in ("0x", "0X") else stripped
    if hex_text and len(hex_text) % 2 == 0 and _HEX_DIGITS.issuperset(hex_text):
        return bytes.fromhex(hex_text)
    try:
        decoded = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise QuoteParseError("the quote is neither hex nor base64", code="quote_encoding") from exc
    if not decoded:
        raise QuoteParseError("the quote is empty", code="quote_encoding")
    return decoded
