"""HTTP handlers: thin. Parse the body, call the chat service, shape the response, log one line.

Endpoints: ``POST /v1/chat/completions`` (also ``/chat/completions``), ``GET /v1/models`` (also
``/models``), ``GET /v1/attestation/{model}``, ``GET /healthz``, ``GET /readyz``,
``GET /metrics``.

Without ``server.api_keys`` any ``Authorization`` header a client sends is accepted and ignored
(Open WebUI always sends one; the guard in :mod:`proxy.http.guard` enforces local keys when
set); the upstream always gets the proxy's own Venice key.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from proxy.core.errors import (
    AttestationError,
    InvalidRequestError,
    ProxyError,
    RequestTooLargeError,
)
from proxy.http.app import Services, proxy_error_response
from proxy.observability.logs import get_logger
from proxy.observability.metrics import DecryptionKind, UpstreamHeaders
from proxy.service.catalog import resolve_alias
from proxy.service.chat import ChatOutcome
from proxy.service.relay import aggregate, sse_to_client
from proxy.service.signatures import ReceiptResult

router = APIRouter()
log = get_logger("proxy.request")

CLIENT_CLOSED_REQUEST = 499  # the de facto status for "the client hung up first"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
T = TypeVar("T")


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _client_request_id(request: Request) -> str | None:
    """The client's X-Request-ID when well-formed: echoed and logged, never sent upstream."""
    given = request.headers.get("x-request-id", "")
    return given if _REQUEST_ID.fullmatch(given) else None


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
        return json.loads(body, parse_constant=_reject_constant)
    except RecursionError as exc:
        raise InvalidRequestError("the request body is nested too deeply") from exc
    except ValueError as exc:
        raise InvalidRequestError(
            "the request body is not valid JSON", code="invalid_json"
        ) from exc


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259); Python's parser accepts them by default.
    raise ValueError(f"{name} is not valid JSON")


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


@dataclass(slots=True)
class _Exchange:
    """One chat request's facts for its log line and metrics (never any content)."""

    services: Services
    request_id: str  # the proxy's own: logged and sent upstream
    started: float
    client_request_id: str | None = None  # the client's: logged and echoed only
    model: str | None = None
    stream: bool = False
    outcome: ChatOutcome | None = None
    upstream: UpstreamHeaders | None = None
    ttfb_s: float | None = None

    def attach(self, outcome: ChatOutcome) -> None:
        """Remember the opened upstream stream and read its account headers."""
        self.outcome = outcome
        self.model = outcome.model
        self.upstream = self.services.metrics.record_upstream_headers(outcome.upstream.headers)
        if self.upstream.deprecation_warning:
            log.warning(
                "model_deprecation",
                model=outcome.model,
                warning=self.upstream.deprecation_warning,
                date=self.upstream.deprecation_date,
            )

    def first_byte(self) -> None:
        """The first byte of the answer is leaving for the client."""
        if self.ttfb_s is None:
            self.ttfb_s = time.perf_counter() - self.started
            self.services.metrics.observe_ttfb(self.model, self.ttfb_s)

    def fail(self, exc: ProxyError, headers: Mapping[str, str]) -> Response:
        """Log the request as failed with ``exc`` and answer with its OpenAI error."""
        self.finish(exc.http_status, exc.log_code)
        response = proxy_error_response(exc)
        response.headers.update(headers)
        return response

    def finish(self, status: int, error_code: str | None = None) -> None:
        """Emit the request's one log line and its metrics."""
        outcome = self.outcome
        stats = outcome.stats if outcome else None
        code = error_code or (stats.error_code if stats else None)
        if code in _DECRYPTION_CODES:
            self.services.metrics.record_decryption_failure(_DECRYPTION_CODES[code])
        if stats is not None:
            self.services.metrics.record_chunks(stats.chunks)
        usage = stats.usage if stats else None
        key = outcome.key if outcome else None
        upstream = self.upstream
        log.info(
            "chat_request",
            request_id=self.request_id,
            client_request_id=self.client_request_id,
            model=self.model,
            stream=self.stream,
            e2ee=outcome.e2ee if outcome else None,
            status=status,
            upstream_status=outcome.upstream.status_code if outcome else None,
            attempts=outcome.attempts if outcome else 0,
            chunks=stats.chunks if stats else 0,
            completed=stats.completed if stats else False,
            stopped=stats.stopped if stats else False,
            prompt_tokens=usage.get("prompt_tokens") if usage else None,
            completion_tokens=usage.get("completion_tokens") if usage else None,
            cost_usd=_cost_usd(stats.cost) if stats else None,
            signing_address=key.signing_address if key else None,
            attestation_age_s=round(key.age_s(time.time()), 1) if key else None,
            venice_request_id=upstream.cf_ray if upstream else None,
            ratelimit_remaining_requests=upstream.ratelimit_remaining_requests
            if upstream
            else None,
            error=code,
            ttfb_ms=round(self.ttfb_s * 1000, 2) if self.ttfb_s is not None else None,
            duration_ms=round((time.perf_counter() - self.started) * 1000, 2),
        )


def _cost_usd(cost: Any) -> float | None:
    """Venice's reported cost in USD, when it sent a number (its ``cost`` object)."""
    value = cost.get("usd") if isinstance(cost, Mapping) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


_DECRYPTION_CODES: dict[str, DecryptionKind] = {
    "e2ee_decryption_failed": "decrypt",
    "e2ee_plaintext_in_stream": "plaintext",
}


@router.post("/v1/chat/completions")
@router.post("/chat/completions")
async def chat_completions(request: Request) -> Response:
    """OpenAI chat completions over Venice E2EE."""
    services = _services(request)
    exchange = _Exchange(
        services,
        "req_" + secrets.token_hex(12),
        time.perf_counter(),
        client_request_id=_client_request_id(request),
    )
    echoed_id = exchange.client_request_id or exchange.request_id
    try:
        payload = await _read_json(request, services.settings.server.max_body_bytes)
        if isinstance(payload, dict):
            model = payload.get("model")
            exchange.model = model if isinstance(model, str) else None
            exchange.stream = payload.get("stream") is True
        outcome = await _until_disconnect(
            request, services.chat.start(payload, request_id=exchange.request_id)
        )
    except asyncio.CancelledError:
        exchange.finish(CLIENT_CLOSED_REQUEST, "client_disconnected")
        raise
    except ProxyError as exc:
        return exchange.fail(exc, {"x-request-id": echoed_id})
    exchange.attach(outcome)

    headers = {**outcome.headers, "x-request-id": echoed_id}
    mode = services.settings.signatures.mode if outcome.e2ee else "off"
    if outcome.client_stream:
        return StreamingResponse(
            _stream_body(exchange, outcome),
            media_type="text/event-stream",
            headers={**_SSE_HEADERS, **headers},
        )
    try:
        completion = await _until_disconnect(
            request, aggregate(outcome.first, outcome.rest, outcome.stats)
        )
        if mode == "strict":
            failure = await _receipt_failure(services, outcome, exchange.request_id)
            if failure is not None:
                raise failure
    except asyncio.CancelledError:
        exchange.finish(CLIENT_CLOSED_REQUEST, "client_disconnected")
        raise
    except ProxyError as exc:
        return exchange.fail(exc, headers)
    finally:
        await outcome.aclose()
    if mode == "async":
        services.spawn(_check_receipt(services, outcome, exchange.request_id))
    exchange.first_byte()
    exchange.finish(200)
    return JSONResponse(completion, headers=headers)


async def _check_receipt(
    services: Services, outcome: ChatOutcome, request_id: str
) -> ReceiptResult | None:
    """Verify the enclave's signature over a completed answer; log and count the outcome."""
    completion_id = outcome.stats.completion_id
    if outcome.key is None or completion_id is None:
        return None
    result = await services.receipts.verify(
        outcome.model, completion_id, outcome.key.signing_address
    )
    services.metrics.record_signature(result.outcome)
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


async def _stream_body(exchange: _Exchange, outcome: ChatOutcome) -> AsyncIterator[bytes]:
    services = exchange.services
    mode = services.settings.signatures.mode if outcome.e2ee else "off"

    async def before_done() -> ProxyError | None:
        return await _receipt_failure(services, outcome, exchange.request_id)

    try:
        async for part in sse_to_client(
            outcome.first,
            outcome.rest,
            include_usage=outcome.include_usage,
            stats=outcome.stats,
            before_done=before_done if mode == "strict" else None,
        ):
            exchange.first_byte()
            yield part
    except (asyncio.CancelledError, GeneratorExit):
        outcome.stats.error_code = "client_disconnected"
        raise
    finally:
        await outcome.aclose()
        stats = outcome.stats
        if mode == "async" and stats.completed and stats.error_code is None:
            services.spawn(_check_receipt(services, outcome, exchange.request_id))
        exchange.finish(200)


@router.get("/v1/models")
@router.get("/models")
async def list_models(request: Request) -> JSONResponse:
    """The upstream's E2EE models in OpenAI's list shape (Venice's ``model_spec`` kept)."""
    services = _services(request)
    models = await services.catalogue.models()
    passthrough = services.chat.passthrough_allowed
    data: list[dict[str, Any]] = [
        dict(info.raw) for info in models.values() if info.supports_e2ee or passthrough(info.id)
    ]
    for alias, target in services.settings.models.aliases.items():
        info = models.get(target)
        if info is not None and (info.supports_e2ee or passthrough(info.id)):
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
    """Readiness: not draining, an upstream key present (or demo mode), and every warm-up
    model attested with an unexpired key. JSON with the reasons."""
    services = _services(request)
    reasons: list[str] = []
    if services.drain.draining:
        reasons.append("shutting down")
    if not services.upstream.has_api_key and not services.demo:
        reasons.append("no Venice API key: set VENICE_API_KEY or upstream.api_key_file")
    for model in services.settings.attestation.warm_up:
        if services.keys.peek(model) is None:
            reasons.append(f"model {model} has no verified, unexpired attestation")
    ready = not reasons
    return JSONResponse(
        {"ready": ready, "demo": services.demo, "reasons": reasons},
        status_code=200 if ready else 503,
    )


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus metrics (no content, keys or client-chosen text in any label)."""
    services = _services(request)
    body, content_type = services.metrics.render(request.headers.get("accept", ""))
    return Response(body, media_type=content_type)
