"""NVIDIA NRAS v3 answers: verify the ES384 JWTs offline against a JWKS the caller fetched.

Wire format (``POST /v3/attest/gpu`` answer; docs/protocol.md#nras)::

    [["JWT", "<overall token>"], {"GPU-0": "<token>", "GPU-1": "<token>", ...}]

Each token is a compact JWS: ``b64url(header) "." b64url(payload) "." b64url(r || s)`` with
header ``{"kid", "alg": "ES384"}`` and r, s 48-byte big-endian integers on P-384 (converted to
DER for ``cryptography``). The JWKS (``/.well-known/jwks.json``) is ``{"keys": [{"kty": "EC",
"crv": "P-384", "kid", "x", "y", "x5c": [leaf, intermediate]}]}``. Every key must come with an
``x5c`` chain that reaches NVIDIA's attestation PKI: each certificate valid at ``now`` and
signed by the next (each issuer a CA), and the chain ending in a pinned anchor (a certificate of
the chain equal to one, or the last one directly issued by one). The anchors ship as package
data (``data/nvidia_nras_anchors.pem``: NVIDIA's "NVIDIA Attestation Service GPU Intermediate
004", issued by "NVIDIA Attestation Service CA 001"; see ``data/README.md`` for why the root
itself is not pinned). The leaf must carry the same key as ``x``/``y`` when both are given.

Claims required of every token: ``iss`` is the NRAS issuer, ``exp`` is present and not passed,
``nbf``/``iat`` not in the future (``leeway_s`` either way), ``eat_nonce`` equals our nonce
(hex, case-insensitive). The overall token must also say ``x-nvidia-overall-att-result: true``
and list in ``submods`` exactly the GPU names returned, each as ``["DIGEST", ["SHA-256",
sha256(gpu token text)]]``, which ties the per-GPU tokens to it. Each GPU token must report
``measres: "success"``, ``dbgstat: "disabled"``, ``secboot: true`` and every claim in
:data:`GPU_TRUE_CLAIMS` as ``true`` (report parsed, signed, chained, nonce-matched; driver and
VBIOS reference measurements fetched, signed, validated and matched).

Failures raise :class:`AttestationError` with one of the :data:`NRAS_CODES`.

Deliberately NOT checked: revocation of the NRAS signing certificates (NVIDIA's OCSP and CRL
endpoints would be I/O; the leaves live two days), revocation of the GPU certificates
beyond what NRAS itself reports, the ``x-nvidia-attestation-warning`` text, and the ``ueid``
device ids. No I/O here: the caller posts the evidence and fetches the JWKS.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from proxy.core.errors import AttestationError

NRAS_ISSUER: Final = "https://nras.attestation.nvidia.com"
DEFAULT_LEEWAY_S: Final = 60
ES384_COORDINATE_BYTES: Final = 48

NRAS_RESPONSE_INVALID: Final = "nras_response_invalid"
NRAS_JWT_MALFORMED: Final = "nras_jwt_malformed"
NRAS_ALGORITHM_UNSUPPORTED: Final = "nras_algorithm_unsupported"
NRAS_JWKS_INVALID: Final = "nras_jwks_invalid"
NRAS_KEY_UNKNOWN: Final = "nras_key_unknown"
NRAS_KEY_NOT_VALID: Final = "nras_key_not_valid"
NRAS_SIGNATURE_INVALID: Final = "nras_signature_invalid"
NRAS_ISSUER_MISMATCH: Final = "nras_issuer_mismatch"
NRAS_JWT_EXPIRED: Final = "nras_jwt_expired"
NRAS_JWT_NOT_YET_VALID: Final = "nras_jwt_not_yet_valid"
NRAS_NONCE_MISMATCH: Final = "nras_nonce_mismatch"
NRAS_OVERALL_RESULT_FALSE: Final = "nras_overall_result_false"
NRAS_SUBMODS_MISMATCH: Final = "nras_submods_mismatch"
NRAS_GPU_FAILED: Final = "nras_gpu_failed"
NRAS_CHAIN_UNTRUSTED: Final = "nras_chain_untrusted"
ANCHORS_FILE: Final = "nvidia_nras_anchors.pem"

NRAS_CODES: Final = (
    NRAS_RESPONSE_INVALID,
    NRAS_JWT_MALFORMED,
    NRAS_ALGORITHM_UNSUPPORTED,
    NRAS_JWKS_INVALID,
    NRAS_KEY_UNKNOWN,
    NRAS_KEY_NOT_VALID,
    NRAS_SIGNATURE_INVALID,
    NRAS_ISSUER_MISMATCH,
    NRAS_JWT_EXPIRED,
    NRAS_JWT_NOT_YET_VALID,
    NRAS_NONCE_MISMATCH,
    NRAS_OVERALL_RESULT_FALSE,
    NRAS_SUBMODS_MISMATCH,
    NRAS_GPU_FAILED,
    NRAS_CHAIN_UNTRUSTED,
)

GPU_TRUE_CLAIMS: Final = (
    "x-nvidia-gpu-arch-check",
    "x-nvidia-gpu-attestation-report-parsed",
    "x-nvidia-gpu-attestation-report-nonce-match",
    "x-nvidia-gpu-attestation-report-signature-verified",
    "x-nvidia-gpu-attestation-report-cert-chain-validated",
    "x-nvidia-gpu-driver-rim-fetched",
    "x-nvidia-gpu-driver-rim-schema-validated",
    "x-nvidia-gpu-driver-rim-signature-verified",
    "x-nvidia-gpu-driver-rim-cert-validated",
    "x-nvidia-gpu-driver-rim-measurements-available",
    "x-nvidia-gpu-vbios-rim-fetched",
    "x-nvidia-gpu-vbios-rim-schema-validated",
    "x-nvidia-gpu-vbios-rim-signature-verified",
    "x-nvidia-gpu-vbios-rim-cert-validated",
    "x-nvidia-gpu-vbios-rim-measurements-available",
    "x-nvidia-gpu-vbios-index-no-conflict",
)
_GPU_EQUAL_CLAIMS: Final = (("measres", "success"), ("dbgstat", "disabled"), ("secboot", True))
_B64URL_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@dataclass(frozen=True, slots=True)
class NrasEvidence:
    """What the caller fetched for ``gpu_nras``: the NRAS answer and NVIDIA's JWKS."""

    response: Any = field(repr=False)
    jwks: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True, slots=True)
class NrasGpu:
    """One GPU's verified verdict."""

    name: str
    hwmodel: str | None
    driver_version: str | None
    vbios_version: str | None


@dataclass(frozen=True, slots=True)
class NrasResult:
    """A verified NRAS answer: every token signed, fresh, bound to our nonce and successful."""

    overall_result: bool
    nonce: str
    issued_at: int | None
    expires_at: int
    key_ids: tuple[str, ...]
    gpus: tuple[NrasGpu, ...]


@dataclass(frozen=True, slots=True)
class _Token:
    name: str
    text: str
    kid: str
    claims: Mapping[str, Any]


def _fail(code: str, message: str) -> AttestationError:
    return AttestationError(f"NRAS: {message}", code=code)


@cache
def pinned_anchors() -> tuple[x509.Certificate, ...]:
    """NVIDIA's NRAS trust anchors shipped with the package."""
    pem = resources.files("proxy.attestation.data").joinpath(ANCHORS_FILE).read_bytes()
    return tuple(x509.load_pem_x509_certificates(pem))


def _valid_at(cert: x509.Certificate, now: int, leeway_s: int) -> bool:
    not_before = int(cert.not_valid_before_utc.timestamp())
    not_after = int(cert.not_valid_after_utc.timestamp())
    return not_before - leeway_s <= now <= not_after + leeway_s


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def check_chain(
    chain: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    now: int,
    leeway_s: int,
    kid: str = "",
) -> None:
    """Raise unless ``chain`` (leaf first) is valid at ``now`` and reaches one of ``anchors``."""
    name = f"key {kid[:100]!r}: " if kid else ""
    for position, cert in enumerate(chain):
        if not _valid_at(cert, now, leeway_s):
            code = NRAS_KEY_NOT_VALID if position == 0 else NRAS_CHAIN_UNTRUSTED
            raise _fail(code, f"{name}certificate {position} of x5c is not valid at {now}")
    pinned = {anchor.public_bytes(serialization.Encoding.DER) for anchor in anchors}
    for position, cert in enumerate(chain):
        if cert.public_bytes(serialization.Encoding.DER) in pinned:
            return
        if position + 1 < len(chain):
            issuer = chain[position + 1]
            if not _is_ca(issuer) or not _issued_by(cert, issuer):
                raise _fail(
                    NRAS_CHAIN_UNTRUSTED,
                    f"{name}certificate {position} of x5c is not issued by certificate "
                    f"{position + 1}",
                )
    last = chain[-1]
    if any(
        _is_ca(anchor) and _valid_at(anchor, now, leeway_s) and _issued_by(last, anchor)
        for anchor in anchors
    ):
        return
    raise _fail(
        NRAS_CHAIN_UNTRUSTED,
        f"{name}the x5c chain (ending at {last.issuer.rfc4514_string()[:120]!r}) does not "
        "reach NVIDIA's pinned attestation anchor",
    )


def b64url_decode(text: str) -> bytes:
    """Unpadded base64url, strictly (no other characters, no padding)."""
    if not _B64URL_ALPHABET.issuperset(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def token_key_ids(answer: Any) -> frozenset[str]:
    """The ``kid`` in the header of every compact JWS anywhere in an NRAS answer (a token that
    cannot be read names none). Not a check: the client uses it to tell whether its cached JWKS
    can hold every key the answer names; :func:`verify_nras_response` judges the tokens."""
    kids: set[str] = set()
    pending = [answer]
    while pending:
        value = pending.pop()
        if isinstance(value, list | tuple):
            pending.extend(value)
        elif isinstance(value, Mapping):
            pending.extend(value.values())
        elif isinstance(value, str) and value.count(".") == 2:
            try:
                kid = json.loads(b64url_decode(value.split(".", 1)[0])).get("kid")
            except (ValueError, AttributeError, RecursionError):
                continue
            if isinstance(kid, str):
                kids.add(kid)
    return frozenset(kids)


def jwks_key_ids(jwks: Mapping[str, Any]) -> frozenset[str]:
    """The ``kid`` of every key of a JWKS that has one (a key without one is not counted)."""
    keys = jwks.get("keys")
    if not isinstance(keys, list):
        return frozenset()
    return frozenset(
        key["kid"] for key in keys if isinstance(key, Mapping) and isinstance(key.get("kid"), str)
    )


def _json_part(text: str, name: str, what: str) -> Mapping[str, Any]:
    try:
        value = json.loads(b64url_decode(text))
    except (ValueError, binascii.Error) as exc:
        raise _fail(NRAS_JWT_MALFORMED, f"{name}: the {what} is not base64url JSON") from exc
    if not isinstance(value, Mapping):
        raise _fail(NRAS_JWT_MALFORMED, f"{name}: the {what} is not a JSON object")
    return value


def _public_key(
    jwks: Mapping[str, Any],
    kid: str,
    now: int,
    leeway_s: int,
    anchors: Sequence[x509.Certificate],
) -> ec.EllipticCurvePublicKey:
    keys = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(keys, list):
        raise _fail(NRAS_JWKS_INVALID, "the JWKS has no keys list")
    matches = [key for key in keys if isinstance(key, Mapping) and key.get("kid") == kid]
    if not matches:
        raise _fail(NRAS_KEY_UNKNOWN, f"no JWKS key has kid {kid[:100]!r}")
    if len(matches) > 1:
        raise _fail(NRAS_JWKS_INVALID, f"the JWKS has {len(matches)} keys with kid {kid[:100]!r}")
    jwk = matches[0]
    if jwk.get("kty") != "EC" or jwk.get("crv") != "P-384":
        raise _fail(NRAS_JWKS_INVALID, f"JWKS key {kid[:100]!r} is not an EC P-384 key")
    from_xy = _key_from_xy(jwk, kid)
    from_cert = _key_from_x5c(jwk, kid, now, leeway_s, anchors)
    if from_cert is None:
        raise _fail(
            NRAS_CHAIN_UNTRUSTED,
            f"JWKS key {kid[:100]!r} has no x5c chain to NVIDIA's attestation anchor",
        )
    if from_xy is not None and from_cert is not None and from_xy != from_cert:
        raise _fail(NRAS_JWKS_INVALID, f"JWKS key {kid[:100]!r}: x/y differ from its x5c leaf")
    key = from_xy if from_xy is not None else from_cert
    assert key is not None
    return key


def _key_from_xy(jwk: Mapping[str, Any], kid: str) -> ec.EllipticCurvePublicKey | None:
    x, y = jwk.get("x"), jwk.get("y")
    if x is None and y is None:
        return None
    try:
        if not isinstance(x, str) or not isinstance(y, str):
            raise ValueError("x/y are not strings")
        x_bytes, y_bytes = b64url_decode(x), b64url_decode(y)
        if len(x_bytes) != ES384_COORDINATE_BYTES or len(y_bytes) != ES384_COORDINATE_BYTES:
            raise ValueError("x/y are not 48 bytes")
        numbers = ec.EllipticCurvePublicNumbers(
            int.from_bytes(x_bytes, "big"), int.from_bytes(y_bytes, "big"), ec.SECP384R1()
        )
        return numbers.public_key()
    except (ValueError, binascii.Error) as exc:
        raise _fail(NRAS_JWKS_INVALID, f"JWKS key {kid[:100]!r}: bad x/y") from exc


def _key_from_x5c(
    jwk: Mapping[str, Any],
    kid: str,
    now: int,
    leeway_s: int,
    anchors: Sequence[x509.Certificate],
) -> ec.EllipticCurvePublicKey | None:
    chain = jwk.get("x5c")
    if chain is None:
        return None
    try:
        if not isinstance(chain, list) or not chain or len(chain) > 8:
            raise ValueError("x5c is not a list of base64 certificates")
        certs = [
            x509.load_der_x509_certificate(base64.b64decode(text, validate=True))
            for text in chain
            if isinstance(text, str)
        ]
        if len(certs) != len(chain):
            raise ValueError("x5c holds a non-string")
    except (ValueError, binascii.Error) as exc:
        raise _fail(NRAS_JWKS_INVALID, f"JWKS key {kid[:100]!r}: bad x5c") from exc
    leaf = certs[0]
    if not _valid_at(leaf, now, leeway_s):
        not_before = int(leaf.not_valid_before_utc.timestamp())
        not_after = int(leaf.not_valid_after_utc.timestamp())
        raise _fail(
            NRAS_KEY_NOT_VALID,
            f"the certificate of key {kid[:100]!r} is valid {not_before}..{not_after}, now {now}",
        )
    check_chain(certs, anchors, now, leeway_s, kid)
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise _fail(NRAS_JWKS_INVALID, f"JWKS key {kid[:100]!r}: the x5c leaf is not P-384")
    return key


_KeyCache = dict[str, ec.EllipticCurvePublicKey]


def _verified_token(
    name: str,
    text: Any,
    jwks: Mapping[str, Any],
    now: int,
    leeway_s: int,
    keys: _KeyCache,
    anchors: Sequence[x509.Certificate],
) -> _Token:
    if not isinstance(text, str) or text.count(".") != 2:
        raise _fail(NRAS_JWT_MALFORMED, f"{name} is not a compact JWS")
    header_text, payload_text, signature_text = text.split(".")
    header = _json_part(header_text, name, "header")
    if header.get("alg") != "ES384":
        raise _fail(NRAS_ALGORITHM_UNSUPPORTED, f"{name}: alg {str(header.get('alg'))[:20]!r}")
    if "crit" in header:
        raise _fail(NRAS_ALGORITHM_UNSUPPORTED, f"{name}: critical header extensions")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise _fail(NRAS_JWT_MALFORMED, f"{name}: the header has no kid")
    try:
        raw_signature = b64url_decode(signature_text)
    except (ValueError, binascii.Error) as exc:
        raise _fail(NRAS_JWT_MALFORMED, f"{name}: the signature is not base64url") from exc
    if len(raw_signature) != 2 * ES384_COORDINATE_BYTES:
        raise _fail(NRAS_SIGNATURE_INVALID, f"{name}: the signature is not 96 bytes")
    r = int.from_bytes(raw_signature[:ES384_COORDINATE_BYTES], "big")
    s = int.from_bytes(raw_signature[ES384_COORDINATE_BYTES:], "big")
    # All tokens of one answer usually share a kid: build (and check) its key once.
    key = keys.get(kid)
    if key is None:
        key = keys[kid] = _public_key(jwks, kid, now, leeway_s, anchors)
    signed = f"{header_text}.{payload_text}".encode("ascii")
    try:
        key.verify(encode_dss_signature(r, s), signed, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature as exc:
        raise _fail(NRAS_SIGNATURE_INVALID, f"{name}: the ES384 signature does not verify") from exc
    claims = _json_part(payload_text, name, "payload")
    return _Token(name=name, text=text, kid=kid, claims=claims)


def _int_claim(token: _Token, claim: str, *, required: bool) -> int | None:
    value = token.claims.get(claim)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(NRAS_JWT_MALFORMED, f"{token.name}: {claim} is not a number")
    return int(value)


def _check_common(token: _Token, nonce_hex: str, now: int, issuer: str, leeway_s: int) -> int:
    """iss, time and nonce of one token; returns its exp."""
    iss = token.claims.get("iss")
    if iss != issuer:
        raise _fail(
            NRAS_ISSUER_MISMATCH, f"{token.name}: iss {str(iss)[:80]!r}, expected {issuer!r}"
        )
    exp = _int_claim(token, "exp", required=True)
    assert exp is not None
    if now > exp + leeway_s:
        raise _fail(NRAS_JWT_EXPIRED, f"{token.name}: expired at {exp}, now {now}")
    for claim in ("nbf", "iat"):
        moment = _int_claim(token, claim, required=False)
        if moment is not None and moment > now + leeway_s:
            raise _fail(NRAS_JWT_NOT_YET_VALID, f"{token.name}: {claim} {moment} > now {now}")
    eat_nonce = token.claims.get("eat_nonce")
    if not isinstance(eat_nonce, str) or eat_nonce.strip().lower() != nonce_hex:
        shown = eat_nonce[:80] if isinstance(eat_nonce, str) else "missing"
        raise _fail(NRAS_NONCE_MISMATCH, f"{token.name}: eat_nonce {shown!r}, sent {nonce_hex}")
    return exp


def _split_response(response: Any) -> tuple[Any, Mapping[str, Any]]:
    if not isinstance(response, list | tuple) or len(response) != 2:
        raise _fail(NRAS_RESPONSE_INVALID, 'the answer is not [["JWT", token], {gpu: token}]')
    overall, gpus = response
    if (
        not isinstance(overall, list | tuple)
        or len(overall) != 2
        or str(overall[0]).upper() != "JWT"
    ):
        raise _fail(NRAS_RESPONSE_INVALID, 'the first element is not ["JWT", token]')
    if not isinstance(gpus, Mapping) or not gpus:
        raise _fail(NRAS_RESPONSE_INVALID, "the second element is not a non-empty GPU map")
    return overall[1], gpus


def _gpu_text(value: Any) -> Any:
    # Tolerate a per-GPU ["JWT", token] pair, the overall token's own shape.
    if isinstance(value, list | tuple) and len(value) == 2 and str(value[0]).upper() == "JWT":
        return value[1]
    return value


def _is_digest_entry(entry: Any, digest_hex: str) -> bool:
    """``["DIGEST", ["SHA-256", <hex>]]`` naming ``digest_hex``."""
    if not isinstance(entry, list) or len(entry) != 2 or entry[0] != "DIGEST":
        return False
    inner = entry[1]
    return (
        isinstance(inner, list)
        and len(inner) == 2
        and inner[0] == "SHA-256"
        and isinstance(inner[1], str)
        and inner[1].lower() == digest_hex
    )


def _check_submods(overall: _Token, gpu_tokens: list[_Token]) -> None:
    submods = overall.claims.get("submods")
    if not isinstance(submods, Mapping):
        raise _fail(NRAS_SUBMODS_MISMATCH, "the overall token has no submods")
    names = {token.name for token in gpu_tokens}
    if set(submods) != names:
        raise _fail(
            NRAS_SUBMODS_MISMATCH,
            f"submods list {len(submods)} GPUs, the answer carries {len(names)}",
        )
    for token in gpu_tokens:
        digest = hashlib.sha256(token.text.encode("ascii")).hexdigest()
        if not _is_digest_entry(submods[token.name], digest):
            raise _fail(NRAS_SUBMODS_MISMATCH, f"submods digest of {token.name} does not match")


def _check_gpu(token: _Token) -> NrasGpu:
    claims = token.claims
    failing = [claim for claim in GPU_TRUE_CLAIMS if claims.get(claim) is not True]
    failing += [claim for claim, wanted in _GPU_EQUAL_CLAIMS if claims.get(claim) != wanted]
    if failing:
        shown = ", ".join(failing[:4]) + (f" (+{len(failing) - 4})" if len(failing) > 4 else "")
        raise _fail(NRAS_GPU_FAILED, f"{token.name}: not successful: {shown}")

    def text(claim: str) -> str | None:
        value = claims.get(claim)
        return value[:80] if isinstance(value, str) else None

    return NrasGpu(
        name=token.name,
        hwmodel=text("hwmodel"),
        driver_version=text("x-nvidia-gpu-driver-version"),
        vbios_version=text("x-nvidia-gpu-vbios-version"),
    )


def verify_nras_response(
    response: Any,
    jwks: Mapping[str, Any],
    *,
    nonce: bytes,
    now: int,
    issuer: str = NRAS_ISSUER,
    leeway_s: int = DEFAULT_LEEWAY_S,
    anchors: Sequence[x509.Certificate] | None = None,
) -> NrasResult:
    """Verify an NRAS v3 answer for ``nonce`` at unix time ``now``; raise on any failure.

    ``anchors``: the certificates the signing keys' x5c chains must reach (default: NVIDIA's,
    shipped as package data).
    """
    trusted = pinned_anchors() if anchors is None else tuple(anchors)
    nonce_hex = nonce.hex()
    overall_text, gpu_texts = _split_response(response)
    keys: _KeyCache = {}
    overall = _verified_token("overall token", overall_text, jwks, now, leeway_s, keys, trusted)
    exp = _check_common(overall, nonce_hex, now, issuer, leeway_s)
    if overall.claims.get("x-nvidia-overall-att-result") is not True:
        raise _fail(NRAS_OVERALL_RESULT_FALSE, "x-nvidia-overall-att-result is not true")
    gpu_tokens: list[_Token] = []
    for name, value in gpu_texts.items():
        if not isinstance(name, str) or not name or len(name) > 64:
            raise _fail(NRAS_RESPONSE_INVALID, "a GPU name is not a short string")
        token = _verified_token(name, _gpu_text(value), jwks, now, leeway_s, keys, trusted)
        exp = min(exp, _check_common(token, nonce_hex, now, issuer, leeway_s))
        gpu_tokens.append(token)
    _check_submods(overall, gpu_tokens)
    gpus = tuple(_check_gpu(token) for token in gpu_tokens)
    return NrasResult(
        overall_result=True,
        nonce=nonce_hex,
        issued_at=_int_claim(overall, "iat", required=False),
        expires_at=exp,
        key_ids=tuple(dict.fromkeys([overall.kid, *(token.kid for token in gpu_tokens)])),
        gpus=gpus,
    )
