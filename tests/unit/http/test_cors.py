"""The browser-origin guard (proxy.http.cors) on the wire: preflights, refusals, the headers added,
called as bare ASGI."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from proxy.http.cors import BrowserOriginMiddleware, normalize_origin, reflected_headers

ALLOWED = "http://localhost:5173"
EXPOSE = (
    b"x-request-id, x-venice-proxy-e2ee, x-venice-proxy-signing-address, "
    b"x-venice-proxy-tcb-status, x-venice-proxy-trust, retry-after"
)
PREFLIGHT_VARY = b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"


class App:
    """Records the calls and reads one message; answers http with the given start headers (or
    none at all)."""

    def __init__(self, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.headers = headers
        self.calls: list[tuple[Scope, Send]] = []
        self.received: list[Message] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls.append((scope, send))
        self.received.append(await receive())
        if scope["type"] != "http":
            return
        start: dict[str, Any] = {"type": "http.response.start", "status": 200}
        if self.headers is not None:
            start["headers"] = self.headers
        await send(start)
        await send({"type": "http.response.body", "body": b"ok"})


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def call(
    guard: BrowserOriginMiddleware,
    headers: list[tuple[bytes, bytes]] | None,
    *,
    method: str = "POST",
    kind: str = "http",
    scheme: str = "http",
) -> tuple[list[Message], Send]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope: dict[str, Any] = {"type": kind, "method": method, "path": "/v1/chat/completions"}
    scope["scheme"] = scheme
    if headers is not None:
        scope["headers"] = headers
    await guard(scope, _receive, send)
    return sent, send


def origin(value: str, host: str = "127.0.0.1:8000") -> list[tuple[bytes, bytes]]:
    return [(b"host", host.encode()), (b"origin", value.encode())]


def refusal(shown: str) -> list[Message]:
    body = {
        "error": {
            "message": f"requests from the browser origin '{shown}' are not allowed: add it to "
            "server.cors_origins in the proxy's configuration to let that web app use the proxy",
            "type": "permission_error",
            "param": None,
            "code": "origin_not_allowed",
        }
    }
    payload = json.dumps(body, separators=(",", ":")).encode()
    return [
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"vary", b"Origin"),
            ],
        },
        {"type": "http.response.body", "body": payload, "more_body": False},
    ]


def decorated(value: str, *app_headers: tuple[bytes, bytes], vary: bytes = b"Origin") -> Message:
    return {
        "type": "http.response.start",
        "status": 200,
        "headers": [
            *app_headers,
            (b"access-control-allow-origin", value.encode()),
            (b"access-control-expose-headers", EXPOSE),
            (b"vary", vary),
        ],
    }


BODY: Message = {"type": "http.response.body", "body": b"ok"}


# -- who is allowed -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://localhost:5173", "http://localhost:5173"),
        (" HTTP://LocalHost:5173/ ", "http://localhost:5173"),
        ("http://x.example:80", "http://x.example"),
        ("http://x.example:80//", "http://x.example"),
        ("http://x.example:8080", "http://x.example:8080"),
        ("http://x.example:443", "http://x.example:443"),
        ("https://x.example:80", "https://x.example:80"),
        ("https://x.example:4443", "https://x.example:4443"),
        ("http://[::1]:80", "http://[::1]"),
        ("ftp://x.example:80", "ftp://x.example:80"),
        ("http:x.example:80", "http:x.example:80"),
        ("http://APPX", "http://appx"),
        ("http://a://b:80", "http://a://b"),
        ("", ""),
        ("null", "null"),
    ],
)
def test_normalize_origin(given: str, expected: str) -> None:
    assert normalize_origin(given) == expected


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        ([], ""),
        ([""], ""),
        ([" , ,"], ""),
        (["Content-Type"], "content-type"),
        (["a,b", "B, c"], "a, b, c"),
        (
            ["x-stainless-os,bad header,ok\x00,na\u00efve,openai-beta"],
            "x-stainless-os, openai-beta",
        ),
        (["  Authorization  ,  X-Api-Key "], "authorization, x-api-key"),
        (["!#$%&'*+.^_`|~09az-"], "!#$%&'*+.^_`|~09az-"),
        (["a:b", "a;b", "(x)"], ""),
    ],
)
def test_reflected_headers(requested: list[str], expected: str) -> None:
    assert reflected_headers(requested) == expected


def test_an_allowed_origin_matches_in_any_spelling_of_the_same_origin() -> None:
    guard = BrowserOriginMiddleware(App(), ["HTTP://App.Example:80/", "https://secure.example"])
    scope: dict[str, Any] = {"type": "http", "scheme": "http", "headers": []}
    assert guard.allows("http://app.example", scope)
    assert guard.allows("http://APP.example:80", scope)
    assert guard.allows("https://secure.example:443/", scope)
    assert not guard.allows("https://app.example", scope)
    assert not guard.allows("http://secure.example", scope)
    assert not guard.allows("http://app.example:8080", scope)


@pytest.mark.parametrize(
    ("scheme", "host", "value", "expected"),
    [
        ("http", "127.0.0.1:8000", "http://127.0.0.1:8000", True),
        ("http", "127.0.0.1:8000", "HTTP://127.0.0.1:8000/", True),
        ("http", "Proxy.Example", "http://proxy.example:80", True),
        ("http", "proxy.example:80", "http://proxy.example", True),
        ("https", "proxy.example", "https://proxy.example", True),
        ("https", "proxy.example:443", "https://proxy.example", True),
        ("wss", "proxy.example", "https://proxy.example", True),
        ("ws", "proxy.example", "http://proxy.example", True),
        ("https", "proxy.example", "http://proxy.example", False),
        ("http", "proxy.example", "https://proxy.example", False),
        ("wss", "proxy.example", "http://proxy.example", False),
        ("http", "127.0.0.1:8000", "http://127.0.0.1:8001", False),
        ("http", "127.0.0.1:8000", "http://localhost:8000", False),
    ],
)
def test_the_proxys_own_origin_is_its_scheme_and_host(
    scheme: str, host: str, value: str, expected: bool
) -> None:
    guard = BrowserOriginMiddleware(App(), [])
    scope: dict[str, Any] = {
        "type": "http",
        "scheme": scheme,
        "headers": [(b"host", host.encode())],
    }
    assert guard.allows(value, scope) is expected


def test_without_a_scheme_in_the_scope_the_own_origin_is_http() -> None:
    guard = BrowserOriginMiddleware(App(), [])
    scope: dict[str, Any] = {"type": "http", "headers": [(b"host", b"p.example")]}
    assert guard.allows("http://p.example", scope)
    assert not guard.allows("https://p.example", scope)


def test_no_own_origin_without_exactly_one_host() -> None:
    guard = BrowserOriginMiddleware(App(), [])
    one = [(b"host", b"p.example")]
    assert guard.allows("http://p.example", {"scheme": "http", "headers": one})
    assert not guard.allows("http://p.example", {"scheme": "http", "headers": one * 2})
    assert not guard.allows("http://p.example", {"scheme": "http", "headers": []})
    assert not guard.allows("http://", {"scheme": "http"})


def test_blank_entries_allow_nothing_and_star_allows_everything() -> None:
    scope: dict[str, Any] = {"type": "http", "scheme": "http", "headers": []}
    blank = BrowserOriginMiddleware(App(), ["", "   "])
    assert not blank.allow_all
    assert blank.allowed == frozenset()
    assert not blank.allows("", scope)
    assert not blank.allows("   ", scope)
    star = BrowserOriginMiddleware(App(), [" * "])
    assert star.allow_all
    assert star.allows("https://anything.example", scope)
    assert star.allows("null", scope)
    assert not BrowserOriginMiddleware(App(), ["*.example"]).allows("https://a.example", scope)


def test_null_is_allowed_only_when_listed() -> None:
    scope: dict[str, Any] = {"type": "http", "scheme": "http", "headers": [(b"host", b"h")]}
    assert not BrowserOriginMiddleware(App(), [ALLOWED]).allows("null", scope)
    assert BrowserOriginMiddleware(App(), ["null"]).allows("null", scope)


# -- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "GET", "OPTIONS"])
async def test_a_disallowed_origin_is_403_before_the_app(method: str) -> None:
    app = App([])
    headers = [*origin("https://evil.example"), (b"access-control-request-method", b"POST")]
    sent, _ = await call(BrowserOriginMiddleware(app, [ALLOWED]), headers, method=method)
    assert sent == refusal("https://evil.example")
    assert app.calls == []


async def test_the_refusal_shows_at_most_200_printable_characters_of_the_origin() -> None:
    app = App([])
    guard = BrowserOriginMiddleware(app, [])
    # Header bytes are read as latin-1: \x00 and \x85 (NEL) are not printable, \xe9 (é) is.
    sent, _ = await call(guard, [(b"origin", b"http://a\x00b\x85c\xe9")])
    assert sent == refusal("http://a?b?c\u00e9")
    long = "http://" + "x" * 300
    sent, _ = await call(guard, origin(long))
    assert sent == refusal(long[:200])
    assert app.calls == []


async def test_a_repeated_origin_is_refused_even_when_each_copy_is_allowed() -> None:
    app = App([])
    guard = BrowserOriginMiddleware(app, [ALLOWED, "http://other.example"])
    twice = [(b"origin", ALLOWED.encode()), (b"origin", ALLOWED.encode())]
    sent, _ = await call(guard, twice)
    assert sent == refusal(ALLOWED)
    mixed = [(b"origin", ALLOWED.encode()), (b"origin", b"http://other.example")]
    sent, _ = await call(guard, mixed)
    assert sent == refusal(ALLOWED)
    assert app.calls == []


async def test_a_websocket_from_a_disallowed_origin_is_closed_with_1008() -> None:
    app = App()
    guard = BrowserOriginMiddleware(app, [ALLOWED])
    sent, _ = await call(guard, origin("http://evil.example"), kind="websocket")
    assert sent == [{"type": "websocket.close", "code": 1008}]
    twice = [(b"origin", ALLOWED.encode())] * 2
    sent, _ = await call(guard, twice, kind="websocket")
    assert sent == [{"type": "websocket.close", "code": 1008}]
    assert app.calls == []


# -- what passes ----------------------------------------------------------------------------------


async def test_requests_without_an_origin_pass_untouched() -> None:
    for headers in ([(b"host", b"127.0.0.1:8000")], [], None):
        app = App([(b"content-type", b"text/plain")])
        sent, send = await call(BrowserOriginMiddleware(app, []), headers)
        assert sent == [
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
            },
            BODY,
        ]
        assert app.calls[0][1] is send


async def test_other_scope_types_pass_untouched() -> None:
    app = App()
    guard = BrowserOriginMiddleware(app, [])
    sent, send = await call(guard, origin("http://evil.example"), kind="lifespan")
    assert sent == []
    assert app.calls[0][1] is send


async def test_a_websocket_from_an_allowed_origin_reaches_the_app_undecorated() -> None:
    app = App()
    guard = BrowserOriginMiddleware(app, [ALLOWED])
    sent, send = await call(guard, origin(ALLOWED), kind="websocket")
    assert sent == []
    assert app.calls[0][1] is send
    own, own_send = await call(
        BrowserOriginMiddleware(app, []),
        origin("https://p.example", host="p.example"),
        kind="websocket",
        scheme="wss",
    )
    assert own == []
    assert app.calls[1][1] is own_send


async def test_an_allowed_request_gets_the_cors_headers() -> None:
    app = App([(b"content-type", b"application/json")])
    sent, _ = await call(BrowserOriginMiddleware(app, [ALLOWED]), origin(ALLOWED))
    assert sent == [decorated(ALLOWED, (b"content-type", b"application/json")), BODY]
    assert len(app.calls) == 1
    assert app.received == [{"type": "http.request", "body": b"", "more_body": False}]


async def test_the_origin_is_echoed_as_sent() -> None:
    app = App([])
    sent, _ = await call(BrowserOriginMiddleware(app, [ALLOWED]), origin("HTTP://LocalHost:5173/"))
    assert sent == [decorated("HTTP://LocalHost:5173/"), BODY]


async def test_the_apps_own_cors_headers_are_replaced_and_its_vary_kept() -> None:
    app = App(
        [
            (b"Access-Control-Allow-Origin", b"*"),
            (b"content-type", b"text/plain"),
            (b"access-control-allow-credentials", b"true"),
            (b"Vary", b"Accept-Encoding"),
            (b"vary", b"Accept"),
            (b"x-access-control-note", b"kept"),
        ]
    )
    sent, _ = await call(BrowserOriginMiddleware(app, [ALLOWED]), origin(ALLOWED))
    assert sent == [
        decorated(
            ALLOWED,
            (b"content-type", b"text/plain"),
            (b"x-access-control-note", b"kept"),
            vary=b"Accept-Encoding, Accept, Origin",
        ),
        BODY,
    ]


@pytest.mark.parametrize("vary", [b"Origin", b"origin", b"Accept, ORIGIN"])
async def test_a_vary_that_names_origin_already_is_not_doubled(vary: bytes) -> None:
    app = App([(b"vary", vary)])
    sent, _ = await call(BrowserOriginMiddleware(app, [ALLOWED]), origin(ALLOWED))
    assert sent == [decorated(ALLOWED, vary=vary), BODY]


async def test_a_start_message_without_headers_gets_the_cors_headers() -> None:
    sent, _ = await call(BrowserOriginMiddleware(App(None), [ALLOWED]), origin(ALLOWED))
    assert sent == [decorated(ALLOWED), BODY]


async def test_an_options_request_that_is_no_preflight_reaches_the_app() -> None:
    app = App([])
    sent, _ = await call(BrowserOriginMiddleware(app, [ALLOWED]), origin(ALLOWED), method="OPTIONS")
    assert sent == [decorated(ALLOWED), BODY]
    assert len(app.calls) == 1


async def test_a_post_with_a_request_method_header_is_no_preflight() -> None:
    app = App([])
    headers = [*origin(ALLOWED), (b"access-control-request-method", b"POST")]
    sent, _ = await call(BrowserOriginMiddleware(app, [ALLOWED]), headers, method="POST")
    assert sent == [decorated(ALLOWED), BODY]


# -- preflight ------------------------------------------------------------------------------------


def preflight(value: str, *extra: tuple[bytes, bytes]) -> list[Message]:
    return [
        {
            "type": "http.response.start",
            "status": 204,
            "headers": [
                (b"access-control-allow-origin", value.encode()),
                (b"access-control-allow-methods", b"GET, HEAD, POST, OPTIONS"),
                (b"access-control-max-age", b"600"),
                (b"vary", PREFLIGHT_VARY),
                (b"content-length", b"0"),
                *extra,
            ],
        },
        {"type": "http.response.body", "body": b"", "more_body": False},
    ]


async def test_a_preflight_is_answered_204_without_the_app() -> None:
    app = App([])
    headers = [*origin(ALLOWED), (b"access-control-request-method", b"POST")]
    sent, _ = await call(BrowserOriginMiddleware(app, [ALLOWED]), headers, method="OPTIONS")
    assert sent == preflight(ALLOWED)
    assert app.calls == []


async def test_a_preflight_from_the_proxys_own_origin_is_answered() -> None:
    headers = [*origin("http://127.0.0.1:8000"), (b"access-control-request-method", b"GET")]
    sent, _ = await call(BrowserOriginMiddleware(App(), []), headers, method="OPTIONS")
    assert sent == preflight("http://127.0.0.1:8000")


async def test_a_preflight_reflects_the_requested_header_names() -> None:
    headers = [
        *origin(ALLOWED),
        (b"access-control-request-method", b"POST"),
        (b"access-control-request-headers", b"Authorization, Content-Type,bad header"),
        (b"access-control-request-headers", b"x-stainless-os, content-type"),
    ]
    sent, _ = await call(BrowserOriginMiddleware(App(), [ALLOWED]), headers, method="OPTIONS")
    allowed = (b"access-control-allow-headers", b"authorization, content-type, x-stainless-os")
    assert sent == preflight(ALLOWED, allowed)


async def test_a_preflight_with_no_valid_header_name_allows_none() -> None:
    headers = [
        *origin(ALLOWED),
        (b"access-control-request-method", b"POST"),
        (b"access-control-request-headers", b"bad header, ,"),
    ]
    sent, _ = await call(BrowserOriginMiddleware(App(), [ALLOWED]), headers, method="OPTIONS")
    assert sent == preflight(ALLOWED)


@pytest.mark.parametrize(
    ("values", "granted"),
    [
        ([b"true"], True),
        ([b" TRUE "], True),
        ([b"True", b"false"], True),
        ([b"false"], False),
        ([b""], False),
        ([b"false", b"true"], False),
        ([b"yes"], False),
    ],
)
async def test_a_preflight_grants_private_network_access_when_asked(
    values: list[bytes], granted: bool
) -> None:
    headers = [*origin(ALLOWED), (b"access-control-request-method", b"POST")]
    headers += [(b"access-control-request-private-network", value) for value in values]
    sent, _ = await call(BrowserOriginMiddleware(App(), [ALLOWED]), headers, method="OPTIONS")
    extra = [(b"access-control-allow-private-network", b"true")] if granted else []
    assert sent == preflight(ALLOWED, *extra)


async def test_a_preflight_with_both_extras_lists_headers_then_private_network() -> None:
    headers = [
        *origin(ALLOWED),
        (b"access-control-request-method", b"POST"),
        (b"access-control-request-private-network", b"true"),
        (b"access-control-request-headers", b"authorization"),
    ]
    sent, _ = await call(BrowserOriginMiddleware(App(), [ALLOWED]), headers, method="OPTIONS")
    assert sent == preflight(
        ALLOWED,
        (b"access-control-allow-headers", b"authorization"),
        (b"access-control-allow-private-network", b"true"),
    )
