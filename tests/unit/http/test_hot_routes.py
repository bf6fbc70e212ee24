"""HotRoutes: the chat endpoints called without the router, on a bare ASGI interface, and in
the real app (guards still in front)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, MutableMapping
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Body, Cookie, Depends, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from proxy.core.errors import InvalidRequestError
from proxy.http.app import create_app
from proxy.http.guard import CHAT_PATHS
from proxy.http.hot_routes import HotRoutes, hot_endpoints
from proxy.http.responses_route import router as responses_router
from proxy.http.routes import chat_completions
from proxy.http.routes import router as chat_router
from proxy.settings import Settings


def scope(method: str, path: str, **extra: Any) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "headers": [], **extra}


class Peer:
    def __init__(self) -> None:
        self.sent: list[MutableMapping[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        self.sent.append(message)

    def status_and_body(self) -> tuple[int, Any]:
        body = b"".join(m.get("body", b"") for m in self.sent[1:])
        return self.sent[0]["status"], json.loads(body)


class Router:
    """The app behind: records what reached it."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.paths.append(scope["path"])
        await JSONResponse({"from": "router"})(scope, receive, send)


def test_the_chat_and_responses_posts_are_hot_and_nothing_else() -> None:
    endpoints = hot_endpoints([*chat_router.routes, *responses_router.routes])
    assert set(endpoints) == {("POST", path) for path in CHAT_PATHS}
    assert endpoints[("POST", "/v1/chat/completions")] is chat_completions


def test_an_endpoint_with_parameters_or_dependencies_stays_with_the_router() -> None:
    router = APIRouter()

    def dependency() -> int:
        return 1

    @router.post("/v1/chat/completions")
    async def with_dependency(request: Request, n: int = Depends(dependency)) -> Response:
        return Response()

    @router.post("/chat/completions")
    async def with_query(request: Request, q: str) -> Response:
        return Response()

    @router.post("/v1/responses")
    async def plain(request: Request) -> Response:
        return Response()

    assert set(hot_endpoints(router.routes)) == {("POST", "/v1/responses")}


async def test_a_hot_post_skips_the_router_and_the_rest_reaches_it() -> None:
    called: list[str] = []

    async def endpoint(request: Request) -> Response:
        called.append(request.url.path)
        return JSONResponse({"from": "endpoint"})

    router = Router()
    hot = HotRoutes(router, {("POST", "/v1/chat/completions"): endpoint})
    peer = Peer()
    await hot(scope("POST", "/v1/chat/completions"), peer.receive, peer.send)
    assert peer.status_and_body() == (200, {"from": "endpoint"})
    assert called == ["/v1/chat/completions"]
    assert router.paths == []

    for request_scope in (
        scope("GET", "/v1/chat/completions"),
        scope("POST", "/v1/chat/completions/"),
        scope("POST", "/v1/chat/completions", root_path="/mounted"),
    ):
        peer = Peer()
        await hot(request_scope, peer.receive, peer.send)
        assert peer.status_and_body() == (200, {"from": "router"})
    assert len(router.paths) == 3
    assert called == ["/v1/chat/completions"]


async def test_a_proxy_error_escaping_the_endpoint_is_an_openai_envelope() -> None:
    async def endpoint(request: Request) -> Response:
        raise InvalidRequestError("'messages' must be a non-empty array", param="messages")

    peer = Peer()
    await HotRoutes(Router(), {("POST", "/responses"): endpoint})(
        scope("POST", "/responses"), peer.receive, peer.send
    )
    status, body = peer.status_and_body()
    assert status == 400
    assert body["error"]["message"] == "'messages' must be a non-empty array"
    assert body["error"]["param"] == "messages"
    assert body["error"]["type"] == "invalid_request_error"


async def test_in_the_app_the_guards_still_stand_in_front_of_the_hot_routes() -> None:
    settings = Settings.model_validate({"server": {"api_keys": ["local-key"]}})
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        refused = await client.post("/v1/chat/completions", json={})
        wrong_host = await client.post(
            "/v1/chat/completions", json={}, headers={"host": "evil.example"}
        )
        empty = await client.post(
            "/v1/chat/completions",
            content=b"",
            headers={"authorization": "Bearer local-key", "content-type": "application/json"},
        )
    assert refused.status_code == 401
    assert wrong_host.status_code == 421
    assert empty.status_code == 400
    assert empty.json()["error"]["code"] == "empty_body"
    assert empty.headers["x-request-id"]


def test_only_the_chat_paths_posts_taking_the_request_alone_are_hot() -> None:
    router = APIRouter()

    @router.post("/v1/embeddings")  # the request alone, but not a chat path
    async def embeddings(request: Request) -> Response:
        return Response()

    @router.post("/v1/chat/completions")
    async def with_header(request: Request, x_trace: str = Header()) -> Response:
        return Response()

    @router.post("/chat/completions")
    async def with_cookie(request: Request, session: str = Cookie()) -> Response:
        return Response()

    @router.post("/responses")
    async def with_body(request: Request, payload: Annotated[dict[str, Any], Body()]) -> Response:
        return Response()

    @router.put("/v1/responses")  # the request alone, a chat path, but not a POST
    async def put(request: Request) -> Response:
        return Response()

    async def plain(request: Request) -> Response:
        return Response()

    routes = [
        *router.routes,
        Route("/v1/responses", plain, methods=["POST"]),  # not a FastAPI route
    ]
    assert hot_endpoints(routes) == {}


async def test_the_endpoint_and_the_router_get_the_clients_receive_and_send() -> None:
    """What reads the body, streams the answer or sends early hints sees the real client."""

    async def endpoint(request: Request) -> Response:
        await request.send_early_hints("</style.css>; rel=preload")
        body = await request.body()

        async def chunks() -> AsyncIterator[bytes]:
            yield b"echo: "
            yield body

        return StreamingResponse(chunks())

    async def router(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        await JSONResponse({"router read": message["body"].decode()})(scope, receive, send)

    hot = HotRoutes(router, {("POST", "/v1/chat/completions"): endpoint})
    extensions: dict[str, Any] = {"http.response.early_hint": {}}
    peer = Client(b'{"model": "m"}')
    await hot(scope("POST", "/v1/chat/completions", extensions=extensions), peer.receive, peer.send)
    assert peer.sent[0] == {
        "type": "http.response.early_hint",
        "links": [b"</style.css>; rel=preload"],
    }
    assert peer.sent[1]["status"] == 200
    assert b"".join(m.get("body", b"") for m in peer.sent[2:]) == b'echo: {"model": "m"}'

    peer = Client(b"to the router")
    await hot(scope("POST", "/v1/models", extensions=extensions), peer.receive, peer.send)
    assert json.loads(peer.sent[1]["body"]) == {"router read": "to the router"}


class Client(Peer):
    """A client that sends ``body`` and then stays connected until the answer is complete."""

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self._body: bytes | None = body
        self._done = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        if self._body is not None:
            body, self._body = self._body, None
            return {"type": "http.request", "body": body, "more_body": False}
        await self._done.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        await super().send(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self._done.set()
