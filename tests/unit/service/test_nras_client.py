"""NVIDIA NRAS round trips (NrasSource): what is posted, what is cached and for how long, and
what a user reads when NRAS cannot be used.

Real NRAS answer and JWKS of the e2ee-qwen3-5-122b-a10b capture, served by an httpx
MockTransport (no network); the returned evidence is checked with the real verifier.
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import httpx
import pytest

from proxy.attestation import verify_nras_response
from proxy.core.errors import AttestationError
from proxy.service.nras_client import NrasSource
from proxy.venice.client import ServiceClient
from tests.support.fixtures import FIXTURES_DIR

FIXTURES = FIXTURES_DIR / "attestations"
PREFIX = "venice_qwen3_5_122b_20260424"
NONCE = bytes.fromhex("ac82eb750ec4cfbb273f90d33567776bfae8657e2a43f6dff2f3adad9b86095a")
CAPTURED_AT = 1776995921
NRAS_URL = "https://nras.test/v3/attest/gpu"
JWKS_URL = "https://nras.test/.well-known/jwks.json"
PAYLOAD = {"nonce": NONCE.hex(), "evidence_list": [], "arch": "HOPPER"}
PROCEED = (
    "check attestation.nras_url and attestation.nras_jwks_url, or set "
    'attestation.nvidia = "nonce" to use the model without NVIDIA\'s verdict (its GPUs then '
    "NOT verified)"
)


def _load(name: str) -> Any:
    return json.loads((FIXTURES / f"{PREFIX}_{name}.json").read_text())


def _kid(token: str) -> str:
    header = token.split(".")[0]
    return str(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"])


def _signing_kids() -> set[str]:
    answer = _load("nras_response")
    return {_kid(answer[0][1]), *(_kid(token) for token in answer[1].values())}


def _jwks_before_rotation() -> dict[str, Any]:
    """NVIDIA's JWKS as it stood before the key that signs the captured answer was added."""
    jwks: dict[str, Any] = copy.deepcopy(_load("nras_jwks"))
    jwks["keys"] = [key for key in jwks["keys"] if key["kid"] not in _signing_kids()]
    assert jwks["keys"]
    return jwks


class Nras:
    """Answers as NRAS did; records every request. ``jwks`` is served in turn (last repeats)."""

    def __init__(self, *jwks: Any, answer: Any = None) -> None:
        self.jwks = list(jwks) or [_load("nras_jwks")]
        self.answer = _load("nras_response") if answer is None else answer
        self.requests: list[tuple[str, str]] = []
        self.posted: list[Any] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, str(request.url)))
        if request.method == "GET" and request.url == httpx.URL(JWKS_URL):
            jwks = self.jwks.pop(0) if len(self.jwks) > 1 else self.jwks[0]
            return httpx.Response(200, json=jwks)
        if request.method == "POST" and request.url == httpx.URL(NRAS_URL):
            self.posted.append(json.loads(request.content))
            return httpx.Response(200, json=self.answer)
        return httpx.Response(405, json={"error": "wrong method or URL"})

    @property
    def jwks_fetches(self) -> int:
        return self.requests.count(("GET", JWKS_URL))


def _client(handler: Any) -> ServiceClient:
    return ServiceClient(http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)))


async def test_the_evidence_is_posted_and_the_answer_verifies_with_the_keys_fetched() -> None:
    nras = Nras()
    client = _client(nras)
    evidence = await NrasSource(client, url=NRAS_URL, jwks_url=JWKS_URL)(PAYLOAD)
    await client.aclose()
    assert nras.requests == [("POST", NRAS_URL), ("GET", JWKS_URL)]
    assert nras.posted == [PAYLOAD]
    result = verify_nras_response(evidence.response, evidence.jwks, nonce=NONCE, now=CAPTURED_AT)
    assert len(result.gpus) == 8


async def test_the_jwks_is_cached_for_an_hour_by_default() -> None:
    nras = Nras()
    client = _client(nras)
    now = [1000.0]
    source = NrasSource(client, url=NRAS_URL, jwks_url=JWKS_URL, clock=lambda: now[0])
    await source(PAYLOAD)
    now[0] = 1000.0 + 3599.5
    await source(PAYLOAD)
    assert nras.jwks_fetches == 1
    now[0] = 1000.0 + 3600.0  # expired at exactly one hour
    await source(PAYLOAD)
    assert nras.jwks_fetches == 2
    await client.aclose()


async def test_a_key_nvidia_added_since_the_jwks_was_cached_is_fetched_at_once() -> None:
    """Regression: NVIDIA adds signing keys several times a day. A JWKS cached before the key
    that signs an answer was published failed every GPU verification ("no JWKS key has kid")
    until the cache expired an hour later; now the JWKS is fetched again at once."""
    nras = Nras(_jwks_before_rotation(), _load("nras_jwks"))
    client = _client(nras)
    now = [1000.0]
    source = NrasSource(client, url=NRAS_URL, jwks_url=JWKS_URL, clock=lambda: now[0])
    await source(PAYLOAD)  # the keys as they were then
    now[0] += 60.0
    evidence = await source(PAYLOAD)
    assert nras.jwks_fetches == 2
    verify_nras_response(evidence.response, evidence.jwks, nonce=NONCE, now=CAPTURED_AT)
    now[0] += 60.0
    await source(PAYLOAD)  # every kid is known now: the cached set is used
    assert nras.jwks_fetches == 2
    await client.aclose()


async def test_an_answer_whose_tokens_name_no_readable_kid_uses_the_cached_jwks() -> None:
    nras = Nras(answer=[["JWT", "not.a-jws.at-all"], {"GPU-0": 7, "GPU-1": "x.e30.y"}])
    client = _client(nras)
    source = NrasSource(client, url=NRAS_URL, jwks_url=JWKS_URL, clock=lambda: 0.0)
    await source(PAYLOAD)
    await source(PAYLOAD)
    assert nras.jwks_fetches == 1
    await client.aclose()


async def test_nras_unreachable_names_what_failed_and_the_settings_to_proceed() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    client = _client(refuse)
    with pytest.raises(AttestationError) as info:
        await NrasSource(client, url=NRAS_URL, jwks_url=JWKS_URL)(PAYLOAD)
    await client.aclose()
    assert info.value.code == "gpu_nras_unavailable"
    assert info.value.message.startswith("NVIDIA NRAS could not be reached: ")
    assert info.value.message.endswith(f"; {PROCEED}")


async def test_an_nras_error_status_is_unavailable_with_its_cause() -> None:
    client = _client(lambda request: httpx.Response(503, json={"error": "maintenance"}))
    with pytest.raises(AttestationError) as info:
        await NrasSource(client, url=NRAS_URL, jwks_url=JWKS_URL)(PAYLOAD)
    await client.aclose()
    assert info.value.code == "gpu_nras_unavailable"
    assert info.value.message == (
        f"NVIDIA NRAS could not be reached: upstream error 503: maintenance; {PROCEED}"
    )


@pytest.mark.parametrize("jwks", [[{"kid": "k"}], "keys", 42])
async def test_a_jwks_that_is_not_an_object_is_refused_and_not_cached(jwks: Any) -> None:
    nras = Nras(jwks, _load("nras_jwks"))
    client = _client(nras)
    source = NrasSource(client, url=NRAS_URL, jwks_url=JWKS_URL, clock=lambda: 0.0)
    with pytest.raises(AttestationError) as info:
        await source(PAYLOAD)
    assert info.value.code == "gpu_nras_unavailable"
    assert info.value.message == f"the NRAS JWKS is not a JSON object; {PROCEED}"
    evidence = await source(PAYLOAD)  # the next attestation fetches it again
    verify_nras_response(evidence.response, evidence.jwks, nonce=NONCE, now=CAPTURED_AT)
    await client.aclose()


async def test_a_jwks_of_exactly_the_signing_keys_is_used_from_the_cache() -> None:
    jwks = _load("nras_jwks")
    jwks["keys"] = [key for key in jwks["keys"] if key["kid"] in _signing_kids()]
    nras = Nras(jwks)
    client = _client(nras)
    source = NrasSource(client, url=NRAS_URL, jwks_url=JWKS_URL, clock=lambda: 0.0)
    await source(PAYLOAD)
    evidence = await source(PAYLOAD)
    assert nras.jwks_fetches == 1
    verify_nras_response(evidence.response, evidence.jwks, nonce=NONCE, now=CAPTURED_AT)
    await client.aclose()


async def test_an_unreadable_token_does_not_hide_the_keys_of_the_others() -> None:
    answer = [*_load("nras_response"), "!!.e30.x"]  # read first, and not base64url
    nras = Nras(_jwks_before_rotation(), _load("nras_jwks"), answer=answer)
    client = _client(nras)
    source = NrasSource(client, url=NRAS_URL, jwks_url=JWKS_URL, clock=lambda: 0.0)
    await source(PAYLOAD)
    evidence = await source(PAYLOAD)
    assert nras.jwks_fetches == 2
    assert _signing_kids() <= {key["kid"] for key in evidence.jwks["keys"]}
    await client.aclose()


async def test_a_jwks_key_without_a_kid_does_not_break_the_cache() -> None:
    jwks = _load("nras_jwks")
    jwks["keys"] = [{"kty": "EC"}, {"kty": "EC", "kid": 7}, "junk", *jwks["keys"]]
    nras = Nras(jwks)
    client = _client(nras)
    source = NrasSource(client, url=NRAS_URL, jwks_url=JWKS_URL, clock=lambda: 0.0)
    await source(PAYLOAD)
    evidence = await source(PAYLOAD)
    assert nras.jwks_fetches == 1
    verify_nras_response(evidence.response, evidence.jwks, nonce=NONCE, now=CAPTURED_AT)
    await client.aclose()
