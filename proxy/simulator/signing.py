"""EIP-191 personal-message signatures with the enclave key (docs/protocol.md#signatures), and
EIP-55. Pure.

Signature wire format: ``"0x" + hex(r(32) || s(32) || v(1))`` with ``v`` in {27, 28}, over
``keccak256(b"\\x19Ethereum Signed Message:\\n" + str(len(utf8(text))) + utf8(text))``.
libsecp256k1 (through coincurve) signs deterministically (RFC 6979) with low ``s``.

Signature texts the simulator produces:

- NEAR mode: ``"{upstream_model}:{sha256hex(request body)}:{sha256hex(response bytes)}"``
- Phala legacy mode: ``"{sha256hex(request body)}:{sha256hex(response bytes)}"``
"""

from __future__ import annotations

import hashlib

from coincurve import PrivateKey, PublicKey

from proxy.core.crypto import keccak256

_EIP191_PREFIX = b"\x19Ethereum Signed Message:\n"


def eip191_digest(text: str) -> bytes:
    """The 32-byte keccak digest an Ethereum wallet signs for ``text``."""
    data = text.encode("utf-8")
    return keccak256(_EIP191_PREFIX + str(len(data)).encode() + data)


def sign_text(private: bytes, text: str) -> str:
    """Sign ``text`` EIP-191 style; returns ``0x`` + 130 hex (r || s || v)."""
    raw = PrivateKey(private).sign_recoverable(eip191_digest(text), hasher=None)
    return "0x" + raw[:64].hex() + f"{raw[64] + 27:02x}"


def recover_address(text: str, signature: str) -> str:
    """The lowercase ``0x`` address whose key produced ``signature`` over ``text``."""
    raw = bytes.fromhex(signature.removeprefix("0x"))
    if len(raw) != 65 or raw[64] not in (27, 28):
        raise ValueError("signature must be 65 bytes with v in {27, 28}")
    recoverable = raw[:64] + bytes([raw[64] - 27])
    public = PublicKey.from_signature_and_message(recoverable, eip191_digest(text), hasher=None)
    return "0x" + keccak256(public.format(compressed=False)[1:])[12:].hex()


def signature_text(upstream_model: str | None, request_body: bytes, response: bytes) -> str:
    """The signed text: ``model:req:resp`` (NEAR) or ``req:resp`` when no model is given."""
    request_hash = hashlib.sha256(request_body).hexdigest()
    response_hash = hashlib.sha256(response).hexdigest()
    if upstream_model is None:
        return f"{request_hash}:{response_hash}"
    return f"{upstream_model}:{request_hash}:{response_hash}"


def eip55(address: bytes) -> str:
    """EIP-55 mixed-case checksum encoding of a 20-byte address."""
    lower = address.hex()
    hashed = keccak256(lower.encode()).hex()
    return "0x" + "".join(
        char.upper() if char.isalpha() and int(hashed[i], 16) >= 8 else char
        for i, char in enumerate(lower)
    )
