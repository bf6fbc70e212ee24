"""Local listener guards: auth, Host allowlist, in-flight limit, drain (proxy.http.guard)."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.http.guard import (
    DrainController,
    DrainMiddleware,
    HostGuardMiddleware,
    InFlightCounter,
    InFlightLimitMiddleware,
    LocalAuthMiddleware,
    host_part,
    is_loopback,
)

KEYS = ["local-key-one-1111", "local-key-two-2222", "local-key-three-3333"]


async def _ok(_: Request) -> Response:
    return PlainTextResponse("ok")


def tiny_app(**extra: Callable[[Request], Any]) -> Starlette:
    """/healthz, /readyz, /metrics, /v1/models and POST /v1/chat/completions, plus ``extra``."""
    routes = [
        Route("/healthz", _ok),
        Route("/readyz", _ok),
        Route("/metrics", _ok),
        Route("/v1/models", _ok),
        Route("/v1/chat/completions", _ok, methods=["POST"]),
    ]
    routes += [Route(path, handler, methods=["GET", "POST"]) for path, handler in extra.items()]
    return Starlette(routes=routes)


def client(app: ASGIApp, host: str = "127.0.0.1:8000") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url=f"http://{host}")


async def call_raw(app: ASGIApp, scope: dict[str, Any]) -> list[Message]:
    """Call an ASGI app directly with a hand-made scope; return what it sent."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    base: dict[str, Any] = {"type": "http", "method": "GET", "path": "/v1/models", "headers": []}
    await app({**base, **scope}, receive, send)
    return sent


def assert_envelope(response: httpx.Response, status: int, error_type: str, code: str) -> None:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == error_type
    assert body["error"]["code"] == code
    assert body["error"]["param"] is None
    assert body["error"]["message"]


# -- auth ---------------------------------------------------------------------------------------


async def test_auth_off_accepts_and_ignores_any_bearer() -> None:
    app = LocalAuthMiddleware(tiny_app(), [])
    async with client(app) as http:
        assert (await http.get("/v1/models")).status_code == 200
        response = await http.get("/v1/models", headers={"Authorization": "Bearer whatever"})
        assert response.status_code == 200
    assert not app.enabled


async def test_auth_on_requires_one_of_the_keys() -> None:
    app = LocalAuthMiddleware(tiny_app(), KEYS)
    async with client(app) as http:
        missing = await http.get("/v1/models")
        assert_envelope(missing, 401, "authentication_error", "invalid_api_key")
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = await http.get("/v1/models", headers={"Authorization": "Bearer local-key-one-111"})
        assert_envelope(wrong, 401, "authentication_error", "invalid_api_key")
        for key in KEYS:
            ok = await http.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
            assert ok.status_code == 200
            assert ok.text == "ok"
        lower = await http.get("/v1/models", headers={"Authorization": f"bearer {KEYS[1]}"})
        assert lower.status_code == 200
        basic = await http.get("/v1/models", headers={"Authorization": f"Basic {KEYS[0]}"})
        assert basic.status_code == 401
        empty = await http.get("/v1/models", headers={"Authorization": "Bearer "})
        assert empty.status_code == 401
        chat = await http.post("/v1/chat/completions", json={})
        assert chat.status_code == 401


async def test_auth_exempts_probes_but_not_metrics() -> None:
    app = LocalAuthMiddleware(tiny_app(), KEYS)
    async with client(app) as http:
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/readyz")).status_code == 200
        assert (await http.get("/metrics")).status_code == 401


async def test_auth_custom_exempt_paths() -> None:
    app = LocalAuthMiddleware(tiny_app(), KEYS, exempt_paths=("/metrics",))
    async with client(app) as http:
        assert (await http.get("/metrics")).status_code == 200
        assert (await http.get("/healthz")).status_code == 401


async def test_auth_compares_every_key_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    auth = LocalAuthMiddleware(tiny_app(), KEYS)
    # The first key matches, yet every key is still compared (no early exit).
    assert auth.authorized(f"Bearer {KEYS[0]}")
    assert len(calls) == len(KEYS)
    assert {b for _, b in calls} == {key.encode() for key in KEYS}
    calls.clear()
    assert not auth.authorized("Bearer nope")
    assert len(calls) == len(KEYS)


def test_auth_repr_hides_keys() -> None:
    auth = LocalAuthMiddleware(tiny_app(), KEYS)
    text = repr(auth) + str(vars(auth).get("exempt_paths"))
    assert all(key not in text for key in KEYS)
    assert "keys=3" in repr(auth)


async def test_auth_refuses_websocket_without_calling_the_app() -> None:
    called = False

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal called
        called = True

    sent = await call_raw(LocalAuthMiddleware(inner, KEYS), {"type": "websocket", "path": "/ws"})
    assert sent == [{"type": "websocket.close", "code": 1008}]
    assert not called


async def test_auth_ignores_repeated_authorization_headers() -> None:
    auth = LocalAuthMiddleware(tiny_app(), KEYS)
    token = f"Bearer {KEYS[0]}".encode()
    sent = await call_raw(auth, {"headers": [(b"authorization", token), (b"authorization", token)]})
    assert sent[0]["status"] == 401


# -- Host guard ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "localhost:8000",
        "LocalHost.:8000",
        "127.0.0.1",
        "127.0.0.1:8000",
        "[::1]",
        "[::1]:8000",
        "[0:0:0:0:0:0:0:1]:8000",
    ],
)
async def test_host_guard_allows_loopback_names_by_default(host: str) -> None:
    async with client(HostGuardMiddleware(tiny_app()), host="x") as http:
        response = await http.get("/v1/models", headers={"Host": host})
        assert response.status_code == 200


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:8000",
        "127.0.0.1.evil.example",
        "localhost.evil.example:8000",
        "192.168.1.20:8000",
        "[::1",
        "[::1]x",
        "localhost:port",
        "0.0.0.0:8000",
    ],
)
async def test_host_guard_refuses_other_hosts_with_421(host: str) -> None:
    async with client(HostGuardMiddleware(tiny_app()), host="x") as http:
        response = await http.get("/v1/models", headers={"Host": host})
        assert_envelope(response, 421, "invalid_request_error", "host_not_allowed")
        assert host not in response.text


async def test_host_guard_configured_names_and_subdomains() -> None:
    guard = HostGuardMiddleware(tiny_app(), ["proxy", "0.0.0.0", "*.internal.example", "[fd00::5]"])
    async with client(guard, host="x") as http:
        for host in ("proxy:8000", "PROXY", "0.0.0.0:8000", "a.internal.example", "[fd00::5]:80"):
            assert (await http.get("/v1/models", headers={"Host": host})).status_code == 200
        for host in ("internal.example", "xinternal.example", "proxy.evil", "[fd00::6]"):
            assert (await http.get("/v1/models", headers={"Host": host})).status_code == 421


async def test_host_guard_wildcard_allows_everything() -> None:
    guard = HostGuardMiddleware(tiny_app(), ["*"])
    async with client(guard, host="x") as http:
        assert (
            await http.get("/v1/models", headers={"Host": "anything.example"})
        ).status_code == 200
    sent = await call_raw(guard, {"headers": []})
    assert sent[0]["status"] == 200


async def test_host_guard_refuses_missing_or_repeated_host() -> None:
    guard = HostGuardMiddleware(tiny_app())
    missing = await call_raw(guard, {"headers": []})
    assert missing[0]["status"] == 421
    repeated = await call_raw(guard, {"headers": [(b"host", b"localhost"), (b"host", b"evil")]})
    assert repeated[0]["status"] == 421
    single = await call_raw(guard, {"headers": [(b"host", b"localhost")]})
    assert single[0]["status"] == 200


async def test_host_guard_passes_lifespan_and_refuses_websocket() -> None:
    seen: list[str] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    guard = HostGuardMiddleware(inner)
    await call_raw(guard, {"type": "lifespan"})
    assert seen == ["lifespan"]
    sent = await call_raw(guard, {"type": "websocket", "headers": [(b"host", b"evil")]})
    assert sent == [{"type": "websocket.close", "code": 1008}]
    assert seen == ["lifespan"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Example.COM.:8000", "example.com"),
        ("[::1]:8000", "::1"),
        ("::1", "::1"),
        ("[0:0::1]", "::1"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("localhost:", "localhost"),
        ("", None),
        (":8000", None),
        ("[::1", None),
        ("[::1]:x", None),
        ("host:x", None),
    ],
)
def test_host_part(value: str, expected: str | None) -> None:
    assert host_part(value) == expected


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("LOCALHOST.", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.2", False),
        ("example.com", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


# -- in-flight limit ------------------------------------------------------------------------------


class Held:
    """An endpoint that reports when it is entered and finishes only when released."""

    def __init__(self) -> None:
        self.entered: asyncio.Queue[None] = asyncio.Queue()
        self.release = asyncio.Event()

    async def endpoint(self, _: Request) -> Response:
        self.entered.put_nowait(None)
        await self.release.wait()
        return JSONResponse({"done": True})

    async def wait_entered(self, count: int) -> None:
        for _ in range(count):
            await asyncio.wait_for(self.entered.get(), timeout=5)


async def test_in_flight_limit_answers_503_and_recovers() -> None:
    held = Held()
    limiter = InFlightLimitMiddleware(
        tiny_app(**{"/v1/chat/completions/held": held.endpoint}), 2, retry_after_s=7
    )
    async with client(limiter) as http:
        first = [
            asyncio.create_task(http.post("/v1/chat/completions/held", json={})) for _ in range(2)
        ]
        await held.wait_entered(2)
        assert limiter.in_flight == 2

        refused = await http.post("/v1/chat/completions", json={})
        assert_envelope(refused, 503, "server_error", "overloaded")
        assert refused.headers["retry-after"] == "7"
        # Other paths are not counted or limited.
        assert (await http.get("/v1/models")).status_code == 200
        assert limiter.in_flight == 2

        held.release.set()
        done = await asyncio.gather(*first)
        assert [r.status_code for r in done] == [200, 200]
        assert limiter.in_flight == 0
        assert (await http.post("/v1/chat/completions", json={})).status_code == 200
        assert limiter.in_flight == 0


async def test_in_flight_limit_does_not_match_lookalike_paths() -> None:
    held = Held()
    limiter = InFlightLimitMiddleware(tiny_app(**{"/v1/chat/completionsX": held.endpoint}), 1)
    async with client(limiter) as http:
        task = asyncio.create_task(http.post("/v1/chat/completionsX", json={}))
        await held.wait_entered(1)
        assert limiter.in_flight == 0
        held.release.set()
        assert (await task).status_code == 200


async def test_in_flight_released_when_the_app_raises() -> None:
    async def boom(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("crash")

    limiter = InFlightLimitMiddleware(boom, 1)
    with pytest.raises(RuntimeError):
        await call_raw(limiter, {"path": "/chat/completions", "method": "POST"})
    assert limiter.in_flight == 0


async def test_in_flight_shared_counter() -> None:
    counter = InFlightCounter()
    held = Held()
    limiter = InFlightLimitMiddleware(
        tiny_app(**{"/chat/completions": held.endpoint}), 5, counter=counter
    )
    async with client(limiter) as http:
        task = asyncio.create_task(http.post("/chat/completions", json={}))
        await held.wait_entered(1)
        assert counter.in_flight == 1
        held.release.set()
        await task
    assert counter.in_flight == 0


def test_in_flight_limit_rejects_nonsense_limit() -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        InFlightLimitMiddleware(tiny_app(), 0)


# -- drain --------------------------------------------------------------------------------------


async def test_drain_refuses_new_requests_and_lets_in_flight_finish() -> None:
    held = Held()
    controller = DrainController()
    drain = DrainMiddleware(
        tiny_app(**{"/slow": held.endpoint}), controller=controller, retry_after_s=3
    )
    async with client(drain) as http:
        assert (await http.get("/v1/models")).status_code == 200
        task = asyncio.create_task(http.get("/slow"))
        await held.wait_entered(1)
        assert drain.in_flight == 1
        assert not drain.draining

        drain.start_draining()
        assert controller.draining
        refused = await http.get("/v1/models")
        assert_envelope(refused, 503, "server_error", "shutting_down")
        assert refused.headers["retry-after"] == "3"
        assert refused.headers["connection"] == "close"
        assert_envelope(await http.get("/readyz"), 503, "server_error", "shutting_down")
        assert (await http.get("/healthz")).status_code == 200
        # The held request keeps the server busy: waiting for idle times out.
        assert await drain.wait_idle(0.01) is False

        held.release.set()
        finished = await task
        assert finished.status_code == 200
        assert finished.json() == {"done": True}
        assert await drain.wait_idle(5) is True
        assert drain.in_flight == 0


async def test_drain_wait_idle_when_nothing_runs() -> None:
    drain = DrainMiddleware(tiny_app())
    assert await drain.wait_idle(0) is True
    drain.start_draining()
    assert await drain.wait_idle(0) is True


async def test_guards_compose() -> None:
    app: ASGIApp = InFlightLimitMiddleware(tiny_app(), 4)
    app = LocalAuthMiddleware(app, KEYS[:1])
    app = DrainMiddleware(app)
    app = HostGuardMiddleware(app, ["proxy"])
    auth = {"Authorization": f"Bearer {KEYS[0]}"}
    async with client(app, host="proxy:8000") as http:
        assert (await http.post("/v1/chat/completions", json={}, headers=auth)).status_code == 200
        assert (await http.post("/v1/chat/completions", json={})).status_code == 401
        evil = await http.post("/v1/chat/completions", json={}, headers={**auth, "Host": "evil"})
        assert evil.status_code == 421
