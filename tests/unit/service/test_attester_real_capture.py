"""The real I/O shell on a real capture: Attester + collateral file + NRAS over a fake transport.

Everything is real but the network: Venice's captured attestation for e2ee-qwen3-5-122b-a10b,
Intel's collateral for its quote, NVIDIA's NRAS answer and JWKS for its 8 GPUs, verified at the
capture time with the capture's nonce. The NRAS round trip goes through httpx with a
MockTransport that answers as NRAS did.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.attestation import AttestationPolicy
from proxy.core.errors import AttestationError
from proxy.observability.audit import AuditLog
from proxy.service.dcap_collateral import CollateralCache, file_fetcher, next_update, platform_key
from proxy.service.enclave_keys import Attester
from proxy.service.nras_client import NrasSource
from proxy.venice.client import ServiceClient
from tests.support.fixtures import FIXTURES_DIR

FIXTURES = FIXTURES_DIR / "attestations"
PREFIX = "venice_qwen3_5_122b_20260424"
MODEL = "e2ee-qwen3-5-122b-a10b"
NONCE = bytes.fromhex("ac82eb750ec4cfbb273f90d33567776bfae8657e2a43f6dff2f3adad9b86095a")
CAPTURED_AT = 1776995921
NRAS_URL = "https://nras.test/v3/attest/gpu"
JWKS_URL = "https://nras.test/.well-known/jwks.json"


def _load(name: str) -> Any:
    return json.loads((FIXTURES / f"{PREFIX}_{name}.json").read_text())


class FakeNras:
    """Answers like NRAS did for this capture, and records what it was sent."""

    def __init__(self, *, tamper: bool = False) -> None:
        self.posted: list[Any] = []
        self.jwks_fetches = 0
        self.tamper = tamper

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url == httpx.URL(JWKS_URL):
            self.jwks_fetches += 1
            return httpx.Response(200, json=_load("nras_jwks"))
        assert request.url == httpx.URL(NRAS_URL)
        assert "authorization" not in request.headers  # never the Venice key
        self.posted.append(json.loads(request.content))
        answer = _load("nras_response")
        if self.tamper:
            token = answer[0][1]
            answer[0][1] = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        return httpx.Response(200, json=answer)


def _attester(
    tmp_path: Path, nras: FakeNras, *, audit: AuditLog | None = None
) -> tuple[Attester, ServiceClient]:
    collateral_path = tmp_path / "collateral.json"
    collateral_path.write_text((FIXTURES / f"{PREFIX}_collateral.json").read_text())
    client = ServiceClient(http_client=httpx.AsyncClient(transport=httpx.MockTransport(nras)))

    async def fetch_attestation(model: str, nonce_hex: str) -> Any:
        assert model == MODEL
        assert nonce_hex == NONCE.hex()
        return _load("attestation")

    attester = Attester(
        fetch_attestation,
        AttestationPolicy(dcap="require", nvidia="nras"),
        ttl_s=600,
        collateral=CollateralCache(file_fetcher(collateral_path)).get,
        nras=NrasSource(client, url=NRAS_URL, jwks_url=JWKS_URL),
        audit=audit,
        clock=lambda: float(CAPTURED_AT),
        make_nonce=lambda: NONCE,
    )
    return attester, client


async def test_real_capture_passes_every_check(tmp_path: Path) -> None:
    nras = FakeNras()
    audit = AuditLog(tmp_path / "audit.jsonl")
    attester, client = _attester(tmp_path, nras, audit=audit)
    key = await attester.attest(MODEL)
    await client.aclose()
    report = key.report
    assert report.passed
    checks = {check.code: check for check in report.checks}
    for code in ("dcap", "gpu_nras", "gpu_nonce", "event_log_replay", "report_data_nonce"):
        assert checks[code].ok is True, (code, checks[code].detail)
        assert checks[code].enforced is True
    assert report.tcb_status == "UpToDate"
    assert key.public_key[0] == 4
    assert len(key.public_key) == 65
    # the GPU evidence posted to NRAS is the capture's own payload, with our nonce
    (posted,) = nras.posted
    assert posted["nonce"] == NONCE.hex()
    assert len(posted["evidence_list"]) == 8
    # one audit line, public data only
    (line,) = (tmp_path / "audit.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["model"] == MODEL
    assert record["signing_address"] == key.signing_address
    assert record["tcb_status"] == "UpToDate"
    assert set(record["measurements"]) == {
        "mr_td",
        "mr_config_id",
        "rtmr0",
        "rtmr1",
        "rtmr2",
        "rtmr3",
    }
    assert all(record["checks"][code] is not False for code in record["checks"])


async def test_tampered_nras_token_fails_closed(tmp_path: Path) -> None:
    attester, client = _attester(tmp_path, FakeNras(tamper=True))
    with pytest.raises(AttestationError) as info:
        await attester.attest(MODEL)
    await client.aclose()
    assert "gpu_nras" in str(info.value)


async def test_nras_unreachable_fails_closed(tmp_path: Path) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    client = ServiceClient(http_client=httpx.AsyncClient(transport=httpx.MockTransport(refuse)))
    source = NrasSource(client, url=NRAS_URL, jwks_url=JWKS_URL)
    with pytest.raises(AttestationError) as info:
        await source({"nonce": NONCE.hex(), "evidence_list": []})
    assert info.value.code == "gpu_nras_unavailable"
    await client.aclose()


async def test_jwks_is_cached() -> None:
    nras = FakeNras()
    client = ServiceClient(http_client=httpx.AsyncClient(transport=httpx.MockTransport(nras)))
    source = NrasSource(client, url=NRAS_URL, jwks_url=JWKS_URL)
    payload = {"nonce": NONCE.hex(), "evidence_list": []}
    await source(payload)
    await source(payload)
    assert nras.jwks_fetches == 1
    assert len(nras.posted) == 2
    await client.aclose()


async def test_collateral_is_cached_per_platform_until_next_update(tmp_path: Path) -> None:
    collateral = json.loads((FIXTURES / f"{PREFIX}_collateral.json").read_text())
    quote = bytes.fromhex(_load("attestation")["intel_quote"])
    calls: list[bytes] = []

    async def fetch(raw: bytes) -> Any:
        calls.append(raw)
        return collateral

    expiry = next_update(collateral)
    assert expiry is not None
    now = [expiry - 100.0]
    cache = CollateralCache(fetch, max_age_s=10**9, clock=lambda: now[0])
    await cache.get(quote)
    await cache.get(quote)
    assert len(calls) == 1
    now[0] = expiry + 1
    await cache.get(quote)
    assert len(calls) == 2
    assert platform_key(quote) == platform_key(quote + b"\x00" * 8)


async def test_missing_collateral_file_is_a_clear_error(tmp_path: Path) -> None:
    fetch = file_fetcher(tmp_path / "missing.json")
    with pytest.raises(AttestationError) as info:
        await fetch(b"quote")
    assert info.value.code == "dcap_collateral_unavailable"
