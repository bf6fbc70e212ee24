"""HTTP handlers: thin. Parse the body, call the chat service, shape the response, log one line.

Endpoints: ``POST /v1/chat/completions`` (also ``/chat/completions``), ``GET /v1/models`` (also
``/models``), ``GET /v1/attestation/{model}``, ``GET /healthz``, ``GET /readyz``.

Any ``Authorization`` header a client sends is accepted and ignored (Open WebUI always sends
one); the upstream always gets the proxy's own Venice key.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from proxy.app import Services, proxy_error_response
from proxy.chat import ChatOutcome
from proxy.errors import AttestationError, InvalidRequestError, ProxyError, RequestTooLargeError
from proxy.logs import get_logger
from proxy.models import resolve_alias
from proxy.receipts import ReceiptResult
from proxy.stream import aggregate, sse_to_client

router = APIRouter()
log = get_logger("proxy.request")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
T = TypeVar("T")


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _request_id(request: Request) -> str:
    given = request.headers.get("x-request-id", "")
    return given if _REQUEST_ID.fullmatch(given) else "req_" + secrets.token_hex(12)


async def _read_json(request: Request, limit: int) -> Any:
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip()
    if content_type.lower() not in ("application/json", ""):
        raise InvalidRequestError(
            f"unsupported content type '{content_type[:64]}': send application/json",
            code="unsupported_content_type",
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestTooLargeError(f"the request body exceeds {limit} bytes")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise RequestTooLargeError(f"the request body exceeds {limit} bytes")
    if not body:
        raise InvalidRequestError("the request body is empty", code="empty_body")
    try:
        return json.loads(body)
    except RecursionError as exc:
        raise InvalidRequestError("the request body is nested too deeply") from exc
    except ValueError as exc:
        raise InvalidRequestError(
            "the request body is not valid JSON", code="invalid_json"
        ) from exc


async def _until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run ``work``; cancel it if the client goes away first (non-streaming requests)."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
    return await task


def _log_request(
    request_id: str,
    outcome: ChatOutcome | None,
    *,
    model: str | None,
    stream: bool,
    status: int,
    started: float,
    error_code: str | None = None,
) -> None:
    stats = outcome.stats if outcome else None
    usage = stats.usage if stats else None
    log.info(
        "chat_request",
        request_id=request_id,
        model=model,
        stream=stream,
        e2ee=outcome.e2ee if outcome else None,
        status=status,
        attempts=outcome.attempts if outcome else 0,
        chunks=stats.chunks if stats else 0,
        completed=stats.completed if stats else False,
        prompt_tokens=usage.get("prompt_tokens") if usage else None,
        completion_tokens=usage.get("completion_tokens") if usage else None,
        signing_address=outcome.key.signing_address if outcome and outcome.key else None,
        error=error_code or (stats.error_code if stats else None),
        duration_ms=round((time.perf_counter() - started) * 1000, 2),
    )


@router.post("/v1/chat/completions")
@router.post("/chat/completions")
async def chat_completions(request: Request) -> Response:
    """OpenAI chat completions over Venice E2EE."""
    services = _services(request)
    started = time.perf_counter()
    request_id = _request_id(request)
    model: str | None = None
    stream = False
    try:
        payload = await _read_json(request, services.settings.server.max_body_bytes)
        if isinstance(payload, dict):
            model = payload.get("model") if isinstance(payload.get("model"), str) else None
            stream = payload.get("stream") is True
        outcome = await _until_disconnect(
            request, services.chat.start(payload, request_id=request_id)
        )
    except ProxyError as exc:
        _log_request(
            request_id,
            None,
            model=model,
            stream=stream,
            status=exc.http_status,
            started=started,
            error_code=exc.code,
        )
        response = proxy_error_response(exc)
        response.headers["x-request-id"] = request_id
        return response

    headers = {**outcome.headers, "x-request-id": request_id}
    mode = services.settings.signatures.mode if outcome.e2ee else "off"
    if outcome.client_stream:
        return StreamingResponse(
            _stream_body(services, outcome, request_id, started),
            media_type="text/event-stream",
            headers={**_SSE_HEADERS, **headers},
        )
    try:
        completion = await _until_disconnect(
            request, aggregate(outcome.first, outcome.rest, outcome.stats)
        )
        if mode == "strict":
            failure = await _receipt_failure(services, outcome, request_id)
            if failure is not None:
                raise failure
    except ProxyError as exc:
        _log_request(
            request_id,
            outcome,
            model=outcome.model,
            stream=False,
            status=exc.http_status,
            started=started,
            error_code=exc.code,
        )
        response = proxy_error_response(exc)
        response.headers.update(headers)
        return response
    finally:
        await outcome.aclose()
    if mode == "async":
        services.spawn(_check_receipt(services, outcome, request_id))
    _log_request(
        request_id, outcome, model=outcome.model, stream=False, status=200, started=started
    )
    return JSONResponse(completion, headers=headers)


async def _check_receipt(
    services: Services, outcome: ChatOutcome, request_id: str
) -> ReceiptResult | None:
    """Verify the enclave's signature over a completed answer; log the outcome."""
    completion_id = outcome.stats.completion_id
    if outcome.key is None or completion_id is None:
        return None
    result = await services.receipts.verify(
        outcome.model, completion_id, outcome.key.signing_address
    )
    outcome.stats.signature = result.outcome
    (log.info if result.ok else log.warning)(
        "signature_check",
        request_id=request_id,
        completion_id=completion_id,
        model=outcome.model,
        outcome=result.outcome,
        code=result.code,
        signing_address=outcome.key.signing_address,
    )
    return result


async def _receipt_failure(
    services: Services, outcome: ChatOutcome, request_id: str
) -> ProxyError | None:
    """For ``signatures.mode = "strict"``: an error unless the attested enclave signed."""
    result = await _check_receipt(services, outcome, request_id)
    if result is None:
        return AttestationError(
            "the answer carried no completion id to check its signature",
            code="signature_unavailable",
        )
    if result.ok:
        return None
    return AttestationError(
        f"the enclave's signature over this answer did not verify ({result.code}); "
        "the answer was withheld",
        code=result.code,
    )


async def _stream_body(
    services: Services, outcome: ChatOutcome, request_id: str, started: float
) -> AsyncIterator[bytes]:
    mode = services.settings.signatures.mode if outcome.e2ee else "off"

    async def before_done() -> ProxyError | None:
        return await _receipt_failure(services, outcome, request_id)

    try:
        async for part in sse_to_client(
            outcome.first,
            outcome.rest,
            include_usage=outcome.include_usage,
            stats=outcome.stats,
            before_done=before_done if mode == "strict" else None,
        ):
            yield part
    except (asyncio.CancelledError, GeneratorExit):
        outcome.stats.error_code = "client_disconnected"
        raise
    finally:
        await outcome.aclose()
        stats = outcome.stats
        if mode == "async" and stats.completed and stats.error_code is None:
            services.spawn(_check_receipt(services, outcome, request_id))
        _log_request(
            request_id, outcome, model=outcome.model, stream=True, status=200, started=started
        )


@router.get("/v1/models")
@router.get("/models")
async def list_models(request: Request) -> JSONResponse:
    """The upstream's E2EE models in OpenAI's list shape (Venice's ``model_spec`` kept)."""
    services = _services(request)
    models = await services.catalogue.models()
    passthrough = services.settings.privacy.non_e2ee == "passthrough"
    data: list[dict[str, Any]] = [
        dict(info.raw) for info in models.values() if info.supports_e2ee or passthrough
    ]
    for alias, target in services.settings.models.aliases.items():
        info = models.get(target)
        if info is not None and (info.supports_e2ee or passthrough):
            data.append({**info.raw, "id": alias, "venice_model": target})
    body: dict[str, Any] = {"object": "list", "data": data}
    if services.demo:
        body["notice"] = (
            "DEMO MODE: these models are served by the built-in simulator, not by Venice. "
            "Set VENICE_API_KEY to use Venice."
        )
        for item in data:
            item["owned_by"] = "venice-e2ee-proxy simulator (demo, not Venice)"
    return JSONResponse(body)


@router.get("/v1/attestation/{model}")
async def attestation(model: str, request: Request) -> JSONResponse:
    """The verification report of the attestation in use for ``model``."""
    services = _services(request)
    target = resolve_alias(model, services.settings.models.aliases)
    key = await services.keys.get(target)
    now = time.time()
    return JSONResponse(
        {
            "model": target,
            "signing_address": key.signing_address,
            "verified_at": int(key.verified_at),
            "expires_at": int(key.expires_at),
            "age_s": round(key.age_s(now), 3),
            "demo": services.demo,
            "report": key.report.to_dict(),
        }
    )


@router.get("/healthz")
async def healthz() -> JSONResponse:
    """Liveness: the process answers."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Readiness: configuration valid and an upstream key present (or demo mode)."""
    services = _services(request)
    reasons: list[str] = []
    if not services.upstream.has_api_key and not services.demo:
        reasons.append("no Venice API key: set VENICE_API_KEY or upstream.api_key_file")
    ready = not reasons
    return JSONResponse(
        {"ready": ready, "demo": services.demo, "reasons": reasons},
        status_code=200 if ready else 503,
    )
