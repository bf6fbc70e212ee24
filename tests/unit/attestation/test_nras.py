"""NRAS JWT verification: the real captured answer + JWKS, tampered copies, and signed fakes."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from proxy.attestation import (
    NRAS_CODES,
    AttestationPolicy,
    NrasEvidence,
    NrasResult,
    parse_attestation,
    verify_evidence,
    verify_nras_response,
)
from proxy.attestation.nras import GPU_TRUE_CLAIMS, NRAS_ISSUER, b64url_decode, pinned_anchors
from proxy.core.errors import AttestationError
from tests.support.attestation_helpers import (
    FIXTURES_BY_NAME,
    body_of,
    collateral_of,
    load_json,
    nonce_of,
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


def verify(response: Any = None, keys: Any = None, **overrides: Any) -> NrasResult:
    arguments: dict[str, Any] = {
        "nonce": NONCE,
        "now": IAT,
        "anchors": [*pinned_anchors(), TEST_CA],
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
