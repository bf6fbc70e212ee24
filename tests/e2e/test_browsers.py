"""Browser origins over a real socket: CORS for allowed origins, 403 for every other.

Headers are the ones openai-node and the Vercel AI SDK really send in a browser (the JS
matrix in tests/e2e/test_js_clients.py replays openai-node's own preflight as well).
"""

from __future__ import annotations

import httpx
import pytest

from proxy.http.loopback import ThreadedServer
from proxy.simulator import SimulatorState
from tests.conftest import CANARY, E2EE_MODEL, ProxyFactory

APP = "http://app.local:5173"
OPENAI_NODE_HEADERS = (
    "authorization,content-type,x-stainless-arch,x-stainless-lang,x-stainless-os,"
    "x-stainless-package-version,x-stainless-retry-count,x-stainless-runtime,"
    "x-stainless-runtime-version,x-stainless-timeout"
)
BODY = {"model": E2EE_MODEL, "messages": [{"role": "user", "content": CANARY}]}


def preflight(origin: str, headers: str = OPENAI_NODE_HEADERS) -> dict[str, str]:
    return {
        "origin": origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": headers,
    }


def chat_requests(state: SimulatorState) -> int:
    return sum(1 for r in state.requests if r.path.endswith("/chat/completions"))


def test_default_settings_refuse_browser_origins_naming_the_setting(
    proxy: ThreadedServer, sim_state: SimulatorState
) -> None:
    answer = httpx.options(proxy.url + "/v1/chat/completions", headers=preflight(APP))
    assert answer.status_code == 403
    error = answer.json()["error"]
    assert error["code"] == "origin_not_allowed"
    assert "server.cors_origins" in error["message"]
    assert APP in error["message"]
    assert answer.headers["x-request-id"]
    # A cross-site POST without a preflight (fetch no-cors with a Blob body, no content type)
    # is refused before any work: nothing reaches the upstream.
    sim_state.reset()
    sneaky = httpx.post(
        proxy.url + "/v1/chat/completions",
        content=b'{"model": "e2ee-simulated-near", "messages": [{"role": "user", "content": "x"}]}',
        headers={"origin": "https://evil.example"},
    )
    assert sneaky.status_code == 403
    assert sneaky.json()["error"]["code"] == "origin_not_allowed"
    assert chat_requests(sim_state) == 0
    for path in ("/v1/models", "/v1/attestation/" + E2EE_MODEL, "/healthz"):
        assert httpx.get(proxy.url + path, headers={"origin": APP}).status_code == 403


def test_requests_without_origin_are_unaffected(proxy: ThreadedServer) -> None:
    answer = httpx.post(proxy.url + "/v1/chat/completions", json=BODY)
    assert answer.status_code == 200
    assert "access-control-allow-origin" not in answer.headers


def test_allowed_origin_preflight_reflects_sdk_headers(make_proxy: ProxyFactory) -> None:
    server = make_proxy(server={"cors_origins": [APP + "/"]})
    answer = httpx.options(server.url + "/v1/chat/completions", headers=preflight(APP))
    assert answer.status_code == 204
    assert answer.headers["access-control-allow-origin"] == APP
    allowed = {h.strip() for h in answer.headers["access-control-allow-headers"].split(",")}
    assert set(OPENAI_NODE_HEADERS.split(",")) <= allowed
    assert "POST" in answer.headers["access-control-allow-methods"]
    assert "origin" in answer.headers["vary"].lower()
    assert answer.headers["x-request-id"]
    ai_sdk = httpx.options(
        server.url + "/v1/responses",
        headers={
            **preflight(APP, "authorization, content-type, openai-beta, openai-organization"),
            "access-control-request-private-network": "true",
        },
    )
    assert ai_sdk.status_code == 204
    assert "openai-beta" in ai_sdk.headers["access-control-allow-headers"]
    assert ai_sdk.headers["access-control-allow-private-network"] == "true"
    junk = httpx.options(server.url + "/v1/models", headers=preflight(APP, "x-ok, bad header, (x)"))
    assert junk.headers["access-control-allow-headers"] == "x-ok"


def test_allowed_origin_gets_cors_headers_on_answers_and_errors(
    make_proxy: ProxyFactory,
) -> None:
    server = make_proxy(server={"cors_origins": [APP], "api_keys": ["local-key-1"]})
    ok = httpx.post(
        server.url + "/v1/chat/completions",
        json=BODY,
        headers={"origin": APP, "authorization": "Bearer local-key-1"},
    )
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == APP
    exposed = ok.headers["access-control-expose-headers"]
    assert "x-request-id" in exposed
    assert "x-venice-proxy-e2ee" in exposed
    unauthorized = httpx.post(
        server.url + "/v1/chat/completions", json=BODY, headers={"origin": APP}
    )
    assert unauthorized.status_code == 401
    assert unauthorized.headers["access-control-allow-origin"] == APP
    # The preflight itself needs no key (browsers never send one with it).
    assert httpx.options(server.url + "/v1/models", headers=preflight(APP)).status_code == 204
    other = httpx.post(
        server.url + "/v1/chat/completions",
        json=BODY,
        headers={"origin": "http://app.local:5174", "authorization": "Bearer local-key-1"},
    )
    assert other.status_code == 403


def test_same_origin_pages_are_allowed(proxy: ThreadedServer) -> None:
    own = f"http://127.0.0.1:{proxy.port}"
    answer = httpx.get(proxy.url + "/v1/models", headers={"origin": own})
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == own


@pytest.mark.parametrize("origin", ["null", "http://127.0.0.1:1", "https://127.0.0.1"])
def test_lookalike_origins_are_refused(proxy: ThreadedServer, origin: str) -> None:
    answer = httpx.get(proxy.url + "/v1/models", headers={"origin": origin})
    assert answer.status_code == 403


def test_wildcard_allows_any_origin(make_proxy: ProxyFactory) -> None:
    server = make_proxy(server={"cors_origins": ["*"]})
    answer = httpx.options(server.url + "/v1/models", headers=preflight("https://any.example"))
    assert answer.status_code == 204
    assert answer.headers["access-control-allow-origin"] == "https://any.example"
