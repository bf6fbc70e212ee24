"""Local listener guards: auth, Host allowlist, in-flight limit, drain (proxy.http.guard)."""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Callable, Iterator
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


@pytest.fixture(autouse=True)
def _fresh_host_cache() -> Iterator[None]:
    """Each test parses its Host values afresh (under mutation testing, the cache would hand
    it what the unmutated run parsed)."""
    host_part.cache_clear()
    yield
    host_part.cache_clear()


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
        # The first "]" closes the literal: what follows must be a port or nothing.
        ("[::1]]", None),
        ("[a]b]", None),
        ("[::1]:80]", None),
        ("[]", None),
        ("[]:80", None),
        ("[.]", None),
        ("HOST.EXAMPLE..", "host.example"),
        (" [::1]:8000 ", "::1"),
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
        ("[::1x", False),
        ("x::1]", False),
        ("[127.0.0.1", False),
        (" 127.0.0.1 ", True),
        ("[::ffff:127.0.0.1]", True),
        ("::ffff:10.0.0.1", False),
        ("localhost..", True),
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


# -- the exact answers and boundaries, at the ASGI level ---------------------------------------

HOST_MESSAGE = (
    "this server does not answer for the requested Host; add the name to server.allowed_hosts"
)
AUTH_MESSAGE = "invalid or missing local API key: send Authorization: Bearer <server.api_keys>"
OVERLOADED_MESSAGE = (
    "the proxy is at its limit of concurrent requests (server.max_in_flight); retry shortly"
)
DRAIN_MESSAGE = "the proxy is shutting down; retry shortly"
OK: list[Message] = [
    {"type": "http.response.start", "status": 200, "headers": []},
    {"type": "http.response.body", "body": b"ok", "more_body": False},
]


def refusal(
    status: int,
    message: str,
    error_type: str,
    code: str,
    *headers: tuple[bytes, bytes],
) -> list[Message]:
    """The exact two messages of a guard's refusal: compact JSON, its length, extra headers."""
    body = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    payload = json.dumps(body, separators=(",", ":")).encode()
    return [
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        },
        {"type": "http.response.body", "body": payload, "more_body": False},
    ]


HOST_REFUSAL = refusal(421, HOST_MESSAGE, "invalid_request_error", "host_not_allowed")
AUTH_REFUSAL = refusal(
    401,
    AUTH_MESSAGE,
    "authentication_error",
    "invalid_api_key",
    (b"www-authenticate", b"Bearer"),
)


def overloaded(retry_after: bytes) -> list[Message]:
    return refusal(
        503, OVERLOADED_MESSAGE, "server_error", "overloaded", (b"retry-after", retry_after)
    )


def shutting_down(retry_after: bytes) -> list[Message]:
    return refusal(
        503,
        DRAIN_MESSAGE,
        "server_error",
        "shutting_down",
        (b"retry-after", retry_after),
        (b"connection", b"close"),
    )


class Recorder:
    """An ASGI app that records each scope and its first received message, and answers http
    with 200 "ok"."""

    def __init__(self) -> None:
        self.scopes: list[Scope] = []
        self.received: list[Message] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope)
        self.received.append(await receive())
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok", "more_body": False})

    @property
    def paths(self) -> list[str]:
        return [scope["path"] for scope in self.scopes]


def host(value: bytes) -> dict[str, Any]:
    return {"headers": [(b"host", value)]}


def bearer(value: bytes, path: str = "/v1/models") -> dict[str, Any]:
    return {"path": path, "headers": [(b"authorization", value)]}


async def test_the_host_refusal_is_exactly_a_421_envelope() -> None:
    inner = Recorder()
    guard = HostGuardMiddleware(inner)
    assert await call_raw(guard, host(b"evil.example")) == HOST_REFUSAL
    assert await call_raw(guard, {"headers": []}) == HOST_REFUSAL
    assert inner.scopes == []
    assert await call_raw(guard, host(b"localhost:8000")) == OK
    assert inner.paths == ["/v1/models"]
    # The app reads the request through the receive it was given.
    assert inner.received == [{"type": "http.request", "body": b"", "more_body": False}]


async def test_the_host_header_name_is_matched_in_any_case() -> None:
    guard = HostGuardMiddleware(Recorder())
    assert await call_raw(guard, {"headers": [(b"Host", b"localhost")]}) == OK
    assert await call_raw(guard, {"headers": [(b"HOST", b"evil.example")]}) == HOST_REFUSAL
    twice = {"headers": [(b"Host", b"localhost"), (b"host", b"localhost")]}
    assert await call_raw(guard, twice) == HOST_REFUSAL


async def test_a_scope_without_headers_has_no_host() -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:  # pragma: no cover - never called
        raise AssertionError

    await HostGuardMiddleware(Recorder())({"type": "http", "path": "/"}, receive, send)
    assert sent == HOST_REFUSAL


@pytest.mark.parametrize(
    "value",
    [
        b"localhost.",
        b"LOCALHOST",
        b"localhost.:8000",
        b"127.0.0.1.",
        b"[::1]:1",
        b"[0000::0001]",
        b" localhost ",
    ],
)
async def test_host_forms_of_the_loopback_names(value: bytes) -> None:
    assert await call_raw(HostGuardMiddleware(Recorder()), host(value)) == OK


@pytest.mark.parametrize(
    "value",
    [
        b"localhost:80:80",
        b"[::1]:",
        b"[::1]:80x",
        b"127.0.0.2",
        b"[::2]",
        b"localhost.evil",
        b"a.calhost",
        b"1.7.0.0.1",
        b".localhost",
        b"*",
        b"",
    ],
)
async def test_host_forms_that_are_refused_by_default(value: bytes) -> None:
    assert await call_raw(HostGuardMiddleware(Recorder()), host(value)) == HOST_REFUSAL


@pytest.mark.parametrize(
    ("entries", "allowed", "refused"),
    [
        (
            ["*.Internal.Example."],
            [b"a.internal.example", b"A.B.INTERNAL.EXAMPLE:443", b"x.internal.example."],
            [b"internal.example", b"xinternal.example", b"*.internal.example.evil"],
        ),
        # Without the dot it is no wildcard, and no exact name either.
        (["*example.com"], [], [b"*example.com", b"a.example.com", b"example.com"]),
        ([" * "], [b"anything.example", b"*"], []),
        (["*."], [], [b"a.", b"a"]),
        (
            ["Proxy.Local.", "[FD00::5]", "10.0.0.7:9000"],
            [b"proxy.local:1", b"[fd00::5]", b"10.0.0.7"],
            [b"proxy", b"[fd00::6]"],
        ),
        ([":8000", "[::1", ""], [b"localhost"], [b"", b":8000"]),
    ],
)
async def test_configured_hosts_exact_names_and_wildcard_subdomains(
    entries: list[str], allowed: list[bytes], refused: list[bytes]
) -> None:
    guard = HostGuardMiddleware(Recorder(), entries)
    for value in allowed:
        assert await call_raw(guard, host(value)) == OK, value
    for value in refused:
        assert await call_raw(guard, host(value)) == HOST_REFUSAL, value


def test_host_guard_allows_with_none_only_for_the_star() -> None:
    assert not HostGuardMiddleware(Recorder()).allows(None)
    assert HostGuardMiddleware(Recorder(), ["*"]).allows(None)
    assert not HostGuardMiddleware(Recorder(), ["*.x"]).allows(None)
    assert not HostGuardMiddleware(Recorder()).allows("[::1")


async def test_host_guard_passes_an_allowed_websocket_and_lifespan_untouched() -> None:
    inner = Recorder()
    guard = HostGuardMiddleware(inner)
    assert await call_raw(guard, {"type": "websocket", **host(b"localhost")}) == []
    assert await call_raw(guard, {"type": "lifespan", **host(b"evil")}) == []
    assert [scope["type"] for scope in inner.scopes] == ["websocket", "lifespan"]


async def test_the_auth_refusal_is_exactly_a_401_envelope_with_www_authenticate() -> None:
    inner = Recorder()
    auth = LocalAuthMiddleware(inner, KEYS)
    assert await call_raw(auth, {"headers": []}) == AUTH_REFUSAL
    assert await call_raw(auth, bearer(b"Bearer nope")) == AUTH_REFUSAL
    assert inner.scopes == []
    assert await call_raw(auth, bearer(f"Bearer {KEYS[2]}".encode())) == OK


@pytest.mark.parametrize(
    "value",
    [
        f"Bearer {KEYS[0]}",
        f"bearer {KEYS[1]}",
        f"BEARER {KEYS[2]}",
        f"Bearer  {KEYS[0]}",
        f"  Bearer {KEYS[0]}  ",
        f"Bearer \t{KEYS[0]}",
    ],
)
async def test_auth_accepts_every_spelling_of_bearer_and_spacing(value: str) -> None:
    assert await call_raw(LocalAuthMiddleware(Recorder(), KEYS), bearer(value.encode())) == OK


@pytest.mark.parametrize(
    "value",
    [
        KEYS[0],
        f"{KEYS[0]} Bearer",
        f"Bearer{KEYS[0]}",
        f"Basic {KEYS[0]}",
        f"Bearerx {KEYS[0]}",
        f"Bearer {KEYS[0]}x",
        f"Bearer {KEYS[0][:-1]}",
        f"Bearer {KEYS[0]} {KEYS[0]}",
        f"Bearer {KEYS[0].upper()}",
        "Bearer",
        "Bearer ",
        "",
    ],
)
async def test_auth_refuses_anything_but_bearer_and_a_whole_key(value: str) -> None:
    auth = LocalAuthMiddleware(Recorder(), KEYS)
    assert await call_raw(auth, bearer(value.encode())) == AUTH_REFUSAL


async def test_a_key_with_a_space_in_it_is_the_whole_token() -> None:
    auth = LocalAuthMiddleware(Recorder(), ["two words"])
    assert await call_raw(auth, bearer(b"Bearer two words")) == OK
    assert await call_raw(auth, bearer(b"Bearer words")) == AUTH_REFUSAL


async def test_a_non_ascii_key_is_compared_as_utf8() -> None:
    auth = LocalAuthMiddleware(Recorder(), ["cl\u00e9"])
    assert auth.authorized("Bearer cl\u00e9")
    assert not auth.authorized("Bearer cle")


def test_empty_keys_are_ignored() -> None:
    only_empty = LocalAuthMiddleware(Recorder(), ["", ""])
    assert only_empty.enabled is False
    assert only_empty.authorized(None)
    assert only_empty.authorized("Basic whatever")
    mixed = LocalAuthMiddleware(Recorder(), ["", KEYS[0]])
    assert mixed.enabled is True
    assert repr(mixed) == "LocalAuthMiddleware(keys=1, exempt=['/healthz', '/readyz'])"
    assert not mixed.authorized("Bearer ")
    assert not mixed.authorized(None)
    assert mixed.authorized(f"Bearer {KEYS[0]}")


def test_auth_with_keys_refuses_a_missing_header() -> None:
    assert LocalAuthMiddleware(Recorder(), KEYS).authorized(None) is False


@pytest.mark.parametrize("matching", range(len(KEYS)))
def test_auth_accepts_whichever_key_matches(matching: int) -> None:
    auth = LocalAuthMiddleware(Recorder(), KEYS)
    assert auth.authorized(f"Bearer {KEYS[matching]}") is True


def test_auth_repr_is_the_key_count_and_the_exempt_paths() -> None:
    auth = LocalAuthMiddleware(Recorder(), KEYS, exempt_paths=("/b", "/a"))
    assert repr(auth) == "LocalAuthMiddleware(keys=3, exempt=['/a', '/b'])"


async def test_auth_exempt_paths_are_exact() -> None:
    inner = Recorder()
    auth = LocalAuthMiddleware(inner, KEYS)
    assert await call_raw(auth, {"path": "/healthz"}) == OK
    assert await call_raw(auth, {"path": "/readyz"}) == OK
    for path in ("/healthz/", "/healthz/x", "/readyzz", "/HEALTHZ", "/"):
        assert await call_raw(auth, {"path": path}) == AUTH_REFUSAL, path
    assert inner.paths == ["/healthz", "/readyz"]
    nothing_exempt = LocalAuthMiddleware(Recorder(), KEYS, exempt_paths=())
    assert await call_raw(nothing_exempt, {"path": "/healthz"}) == AUTH_REFUSAL


async def test_auth_header_name_in_any_case_and_websocket_with_a_key() -> None:
    inner = Recorder()
    auth = LocalAuthMiddleware(inner, KEYS)
    token = f"Bearer {KEYS[0]}".encode()
    assert await call_raw(auth, {"headers": [(b"Authorization", token)]}) == OK
    ws = {"type": "websocket", "path": "/ws", "headers": [(b"authorization", token)]}
    assert await call_raw(auth, ws) == []
    assert await call_raw(auth, {"type": "lifespan"}) == []
    assert [scope["type"] for scope in inner.scopes] == ["http", "websocket", "lifespan"]


async def test_auth_off_passes_everything_untouched() -> None:
    inner = Recorder()
    auth = LocalAuthMiddleware(inner, [])
    assert await call_raw(auth, bearer(b"Basic x")) == OK
    assert await call_raw(auth, {"type": "websocket", "path": "/ws"}) == []
    assert len(inner.scopes) == 2


# -- in-flight: the slot's life, message by message -----------------------------------------------


class Scripted:
    """An ASGI app driven step by step: each step sends a message, raises, or returns."""

    def __init__(self) -> None:
        self.steps: asyncio.Queue[Message | BaseException | None] = asyncio.Queue()
        self.done: asyncio.Queue[None] = asyncio.Queue()
        self.started = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.started.set()
        while True:
            step = await self.steps.get()
            if step is None:
                return
            if isinstance(step, BaseException):
                raise step
            await send(step)
            self.done.put_nowait(None)

    async def step(self, message: Message) -> None:
        self.steps.put_nowait(message)
        await asyncio.wait_for(self.done.get(), timeout=5)


START: Message = {"type": "http.response.start", "status": 200, "headers": []}
CHAT = "/v1/chat/completions"


class Calls:
    """Runs requests against one middleware as tasks, each with its own app and sent list."""

    def __init__(self, make: Callable[[ASGIApp], ASGIApp]) -> None:
        self.apps: dict[str, Scripted] = {}
        self.router = self._route
        self.middleware = make(self.router)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.apps[scope["x-name"]](scope, receive, send)

    async def start(self, name: str, path: str = CHAT) -> tuple[Scripted, asyncio.Task[None]]:
        app = Scripted()
        self.apps[name] = app
        scope = {"type": "http", "method": "POST", "path": path, "headers": [], "x-name": name}

        async def receive() -> Message:  # pragma: no cover - the scripted apps do not read
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            pass

        async def run() -> None:
            await self.middleware(scope, receive, send)

        task = asyncio.create_task(run())
        await asyncio.wait_for(app.started.wait(), timeout=5)
        return app, task


async def test_the_slot_is_held_until_the_final_body_message_is_sent() -> None:
    calls = Calls(lambda app: InFlightLimitMiddleware(app, 1))
    limiter = calls.middleware
    assert isinstance(limiter, InFlightLimitMiddleware)
    app, task = await calls.start("one")
    assert limiter.in_flight == 1
    await app.step(START)
    assert limiter.in_flight == 1
    await app.step({"type": "http.response.body", "body": b"a", "more_body": True})
    assert limiter.in_flight == 1
    assert await call_raw(limiter, {"path": CHAT}) == overloaded(b"1")
    # The final body message has no more_body key: released now, though the app still runs.
    await app.step({"type": "http.response.body", "body": b"b"})
    assert limiter.in_flight == 0
    app.steps.put_nowait(None)
    await task
    assert limiter.in_flight == 0


async def test_the_slot_is_released_once_even_when_the_app_carries_on() -> None:
    calls = Calls(lambda app: InFlightLimitMiddleware(app, 2))
    limiter = calls.middleware
    assert isinstance(limiter, InFlightLimitMiddleware)
    first, first_task = await calls.start("first")
    second, second_task = await calls.start("second")
    assert limiter.in_flight == 2
    await first.step(START)
    await first.step({"type": "http.response.body", "body": b"", "more_body": False})
    assert limiter.in_flight == 1
    # A second final body message and the end of the call release nothing more.
    await first.step({"type": "http.response.body", "body": b"", "more_body": False})
    first.steps.put_nowait(None)
    await first_task
    assert limiter.in_flight == 1
    second.steps.put_nowait(None)
    await second_task
    assert limiter.in_flight == 0


async def test_the_slot_is_released_when_the_app_raises_midway() -> None:
    calls = Calls(lambda app: InFlightLimitMiddleware(app, 1))
    limiter = calls.middleware
    assert isinstance(limiter, InFlightLimitMiddleware)
    app, task = await calls.start("one")
    await app.step(START)
    await app.step({"type": "http.response.body", "body": b"a", "more_body": True})
    app.steps.put_nowait(RuntimeError("midway"))
    with pytest.raises(RuntimeError, match="midway"):
        await task
    assert limiter.in_flight == 0


async def test_the_slot_is_released_when_the_call_is_cancelled() -> None:
    calls = Calls(lambda app: InFlightLimitMiddleware(app, 1))
    limiter = calls.middleware
    assert isinstance(limiter, InFlightLimitMiddleware)
    app, task = await calls.start("one")
    await app.step(START)
    assert limiter.in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert limiter.in_flight == 0
    # The next request gets the slot.
    _, again = await calls.start("again")
    assert limiter.in_flight == 1
    again.cancel()
    with pytest.raises(asyncio.CancelledError):
        await again


@pytest.mark.parametrize("limit", [1, 2, 3])
async def test_a_limit_of_n_allows_n_and_refuses_the_next(limit: int) -> None:
    calls = Calls(lambda app: InFlightLimitMiddleware(app, limit, retry_after_s=7))
    limiter = calls.middleware
    assert isinstance(limiter, InFlightLimitMiddleware)
    tasks = [(await calls.start(str(n)))[1] for n in range(limit)]
    assert limiter.in_flight == limit
    for path in CHAT_PATHS_ALL:
        assert await call_raw(limiter, {"path": path}) == overloaded(b"7")
    assert limiter.in_flight == limit
    # Paths outside the limit still pass, and are not counted.
    calls.apps["other"] = Scripted()
    other_task = asyncio.create_task(
        limiter({"type": "http", "path": "/v1/models", "x-name": "other"}, _never, _drop)
    )
    await asyncio.wait_for(calls.apps["other"].started.wait(), timeout=5)
    assert limiter.in_flight == limit
    calls.apps["other"].steps.put_nowait(None)
    await other_task
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert limiter.in_flight == 0


CHAT_PATHS_ALL = (
    "/v1/chat/completions",
    "/chat/completions",
    "/v1/responses",
    "/responses",
    "/v1/chat/completions/x",
    "/responses/resp_1",
)


async def _never() -> Message:  # pragma: no cover - the scripted apps do not read
    raise AssertionError


async def _drop(message: Message) -> None:
    pass


@pytest.mark.parametrize(
    ("retry_after_s", "header"), [(1, b"1"), (0, b"0"), (-3, b"0"), (120, b"120")]
)
async def test_the_overloaded_answer_carries_retry_after(retry_after_s: int, header: bytes) -> None:
    calls = Calls(lambda app: InFlightLimitMiddleware(app, 1, retry_after_s=retry_after_s))
    _, task = await calls.start("one")
    assert await call_raw(calls.middleware, {"path": CHAT}) == overloaded(header)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_the_default_retry_after_is_one_second() -> None:
    calls = Calls(lambda app: InFlightLimitMiddleware(app, 1))
    _, task = await calls.start("one")
    assert await call_raw(calls.middleware, {"path": CHAT}) == overloaded(b"1")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize(
    ("path", "counted"),
    [
        ("/a", False),
        ("/a/", True),
        ("/a/x", True),
        ("/ab", False),
        ("/bX", True),
        ("/bX/y", True),
        ("/b/y", False),
        ("/b", False),
        ("/c", True),
        ("/c/d/e", True),
        ("/cd", False),
        ("/x/c", False),
    ],
)
async def test_custom_path_prefixes_match_the_path_or_what_is_below(
    path: str, counted: bool
) -> None:
    seen: list[int] = []
    limiter: InFlightLimitMiddleware

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(limiter.in_flight)

    limiter = InFlightLimitMiddleware(app, 1, path_prefixes=["/a/", "/bX", "/c"])
    await call_raw(limiter, {"path": path})
    assert seen == [1 if counted else 0]
    assert limiter.in_flight == 0


async def test_the_limit_applies_to_http_only() -> None:
    calls = Calls(lambda app: InFlightLimitMiddleware(app, 1))
    limiter = calls.middleware
    _, task = await calls.start("one")
    inner = Recorder()
    for kind in ("websocket", "lifespan"):
        passed = InFlightLimitMiddleware(inner, 1, counter=getattr(limiter, "counter", None))
        assert await call_raw(passed, {"type": kind, "path": CHAT}) == []
    assert [scope["type"] for scope in inner.scopes] == ["websocket", "lifespan"]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("limit", [0, -1])
def test_a_limit_below_one_is_refused(limit: int) -> None:
    with pytest.raises(ValueError, match=r"^max_in_flight must be at least 1$"):
        InFlightLimitMiddleware(Recorder(), limit)


def test_a_limit_of_one_is_accepted() -> None:
    limiter = InFlightLimitMiddleware(Recorder(), 1)
    assert limiter.max_in_flight == 1
    assert limiter.in_flight == 0


async def test_two_limiters_share_a_given_counter_and_not_otherwise() -> None:
    counter = InFlightCounter()
    shared = Calls(lambda app: InFlightLimitMiddleware(app, 1, counter=counter))
    _, task = await shared.start("one")
    assert counter.in_flight == 1
    other = InFlightLimitMiddleware(Recorder(), 1, counter=counter)
    assert await call_raw(other, {"path": CHAT}) == overloaded(b"1")
    own = InFlightLimitMiddleware(Recorder(), 1)
    assert await call_raw(own, {"path": CHAT}) == OK
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert counter.in_flight == 0


# -- the counter ----------------------------------------------------------------------------------


async def test_the_counter_counts_up_and_down_and_never_below_zero() -> None:
    counter = InFlightCounter()
    assert counter.in_flight == 0
    counter.enter()
    counter.enter()
    assert counter.in_flight == 2
    counter.leave()
    assert counter.in_flight == 1
    assert await counter.wait_idle(0) is False
    counter.leave()
    assert counter.in_flight == 0
    assert await asyncio.wait_for(counter.wait_idle(30), timeout=1) is True
    counter.leave()
    assert counter.in_flight == 0
    assert await asyncio.wait_for(counter.wait_idle(30), timeout=1) is True
    counter.enter()
    assert counter.in_flight == 1


async def test_wait_idle_wakes_up_when_the_last_request_leaves() -> None:
    counter = InFlightCounter()
    counter.enter()
    waiting = asyncio.create_task(counter.wait_idle(30))
    await asyncio.sleep(0)
    assert not waiting.done()
    counter.leave()
    assert await asyncio.wait_for(waiting, timeout=1) is True


@pytest.mark.parametrize("timeout_s", [0, -5, 0.01])
async def test_wait_idle_gives_up_after_its_timeout(timeout_s: float) -> None:
    counter = InFlightCounter()
    counter.enter()
    assert await asyncio.wait_for(counter.wait_idle(timeout_s), timeout=0.5) is False
    assert counter.in_flight == 1


async def test_wait_idle_with_nothing_in_flight_is_true_at_once() -> None:
    for timeout_s in (0, -1, 30):
        assert await asyncio.wait_for(InFlightCounter().wait_idle(timeout_s), timeout=1) is True


def test_a_drain_controller_starts_open_and_closes_for_good() -> None:
    controller = DrainController()
    assert controller.draining is False
    assert controller.in_flight == 0
    controller.start_draining()
    assert controller.draining is True
    controller.start_draining()
    assert controller.draining is True


# -- drain ----------------------------------------------------------------------------------------


async def test_the_drain_refusal_is_exactly_a_503_with_retry_after_and_close() -> None:
    inner = Recorder()
    drain = DrainMiddleware(inner, retry_after_s=3)
    assert drain.draining is False
    assert await call_raw(drain, {}) == OK
    drain.start_draining()
    assert drain.draining is True
    assert drain.controller.draining is True
    assert await call_raw(drain, {}) == shutting_down(b"3")
    assert await call_raw(drain, {"path": "/readyz"}) == shutting_down(b"3")
    assert await call_raw(drain, {"path": "/healthz"}) == OK
    assert inner.paths == ["/v1/models", "/healthz"]


@pytest.mark.parametrize(("retry_after_s", "header"), [(None, b"1"), (0, b"0"), (-2, b"0")])
async def test_the_drain_retry_after(retry_after_s: int | None, header: bytes) -> None:
    drain = (
        DrainMiddleware(Recorder())
        if retry_after_s is None
        else DrainMiddleware(Recorder(), retry_after_s=retry_after_s)
    )
    drain.start_draining()
    assert await call_raw(drain, {}) == shutting_down(header)


async def test_drain_counts_every_request_but_the_exempt_ones() -> None:
    drain: DrainMiddleware
    seen: list[tuple[str, int]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((scope.get("path", ""), drain.in_flight))

    drain = DrainMiddleware(app, exempt_paths=("/live",))
    for path in ("/v1/models", "/healthz", "/live", "/live/x"):
        await call_raw(drain, {"path": path})
    await call_raw(drain, {"type": "websocket", "path": "/ws"})
    assert seen == [("/v1/models", 1), ("/healthz", 1), ("/live", 0), ("/live/x", 1), ("/ws", 0)]
    assert drain.in_flight == 0
    drain.start_draining()
    assert await call_raw(drain, {"path": "/healthz"}) == shutting_down(b"1")
    await call_raw(drain, {"path": "/live"})
    await call_raw(drain, {"type": "websocket", "path": "/ws"})
    await call_raw(drain, {"type": "lifespan", "path": ""})
    assert seen[5:] == [("/live", 0), ("/ws", 0), ("", 0)]


async def test_drain_holds_a_streaming_request_until_its_final_body() -> None:
    controller = DrainController()
    calls = Calls(lambda app: DrainMiddleware(app, controller=controller))
    drain = calls.middleware
    assert isinstance(drain, DrainMiddleware)
    assert drain.controller is controller
    app, task = await calls.start("stream", path="/anything")
    await app.step(START)
    await app.step({"type": "http.response.body", "body": b"a", "more_body": True})
    drain.start_draining()
    assert controller.draining is True
    assert drain.in_flight == 1
    assert await drain.wait_idle(0) is False
    waiting = asyncio.create_task(drain.wait_idle(30))
    await app.step({"type": "http.response.body", "body": b"", "more_body": False})
    assert await asyncio.wait_for(waiting, timeout=1) is True
    assert drain.in_flight == 0
    app.steps.put_nowait(None)
    await task


async def test_drain_releases_on_exception_and_on_cancel() -> None:
    calls = Calls(lambda app: DrainMiddleware(app))
    drain = calls.middleware
    assert isinstance(drain, DrainMiddleware)
    app, task = await calls.start("raises", path="/x")
    app.steps.put_nowait(RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        await task
    assert drain.in_flight == 0
    _, cancelled = await calls.start("cancelled", path="/x")
    assert drain.in_flight == 1
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    assert drain.in_flight == 0
