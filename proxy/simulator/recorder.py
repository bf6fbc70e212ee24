"""ASGI middleware that records every request (method, path, query, headers, body) before the
app sees it, then replays the body to the app.

Headers are stored lower-cased; repeated headers are joined with ``", "``. After the body has been
replayed, ``receive`` passes through to the server so the app still sees ``http.disconnect``.
Recorded requests include the ``Authorization`` header: they live only in the test's memory and
:class:`~proxy.simulator.state.RecordedRequest` keeps header values and body out of its repr.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.simulator.state import RecordedRequest, SimulatorState


class RecorderMiddleware:
    """Append a :class:`RecordedRequest` to ``state.requests`` for every HTTP request."""

    def __init__(self, app: ASGIApp, state: SimulatorState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        disconnected: Message | None = None
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected = message
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        self.state.requests.append(
            RecordedRequest(
                method=scope["method"],
                path=scope["path"],
                query=scope["query_string"].decode("latin-1"),
                headers=headers,
                body=body,
            )
        )
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if disconnected is not None:
                return disconnected
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
