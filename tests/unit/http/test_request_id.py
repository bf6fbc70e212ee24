"""X-Request-ID on every response (proxy.http.request_id), called as bare ASGI."""

from __future__ import annotations

import re
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from proxy.http.body import REQUEST_ID_SCOPE_KEY
from proxy.http.request_id import RequestIdMiddleware

FRESH = re.compile(r"req_[0-9a-f]{24}")


class App:
    """Answers with the given start headers (or none at all), records what it was given and
    reads one message."""

    def __init__(self, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.headers = headers
        self.scopes: list[Scope] = []
        self.sends: list[Send] = []
        self.received: list[Message] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(dict(scope))
        self.sends.append(send)
        self.received.append(await receive())
        if scope["type"] != "http":
            return
        start: dict[str, Any] = {"type": "http.response.start", "status": 200}
        if self.headers is not None:
            start["headers"] = self.headers
        await send(start)
        await send({"type": "http.response.body", "body": b"one", "more_body": True})
        await send({"type": "http.response.body", "body": b"two"})


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def call(
    app: App, headers: list[tuple[bytes, bytes]] | None = None, **scope: Any
) -> tuple[list[Message], Scope]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    request: dict[str, Any] = {"type": "http", "method": "GET", "path": "/v1/models", **scope}
    if headers is not None:
        request["headers"] = headers
    await RequestIdMiddleware(app)(request, _receive, send)
    return sent, request


def body_messages() -> list[Message]:
    return [
        {"type": "http.response.body", "body": b"one", "more_body": True},
        {"type": "http.response.body", "body": b"two"},
    ]


async def test_a_well_formed_client_id_is_kept_in_the_scope_and_on_the_response() -> None:
    app = App([(b"content-type", b"text/plain")])
    sent, scope = await call(app, [(b"x-request-id", b"client-id.1:2_3")])
    assert sent == [
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"x-request-id", b"client-id.1:2_3")],
        },
        *body_messages(),
    ]
    assert scope[REQUEST_ID_SCOPE_KEY] == "client-id.1:2_3"
    assert app.scopes[0][REQUEST_ID_SCOPE_KEY] == "client-id.1:2_3"
    assert app.received == [{"type": "http.request", "body": b"", "more_body": False}]


async def test_the_header_name_is_matched_in_any_case_and_the_first_copy_counts() -> None:
    sent, _ = await call(App([]), [(b"X-Request-ID", b"upper"), (b"x-request-id", b"second")])
    assert sent[0]["headers"] == [(b"x-request-id", b"upper")]


async def test_a_missing_or_malformed_id_is_replaced_by_a_fresh_one_used_everywhere() -> None:
    for headers in ([], [(b"x-request-id", b"not ok")], [(b"x-request-id", b"a" * 129)], None):
        app = App([])
        sent, scope = await call(app, headers)
        chosen = scope[REQUEST_ID_SCOPE_KEY]
        assert FRESH.fullmatch(chosen)
        assert app.scopes[0][REQUEST_ID_SCOPE_KEY] == chosen
        assert sent[0]["headers"] == [(b"x-request-id", chosen.encode())]


async def test_the_apps_own_request_ids_are_replaced_by_the_one_chosen() -> None:
    app = App(
        [
            (b"X-Request-Id", b"from-handler"),
            (b"content-type", b"application/json"),
            (b"x-request-id", b"another"),
            (b"x-other", b"kept"),
        ]
    )
    sent, _ = await call(app, [(b"x-request-id", b"mine")])
    assert sent[0] == {
        "type": "http.response.start",
        "status": 200,
        "headers": [
            (b"content-type", b"application/json"),
            (b"x-other", b"kept"),
            (b"x-request-id", b"mine"),
        ],
    }
    assert sent[1:] == body_messages()


async def test_a_start_message_without_headers_gets_the_id() -> None:
    sent, _ = await call(App(None), [(b"x-request-id", b"mine")])
    assert sent[0] == {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"x-request-id", b"mine")],
    }


async def test_other_scope_types_pass_untouched() -> None:
    for kind in ("websocket", "lifespan"):
        app = App([])
        sent: list[Message] = []

        async def send(message: Message, sent: list[Message] = sent) -> None:
            sent.append(message)

        scope: dict[str, Any] = {"type": kind, "path": "/ws", "headers": []}
        await RequestIdMiddleware(app)(scope, _receive, send)
        assert scope == {"type": kind, "path": "/ws", "headers": []}
        assert app.scopes == [scope]
        assert app.sends == [send]
