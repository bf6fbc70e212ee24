"""The status page (``GET /``) in a real headless Chromium, against the real proxy on loopback.

The proxy's upstream is the simulator; three models are attested by replaying real captures
through the real Attester with real crypto at their capture time (DCAP with their Intel
collateral): ``e2ee-glm-5-1`` (enclave), ``e2ee-venice-uncensored-24b-p`` (aci/1: gateway, allowed
here, as are dev images) and ``e2ee-gemma-3-27b-p`` (refused: its compose's images are not
pinned by digest). The simulated model is attested
over HTTP the usual way. Chromium (Debian's ``chromium``, installed by ``make test`` through
``scripts/ensure_chromium.sh``) renders the page with JavaScript off and the test reads the DOM.
``UPDATE_SCREENSHOT=1`` also writes ``docs/status-page.png`` for the README.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from proxy.attestation import AttestationPolicy
from proxy.core.errors import ProxyError
from proxy.http.app import create_app
from proxy.http.loopback import ThreadedServer
from proxy.http.services import Services
from proxy.http.status_page import CSP
from proxy.service.enclave_keys import AttestedKey, AttestedKeyCache, Attester
from proxy.service.trust_state import TrustState
from tests.conftest import E2EE_MODEL, SIM_API_KEY, proxy_settings
from tests.support.attestation_helpers import (
    FIXTURES_BY_NAME,
    Fixture,
    body_of,
    collateral_of,
    nonce_of,
    time_of,
)

REPO = Path(__file__).resolve().parents[2]
CAPTURES = {
    fixture.model: fixture
    for fixture in (
        FIXTURES_BY_NAME["glm_5_1"],
        FIXTURES_BY_NAME["live_evidence_aci"],
        FIXTURES_BY_NAME["gemma_3_27b_p"],
    )
}


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail(
            "Debian's chromium is not installed: run `make test` (or "
            "`scripts/ensure_chromium.sh`), which installs it, then run this test again"
        )
    return path


def run_chromium(url: str, *extra: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [
                chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-javascript",
                f"--user-data-dir={profile}",
                *extra,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


class Replay:
    """Serves one real capture at a time: its body, nonce, capture time and collateral."""

    def __init__(self) -> None:
        self.current: Fixture | None = None

    async def fetch(self, model: str, nonce_hex: str) -> Mapping[str, Any]:
        assert self.current is not None
        assert self.current.model == model
        return body_of(self.current)

    async def collateral(self, quote: bytes) -> Mapping[str, Any]:
        assert self.current is not None
        return collateral_of(self.current)

    def nonce(self) -> bytes:
        assert self.current is not None
        return nonce_of(self.current)

    def clock(self) -> float:
        assert self.current is not None
        return float(time_of(self.current))


@pytest.fixture
def status_proxy(sim_server: ThreadedServer) -> Iterator[ThreadedServer]:
    settings = proxy_settings(sim_server.url)
    app = create_app(settings, api_key=SecretStr(SIM_API_KEY))
    services: Services = app.state.services
    replay = Replay()
    replayed = Attester(
        replay.fetch,
        AttestationPolicy(
            nvidia="nonce",
            gateway_models="allow",
            allow_dev_image=True,
            trust_levels={"e2ee-gemma-3-27b-p": "enclave"},
        ),
        ttl_s=10**9,  # replayed captures are months old: keep their keys on the page
        collateral=replay.collateral,
        make_nonce=replay.nonce,
        clock=replay.clock,
        trust_state=TrustState(None),
    )

    async def attest(model: str) -> AttestedKey:
        if model in CAPTURES:
            replay.current = CAPTURES[model]
            return await replayed.attest(model)
        return await services.attester.attest(model)

    keys = AttestedKeyCache(attest, failure_backoff_s=10**9)

    async def prime() -> None:
        for model in CAPTURES:
            with contextlib.suppress(ProxyError):  # the refused capture shows as FAILED
                await keys.get(model)

    asyncio.run(prime())
    app.state.services = replace(services, keys=keys)
    server = ThreadedServer(app).start()
    yield server
    server.stop()


def test_the_status_page_renders_each_models_trust_and_verdict(
    status_proxy: ThreadedServer,
) -> None:
    attested = httpx.get(f"{status_proxy.url}/v1/attestation/{E2EE_MODEL}", timeout=30)
    assert attested.status_code == 200, attested.text
    response = httpx.get(status_proxy.url + "/", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-security-policy"] == CSP
    assert "<script" not in response.text

    dom = run_chromium(status_proxy.url + "/", "--dump-dom")
    assert 'id="model-e2ee-glm-5-1" data-trust="enclave" data-verdict="passed"' in dom
    assert (
        'id="model-e2ee-venice-uncensored-24b-p" data-trust="gateway" data-verdict="passed"' in dom
    )
    assert 'id="model-e2ee-gemma-3-27b-p"' in dom
    assert 'data-verdict="failed"' in dom
    assert "compose_images_pinned" in dom  # the refusal names what failed
    assert f'id="model-{E2EE_MODEL}" data-trust="enclave" data-verdict="passed"' in dom
    assert "GATEWAY TRUST" in dom
    assert "ENCLAVE TRUST" in dom
    assert "the inference host" in dom  # what is not attested on a gateway model
    assert "custody_kms_root" in dom
    assert "keyset_digest" in dom
    assert "What this proxy cannot vouch for" in dom
    assert "WEAKENED: attestation.dcap = off" in dom  # the simulator's settings say so

    with tempfile.TemporaryDirectory() as folder:
        shot = Path(folder) / "status.png"
        run_chromium(status_proxy.url + "/", f"--screenshot={shot}", "--window-size=1200,1400")
        assert shot.stat().st_size > 10_000
        if os.environ.get("UPDATE_SCREENSHOT") == "1":
            shutil.copy(shot, REPO / "docs" / "status-page.png")


def test_the_page_escapes_what_the_upstream_says(make_proxy: Any) -> None:
    server = make_proxy()
    services = server.app.state.services
    hostile = "<img src=x onerror=alert(1)>"
    services.keys._failures[hostile] = (10**12, ProxyError(hostile))
    text = httpx.get(server.url + "/", timeout=30).text
    assert hostile not in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text
