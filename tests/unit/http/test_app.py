"""create_app in process (httpx's ASGI transport, an in-memory upstream): what it is given
reaches the services, the guards get their settings, no framework pages are served, and the
lifespan keeps the warm-up models attested and stops that work at the end."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from proxy.http.app import create_app
from proxy.http.services import Services
from proxy.settings import Settings

MODEL = "e2ee-warm-model-q7"
OTHER_MODEL = "e2ee-other-model-q8"


def e2ee(model: str) -> dict[str, Any]:
    return {"id": model, "model_spec": {"capabilities": {"supportsE2EE": True}}}


def settings(**sections: Any) -> Settings:
    return Settings.model_validate(sections)


def services_of(app: FastAPI) -> Services:
    services: Services = app.state.services
    return services


async def call(
    app: FastAPI, method: str, path: str, *, host: str = "127.0.0.1", **options: Any
) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=f"http://{host}") as client:
        return await client.request(method, path, **options)


class Upstream:
    """An in-memory Venice: lists two E2EE models at once; records every other request and
    answers it 503 once ``gate`` is open."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.reached = asyncio.Event()
        self.arrived = asyncio.Condition()
        self.gate = asyncio.Event()
        self.gate.set()

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):  # the catalogue: at once
            return httpx.Response(200, json={"data": [e2ee(MODEL), e2ee(OTHER_MODEL)]})
        self.requests.append(request)
        self.reached.set()
        async with self.arrived:
            self.arrived.notify_all()
        await self.gate.wait()
        return httpx.Response(503, json={"error": "busy"})

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handle))


@pytest.fixture
def upstream() -> Upstream:
    return Upstream()


async def test_readiness_reflects_the_api_key_and_demo_mode() -> None:
    without = await call(create_app(settings()), "GET", "/readyz")
    assert without.status_code == 503
    assert without.json()["demo"] is False
    assert any("no Venice API key" in reason for reason in without.json()["reasons"])
    keyed = await call(create_app(settings(), api_key=SecretStr("venice-key")), "GET", "/readyz")
    assert (keyed.status_code, keyed.json()) == (200, {"ready": True, "demo": False, "reasons": []})
    demo = await call(create_app(settings(), demo=True), "GET", "/readyz")
    assert (demo.status_code, demo.json()) == (200, {"ready": True, "demo": True, "reasons": []})


async def test_the_given_http_client_and_api_key_carry_the_upstream_requests(
    upstream: Upstream,
) -> None:
    app = create_app(settings(), api_key=SecretStr("venice-key-7"), http_client=upstream.client())
    answer = await call(app, "GET", f"/v1/attestation/{MODEL}")
    assert answer.status_code >= 500  # the in-memory upstream is busy
    assert upstream.requests
    assert {request.headers["authorization"] for request in upstream.requests} == {
        "Bearer venice-key-7"
    }


async def test_no_framework_pages_or_schema_are_served() -> None:
    app = create_app(settings())
    assert app.title == "venice-e2ee-proxy"
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
        answer = await call(app, "GET", path)
        assert answer.status_code == 404, path
        assert answer.json()["error"]["code"] == "unknown_endpoint", path  # our envelope


async def test_the_lifespan_keeps_the_warm_up_models_attested_then_stops(
    upstream: Upstream,
) -> None:
    app = create_app(
        settings(attestation={"warm_up": [MODEL]}),
        api_key=SecretStr("k"),
        http_client=upstream.client(),
    )
    services = services_of(app)
    async with app.router.lifespan_context(app):
        await asyncio.wait_for(upstream.reached.wait(), 5)  # attesting the warm-up model
        assert any(MODEL in str(request.url) for request in upstream.requests)
        running = list(services.background)
        assert running
    assert all(task.done() for task in running)  # stopped with the app


async def test_the_guards_get_the_allowed_hosts_and_the_bound_address() -> None:
    app = create_app(settings(server={"allowed_hosts": ["proxy.internal"], "host": "10.1.2.3"}))
    for host in ("proxy.internal", "10.1.2.3:8000", "localhost"):
        assert (await call(app, "GET", "/healthz", host=host)).status_code == 200, host
    refused = await call(app, "GET", "/healthz", host="evil.example")
    assert refused.status_code == 421
    assert refused.headers["x-request-id"]  # the request id is outside the Host guard


@pytest.mark.parametrize(("bound", "host"), [("0.0.0.0", "0.0.0.0"), ("::", "[::]")])
async def test_a_wildcard_bind_address_is_not_an_allowed_host(bound: str, host: str) -> None:
    """Listening on every interface does not make the wildcard a name a page may use
    (``http://0.0.0.0:8000`` reaches a local server from a browser)."""
    app = create_app(settings(server={"host": bound}))
    assert (await call(app, "GET", "/healthz", host=host)).status_code == 421
    assert (await call(app, "GET", "/healthz")).status_code == 200


async def test_an_allowed_browser_origin_gets_cors_and_a_preflight_needs_no_key() -> None:
    origin = "https://app.example"
    app = create_app(settings(server={"cors_origins": [origin], "api_keys": ["local-key"]}))
    preflight = await call(
        app,
        "OPTIONS",
        "/v1/chat/completions",
        headers={"origin": origin, "access-control-request-method": "POST"},
    )
    assert preflight.status_code < 300
    assert preflight.headers["access-control-allow-origin"] == origin
    refused = await call(app, "POST", "/v1/chat/completions", json={}, headers={"origin": origin})
    assert refused.status_code == 401  # the key is still asked for, with CORS on the refusal
    assert refused.headers["access-control-allow-origin"] == origin
    other = await call(app, "GET", "/healthz", headers={"origin": "https://evil.example"})
    assert other.status_code == 403


async def test_draining_the_services_refuses_new_requests() -> None:
    app = create_app(settings(), api_key=SecretStr("k"))
    services = services_of(app)
    services.drain.start_draining()
    refused = await call(app, "POST", "/v1/chat/completions", json={})
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "shutting_down"
    assert (await call(app, "GET", "/readyz")).status_code == 503


def in_flight(scraped: httpx.Response) -> float:
    [line] = [
        line for line in scraped.text.splitlines() if line.startswith("venice_proxy_in_flight ")
    ]
    return float(line.split()[1])


async def test_the_in_flight_gauge_counts_the_chat_requests_in_progress(upstream: Upstream) -> None:
    """Its help says "Chat requests in progress": not the scrape asking, nor other requests."""
    app = create_app(settings(), api_key=SecretStr("k"), http_client=upstream.client())
    upstream.gate.clear()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        assert in_flight(await client.get("/metrics")) == 0
        chat = asyncio.create_task(
            client.post(
                "/v1/chat/completions",
                json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
            )
        )
        attestation = asyncio.create_task(client.get(f"/v1/attestation/{OTHER_MODEL}"))
        async with upstream.arrived:  # both are waiting on the upstream
            await asyncio.wait_for(
                upstream.arrived.wait_for(lambda: len(upstream.requests) >= 2), 5
            )
        assert in_flight(await client.get("/metrics")) == 1  # the chat request only
        upstream.gate.set()
        assert (await chat).status_code >= 500
        assert (await attestation).status_code >= 500
        assert in_flight(await client.get("/metrics")) == 0
