"""The trust level is shown everywhere: response header, /v1/models, /v1/attestation, log line."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from proxy.http.loopback import ThreadedServer
from tests.conftest import CANARY, E2EE_MODEL


def test_the_trust_level_is_on_the_response_the_models_and_the_report(
    proxy: ThreadedServer, log_lines: Callable[[], list[str]]
) -> None:
    response = httpx.post(
        f"{proxy.url}/v1/chat/completions",
        json={"model": E2EE_MODEL, "messages": [{"role": "user", "content": CANARY}]},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-venice-proxy-trust"] == "enclave"
    assert response.headers["x-venice-proxy-e2ee"] == "true"

    models = httpx.get(f"{proxy.url}/v1/models", timeout=30).json()["data"]
    levels = {item["id"]: item["trust_level"] for item in models}
    assert levels[E2EE_MODEL] == "enclave"
    assert levels["e2ee-simulated-reasoning"] in (None, "enclave")

    report = httpx.get(f"{proxy.url}/v1/attestation/{E2EE_MODEL}", timeout=30).json()
    assert report["trust_level"] == "enclave"
    assert report["report"]["trust_level"] == "enclave"
    assert report["report"]["not_attested"]

    lines = log_lines()
    assert any('"trust_level": "enclave"' in line and "chat_request" in line for line in lines)
