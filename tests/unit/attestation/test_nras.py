"""NRAS JWT verification: the real captured answer + JWKS, tampered copies, and signed fakes."""

from __future__ import annotations

import base64
import copy
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

import proxy.attestation.nras as nras_module
from proxy.attestation import (
    NRAS_CODES,
    AttestationPolicy,
    NrasEvidence,
    NrasResult,
    parse_attestation,
    verify_evidence,
    verify_nras_response,
)
from proxy.attestation.nras import (
    GPU_TRUE_CLAIMS,
    NRAS_ISSUER,
    b64url_decode,
    jwks_key_ids,
    pinned_anchors,
    token_key_ids,
)
from proxy.core.crypto import keypair_from_private
from proxy.core.errors import AttestationError
from tests.support.attestation_helpers import (
    FIXTURES_BY_NAME,
    body_of,
    collateral_of,
    gpu_entry,
    load_json,
    nonce_of,
    synthetic_body,
    time_of,
)
from tests.support.x509_helpers import der_b64, issue, make_ca

QWEN = FIXTURES_BY_NAME["venice_qwen3_5_122b"]
NONCE = bytes.fromhex("ac82eb750ec4cfbb273f90d33567776bfae8657e2a43f6dff2f3adad9b86095a")
IAT = 1776995913
EXP = 1776999513
DAY = 86_400
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def answer() -> Any:
    return load_json("venice_qwen3_5_122b_20260424_nras_response.json")


def jwks() -> dict[str, Any]:
    keys: dict[str, Any] = load_json("venice_qwen3_5_122b_20260424_nras_jwks.json")
    return keys


# The local test CA that the forged tokens below chain to, trusted next to NVIDIA's anchor.
TEST_CA_KEY, TEST_CA = make_ca("Test NRAS CA")


def _self_signed_leaves(keys: Any) -> list[x509.Certificate]:
    """Self-signed x5c leaves in ``keys``: the hand-made keys of the JWKS/x5c rule tests below
    carry one each. Trusting them here keeps those tests about the rules they pin; the chain
    rule itself has its own tests with explicit anchors."""
    leaves: list[x509.Certificate] = []
    for entry in (keys.get("keys") or []) if isinstance(keys, dict) else []:
        chain = entry.get("x5c") if isinstance(entry, dict) else None
        if not isinstance(chain, list) or not chain or not isinstance(chain[0], str):
            continue
        try:
            cert = x509.load_der_x509_certificate(base64.b64decode(chain[0]))
        except ValueError:
            continue
        if cert.issuer == cert.subject:
            leaves.append(cert)
    return leaves


def verify(response: Any = None, keys: Any = None, **overrides: Any) -> NrasResult:
    arguments: dict[str, Any] = {
        "nonce": NONCE,
        "now": IAT,
        "anchors": [*pinned_anchors(), TEST_CA, *_self_signed_leaves(keys)],
    }
    arguments.update(overrides)
    return verify_nras_response(
        answer() if response is None else response, jwks() if keys is None else keys, **arguments
    )


def code_of(response: Any = None, keys: Any = None, **overrides: Any) -> str | None:
    with pytest.raises(AttestationError) as info:
        verify(response, keys, **overrides)
    assert info.value.code in NRAS_CODES
    return info.value.code


def other_char(char: str) -> str:
    return B64URL[(B64URL.index(char) + 1) % len(B64URL)]


def change_token(token: str, part: int, position: int) -> str:
    """Replace one base64url character of one JWS part."""
    parts = token.split(".")
    text = parts[part]
    parts[part] = text[:position] + other_char(text[position]) + text[position + 1 :]
    return ".".join(parts)


# --- the real answer ------------------------------------------------------------------------


def test_real_answer_verifies_at_issue_time() -> None:
    result = verify()
    assert result.overall_result is True
    assert result.nonce == NONCE.hex()
    assert (result.issued_at, result.expires_at) == (IAT, EXP)
    assert [gpu.name for gpu in result.gpus] == [f"GPU-{i}" for i in range(8)]
    assert {gpu.hwmodel for gpu in result.gpus} == {"GH100"}
    assert {gpu.driver_version for gpu in result.gpus} == {"570.172.08"}
    assert len(result.key_ids) == 1
    assert result.key_ids[0].startswith("nv-eat-kid-prod-")


def test_real_answer_verifies_at_capture_time_and_until_expiry() -> None:
    verify(now=time_of(QWEN))
    verify(now=EXP)


@pytest.mark.parametrize("part", [0, 1, 2])
@pytest.mark.parametrize("position", [0, 17, -1])
def test_one_character_changed_in_the_overall_token_fails(part: int, position: int) -> None:
    response = answer()
    token = response[0][1]
    index = position if position >= 0 else len(token.split(".")[part]) - 1
    response[0][1] = change_token(token, part, index)
    assert code_of(response) in {
        "nras_signature_invalid",
        "nras_jwt_malformed",
        "nras_key_unknown",
        "nras_algorithm_unsupported",
    }


@pytest.mark.parametrize("part", [1, 2])
def test_one_character_changed_in_a_gpu_token_fails_its_signature(part: int) -> None:
    response = answer()
    response[1]["GPU-3"] = change_token(response[1]["GPU-3"], part, 40)
    assert code_of(response) == "nras_signature_invalid"


def test_one_signature_byte_changed_fails() -> None:
    response = answer()
    header, payload, signature = response[0][1].split(".")
    raw = bytearray(b64url_decode(signature))
    raw[50] ^= 0x01
    changed = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    response[0][1] = f"{header}.{payload}.{changed}"
    assert code_of(response) == "nras_signature_invalid"


def test_a_gpu_token_swapped_for_another_gpus_fails_submods() -> None:
    response = answer()
    response[1]["GPU-1"] = response[1]["GPU-2"]
    assert code_of(response) == "nras_submods_mismatch"


def test_a_dropped_gpu_token_fails_submods() -> None:
    response = answer()
    del response[1]["GPU-7"]
    assert code_of(response) == "nras_submods_mismatch"


def test_wrong_nonce_fails() -> None:
    assert code_of(nonce=bytes(32)) == "nras_nonce_mismatch"


def test_expired_tokens_fail() -> None:
    assert code_of(now=EXP + 3600) == "nras_jwt_expired"


def test_far_later_the_signing_certificate_has_expired_too() -> None:
    assert code_of(now=IAT + 30 * DAY) == "nras_key_not_valid"


def test_tokens_from_the_future_fail() -> None:
    assert code_of(now=IAT - 3600) == "nras_jwt_not_yet_valid"


def test_leeway_tolerates_small_clock_skew() -> None:
    verify(now=IAT - 30)
    assert code_of(now=IAT - 30, leeway_s=0) == "nras_jwt_not_yet_valid"


def test_unknown_kid_fails() -> None:
    keys = jwks()
    kid = verify().key_ids[0]
    keys["keys"] = [key for key in keys["keys"] if key["kid"] != kid]
    assert code_of(keys=keys) == "nras_key_unknown"


def test_another_keys_coordinates_under_the_right_kid_fail() -> None:
    keys = jwks()
    kid = verify().key_ids[0]
    target = next(key for key in keys["keys"] if key["kid"] == kid)
    donor = next(key for key in keys["keys"] if key["kid"] != kid)
    target["x"], target["y"] = donor["x"], donor["y"]
    assert code_of(keys=keys) == "nras_jwks_invalid"
    del target["x5c"]
    assert code_of(keys=keys) == "nras_chain_untrusted"


def test_a_key_given_only_as_x5c_verifies() -> None:
    keys = jwks()
    for key in keys["keys"]:
        del key["x"], key["y"]
    assert verify(keys=keys).overall_result


def test_a_key_without_an_x5c_chain_to_nvidia_fails() -> None:
    keys = jwks()
    for key in keys["keys"]:
        del key["x5c"]
    assert code_of(keys=keys) == "nras_chain_untrusted"


def test_duplicate_kid_in_the_jwks_is_rejected() -> None:
    keys = jwks()
    kid = verify().key_ids[0]
    keys["keys"].append(next(key for key in keys["keys"] if key["kid"] == kid))
    assert code_of(keys=keys) == "nras_jwks_invalid"


@pytest.mark.parametrize("keys", [{}, {"keys": "x"}, []])
def test_malformed_jwks(keys: Any) -> None:
    assert code_of(keys=keys) == "nras_jwks_invalid"


def test_wrong_issuer_expected_fails() -> None:
    assert code_of(issuer="https://example.invalid") == "nras_issuer_mismatch"


@pytest.mark.parametrize(
    "response",
    [
        None,
        {},
        [],
        [["JWT", "a.b.c"]],
        [["JWS", "a.b.c"], {"GPU-0": "a.b.c"}],
        [["JWT", "a.b.c"], {}],
        [["JWT", "a.b.c"], ["GPU-0"]],
    ],
)
def test_malformed_answers(response: Any) -> None:
    with pytest.raises(AttestationError) as info:
        verify_nras_response(response, jwks(), nonce=NONCE, now=IAT)
    assert info.value.code == "nras_response_invalid"


@pytest.mark.parametrize("token", ["", "abc", "a.b", "a.b.c.d", 5, "!!.??.**"])
def test_malformed_tokens(token: Any) -> None:
    response = answer()
    response[0][1] = token
    assert code_of(response) == "nras_jwt_malformed"


@pytest.mark.parametrize("alg", ["none", "HS384", "ES256", None])
def test_other_algorithms_are_refused(alg: Any) -> None:
    response = answer()
    header_text, payload, signature = response[0][1].split(".")
    header = json.loads(b64url_decode(header_text)) | {"alg": alg}
    encoded = base64.urlsafe_b64encode(json.dumps(header).encode()).decode().rstrip("=")
    response[0][1] = f"{encoded}.{payload}.{signature}"
    assert code_of(response) == "nras_algorithm_unsupported"


# --- claims, with tokens signed by a test key -----------------------------------------------


class Signer:
    """A local P-384 key posing as NRAS, with its JWKS."""

    kid = "test-kid"

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP384R1())
        numbers = self.key.public_key().public_numbers()
        self.jwks = {
            "keys": [
                {
                    "kty": "EC",
                    "crv": "P-384",
                    "kid": self.kid,
                    "x": _b64(numbers.x.to_bytes(48, "big")),
                    "y": _b64(numbers.y.to_bytes(48, "big")),
                    "x5c": [
                        der_b64(issue(TEST_CA_KEY, TEST_CA, self.key.public_key(), "Test NRAS")),
                        der_b64(TEST_CA),
                    ],
                }
            ]
        }

    def token(self, claims: dict[str, Any]) -> str:
        header = _b64(json.dumps({"kid": self.kid, "alg": "ES384"}).encode())
        payload = _b64(json.dumps(claims).encode())
        der = self.key.sign(f"{header}.{payload}".encode(), ec.ECDSA(hashes.SHA384()))
        r, s = decode_dss_signature(der)
        return f"{header}.{payload}.{_b64(r.to_bytes(48, 'big') + s.to_bytes(48, 'big'))}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _gpu_claims() -> dict[str, Any]:
    claims: dict[str, Any] = dict.fromkeys(GPU_TRUE_CLAIMS, True)
    claims |= {"measres": "success", "dbgstat": "disabled", "secboot": True, "hwmodel": "GH100"}
    return claims


def forge(
    signer: Signer,
    *,
    overall: dict[str, Any] | None = None,
    gpu: dict[str, Any] | None = None,
    gpus: int = 2,
) -> list[Any]:
    common = {"iss": NRAS_ISSUER, "iat": IAT, "nbf": IAT, "exp": EXP, "eat_nonce": NONCE.hex()}
    gpu_tokens = {
        f"GPU-{i}": signer.token(common | _gpu_claims() | (gpu or {})) for i in range(gpus)
    }
    submods = {
        name: ["DIGEST", ["SHA-256", hashlib.sha256(token.encode()).hexdigest()]]
        for name, token in gpu_tokens.items()
    }
    overall_claims = common | {"x-nvidia-overall-att-result": True, "submods": submods}
    return [["JWT", signer.token(overall_claims | (overall or {}))], gpu_tokens]


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()


def test_a_well_formed_forgery_under_our_own_key_verifies(signer: Signer) -> None:
    assert len(verify(forge(signer), signer.jwks).gpus) == 2


def test_but_not_under_nvidias_keys(signer: Signer) -> None:
    assert code_of(forge(signer)) == "nras_key_unknown"


@pytest.mark.parametrize(
    ("overall", "code"),
    [
        ({"x-nvidia-overall-att-result": False}, "nras_overall_result_false"),
        ({"x-nvidia-overall-att-result": "true"}, "nras_overall_result_false"),
        ({"iss": "https://nras.example"}, "nras_issuer_mismatch"),
        ({"eat_nonce": None}, "nras_nonce_mismatch"),
        ({"exp": None}, "nras_jwt_malformed"),
        ({"exp": IAT - 1000}, "nras_jwt_expired"),
        ({"submods": None}, "nras_submods_mismatch"),
        ({"submods": {"GPU-0": ["DIGEST", ["SHA-256", "00" * 32]]}}, "nras_submods_mismatch"),
    ],
)
def test_overall_claims(signer: Signer, overall: dict[str, Any], code: str) -> None:
    assert code_of(forge(signer, overall=overall), signer.jwks) == code


def test_an_uppercase_nonce_is_accepted(signer: Signer) -> None:
    response = forge(signer, overall={"eat_nonce": NONCE.hex().upper()})
    assert verify(response, signer.jwks).overall_result


@pytest.mark.parametrize(
    ("gpu", "code"),
    [
        ({"measres": "fail"}, "nras_gpu_failed"),
        ({"dbgstat": "enabled"}, "nras_gpu_failed"),
        ({"secboot": False}, "nras_gpu_failed"),
        ({"x-nvidia-gpu-attestation-report-nonce-match": False}, "nras_gpu_failed"),
        ({"x-nvidia-gpu-driver-rim-signature-verified": None}, "nras_gpu_failed"),
        ({"eat_nonce": "00" * 32}, "nras_nonce_mismatch"),
        ({"iss": None}, "nras_issuer_mismatch"),
        ({"nbf": IAT + 3600}, "nras_jwt_not_yet_valid"),
    ],
)
def test_gpu_claims(signer: Signer, gpu: dict[str, Any], code: str) -> None:
    with pytest.raises(AttestationError) as info:
        verify(forge(signer, gpu=gpu), signer.jwks)
    assert info.value.code == code
    if code == "nras_gpu_failed":
        assert next(iter(gpu)) in info.value.message


def test_gpu_tokens_wrapped_as_jwt_pairs_are_tolerated(signer: Signer) -> None:
    response = forge(signer)
    response[1] = {name: ["JWT", token] for name, token in response[1].items()}
    assert len(verify(response, signer.jwks).gpus) == 2


# --- inside verify_evidence -----------------------------------------------------------------


def run_qwen(nras: NrasEvidence | None, body: dict[str, Any] | None = None) -> Any:
    return verify_evidence(
        parse_attestation(body if body is not None else body_of(QWEN)),
        expected_model=QWEN.model,
        nonce=nonce_of(QWEN),
        policy=AttestationPolicy(nvidia="nras"),
        now=time_of(QWEN),
        collateral=collateral_of(QWEN),
        nras=nras,
    )


def test_gpu_nras_passes_on_the_real_capture() -> None:
    report = run_qwen(NrasEvidence(answer(), jwks()))
    assert report.passed
    check = report.check("gpu_nras")
    assert (check.ok, check.enforced, check.tier) == (True, True, "gpu")
    assert "8 GPUs (GH100)" in check.detail


def test_gpu_nras_reports_the_nras_failure_code() -> None:
    report = run_qwen(NrasEvidence(answer(), {"keys": []}))
    assert [check.code for check in report.failures] == ["gpu_nras"]
    assert report.check("gpu_nras").detail.startswith("nras_key_unknown: ")


def test_gpu_nras_requires_as_many_gpus_as_the_payload_lists() -> None:
    body = body_of(QWEN)
    payload = json.loads(body["nvidia_payload"])
    payload["evidence_list"] = payload["evidence_list"][:7]
    body["nvidia_payload"] = json.dumps(payload)
    report = run_qwen(NrasEvidence(answer(), jwks()), body)
    assert [check.code for check in report.failures] == ["gpu_nras"]
    assert "payload lists 7" in report.check("gpu_nras").detail


def test_gpu_nras_without_an_answer_fails_closed() -> None:
    report = run_qwen(None)
    assert [check.code for check in report.failures] == ["gpu_nras"]
    assert report.check("gpu_nras").ok is None


def test_nras_evidence_is_not_checked_when_nvidia_is_nonce() -> None:
    report = verify_evidence(
        parse_attestation(body_of(QWEN)),
        expected_model=QWEN.model,
        nonce=nonce_of(QWEN),
        policy=AttestationPolicy(),
        now=time_of(QWEN),
        collateral=collateral_of(QWEN),
        nras=NrasEvidence(copy.deepcopy(answer()), {}),
    )
    assert report.passed
    with pytest.raises(KeyError):
        report.check("gpu_nras")


# --- what mutation testing found unpinned (make mutation): the code and message of each refusal


def failure(response: Any = None, keys: Any = None, **overrides: Any) -> tuple[str, str]:
    """(code, message) of a refused answer; the message drops the "NRAS: " every one has."""
    with pytest.raises(AttestationError) as info:
        verify(response, keys, **overrides)
    assert info.value.message.startswith("NRAS: ")
    assert info.value.code is not None
    return info.value.code, info.value.message.removeprefix("NRAS: ")


def self_signed(key: ec.EllipticCurvePrivateKey, not_before: int, not_after: int) -> str:
    """A base64 DER certificate for ``key``, valid from ``not_before`` to ``not_after``."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test NRAS key")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime.fromtimestamp(not_before, UTC))
        .not_valid_after(datetime.fromtimestamp(not_after, UTC))
        .sign(key, hashes.SHA384())
    )
    return base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()


class CertSigner(Signer):
    """A test key under its own kid, its JWKS entry carrying a certificate (x5c) as well."""

    def __init__(self, kid: str, not_before: int = IAT - DAY, not_after: int = EXP + DAY) -> None:
        super().__init__()
        self.kid = kid
        entry: dict[str, Any] = self.jwks["keys"][0]
        entry["kid"] = kid
        entry["x5c"] = [self_signed(self.key, not_before, not_after)]


def _with_header(token: str, header: Any) -> str:
    _, payload, signature = token.split(".")
    return f"{_b64(json.dumps(header).encode())}.{payload}.{signature}"


def _resigned(signer: Signer, header: Any, payload: Any) -> str:
    """A token over raw header and payload parts (which need not be JSON objects)."""
    head = header if isinstance(header, str) else _b64(json.dumps(header).encode())
    body = payload if isinstance(payload, str) else _b64(json.dumps(payload).encode())
    der = signer.key.sign(f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    return f"{head}.{body}.{_b64(r.to_bytes(48, 'big') + s.to_bytes(48, 'big'))}"


def test_answer_shape_refusals(signer: Signer) -> None:
    token = forge(signer)[0][1]
    gpus = forge(signer)[1]
    shape = 'the answer is not [["JWT", token], {gpu: token}]'
    first = 'the first element is not ["JWT", token]'
    assert failure([["JWT", token]], signer.jwks) == ("nras_response_invalid", shape)
    for bad_first in (["JWT"], ["JWT", token, "x"], "JWT", ["JWS", token]):
        assert failure([bad_first, gpus], signer.jwks) == ("nras_response_invalid", first)
    second = "the second element is not a non-empty GPU map"
    assert failure([["JWT", token], {}], signer.jwks) == ("nras_response_invalid", second)
    for name in ("", "G" * 65, 5):
        response = [["JWT", token], {name: gpus["GPU-0"]}]
        assert failure(response, signer.jwks) == (
            "nras_response_invalid",
            "a GPU name is not a short string",
        )


def test_a_gpu_name_of_64_characters_is_short_enough(signer: Signer) -> None:
    response = forge(signer, gpus=1)
    long_name = "G" * 64
    token = response[1].pop("GPU-0")
    response[1][long_name] = token
    claims = json.loads(b64url_decode(response[0][1].split(".")[1]))
    claims["submods"] = {long_name: claims["submods"]["GPU-0"]}
    response[0][1] = _resigned(signer, {"kid": signer.kid, "alg": "ES384"}, claims)
    assert [gpu.name for gpu in verify(response, signer.jwks).gpus] == [long_name]


@pytest.mark.parametrize(
    "value",
    [("jwt", "TOKEN"), ["JWT", "TOKEN"]],
)
def test_a_gpu_token_as_a_jwt_pair_in_any_case_is_read(signer: Signer, value: Any) -> None:
    response = forge(signer, gpus=1)
    token = response[1]["GPU-0"]
    response[1]["GPU-0"] = type(value)(token if part == "TOKEN" else part for part in value)
    assert verify(response, signer.jwks).gpus[0].name == "GPU-0"


@pytest.mark.parametrize("value", [["JWT", "TOKEN", "x"], ["JWS", "TOKEN"], ["TOKEN"]])
def test_other_gpu_token_wrappers_are_not_tokens(signer: Signer, value: list[str]) -> None:
    response = forge(signer, gpus=1)
    token = response[1]["GPU-0"]
    response[1]["GPU-0"] = [token if part == "TOKEN" else part for part in value]
    assert failure(response, signer.jwks) == ("nras_jwt_malformed", "GPU-0 is not a compact JWS")


def test_token_format_refusals(signer: Signer) -> None:
    head = {"kid": signer.kid, "alg": "ES384"}
    claims = json.loads(b64url_decode(forge(signer)[0][1].split(".")[1]))
    gpus = forge(signer)[1]

    def refused(token: Any) -> tuple[str, str]:
        return failure([["JWT", token], gpus], signer.jwks)

    name = "overall token"
    assert refused("a.b") == ("nras_jwt_malformed", f"{name} is not a compact JWS")
    assert refused(_resigned(signer, "!!", claims)) == (
        "nras_jwt_malformed",
        f"{name}: the header is not base64url JSON",
    )
    assert refused(_resigned(signer, [head], claims)) == (
        "nras_jwt_malformed",
        f"{name}: the header is not a JSON object",
    )
    assert refused(_resigned(signer, head | {"alg": "ES384" * 5}, claims)) == (
        "nras_algorithm_unsupported",
        f"{name}: alg {('ES384' * 5)[:20]!r}",
    )
    assert refused(_resigned(signer, {"kid": signer.kid}, claims)) == (
        "nras_algorithm_unsupported",
        f"{name}: alg 'None'",
    )
    assert refused(_resigned(signer, head | {"crit": ["b64"]}, claims)) == (
        "nras_algorithm_unsupported",
        f"{name}: critical header extensions",
    )
    for kid in ("", None, 7):
        assert refused(_resigned(signer, head | {"kid": kid}, claims)) == (
            "nras_jwt_malformed",
            f"{name}: the header has no kid",
        )
    good = _resigned(signer, head, claims)
    assert refused(good[:-2] + "!!") == (
        "nras_jwt_malformed",
        f"{name}: the signature is not base64url",
    )
    assert refused(good.rsplit(".", 1)[0] + "." + _b64(bytes(95))) == (
        "nras_signature_invalid",
        f"{name}: the signature is not 96 bytes",
    )
    assert refused(good.rsplit(".", 1)[0] + "." + _b64(bytes(96))) == (
        "nras_signature_invalid",
        f"{name}: the ES384 signature does not verify",
    )
    assert refused(_resigned(signer, head, [claims])) == (
        "nras_jwt_malformed",
        f"{name}: the payload is not a JSON object",
    )
    assert refused(_resigned(signer, head, "!!")) == (
        "nras_jwt_malformed",
        f"{name}: the payload is not base64url JSON",
    )


def test_jwks_refusals(signer: Signer) -> None:
    response = forge(signer)
    kid = signer.kid
    assert failure(response, {"keys": None}) == ("nras_jwks_invalid", "the JWKS has no keys list")
    assert failure(response, {"keys": []}) == ("nras_key_unknown", f"no JWKS key has kid {kid!r}")
    entry: dict[str, Any] = signer.jwks["keys"][0]
    assert failure(response, {"keys": [entry, entry]}) == (
        "nras_jwks_invalid",
        f"the JWKS has 2 keys with kid {kid!r}",
    )
    not_p384 = f"JWKS key {kid!r} is not an EC P-384 key"
    for changed in ({"kty": "RSA"}, {"crv": "P-256"}, {"kty": None}):
        assert failure(response, {"keys": [entry | changed]}) == ("nras_jwks_invalid", not_p384)
    bare = {name: value for name, value in entry.items() if name not in ("x", "y", "x5c")}
    assert failure(response, {"keys": [bare]}) == (
        "nras_chain_untrusted",
        f"JWKS key {kid!r} has no x5c chain to NVIDIA's attestation anchor",
    )
    bad_xy = f"JWKS key {kid!r}: bad x/y"
    changes: list[dict[str, Any]] = [
        {"x": None},  # y alone
        {"x": 5},
        {"y": 5},
        {"x": entry["x"][:-2]},  # 47 bytes
        {"y": entry["y"][:-2]},
        {"x": "!" + entry["x"][1:]},
        {"x": entry["y"], "y": entry["x"]},  # not a point
    ]
    for changed in changes:
        assert failure(response, {"keys": [entry | changed]}) == ("nras_jwks_invalid", bad_xy)


def test_a_long_kid_is_cut_to_100_characters_in_messages() -> None:
    kid = "k" * 120
    long = CertSigner(kid)
    response = forge(long)
    shown = repr("k" * 100)
    entry: dict[str, Any] = long.jwks["keys"][0]
    assert failure(response, {"keys": []}) == ("nras_key_unknown", f"no JWKS key has kid {shown}")
    assert failure(response, {"keys": [entry, entry]})[1] == (
        f"the JWKS has 2 keys with kid {shown}"
    )
    assert failure(response, {"keys": [entry | {"crv": "P-521"}]})[1] == (
        f"JWKS key {shown} is not an EC P-384 key"
    )
    assert failure(response, {"keys": [entry | {"x": 5}]})[1] == f"JWKS key {shown}: bad x/y"
    assert failure(response, {"keys": [entry | {"x5c": []}]})[1] == f"JWKS key {shown}: bad x5c"
    other = Signer().jwks["keys"][0]
    assert failure(response, {"keys": [entry | {"x": other["x"], "y": other["y"]}]})[1] == (
        f"JWKS key {shown}: x/y differ from its x5c leaf"
    )
    bare = {name: value for name, value in entry.items() if name not in ("x", "y", "x5c")}
    assert (
        failure(response, {"keys": [bare]})[1]
        == f"JWKS key {shown} has no x5c chain to NVIDIA's attestation anchor"
    )


def test_x5c_refusals() -> None:
    signer = CertSigner("cert-kid")
    response = forge(signer)
    entry: dict[str, Any] = signer.jwks["keys"][0]
    only_x5c = {name: value for name, value in entry.items() if name not in ("x", "y")}
    assert verify(response, {"keys": [only_x5c]}).overall_result
    bad = "JWKS key 'cert-kid': bad x5c"
    leaf = entry["x5c"][0]
    for chain in ([], [5], leaf, [leaf[:40] + "!" + leaf[40:]], ["AAAA"]):
        assert failure(response, {"keys": [only_x5c | {"x5c": chain}]}) == (
            "nras_jwks_invalid",
            bad,
        )
    # At most 8 certificates are read (NRAS sends 2): a 9th is refused before any is parsed.
    assert verify(response, {"keys": [only_x5c | {"x5c": [leaf] * 8}]}).overall_result
    assert failure(response, {"keys": [only_x5c | {"x5c": [leaf] * 9}]}) == (
        "nras_jwks_invalid",
        bad,
    )
    p256 = ec.generate_private_key(ec.SECP256R1())
    other_curve = only_x5c | {"x5c": [self_signed(p256, IAT - DAY, EXP + DAY)]}
    assert failure(response, {"keys": [other_curve]}) == (
        "nras_jwks_invalid",
        "JWKS key 'cert-kid': the x5c leaf is not P-384",
    )


def test_the_certificate_validity_window_has_the_leeway_on_both_sides() -> None:
    # The tokens are valid IAT..EXP; the certificate from IAT + 10 to EXP - 10.
    signer = CertSigner("window", not_before=IAT + 10, not_after=EXP - 10)
    entry: dict[str, Any] = signer.jwks["keys"][0]
    keys = {"keys": [{name: value for name, value in entry.items() if name not in ("x", "y")}]}
    response = forge(signer)
    assert verify(response, keys, now=IAT + 10 - 60).overall_result
    assert verify(response, keys, now=EXP - 10 + 60).overall_result
    for now in (IAT + 10 - 61, EXP - 10 + 61):
        assert failure(response, keys, now=now) == (
            "nras_key_not_valid",
            f"the certificate of key 'window' is valid {IAT + 10}..{EXP - 10}, now {now}",
        )


def test_gpu_tokens_under_another_key_of_the_jwks_are_verified_with_it() -> None:
    overall_signer, gpu_signer = CertSigner("overall-kid"), CertSigner("gpu-kid")
    response = forge(gpu_signer)
    claims = json.loads(b64url_decode(response[0][1].split(".")[1]))
    response[0][1] = _resigned(overall_signer, {"kid": "overall-kid", "alg": "ES384"}, claims)
    keys = {"keys": overall_signer.jwks["keys"] + gpu_signer.jwks["keys"]}
    result = verify(response, keys)
    assert result.key_ids == ("overall-kid", "gpu-kid")
    outside = {"keys": overall_signer.jwks["keys"]}
    assert failure(response, outside) == ("nras_key_unknown", "no JWKS key has kid 'gpu-kid'")


def test_claim_refusals(signer: Signer) -> None:
    def refused(**overall: Any) -> tuple[str, str]:
        return failure(forge(signer, overall=overall), signer.jwks)

    name = "overall token"
    assert refused(exp="soon") == ("nras_jwt_malformed", f"{name}: exp is not a number")
    assert refused(exp=True) == ("nras_jwt_malformed", f"{name}: exp is not a number")
    assert refused(nbf="now") == ("nras_jwt_malformed", f"{name}: nbf is not a number")
    assert refused(iss="i" * 90) == (
        "nras_issuer_mismatch",
        f"{name}: iss {'i' * 80!r}, expected {NRAS_ISSUER!r}",
    )
    assert refused(iss=None) == (
        "nras_issuer_mismatch",
        f"{name}: iss 'None', expected {NRAS_ISSUER!r}",
    )
    assert refused(eat_nonce="e" * 90) == (
        "nras_nonce_mismatch",
        f"{name}: eat_nonce {'e' * 80!r}, sent {NONCE.hex()}",
    )
    assert refused(eat_nonce=5) == (
        "nras_nonce_mismatch",
        f"{name}: eat_nonce 'missing', sent {NONCE.hex()}",
    )
    assert refused(**{"x-nvidia-overall-att-result": 1}) == (
        "nras_overall_result_false",
        "x-nvidia-overall-att-result is not true",
    )
    assert refused(iat=IAT + 3600) == (
        "nras_jwt_not_yet_valid",
        f"{name}: iat {IAT + 3600} > now {IAT}",
    )


def test_expiry_and_not_before_have_the_leeway(signer: Signer) -> None:
    response = forge(signer)
    assert verify(response, signer.jwks, now=EXP + 60).overall_result
    assert failure(response, signer.jwks, now=EXP + 61) == (
        "nras_jwt_expired",
        f"overall token: expired at {EXP}, now {EXP + 61}",
    )
    assert verify(response, signer.jwks, now=IAT - 60).overall_result
    assert failure(response, signer.jwks, now=IAT - 61) == (
        "nras_jwt_not_yet_valid",
        f"overall token: nbf {IAT} > now {IAT - 61}",
    )


def test_nbf_and_iat_are_optional(signer: Signer) -> None:
    response = forge(signer, overall={"nbf": None, "iat": None}, gpu={"nbf": None, "iat": None})
    result = verify(response, signer.jwks)
    assert result.issued_at is None
    assert result.expires_at == EXP


def test_submods_refusals(signer: Signer) -> None:
    response = forge(signer)
    gpu_digest = json.loads(b64url_decode(response[0][1].split(".")[1]))["submods"]["GPU-0"]

    def refused(submods: Any) -> tuple[str, str]:
        return failure(forge(signer, overall={"submods": submods}), signer.jwks)

    assert refused(["GPU-0"]) == ("nras_submods_mismatch", "the overall token has no submods")
    assert refused({"GPU-0": gpu_digest}) == (
        "nras_submods_mismatch",
        "submods list 1 GPUs, the answer carries 2",
    )
    mismatch = ("nras_submods_mismatch", "submods digest of GPU-0 does not match")
    for entry in (
        "DIGEST",
        {"a": 1, "b": 2},
        [*gpu_digest, "extra"],
        ["DIGEST"],
        ["HASH", gpu_digest[1]],
        ["DIGEST", ["SHA-384", gpu_digest[1][1]]],
        ["DIGEST", ["SHA-256", gpu_digest[1][1], "x"]],
        ["DIGEST", ["SHA-256", 5]],
        ["DIGEST", "SHA-256"],
    ):
        submods = {"GPU-0": entry, "GPU-1": gpu_digest}
        assert refused(submods) == mismatch, entry


def test_gpu_refusals_list_at_most_four_failing_claims(signer: Signer) -> None:
    def refused(failing: int) -> str:
        claims = dict.fromkeys(GPU_TRUE_CLAIMS[:failing], False)
        code, message = failure(forge(signer, gpu=claims, gpus=1), signer.jwks)
        assert code == "nras_gpu_failed"
        return message

    names = list(GPU_TRUE_CLAIMS)
    assert refused(1) == f"GPU-0: not successful: {names[0]}"
    assert refused(4) == f"GPU-0: not successful: {', '.join(names[:4])}"
    assert refused(5) == f"GPU-0: not successful: {', '.join(names[:4])} (+1)"
    assert refused(7) == f"GPU-0: not successful: {', '.join(names[:4])} (+3)"


def test_gpu_versions_and_model_are_read_and_cut_to_80_characters(signer: Signer) -> None:
    claims = {
        "hwmodel": "H" * 90,
        "x-nvidia-gpu-driver-version": "570.172.08",
        "x-nvidia-gpu-vbios-version": "96.00.CF.00.01",
    }
    (gpu,) = verify(forge(signer, gpu=claims, gpus=1), signer.jwks).gpus
    assert (gpu.hwmodel, gpu.driver_version, gpu.vbios_version) == (
        "H" * 80,
        "570.172.08",
        "96.00.CF.00.01",
    )
    (bare,) = verify(forge(signer, gpu={"hwmodel": 5}, gpus=1), signer.jwks).gpus
    assert (bare.hwmodel, bare.driver_version, bare.vbios_version) == (None, None, None)


def test_the_real_gpus_report_their_vbios_version() -> None:
    assert all(gpu.vbios_version for gpu in verify().gpus)


@pytest.mark.parametrize(
    ("text", "ok"),
    [("", True), ("QQ", True), ("QUI", True), ("QUJD", True), ("Q", False), ("QUJDR", False)],
)
def test_b64url_decode_takes_unpadded_text_of_any_valid_length(text: str, ok: bool) -> None:
    if ok:
        assert b64url_decode(text) == base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    else:
        with pytest.raises(ValueError, match=r"^not base64url$"):
            b64url_decode(text)
    with pytest.raises(ValueError, match=r"^not base64url$"):
        b64url_decode(text + "=")


def test_a_long_kid_is_cut_in_certificate_messages_too() -> None:
    kid = "c" * 120
    signer = CertSigner(kid, not_before=IAT + 10, not_after=EXP - 10)
    entry: dict[str, Any] = signer.jwks["keys"][0]
    only_x5c = {name: value for name, value in entry.items() if name not in ("x", "y")}
    shown = repr("c" * 100)
    assert failure(forge(signer), {"keys": [only_x5c]}, now=IAT - 100) == (
        "nras_key_not_valid",
        f"the certificate of key {shown} is valid {IAT + 10}..{EXP - 10}, now {IAT - 100}",
    )
    p256 = ec.generate_private_key(ec.SECP256R1())
    other_curve = only_x5c | {"x5c": [self_signed(p256, IAT - DAY, EXP + DAY)]}
    assert failure(forge(signer), {"keys": [other_curve]}) == (
        "nras_jwks_invalid",
        f"JWKS key {shown}: the x5c leaf is not P-384",
    )


@pytest.mark.parametrize("coordinate", ["x", "y"])
def test_a_coordinate_of_49_bytes_is_refused_even_when_its_value_fits(
    signer: Signer, coordinate: str
) -> None:
    entry: dict[str, Any] = signer.jwks["keys"][0]
    padded = _b64(b"\x00" + b64url_decode(entry[coordinate]))
    assert failure(forge(signer), {"keys": [entry | {coordinate: padded}]}) == (
        "nras_jwks_invalid",
        f"JWKS key {signer.kid!r}: bad x/y",
    )


def _forge_gpus(signer: Signer, hwmodels: list[Any]) -> list[Any]:
    """An answer whose GPU tokens report these hardware models (None: no hwmodel claim)."""
    common = {"iss": NRAS_ISSUER, "iat": IAT, "nbf": IAT, "exp": EXP, "eat_nonce": NONCE.hex()}
    gpu_tokens = {}
    for index, hwmodel in enumerate(hwmodels):
        claims = common | _gpu_claims()
        claims.pop("hwmodel")
        if hwmodel is not None:
            claims["hwmodel"] = hwmodel
        gpu_tokens[f"GPU-{index}"] = signer.token(claims)
    submods = {
        name: ["DIGEST", ["SHA-256", hashlib.sha256(token.encode()).hexdigest()]]
        for name, token in gpu_tokens.items()
    }
    overall = common | {"x-nvidia-overall-att-result": True, "submods": submods}
    return [["JWT", signer.token(overall)], gpu_tokens]


@pytest.fixture
def trust_test_ca(monkeypatch: pytest.MonkeyPatch) -> None:
    """verify_evidence takes NVIDIA's pinned anchors: trust the local test CA next to them."""
    pinned = nras_module.pinned_anchors()
    monkeypatch.setattr(nras_module, "pinned_anchors", lambda: [*pinned, TEST_CA])


def run_synthetic(signer: Signer, response: Any, gpus: int, jwks: Any = None) -> Any:
    """verify_evidence on a synthetic body listing ``gpus`` GPUs, with NRAS checked."""
    keys = keypair_from_private(bytes(31) + b"\x05")
    body = synthetic_body(keys, NONCE)
    payload = json.loads(body["nvidia_payload"])
    payload["evidence_list"] = [gpu_entry(NONCE) for _ in range(gpus)]
    body["nvidia_payload"] = json.dumps(payload)
    return verify_evidence(
        parse_attestation(body),
        expected_model="e2ee-test",
        nonce=NONCE,
        policy=AttestationPolicy(
            dcap="off",
            software="off",
            nvidia="nras",
            extra_mrseam=frozenset({bytes(48).hex()}),
            extra_mrtd=frozenset({bytes(range(48)).hex()}),
        ),
        now=IAT,
        nras=NrasEvidence(response, signer.jwks if jwks is None else jwks),
    )


@pytest.mark.usefixtures("trust_test_ca")
def test_gpu_nras_names_each_hardware_model_once(signer: Signer) -> None:
    response = _forge_gpus(signer, ["GH100", None, "GB200", "GH100"])
    report = run_synthetic(signer, response, 4)
    assert report.passed
    assert report.check("gpu_nras").detail == (
        f"NRAS verified 4 GPUs (GB200, GH100, unknown model) for our nonce; tokens expire at {EXP}"
    )


@pytest.mark.usefixtures("trust_test_ca")
def test_gpu_nras_failures_are_false_in_the_gpu_tier(signer: Signer) -> None:
    response = _forge_gpus(signer, ["GH100"])
    count = run_synthetic(signer, response, 2).check("gpu_nras")
    assert (count.ok, count.tier, count.detail) == (
        False,
        "gpu",
        "NRAS verified 1 GPUs, nvidia_payload lists 2",
    )
    refused = run_synthetic(signer, response, 1, {"keys": []}).check("gpu_nras")
    assert (refused.ok, refused.tier, refused.detail) == (
        False,
        "gpu",
        "nras_key_unknown: NRAS: no JWKS key has kid 'test-kid'",
    )


# --- key ids (for the client's JWKS cache) ------------------------------------------------------


def _jws(header: Any) -> str:
    encoded = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    return f"{encoded}.e30.c2ln"


def test_the_key_ids_of_an_answer_are_those_its_tokens_are_verified_with() -> None:
    verified = verify_nras_response(answer(), jwks(), nonce=NONCE, now=IAT)
    assert token_key_ids(answer()) == frozenset(verified.key_ids)
    assert token_key_ids(answer()) <= jwks_key_ids(jwks())


def test_key_ids_are_read_from_any_token_and_unreadable_ones_name_none() -> None:
    found = token_key_ids(
        [
            ["JWT", _jws({"kid": "a", "alg": "ES384"})],
            {"GPU-0": _jws({"kid": "b"}), "GPU-1": ("JWT", _jws({"kid": "c"}))},
            "!!.e30.x",  # not base64url
            _jws(["kid", "d"]),  # a header that is not an object
            _jws({"kid": 5}),  # a kid that is not a string
            _jws({"alg": "ES384"}),  # no kid
            "a.b",  # not three parts
            7,
            None,
        ]
    )
    assert found == frozenset({"a", "b", "c"})
    assert token_key_ids("nothing") == frozenset()


def test_the_key_ids_of_a_jwks_are_those_of_keys_that_have_one() -> None:
    assert jwks_key_ids({"keys": [{"kid": "x"}, {"kty": "EC"}, {"kid": 3}, "k", {"kid": "y"}]}) == {
        "x",
        "y",
    }
    assert jwks_key_ids({"keys": "x"}) == frozenset()
    assert jwks_key_ids({}) == frozenset()
