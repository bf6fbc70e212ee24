"""Response signatures (``GET /api/v1/tee/signature``): parse the answer, recover the signer.

Wire format (docs/protocol.md#signatures)::

    {"text": "<model>:<sha256 req>:<sha256 resp>" | "<sha256 req>:<sha256 resp>",
     "signature": "0x" + 130 hex (r || s || v)  |  {"value": <that>, "algorithm"/"algo", ...},
     "signing_address": "0x…", "signing_algo": "ecdsa", "model": …,
     "requested_request_id" | "request_id": "chatcmpl-…", …}

Algorithm: EIP-191 ``personal_sign``. The digest is ``keccak256(b"\\x19Ethereum Signed
Message:\\n" + decimal(len(utf8 text)) + utf8 text)``; the signature is 65 bytes ``r || s ||
v`` with ``v`` in {27, 28} (Ethereum) or {0, 1} (raw recovery id). The signer is the address
recovered from it; it must equal the **attested** signing address (from a passed attestation
report), compared case-insensitively so EIP-55 mixed case matches.

:func:`verify_signature` never raises: it returns a :class:`SignatureCheck` with a stable code
(:data:`SIGNATURE_CODES`). :func:`recover_signer` and :func:`parse_signature_response` raise
:class:`SignatureError` (an :class:`~proxy.core.errors.AttestationError`).

Deliberately NOT checked: the two hashes inside ``text`` (Venice re-serializes requests and
re-frames streams, so a client generally cannot recompute them), low-``s`` normalization (it
does not change who signed), the model name part, the response's own ``signing_algo``, and the
aci ``receipt`` and its separate receipt signature.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from coincurve import PublicKey

from proxy.core.crypto import address_hex, keccak256
from proxy.core.errors import AttestationError

EIP191_PREFIX: Final = b"\x19Ethereum Signed Message:\n"
SIGNATURE_BYTES: Final = 65
TEXT_PARTS_ALLOWED: Final = (2, 3)

SIGNATURE_VERIFIED: Final = "signature_verified"
SIGNATURE_RESPONSE_INVALID: Final = "signature_response_invalid"
SIGNATURE_MALFORMED: Final = "signature_malformed"
SIGNATURE_TEXT_FORMAT: Final = "signature_text_format"
SIGNATURE_SIGNER_MISMATCH: Final = "signature_signer_mismatch"
SIGNATURE_ADDRESS_MISMATCH: Final = "signature_address_mismatch"

SIGNATURE_CODES: Final = (
    SIGNATURE_VERIFIED,
    SIGNATURE_RESPONSE_INVALID,
    SIGNATURE_MALFORMED,
    SIGNATURE_TEXT_FORMAT,
    SIGNATURE_SIGNER_MISMATCH,
    SIGNATURE_ADDRESS_MISMATCH,
)

_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


SignatureOutcome = Literal["ok", "mismatch", "unavailable", "error"]
"""The outcome of checking one answer's signature (metrics, logs and the strict policy use it).

``ok``: the attested signing key signed it; ``mismatch``: another key signed it or the answer
is malformed; ``unavailable``: the upstream serves no signature for it; ``error``: fetching it
failed.
"""


class SignatureError(AttestationError):
    """A response signature that cannot be parsed or recovered."""

    default_code = SIGNATURE_MALFORMED
    default_message = "the response signature could not be verified"


@dataclass(frozen=True, slots=True)
class SignatureEvidence:
    """A ``/tee/signature`` answer, normalized. Nothing in it is trusted yet."""

    text: str = field(repr=False)
    signature: str
    signing_address: str | None
    model: str | None
    request_id: str | None


@dataclass(frozen=True, slots=True)
class SignatureCheck:
    """The verdict on one response signature."""

    ok: bool
    code: str
    detail: str


def eip191_digest(text: str) -> bytes:
    """keccak256 of the EIP-191 ``personal_sign`` message for ``text``."""
    data = text.encode("utf-8")
    return keccak256(EIP191_PREFIX + str(len(data)).encode("ascii") + data)


def _signature_bytes(signature_hex: str) -> bytes:
    if not isinstance(signature_hex, str):
        raise SignatureError("the signature is not a string")
    text = signature_hex.strip()
    text = text[2:] if text[:2] in ("0x", "0X") else text
    if len(text) != 2 * SIGNATURE_BYTES or not _HEX_DIGITS.issuperset(text):
        raise SignatureError(f"the signature is not {2 * SIGNATURE_BYTES} hex digits")
    raw = bytes.fromhex(text)
    v = raw[64]
    if v in (27, 28):
        v -= 27
    if v not in (0, 1):
        raise SignatureError(f"the signature's v is {raw[64]}, not 27/28 or 0/1")
    return raw[:64] + bytes([v])


def recover_signer(text: str, signature_hex: str) -> str:
    """The lowercase ``0x`` address whose key made ``signature_hex`` over ``text`` (EIP-191)."""
    if not isinstance(text, str):
        raise SignatureError("the signed text is not a string")
    signature = _signature_bytes(signature_hex)
    try:
        public = PublicKey.from_signature_and_message(signature, eip191_digest(text), hasher=None)
    except ValueError as exc:
        raise SignatureError("no public key recovers from the signature") from exc
    return address_hex(public.format(compressed=False))


def _text_field(body: Mapping[str, Any], *names: str) -> str | None:
    for name in names:
        value = body.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def parse_signature_response(body: Any) -> SignatureEvidence:
    """Normalize a ``/tee/signature`` answer; raise :class:`SignatureError` when unusable."""
    if not isinstance(body, Mapping):
        raise SignatureError(
            "the signature answer is not a JSON object", code=SIGNATURE_RESPONSE_INVALID
        )
    text = body.get("text")
    if not isinstance(text, str) or not text:
        raise SignatureError("the signature answer has no text", code=SIGNATURE_RESPONSE_INVALID)
    raw_signature = body.get("signature")
    if isinstance(raw_signature, Mapping):
        raw_signature = raw_signature.get("value")
    if not isinstance(raw_signature, str) or not raw_signature:
        raise SignatureError(
            "the signature answer has no signature", code=SIGNATURE_RESPONSE_INVALID
        )
    return SignatureEvidence(
        text=text,
        signature=raw_signature,
        signing_address=_text_field(body, "signing_address"),
        model=_text_field(body, "model"),
        request_id=_text_field(body, "requested_request_id", "request_id"),
    )


def _bare(address: str) -> str:
    return address.strip().lower().removeprefix("0x")


def verify_signature(evidence: SignatureEvidence, attested_address: str) -> SignatureCheck:
    """Check ``evidence`` against the attested signing address. Never raises."""
    parts = evidence.text.split(":")
    if len(parts) not in TEXT_PARTS_ALLOWED or not all(parts):
        detail = f"the signed text has {len(parts)} colon-separated parts, expected 2 or 3"
        return SignatureCheck(False, SIGNATURE_TEXT_FORMAT, detail)
    try:
        signer = recover_signer(evidence.text, evidence.signature)
    except SignatureError as exc:
        return SignatureCheck(False, SIGNATURE_MALFORMED, exc.message)
    attested = "0x" + _bare(attested_address)
    if signer != attested:
        detail = f"signed by {signer}, attested key is {attested}"
        return SignatureCheck(False, SIGNATURE_SIGNER_MISMATCH, detail)
    claimed = evidence.signing_address
    if claimed is not None and _bare(claimed) != _bare(attested):
        detail = f"the answer names signing_address {claimed[:44]!r}, attested {attested}"
        return SignatureCheck(False, SIGNATURE_ADDRESS_MISMATCH, detail)
    return SignatureCheck(True, SIGNATURE_VERIFIED, f"signed by the attested key {attested}")
