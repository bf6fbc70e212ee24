"""HTTP handlers: translate HTTP to service calls and back, nothing more.

Endpoints: ``POST /v1/chat/completions`` (also ``/chat/completions``), ``GET /v1/models`` (also
``/models``), ``GET /v1/models/{model}`` (aliases included), ``GET /v1/attestation/{model}``
(catalogue models and aliases only), ``GET``/``HEAD /healthz``, ``GET``/``HEAD /readyz``,
``GET /metrics``. ``POST /v1/responses`` is in :mod:`proxy.http.responses_route`.

Without ``server.api_keys`` any ``Authorization`` header a client sends is accepted and ignored
(Open WebUI always sends one; the guard in :mod:`proxy.http.guard` enforces local keys when
set); the upstream always gets the proxy's own Venice key.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from proxy.core.errors import (
    CLIENT_CLOSED_REQUEST,
    CLIENT_DISCONNECTED,
    ModelNotFoundError,
    ProxyError,
)
from proxy.http.answers import answer_headers, whole_answer
from proxy.http.body import read_json
from proxy.http.disconnect import until_disconnect
from proxy.http.event_stream import EventStream
from proxy.http.request_log import RequestRecord
from proxy.http.services import Services, model_trust
from proxy.service.catalog import resolve_alias
from proxy.service.chat import OpenedAnswer
from proxy.service.relay import aggregate, sse_to_client

router = APIRouter()

_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
_MAX_SHOWN_MODEL = 64


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


@router.post("/v1/chat/completions")
@router.post("/chat/completions")
async def chat_completions(request: Request) -> Response:
    """OpenAI chat completions over Venice E2EE."""
    services = _services(request)
    record = RequestRecord.begin(services, request)
    try:
        server = services.settings.server
        payload = await read_json(request, server.max_body_bytes, server.body_timeout_s)
        if isinstance(payload, dict):
            model = payload.get("model")
            record.model = model if isinstance(model, str) else None
            record.stream = payload.get("stream") is True
        outcome = await until_disconnect(
            request, services.chat.start(payload, request_id=record.request_id)
        )
    except asyncio.CancelledError:
        record.finish(CLIENT_CLOSED_REQUEST, CLIENT_DISCONNECTED)
        raise
    except ProxyError as exc:
        return record.fail(exc, {})
    record.attach(outcome)

    headers = answer_headers(outcome)
    if outcome.client_stream:
        return EventStream(
            _stream_body(record, outcome),
            {**_SSE_HEADERS, **headers},
            source_waits=lambda: outcome.upstream.reads_waited,
        )
    gather = aggregate(
        outcome.first, outcome.rest, outcome.stats, max_chars=services.chat.max_answer_chars
    )
    return await whole_answer(request, record, outcome, gather, headers)


async def _stream_body(record: RequestRecord, outcome: OpenedAnswer) -> AsyncGenerator[bytes, None]:
    services = record.services
    signatures = services.signatures
    mode = signatures.mode_for(outcome)

    async def before_done() -> ProxyError | None:
        return await signatures.strict_failure(outcome, record.request_id)

    try:
        async for part in sse_to_client(
            outcome.first,
            outcome.rest,
            include_usage=outcome.include_usage,
            stats=outcome.stats,
            before_done=before_done if mode == "strict" else None,
        ):
            record.first_byte()
            yield part
    except (asyncio.CancelledError, GeneratorExit):
        outcome.stats.error_code = CLIENT_DISCONNECTED
        raise
    finally:
        await outcome.aclose()
        stats = outcome.stats
        if mode == "async" and stats.completed and stats.error_code is None:
            services.spawn(signatures.check(outcome, record.request_id))
        record.finish(200)


async def _model_items(services: Services) -> list[dict[str, Any]]:
    """The models a client may use, in OpenAI's shape: E2EE models (every model with
    passthrough), then the aliases of those."""
    models = await services.catalogue.models()
    passthrough = services.chat.passthrough_allowed
    data: list[dict[str, Any]] = [
        dict(info.raw) for info in models.values() if info.supports_e2ee or passthrough(info.id)
    ]
    for alias, target in services.settings.models.aliases.items():
        info = models.get(target)
        if info is not None and (info.supports_e2ee or passthrough(info.id)):
            data.append({**info.raw, "id": alias, "venice_model": target})
    trust = model_trust(services)
    for item in data:
        item["trust_level"] = trust.get(str(item.get("venice_model") or item.get("id")))
    if services.demo:
        for item in data:
            item["owned_by"] = "venice-e2ee-proxy simulator (demo, not Venice)"
    return data


@router.get("/v1/models")
@router.get("/models")
async def list_models(request: Request) -> JSONResponse:
    """The upstream's E2EE models in OpenAI's list shape (Venice's ``model_spec`` kept)."""
    services = _services(request)
    body: dict[str, Any] = {"object": "list", "data": await _model_items(services)}
    if services.demo:
        body["notice"] = (
            "DEMO MODE: these models are served by the built-in simulator, not by Venice. "
            "Set VENICE_API_KEY to use Venice."
        )
    return JSONResponse(body)


@router.get("/v1/models/{model:path}")
@router.get("/models/{model:path}")
async def retrieve_model(model: str, request: Request) -> JSONResponse:
    """One model of ``GET /v1/models`` by id or alias, or a 404 ``model_not_found``."""
    services = _services(request)
    for item in await _model_items(services):
        if item.get("id") == model:
            return JSONResponse(item)
    raise ModelNotFoundError(
        f"the model '{model[:256]}' is not served by this proxy; GET /v1/models lists the "
        "models it serves",
        param="model",
    )


@router.get("/v1/attestation/{model}")
async def attestation(model: str, request: Request) -> JSONResponse:
    """The verification report of the attestation in use for ``model``: only for a model in
    the upstream's catalogue (or an alias of one), so a page cannot make the proxy attest
    arbitrary names upstream (404 ``model_not_found`` otherwise)."""
    services = _services(request)
    target = resolve_alias(model, services.settings.models.aliases)
    if target not in await services.catalogue.models():
        raise ModelNotFoundError(
            f"the model '{model[:_MAX_SHOWN_MODEL]}' is not in the upstream's catalogue; "
            "GET /v1/models lists the models",
            param="model",
        )
    key = await services.keys.get(target)
    now = time.time()
    return JSONResponse(
        {
            "model": target,
            "trust_level": key.report.trust_level,
            "signing_address": key.signing_address,
            "verified_at": int(key.verified_at),
            "expires_at": int(key.expires_at),
            "age_s": round(key.age_s(now), 3),
            "demo": services.demo,
            "report": key.report.to_dict(),
        }
    )


@router.api_route("/healthz", methods=["GET", "HEAD"])
async def healthz() -> JSONResponse:
    """Liveness: the process answers."""
    return JSONResponse({"status": "ok"})


@router.api_route("/readyz", methods=["GET", "HEAD"])
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
