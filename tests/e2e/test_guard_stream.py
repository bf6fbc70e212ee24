"""The in-flight limit on a real server: a streaming answer holds its slot until its last byte.

Moved here from ``tests/unit/http/test_guard.py``, the file ``proxy/http/guard.py`` is mutated
against (``make mutation``): those tests need no server, and under mutmut this one cannot run (its
trampolines change ``__call__``'s signature, so uvicorn takes the middleware for an app factory).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from proxy.http.guard import InFlightLimitMiddleware
from proxy.http.loopback import serve


async def _ok(_: Request) -> Response:
    return PlainTextResponse("ok")


def test_in_flight_counts_a_streaming_body_on_a_real_server() -> None:
    """The slot is held until the last body byte is sent, not when the handler returns."""
    gate = threading.Event()

    async def stream(_: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield b"data: first\n\n"
            await asyncio.to_thread(gate.wait, 10)
            yield b"data: [DONE]\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    app = Starlette(
        routes=[
            Route("/healthz", _ok),
            Route("/v1/chat/completions", _ok, methods=["POST"]),
            Route("/v1/chat/completions/stream", stream, methods=["POST"]),
        ]
    )
    limiter = InFlightLimitMiddleware(app, 1)
    with serve(limiter) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        try:
            with http.stream("POST", "/v1/chat/completions/stream", json={}) as response:
                parts = response.iter_bytes()
                assert next(parts).startswith(b"data: first")
                # Headers and a first chunk are out; the stream is still open and counted.
                assert limiter.in_flight == 1
                refused = http.post("/v1/chat/completions", json={})
                assert refused.status_code == 503
                assert refused.json()["error"]["code"] == "overloaded"
                gate.set()
                rest = b"".join(parts)
            assert rest.endswith(b"data: [DONE]\n\n")
            # A later request is served on the same event loop, so the release (which runs
            # right after the final body message is written) has happened by then.
            assert http.get("/healthz").status_code == 200
            assert limiter.in_flight == 0
            assert http.post("/v1/chat/completions", json={}).status_code == 200
        finally:
            gate.set()
