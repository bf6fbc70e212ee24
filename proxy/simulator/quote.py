"""A synthetic Intel TDX v4 quote with the real layout (docs/protocol.md#tdx-quote). Pure.

Layout (little-endian integers)::

    0    u16 version = 4         2   u16 attestation key type = 2 (ECDSA P-256)
    4    u32 tee_type = 0x81     8   u16 qe_svn, u16 pce_svn
    12   qe_vendor_id(16)        28  user_data(20)
    48   TD report body (TDREPORT 1.0, 584 bytes):
         tee_tcb_svn(16) mr_seam(48) mr_signer_seam(48) seam_attributes(8)
    168  td_attributes(8)  byte 0 bit 0 = DEBUG
    176  xfam(8)  184 mr_td(48)  232 mr_config_id(48)  280 mr_owner(48)  328 mr_owner_config(48)
    376  rtmr0  424 rtmr1  472 rtmr2  520 rtmr3 (48 each)
    568  report_data(64) = signing address(20) || 00*12 || nonce(32)
    632  u32 signature data length, then the signature data

The signature data keeps the v4 ECDSA structure (quote signature, attestation key, certification
data of type 6 wrapping a QE report and a type-5 certificate blob) but every signature and key is
zero and the "certificate chain" is a plain-text marker. **This quote cannot carry Intel's
signature**: nothing here chains to Intel's root, so DCAP verification of it must fail and has
to be stubbed by whoever verifies simulator quotes. Structural checks (header, tee_type, debug
bit, REPORTDATA binding, RTMR replay, mr_config_id) pass or fail exactly as on real quotes.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

QUOTE_VERSION = 4
ATT_KEY_TYPE_ECDSA_P256 = 2
TEE_TYPE_TDX = 0x81
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")

HEADER_BYTES = 48
BODY_BYTES = 584
TD_ATTRIBUTES_OFFSET = 168
XFAM_OFFSET = 176
MR_TD_OFFSET = 184
MR_CONFIG_ID_OFFSET = 232
MR_OWNER_OFFSET = 280
MR_OWNER_CONFIG_OFFSET = 328
RTMR_OFFSETS = (376, 424, 472, 520)
REPORT_DATA_OFFSET = 568
SIGNATURE_LENGTH_OFFSET = HEADER_BYTES + BODY_BYTES

MEASUREMENT_BYTES = 48
REPORT_DATA_BYTES = 64
TD_ATTRIBUTES_DEBUG_BIT = 0x01
# SEPT_VE_DISABLE (bit 28), the value production dstack CVMs report: 0000001000000000.
TD_ATTRIBUTES_PRODUCTION = bytes.fromhex("0000001000000000")
XFAM_DEFAULT = bytes.fromhex("e702060000000000")

_CERT_TYPE_QE_REPORT = 6
_CERT_TYPE_PCK_CHAIN = 5
_QE_REPORT_BYTES = 384
_UNSIGNED_MARKER = b"SIMULATED TDX QUOTE - NOT SIGNED BY INTEL - DCAP MUST BE STUBBED\n"


def _label(name: str, size: int) -> bytes:
    """Deterministic filler bytes for fields nobody checks (SEAM module identity etc.)."""
    return hashlib.sha384(b"venice-simulator:" + name.encode()).digest()[:size]


def _zero48() -> bytes:
    return bytes(MEASUREMENT_BYTES)


@dataclass(frozen=True, slots=True)
class TdReportFields:
    """The TD report body fields a verifier looks at; the rest is fixed filler."""

    mr_td: bytes
    mr_config_id: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    td_attributes: bytes = TD_ATTRIBUTES_PRODUCTION
    xfam: bytes = XFAM_DEFAULT
    mr_owner: bytes = field(default_factory=_zero48)
    mr_owner_config: bytes = field(default_factory=_zero48)

    def __post_init__(self) -> None:
        for name in ("mr_td", "mr_config_id", "mr_owner", "mr_owner_config"):
            if len(getattr(self, name)) != MEASUREMENT_BYTES:
                raise ValueError(f"{name} must be {MEASUREMENT_BYTES} bytes")
        if len(self.rtmrs) != 4 or any(len(r) != MEASUREMENT_BYTES for r in self.rtmrs):
            raise ValueError("rtmrs must be four 48-byte values")
        if len(self.report_data) != REPORT_DATA_BYTES:
            raise ValueError("report_data must be 64 bytes")
        if len(self.td_attributes) != 8 or len(self.xfam) != 8:
            raise ValueError("td_attributes and xfam must be 8 bytes")


def with_debug_bit(td_attributes: bytes) -> bytes:
    """The same attributes with the TDX DEBUG bit set."""
    return bytes([td_attributes[0] | TD_ATTRIBUTES_DEBUG_BIT]) + td_attributes[1:]


def dstack_mr_config_id(app_compose: str) -> bytes:
    """dstack's mr_config_id: ``0x01 || sha256(app_compose) || zero padding`` (48 bytes)."""
    digest = hashlib.sha256(app_compose.encode("utf-8")).digest()
    return (b"\x01" + digest).ljust(MEASUREMENT_BYTES, b"\x00")


def report_data_for(address: bytes, nonce: bytes) -> bytes:
    """REPORTDATA as Venice's backends build it: ``address(20) || 00*12 || nonce(32)``."""
    if len(address) != 20 or len(nonce) != 32:
        raise ValueError("address must be 20 bytes and nonce 32 bytes")
    return address + bytes(12) + nonce


SIMULATED_MR_SEAM = _label("mr_seam", MEASUREMENT_BYTES)


def _header() -> bytes:
    return (
        struct.pack("<HHI", QUOTE_VERSION, ATT_KEY_TYPE_ECDSA_P256, TEE_TYPE_TDX)
        + struct.pack("<HH", 0, 0)
        + INTEL_QE_VENDOR_ID
        + _label("user_data", 20)
    )


def _body(fields: TdReportFields) -> bytes:
    body = (
        bytes.fromhex("0b010400000000000000000000000000")  # tee_tcb_svn
        + SIMULATED_MR_SEAM
        + bytes(MEASUREMENT_BYTES)  # mr_signer_seam: zero for Intel's own SEAM module
        + bytes(8)  # seam_attributes
        + fields.td_attributes
        + fields.xfam
        + fields.mr_td
        + fields.mr_config_id
        + fields.mr_owner
        + fields.mr_owner_config
        + b"".join(fields.rtmrs)
        + fields.report_data
    )
    assert len(body) == BODY_BYTES
    return body


def _signature_data() -> bytes:
    pck_chain = _UNSIGNED_MARKER
    qe_auth = bytes(32)
    qe_cert_data = (
        bytes(_QE_REPORT_BYTES)  # QE report
        + bytes(64)  # QE report signature
        + struct.pack("<H", len(qe_auth))
        + qe_auth
        + struct.pack("<HI", _CERT_TYPE_PCK_CHAIN, len(pck_chain))
        + pck_chain
    )
    return (
        bytes(64)  # quote signature (r || s)
        + bytes(64)  # attestation public key
        + struct.pack("<HI", _CERT_TYPE_QE_REPORT, len(qe_cert_data))
        + qe_cert_data
    )


def build_tdx_quote(fields: TdReportFields) -> bytes:
    """A v4 TDX quote carrying ``fields``, with an all-zero (invalid) signature."""
    signature = _signature_data()
    return _header() + _body(fields) + struct.pack("<I", len(signature)) + signature
