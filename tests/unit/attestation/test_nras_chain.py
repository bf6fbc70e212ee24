"""NRAS signing keys must chain to NVIDIA's pinned attestation anchor, not only carry a leaf."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from proxy.attestation import verify_nras_response
from proxy.attestation.nras import (
    GPU_TRUE_CLAIMS,
    NRAS_ISSUER,
    check_chain,
    pinned_anchors,
)
from proxy.core.errors import AttestationError
from tests.support.attestation_helpers import load_json
from tests.support.x509_helpers import der_b64, issue, make_ca

NONCE = bytes.fromhex("ac82eb750ec4cfbb273f90d33567776bfae8657e2a43f6dff2f3adad9b86095a")
IAT = 1776995913


def _real_chain() -> list[x509.Certificate]:
    jwks = load_json("venice_qwen3_5_122b_20260424_nras_jwks.json")
    return [x509.load_der_x509_certificate(base64.b64decode(c)) for c in jwks["keys"][0]["x5c"]]


def test_the_pinned_anchor_is_nvidias_gpu_intermediate_issued_by_its_attestation_ca() -> None:
    (anchor,) = pinned_anchors()
    assert "NVIDIA Attestation Service GPU Intermediate 004" in anchor.subject.rfc4514_string()
    assert "NVIDIA Attestation Service CA 001" in anchor.issuer.rfc4514_string()
    der = anchor.public_bytes(serialization.Encoding.DER)
    # The digest other verifiers pin for the same certificate.
    assert hashlib.sha256(der).hexdigest() == (
        "2df8907cf4d6c277b855d407ec178a649930a8e73f7294e8fce66e6ee27c5175"
    )


def test_every_key_of_the_real_jwks_chains_to_the_anchor() -> None:
    jwks = load_json("venice_qwen3_5_122b_20260424_nras_jwks.json")
    for key in jwks["keys"]:
        chain = [x509.load_der_x509_certificate(base64.b64decode(c)) for c in key["x5c"]]
        leaf_start = int(chain[0].not_valid_before_utc.timestamp())
        check_chain(chain, pinned_anchors(), leaf_start + 60, 60)


def test_a_chain_to_another_root_fails() -> None:
    ca_key, ca = make_ca("NVIDIA Attestation Service CA 001")  # the right name, the wrong key
    leaf_key = ec.generate_private_key(ec.SECP384R1())
    chain = [issue(ca_key, ca, leaf_key.public_key(), "NVIDIA Attestation Service GPU GH100"), ca]
    with pytest.raises(AttestationError) as info:
        check_chain(chain, pinned_anchors(), IAT, 60)
    assert info.value.code == "nras_chain_untrusted"
    assert "does not reach NVIDIA's pinned attestation anchor" in info.value.message


def test_a_real_leaf_under_a_foreign_intermediate_fails() -> None:
    leaf = _real_chain()[0]
    _, foreign = make_ca("NVIDIA Attestation Service GPU Intermediate 004")
    with pytest.raises(AttestationError) as info:
        check_chain(
            [leaf, foreign], pinned_anchors(), int(leaf.not_valid_before_utc.timestamp()), 0
        )
    assert info.value.code == "nras_chain_untrusted"


def test_the_anchor_is_not_trusted_after_it_expires() -> None:
    chain = _real_chain()
    after = int(chain[1].not_valid_after_utc.timestamp()) + 86_400
    with pytest.raises(AttestationError) as info:
        check_chain(chain, pinned_anchors(), after, 60)
    assert info.value.code in {"nras_key_not_valid", "nras_chain_untrusted"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _token(key: ec.EllipticCurvePrivateKey, claims: dict[str, Any]) -> str:
    header = _b64(json.dumps({"kid": "k", "alg": "ES384"}).encode())
    payload = _b64(json.dumps(claims).encode())
    r, s = decode_dss_signature(key.sign(f"{header}.{payload}".encode(), ec.ECDSA(hashes.SHA384())))
    return f"{header}.{payload}.{_b64(r.to_bytes(48, 'big') + s.to_bytes(48, 'big'))}"


def test_a_complete_nras_answer_signed_under_a_wrong_root_is_refused() -> None:
    ca_key, ca = make_ca("Wrong Root")
    key = ec.generate_private_key(ec.SECP384R1())
    jwks = {
        "keys": [
            {
                "kty": "EC",
                "crv": "P-384",
                "kid": "k",
                "x5c": [der_b64(issue(ca_key, ca, key.public_key(), "signer")), der_b64(ca)],
            }
        ]
    }
    common = {"iss": NRAS_ISSUER, "iat": IAT, "exp": IAT + 3600, "eat_nonce": NONCE.hex()}
    gpu = _token(
        key,
        common
        | dict.fromkeys(GPU_TRUE_CLAIMS, True)
        | {"measres": "success", "dbgstat": "disabled", "secboot": True},
    )
    submods = {"GPU-0": ["DIGEST", ["SHA-256", hashlib.sha256(gpu.encode()).hexdigest()]]}
    overall = _token(key, common | {"x-nvidia-overall-att-result": True, "submods": submods})
    answer = [["JWT", overall], {"GPU-0": gpu}]
    # Trusting the wrong root, it verifies: the answer is well formed.
    assert verify_nras_response(answer, jwks, nonce=NONCE, now=IAT, anchors=[ca]).gpus
    with pytest.raises(AttestationError) as info:
        verify_nras_response(answer, jwks, nonce=NONCE, now=IAT)
    assert info.value.code == "nras_chain_untrusted"
