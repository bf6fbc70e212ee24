"""NRAS signing keys must chain to NVIDIA's pinned attestation anchor, not only carry a leaf."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

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
    assert info.value.message == (
        "NRAS: the x5c chain (ending at 'CN=NVIDIA Attestation Service CA 001,O=Test Only,C=US') "
        "does not reach NVIDIA's pinned attestation anchor"
    )


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
    ends_at = ca.subject.rfc4514_string()
    assert info.value.message == (
        f"NRAS: key 'k': the x5c chain (ending at {ends_at!r}) does not reach NVIDIA's pinned "
        "attestation anchor"
    )


# --- the chain rule link by link, under a local PKI (what mutation testing found unpinned) ----

NOW = IAT
DAY = 86_400


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _name(common_name: str, unit: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if unit is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    return x509.Name(attributes)


def _cert(
    key: ec.EllipticCurvePrivateKey,
    subject: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey | None = None,
    issuer: x509.Name | None = None,
    *,
    ca: bool | None = True,
    not_before: int = NOW - DAY,
    not_after: int = NOW + DAY,
) -> x509.Certificate:
    """A certificate for ``key``; self-signed unless an issuer is given; ``ca=None``: no
    BasicConstraints extension at all."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer if issuer is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.fromtimestamp(not_before, UTC))
        .not_valid_after(datetime.fromtimestamp(not_after, UTC))
    )
    if ca is not None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca, path_length=None), critical=True
        )
    return builder.sign(issuer_key if issuer_key is not None else key, hashes.SHA384())


class Pki:
    """root -> i1 -> i2 -> leaf; the root is the anchor and is not part of the chain."""

    def __init__(self) -> None:
        self.root_key, self.i1_key, self.i2_key, self.leaf_key = (_key() for _ in range(4))
        self.root = _cert(self.root_key, _name("Root"))
        self.i1 = _cert(self.i1_key, _name("I1"), self.root_key, _name("Root"))
        self.i2 = _cert(self.i2_key, _name("I2"), self.i1_key, _name("I1"))
        self.leaf = _cert(self.leaf_key, _name("Leaf"), self.i2_key, _name("I2"), ca=False)

    @property
    def chain(self) -> list[x509.Certificate]:
        return [self.leaf, self.i2, self.i1]


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def refusal(
    chain: list[x509.Certificate],
    anchors: list[x509.Certificate],
    leeway_s: int = 0,
    kid: str = "",
) -> tuple[str | None, str]:
    with pytest.raises(AttestationError) as info:
        check_chain(chain, anchors, NOW, leeway_s, kid)
    return info.value.code, info.value.message.removeprefix("NRAS: ")


def test_a_chain_whose_last_certificate_an_anchor_issued_verifies(pki: Pki) -> None:
    _, stranger = make_ca("Stranger")
    check_chain(pki.chain, [stranger, pki.root], NOW, 0)
    check_chain([pki.i1], [pki.root], NOW, 0)
    only_leaf = _cert(pki.leaf_key, _name("Leaf"), pki.root_key, _name("Root"), ca=False)
    check_chain([only_leaf], [pki.root], NOW, 0)


def test_every_link_must_be_issued_by_the_next_certificate(pki: Pki) -> None:
    forger = _key()
    forged_leaf = _cert(pki.leaf_key, _name("Leaf"), forger, _name("I2"), ca=False)
    assert refusal([forged_leaf, pki.i2, pki.i1], [pki.root]) == (
        "nras_chain_untrusted",
        "certificate 0 of x5c is not issued by certificate 1",
    )
    forged_i2 = _cert(pki.i2_key, _name("I2"), forger, _name("I1"))
    assert refusal([pki.leaf, forged_i2, pki.i1], [pki.root], kid="k") == (
        "nras_chain_untrusted",
        "key 'k': certificate 1 of x5c is not issued by certificate 2",
    )
    forged_under_root = _cert(pki.leaf_key, _name("Leaf"), forger, _name("I1"), ca=False)
    assert refusal([forged_under_root, pki.i1], [pki.root]) == (
        "nras_chain_untrusted",
        "certificate 0 of x5c is not issued by certificate 1",
    )


@pytest.mark.parametrize("ca", [False, None], ids=["ca-false", "no-basic-constraints"])
def test_an_issuer_in_the_chain_must_be_a_ca(pki: Pki, ca: bool | None) -> None:
    middle_key = _key()
    middle = _cert(middle_key, _name("Middle"), pki.root_key, _name("Root"), ca=ca)
    leaf = _cert(pki.leaf_key, _name("Leaf"), middle_key, _name("Middle"), ca=False)
    assert refusal([leaf, middle], [pki.root]) == (
        "nras_chain_untrusted",
        "certificate 0 of x5c is not issued by certificate 1",
    )
    # Even when that non-CA is itself pinned: the link below it is checked first.
    assert refusal([leaf, middle], [middle])[1] == (
        "certificate 0 of x5c is not issued by certificate 1"
    )


@pytest.mark.parametrize("ca", [False, None], ids=["ca-false", "no-basic-constraints"])
def test_an_anchor_that_is_not_a_ca_issues_nothing(pki: Pki, ca: bool | None) -> None:
    anchor_key = _key()
    anchor = _cert(anchor_key, _name("Anchor"), ca=ca)
    leaf = _cert(pki.leaf_key, _name("Leaf"), anchor_key, _name("Anchor"), ca=False)
    assert refusal([leaf], [anchor]) == (
        "nras_chain_untrusted",
        "the x5c chain (ending at 'CN=Anchor') does not reach NVIDIA's pinned attestation anchor",
    )


def test_an_anchor_issues_only_while_it_is_valid_give_or_take_the_leeway(pki: Pki) -> None:
    anchor = _cert(pki.root_key, _name("Root"), not_before=NOW - DAY, not_after=NOW - 60)
    check_chain([pki.i1], [anchor], NOW, 60)
    assert refusal([pki.i1], [anchor], leeway_s=59)[0] == "nras_chain_untrusted"
    later = _cert(pki.root_key, _name("Root"), not_before=NOW + 60, not_after=NOW + DAY)
    check_chain([pki.i1], [later], NOW, 60)
    assert refusal([pki.i1], [later], leeway_s=59)[0] == "nras_chain_untrusted"


def test_an_expired_leaf_is_key_not_valid_and_an_expired_issuer_untrusted(pki: Pki) -> None:
    before, after = NOW - 3 * DAY, NOW - 2 * DAY
    stale_leaf = _cert(
        pki.leaf_key,
        _name("Leaf"),
        pki.i2_key,
        _name("I2"),
        ca=False,
        not_before=before,
        not_after=after,
    )
    assert refusal([stale_leaf, pki.i2, pki.i1], [pki.root], kid="k") == (
        "nras_key_not_valid",
        f"key 'k': certificate 0 of x5c is not valid at {NOW}",
    )
    stale_i2 = _cert(
        pki.i2_key, _name("I2"), pki.i1_key, _name("I1"), not_before=before, not_after=after
    )
    assert refusal([pki.leaf, stale_i2, pki.i1], [pki.root]) == (
        "nras_chain_untrusted",
        f"certificate 1 of x5c is not valid at {NOW}",
    )


def test_a_refusal_names_the_key_cut_to_100_characters(pki: Pki) -> None:
    kid = "k" * 150
    _, message = refusal([pki.leaf], [pki.root], kid=kid)
    assert message.startswith(f"key {kid[:100]!r}: the x5c chain (ending at 'CN=I2')")


def test_a_refusal_names_the_issuer_of_the_last_certificate_cut_to_120_characters() -> None:
    long_name = _name("C" * 64, unit="U" * 64)
    ca_key = _key()
    leaf = _cert(_key(), _name("Leaf"), ca_key, long_name, ca=False)
    shown = long_name.rfc4514_string()
    assert len(shown) > 121
    assert refusal([leaf], list(pinned_anchors())) == (
        "nras_chain_untrusted",
        f"the x5c chain (ending at {shown[:120]!r}) does not reach NVIDIA's pinned attestation "
        "anchor",
    )
