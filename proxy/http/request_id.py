"""``X-Request-ID`` on every response: a pure ASGI middleware, outermost.

For each ``http`` request it decides the id once (the client's ``X-Request-ID`` when it is
1-128 characters of ``[A-Za-z0-9._:-]``, else ``req_`` + 24 hex digits:
:func:`proxy.http.body.request_id_from`), leaves it in the scope under
:data:`proxy.http.body.REQUEST_ID_SCOPE_KEY` for the handlers and the log line, and sets it as the
one ``x-request-id`` header of the response, whatever answered: a handler, an error handler, a
guard's refusal or the unknown-path envelope. Other scope types pass through untouched.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.http.body import REQUEST_ID_SCOPE_KEY, request_id_from

_HEADER = b"x-request-id"


def _client_value(scope: Scope) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == _HEADER:
            text: str = value.decode("latin-1")
            return text
    return None


class RequestIdMiddleware:
    """Choose the request's id and put it on its response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chosen = request_id_from(_client_value(scope))
        scope[REQUEST_ID_SCOPE_KEY] = chosen
        raw = chosen.encode("ascii")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (key, value)
                    for key, value in message.get("headers", ())
                    if key.lower() != _HEADER
                ]
                headers.append((_HEADER, raw))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)
