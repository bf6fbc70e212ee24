"""The simulator's request recorder, as a bare ASGI middleware: what it records (method, path,
query, headers lower-cased and joined, the whole body) and what the app then receives."""

from __future__ import annotations

from typing import Any

from starlette.types import Message, Receive, Scope, Send

from proxy.simulator.recorder import RecorderMiddleware
from proxy.simulator.state import RecordedRequest, SimulatorState


def http_scope(
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    method: str = "POST",
    path: str = "/api/v1/chat/completions",
    query: bytes = b"",
) -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query,
        "headers": headers or [],
    }


def receiver(messages: list[Message]) -> tuple[Receive, list[Message]]:
    """A server's receive that hands out ``messages`` in order; the second list keeps what is
    left."""
    left = list(messages)

    async def receive() -> Message:
        return left.pop(0)

    return receive, left


async def no_send(message: Message) -> None:
    raise AssertionError("the recorder itself sends nothing")


class App:
    """An app that reads ``reads`` messages and notes what the recorder had recorded by then."""

    def __init__(self, state: SimulatorState, reads: int) -> None:
        self.state = state
        self.reads = reads
        self.received: list[Message] = []
        self.recorded_before: list[RecordedRequest] = []
        self.scope: Scope | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self.recorded_before = list(self.state.requests)
        for _ in range(self.reads):
            self.received.append(await receive())


async def run(
    scope: dict[str, Any], messages: list[Message], reads: int = 1
) -> tuple[SimulatorState, App, list[Message]]:
    state = SimulatorState()
    app = App(state, reads)
    receive, left = receiver(messages)
    await RecorderMiddleware(app, state)(scope, receive, no_send)
    return state, app, left


async def test_records_the_request_then_replays_the_whole_body_at_once() -> None:
    scope = http_scope(
        [
            (b"Authorization", b"Bearer sk-key"),
            (b"X-Venice-TEE-Client-Pub-Key", b"04ab"),
            (b"accept", b"text/event-stream"),
            (b"ACCEPT", b"application/json"),
            (b"x-name", "caf\u00e9".encode("latin-1")),
        ],
        query=b"a=1&b=%C3%A9",
    )
    messages: list[Message] = [
        {"type": "http.request", "body": b'{"a":', "more_body": True},
        {"type": "http.request", "more_body": True},
        {"type": "http.request", "body": b" 1}", "more_body": False},
        {"type": "http.disconnect"},
    ]
    state, app, left = await run(scope, messages, reads=2)
    assert state.requests == [
        RecordedRequest(
            method="POST",
            path="/api/v1/chat/completions",
            query="a=1&b=%C3%A9",
            headers={
                "authorization": "Bearer sk-key",
                "x-venice-tee-client-pub-key": "04ab",
                "accept": "text/event-stream, application/json",
                "x-name": "caf\u00e9",
            },
            body=b'{"a": 1}',
        )
    ]
    assert state.requests[0].json() == {"a": 1}
    assert app.recorded_before == state.requests  # recorded before the app runs
    assert app.scope is scope
    # The app gets the body in one message, then the server's own messages (the disconnect).
    assert app.received == [
        {"type": "http.request", "body": b'{"a": 1}', "more_body": False},
        {"type": "http.disconnect"},
    ]
    assert left == []


async def test_a_single_message_without_more_body_ends_the_body() -> None:
    messages: list[Message] = [
        {"type": "http.request", "body": b"whole"},
        {"type": "http.request", "body": b"never read", "more_body": False},
    ]
    state, app, left = await run(http_scope(method="GET", path="/api/v1/models"), messages)
    assert [(r.method, r.path, r.query, r.headers, r.body) for r in state.requests] == [
        ("GET", "/api/v1/models", "", {}, b"whole")
    ]
    assert app.received == [{"type": "http.request", "body": b"whole", "more_body": False}]
    assert len(left) == 1  # the recorder stopped reading at the end of the body


async def test_an_empty_request_is_recorded_with_an_empty_body() -> None:
    state, app, _ = await run(http_scope(), [{"type": "http.request"}])
    assert state.requests[0].body == b""
    assert app.received == [{"type": "http.request", "body": b"", "more_body": False}]


async def test_a_client_gone_before_the_body_ended_is_recorded_and_told_to_the_app() -> None:
    messages: list[Message] = [
        {"type": "http.request", "body": b"part", "more_body": True},
        {"type": "http.disconnect"},
        {"type": "http.request", "body": b"never read", "more_body": False},
    ]
    state, app, left = await run(http_scope(), messages, reads=3)
    assert state.requests[0].body == b"part"
    # Every read the app makes says the client is gone; nothing more is read from the server.
    assert app.received == [{"type": "http.disconnect"}] * 3
    assert len(left) == 1


async def test_other_scopes_pass_through_unrecorded() -> None:
    state = SimulatorState()
    scope = {"type": "lifespan"}
    receive, left = receiver([{"type": "lifespan.startup"}])
    seen: list[Message] = []
    sent: list[Message] = []

    async def app(app_scope: Scope, app_receive: Receive, app_send: Send) -> None:
        assert app_scope is scope
        seen.append(await app_receive())
        await app_send({"type": "lifespan.startup.complete"})

    async def send(message: Message) -> None:
        sent.append(message)

    await RecorderMiddleware(app, state)(scope, receive, send)
    assert state.requests == []
    assert seen == [{"type": "lifespan.startup"}]
    assert sent == [{"type": "lifespan.startup.complete"}]
    assert left == []
