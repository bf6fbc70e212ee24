"""Venice E2EE crypto: secp256k1 ECDH, HKDF-SHA256, AES-256-GCM. Pure and synchronous.

Wire format of one encrypted field (docs/protocol.md#crypto)::

    hex_lower( ephemeral_pub_uncompressed(65: 04||X||Y) || gcm_nonce(12) || ciphertext || tag(16) )

- The shared secret is the raw 32-byte big-endian x-coordinate of ``priv * Pub``, *not* hashed.
  coincurve's ``PrivateKey.ecdh()`` returns sha256 of the compressed point, which is wrong here;
  we multiply the peer point and slice x instead (pinned by the known-answer tests).
- AES key = HKDF-SHA256(salt=None, ikm=x, info=b"ecdsa_encryption", length=32).
- AES-256-GCM with no associated data; the 16-byte tag is appended to the ciphertext.
- The smallest blob (the encryption of ``""``) is 93 bytes, 186 hex characters.

Decryption failures raise :class:`DecryptionError` with no detail (like ``InvalidTag``): the
caller learns only that the blob did not open.

Deliberately not done here: key storage, logging, any I/O. Key material lives in the caller's
per-request objects and is dropped with them; the one exception is :class:`FreshKeys`, key
pairs made ahead of need and each handed out once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from coincurve import PrivateKey, PublicKey
from Crypto.Hash import keccak
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from proxy.core.errors import DecryptionError, InvalidPublicKeyError

HKDF_INFO = b"ecdsa_encryption"
PUBLIC_KEY_BYTES = 65
PRIVATE_KEY_BYTES = 32
GCM_NONCE_BYTES = 12
GCM_TAG_BYTES = 16
MIN_BLOB_BYTES = PUBLIC_KEY_BYTES + GCM_NONCE_BYTES + GCM_TAG_BYTES
MIN_BLOB_HEX = 2 * MIN_BLOB_BYTES
ADDRESS_BYTES = 20

_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A secp256k1 key pair: 32-byte secret and 65-byte uncompressed public key."""

    private: bytes = field(repr=False)
    public: bytes

    @property
    def public_hex(self) -> str:
        """The public key as 130 lowercase hex characters starting with ``04``."""
        return self.public.hex()


def generate_keypair() -> KeyPair:
    """A fresh random key pair (one per request; never stored at module level)."""
    secret = PrivateKey()
    return KeyPair(private=secret.secret, public=secret.public_key.format(compressed=False))


def keypair_from_private(private: bytes) -> KeyPair:
    """The key pair for a known 32-byte secret (tests, simulator)."""
    secret = PrivateKey(private)
    return KeyPair(private=secret.secret, public=secret.public_key.format(compressed=False))


def parse_public_key(key: bytes | str) -> bytes:
    """Validate a secp256k1 public key and return it as 65 uncompressed bytes.

    Accepts raw bytes or hex (either case, optional ``0x``) in three encodings: 65 bytes
    ``04||X||Y``, 64 bytes ``X||Y`` (what NEAR's inference-proxy emits), or 33 compressed bytes.
    Raises :class:`InvalidPublicKeyError` when it is not a point on the curve.
    """
    raw: bytes
    if isinstance(key, str):
        text = key[2:] if key[:2] in ("0x", "0X") else key
        try:
            raw = bytes.fromhex(text)
        except ValueError as exc:
            raise InvalidPublicKeyError("public key is not valid hex") from exc
    else:
        raw = key
    if len(raw) == 64:
        raw = b"\x04" + raw
    if len(raw) not in (33, 65):
        raise InvalidPublicKeyError(f"public key must be 33, 64 or 65 bytes, got {len(raw)}")
    try:
        return PublicKey(raw).format(compressed=False)
    except ValueError as exc:
        raise InvalidPublicKeyError("public key is not a point on secp256k1") from exc


def shared_x(private: bytes, peer_public: bytes) -> bytes:
    """ECDH: the raw 32-byte x-coordinate of ``private * peer_public``."""
    point = PublicKey(peer_public).multiply(private)
    return point.format(compressed=False)[1:33]


def derive_aes_key(shared: bytes) -> bytes:
    """HKDF-SHA256 with no salt and info ``ecdsa_encryption``: the 32-byte AES key."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HKDF_INFO).derive(shared)


def aes_key_for(private: bytes, peer_public: bytes) -> bytes:
    """The AES key two parties share: ``HKDF(x(private * peer_public))``."""
    return derive_aes_key(shared_x(private, peer_public))


def seal(
    recipient_public: bytes,
    plaintext: bytes,
    *,
    ephemeral_private: bytes | None = None,
    gcm_nonce: bytes | None = None,
    ephemeral: KeyPair | None = None,
) -> bytes:
    """Encrypt ``plaintext`` to ``recipient_public``; returns the binary blob.

    A fresh ephemeral key and GCM nonce are drawn unless given: ``ephemeral`` is a fresh pair
    made ahead (:class:`FreshKeys`, used once); ``ephemeral_private`` and ``gcm_nonce`` are
    given only by known-answer tests and by the simulator's Phala-legacy mode, which reuses one
    ephemeral per response.
    """
    if ephemeral is None:
        ephemeral = (
            keypair_from_private(ephemeral_private) if ephemeral_private else generate_keypair()
        )
    key = aes_key_for(ephemeral.private, recipient_public)
    return seal_with_key(key, ephemeral.public, plaintext, gcm_nonce=gcm_nonce)


def seal_with_key(
    aes_key: bytes, ephemeral_public: bytes, plaintext: bytes, *, gcm_nonce: bytes | None = None
) -> bytes:
    """The blob of ``plaintext`` under an AES key already derived from ``ephemeral_public``'s
    private half and the recipient's key (:func:`aes_key_for`): what a sender that reuses one
    ephemeral for many fields (Phala's legacy proxy) does per field. A fresh GCM nonce is drawn
    unless given; the caller must never seal twice under one key with the same nonce."""
    nonce = gcm_nonce if gcm_nonce is not None else os.urandom(GCM_NONCE_BYTES)
    if len(nonce) != GCM_NONCE_BYTES:
        raise ValueError("GCM nonce must be 12 bytes")
    return ephemeral_public + nonce + AESGCM(aes_key).encrypt(nonce, plaintext, None)


def seal_text(recipient_public: bytes, text: str, *, ephemeral: KeyPair | None = None) -> str:
    """Encrypt a UTF-8 string with a fresh ephemeral key (``ephemeral``: one made ahead, used
    once); returns the lowercase hex blob."""
    return seal(recipient_public, text.encode("utf-8"), ephemeral=ephemeral).hex()


class FreshKeys:
    """Fresh key pairs made ahead of need, each handed out once.

    Making a secp256k1 key pair is a scalar multiplication, about as costly as the ECDH that
    follows it, and an E2EE request needs one per request (the client key) and one per sealed
    message, all before its first token. :meth:`take` hands out a pair made earlier, or makes
    one on the spot when none is ready; the owner calls :meth:`make_one` while the process has
    nothing else to do, until :meth:`wanted` is false. A pair leaves the pool when taken and is
    never handed out again; at most ``capacity`` pairs wait, in this process's memory only.
    """

    __slots__ = ("_ready", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ready: list[KeyPair] = []

    def __repr__(self) -> str:
        return f"FreshKeys({len(self._ready)} of {self.capacity} ready)"

    def take(self) -> KeyPair:
        """A fresh key pair that no one else gets."""
        return self._ready.pop() if self._ready else generate_keypair()

    def wanted(self) -> bool:
        """Whether the pool has room for another pair."""
        return len(self._ready) < self.capacity

    def make_one(self) -> None:
        """Make one pair ahead, if there is room."""
        if self.wanted():
            self._ready.append(generate_keypair())


def split_blob(blob: bytes) -> tuple[bytes, bytes, bytes]:
    """Split a binary blob into (ephemeral public key, GCM nonce, ciphertext||tag)."""
    if len(blob) < MIN_BLOB_BYTES or blob[0] != 0x04:
        raise DecryptionError()
    return (
        blob[:PUBLIC_KEY_BYTES],
        blob[PUBLIC_KEY_BYTES : PUBLIC_KEY_BYTES + GCM_NONCE_BYTES],
        blob[PUBLIC_KEY_BYTES + GCM_NONCE_BYTES :],
    )


def open_with_key(aes_key: bytes, blob: bytes) -> bytes:
    """Decrypt a blob whose AES key the caller already derived (cached per ephemeral key)."""
    _, nonce, sealed = split_blob(blob)
    try:
        return AESGCM(aes_key).decrypt(nonce, sealed, None)
    except InvalidTag as exc:
        raise DecryptionError() from exc


def open_blob(recipient_private: bytes, blob: bytes) -> bytes:
    """Decrypt a binary blob with the recipient's secret. Raises :class:`DecryptionError`."""
    ephemeral_public, _, _ = split_blob(blob)
    try:
        key = aes_key_for(recipient_private, ephemeral_public)
    except ValueError as exc:
        raise DecryptionError() from exc
    return open_with_key(key, blob)


def decode_blob_hex(text: str) -> bytes:
    """Hex text to blob bytes, case-insensitive. Raises :class:`DecryptionError` if not hex."""
    try:
        return bytes.fromhex(text)
    except ValueError as exc:
        raise DecryptionError() from exc


def open_text(recipient_private: bytes, blob_hex: str) -> str:
    """Decrypt a hex blob to a UTF-8 string. Raises :class:`DecryptionError` on any failure."""
    plaintext = open_blob(recipient_private, decode_blob_hex(blob_hex))
    try:
        return plaintext.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecryptionError() from exc


def looks_like_ciphertext(text: str) -> bool:
    """True when ``text`` has the shape of a blob: >= 186 hex digits, even length, ``04`` first.

    A shape test only; it says nothing about whether the blob opens.
    """
    return (
        len(text) >= MIN_BLOB_HEX
        and len(text) % 2 == 0
        and text[:2] == "04"
        and _HEX_DIGITS.issuperset(text)
    )


def keccak256(data: bytes) -> bytes:
    """Ethereum's keccak256 (the pre-standard Keccak, not SHA3-256)."""
    return keccak.new(digest_bits=256, data=data).digest()


def address_of(public_key: bytes) -> bytes:
    """The 20-byte Ethereum address of a public key: ``keccak256(X||Y)[12:]``."""
    uncompressed = parse_public_key(public_key)
    return keccak256(uncompressed[1:])[12:]


def address_hex(public_key: bytes) -> str:
    """The address as ``0x`` + 40 lowercase hex characters."""
    return "0x" + address_of(public_key).hex()
