"""Scripted stand-ins for the service layer behind the HTTP endpoints (shared by the tests of
:mod:`proxy.http.routes` and :mod:`proxy.http.responses_route`).

The endpoints run in a bare FastAPI app (the router and the error handlers, no guards) called
in-process over ``httpx.ASGITransport``; the chat service hands out a scripted
:class:`~proxy.service.chat.OpenedAnswer` (decrypted chunks, as the relay gets them), the
signature policy records what it was asked, and background work is kept for the test to run.
The request's log line and metrics are the real ones
(:class:`~proxy.http.request_log.RequestRecord`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Coroutine, MutableMapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import httpx
from fastapi import APIRouter, FastAPI

from proxy.attestation.report import AttestationReport, CheckResult
from proxy.core.errors import ProxyError
from proxy.http.errors import install_error_handlers
from proxy.observability.metrics import Metrics
from proxy.service.catalog import ModelInfo
from proxy.service.chat import OpenedAnswer
from proxy.service.enclave_keys import AttestedKey
from proxy.service.relay import Batch, StreamStats
from proxy.settings import Settings

MODEL = "e2ee-m"
SIGNER = "0x" + "ab" * 20
E2EE_HEADERS = {"x-venice-proxy-e2ee": "true", "x-venice-proxy-signing-address": SIGNER}


def attested_key(model: str = MODEL, trust: str | None = "enclave") -> AttestedKey:
    report = AttestationReport(
        model=model,
        nonce="00" * 32,
        shape="near",
        signing_address=SIGNER,
        signing_public_key=None,
        tcb_status="UpToDate",
        checks=(CheckResult("trust_level", True, True, "ok", "trust"),),
        trust_level=trust,
    )
    return AttestedKey(model, b"\x04" + b"\x01" * 64, SIGNER, report, 0.0, 1e12, 1e12)


def chunk(content: str, finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": MODEL,
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}],
    }


USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def usage_chunk() -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": MODEL,
        "choices": [],
        "usage": dict(USAGE),
    }


class Upstream:
    """The opened upstream response: its headers, and whether it was closed."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.status_code = 200
        self.reads_waited = 0
        self.closed = 0

    async def aclose(self) -> None:
        self.closed += 1


@dataclass
class Script:
    """What the upstream answers: the first batch, the later ones, then how it ends."""

    first: Batch
    rest: list[Batch] = field(default_factory=list)
    error: ProxyError | None = None  # raised after the later batches
    hang: bool = False  # after the later batches, wait for ever (a slow model)


def opened(
    script: Script,
    *,
    e2ee: bool = True,
    client_stream: bool = True,
    include_usage: bool = False,
    model: str = MODEL,
) -> OpenedAnswer:
    stats = StreamStats()

    async def rest() -> AsyncIterator[Batch]:
        for batch in script.rest:
            for item in batch:
                stats.chunks += 1
                if item.get("id"):
                    stats.completion_id = item["id"]
            yield batch
        if script.hang:
            await asyncio.Event().wait()
        if script.error is not None:
            raise script.error
        stats.completed = True

    stats.chunks = len(script.first)
    return OpenedAnswer(
        model=model,
        e2ee=e2ee,
        client_stream=client_stream,
        include_usage=include_usage,
        first=script.first,
        rest=rest(),
        upstream=Upstream(),  # type: ignore[arg-type]
        stats=stats,
        key=attested_key(model) if e2ee else None,
        headers=dict(E2EE_HEADERS) if e2ee else {"x-venice-proxy-e2ee": "false"},
    )


class Chat:
    """The chat service: records each start and hands out the scripted answer (or fails)."""

    def __init__(self, answer: OpenedAnswer | ProxyError | None = None) -> None:
        self.answer = answer
        self.started: list[tuple[Any, str | None]] = []
        self.passthrough: set[str] = set()
        self.max_answer_chars = 4_000_000

    def passthrough_allowed(self, model: str) -> bool:
        return model in self.passthrough

    async def start(self, payload: Any, *, request_id: str | None = None) -> OpenedAnswer:
        self.started.append((payload, request_id))
        if isinstance(self.answer, ProxyError):
            raise self.answer
        assert self.answer is not None
        return self.answer


class Signatures:
    """The signature policy: which answers were checked, for which request, in which mode."""

    def __init__(self, mode: str, failure: ProxyError | None = None) -> None:
        self.mode = mode
        self.failure = failure
        self.strict_calls: list[tuple[Any, str]] = []
        self.checked: list[tuple[Any, str]] = []

    def mode_for(self, answer: OpenedAnswer) -> str:
        return self.mode if answer.e2ee else "off"

    async def strict_failure(self, answer: OpenedAnswer, request_id: str) -> ProxyError | None:
        self.strict_calls.append((answer, request_id))
        return self.failure

    async def check(self, answer: OpenedAnswer, request_id: str) -> None:
        self.checked.append((answer, request_id))


class Catalogue:
    def __init__(self, models: dict[str, ModelInfo] | None = None) -> None:
        self._models = models or {}

    async def models(self) -> dict[str, ModelInfo]:
        return self._models


class Keys:
    def __init__(self, keys: dict[str, AttestedKey] | None = None) -> None:
        self.keys = keys or {}
        self.asked: list[str] = []

    def models(self) -> list[str]:
        return list(self.keys)

    def peek(self, model: str) -> AttestedKey | None:
        return self.keys.get(model)

    async def get(self, model: str) -> AttestedKey:
        self.asked.append(model)
        return self.keys[model]


class Background:
    """``Services.spawn``: keeps the work for the test to run (or close)."""

    def __init__(self) -> None:
        self.work: list[Coroutine[Any, Any, object]] = []

    def spawn(self, work: Coroutine[Any, Any, object]) -> None:
        assert asyncio.iscoroutine(work)
        self.work.append(work)

    async def run(self) -> None:
        for work in self.work:
            await work


def services(
    *,
    chat: Chat | None = None,
    signatures: Signatures | None = None,
    catalogue: Catalogue | None = None,
    keys: Keys | None = None,
    settings: Settings | None = None,
    demo: bool = False,
    background: Background | None = None,
    trust_state: Any = None,
) -> SimpleNamespace:
    work = background or Background()
    return SimpleNamespace(
        settings=settings or Settings(),
        chat=chat or Chat(),
        signatures=signatures or Signatures("off"),
        catalogue=catalogue or Catalogue(),
        keys=keys or Keys(),
        attester=SimpleNamespace(trust_state=trust_state),
        metrics=Metrics(process_metrics=False),
        demo=demo,
        spawn=work.spawn,
        background_work=work,
    )


def app_for(router: APIRouter, svc: SimpleNamespace) -> FastAPI:
    app = FastAPI()
    app.state.services = svc
    app.include_router(router)
    install_error_handlers(app)
    return app


async def call(
    app: FastAPI, method: str, path: str, body: Any = None, **kwargs: Any
) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        if body is None:
            return await client.request(method, path, **kwargs)
        return await client.request(method, path, json=body, **kwargs)


def sse_data(body: bytes) -> list[str]:
    """The data of every event of a complete SSE body."""
    text = body.decode("utf-8")
    assert text.endswith("\n\n")
    out = []
    for block in text.split("\n\n")[:-1]:
        data = [line[len("data: ") :] for line in block.split("\n") if line.startswith("data: ")]
        out.append("\n".join(data))
    return out


def log_of(lines: Callable[[], list[str]], event: str) -> list[dict[str, Any]]:
    found = [json.loads(raw) for raw in lines()]
    return [line for line in found if line.get("event") == event]


async def hang_up_after_first_part(
    app: FastAPI, path: str, payload: dict[str, Any]
) -> list[MutableMapping[str, Any]]:
    """POST ``payload`` over raw ASGI and hang up once the first body part arrived; the
    messages the app sent."""
    sent: list[MutableMapping[str, Any]] = []
    got_part = asyncio.Event()
    body = json.dumps(payload).encode()
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await got_part.wait()
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            got_part.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    await asyncio.wait_for(app(scope, receive, send), timeout=5)
    return sent
