"""The simulated Venice API as a FastAPI app (routes under ``/api/v1``), and a runner.

Routes (all require ``Authorization: Bearer <non-empty>``, matching ``state``'s API key when it
has one; else 401 ``{"error": "...", "code": ...}``):

- ``GET  /api/v1/models[?type=text]``
- ``GET  /api/v1/tee/attestation?model=&nonce=<64 hex>`` (no nonce: the server picks one and
  says ``nonce_source: "server"``)
- ``POST /api/v1/chat/completions`` (see :mod:`proxy.simulator.chat`)
- ``GET  /api/v1/tee/signature?model=&request_id=`` for completed responses, 1200 s

Chat responses carry ``x-venice-tee: true`` and ``x-venice-tee-provider: simulator`` (TEE
models), ``cf-ray`` and ``x-ratelimit-*`` headers. Streams are sent as produced (optionally
``token_delay_s`` apart); a client disconnect stops generation (Starlette cancels the body
iterator). A stream is signed only after ``[DONE]`` was handed to the server; the signed text
hashes the raw request body and the exact response bytes.

The real service does not ask for a key on ``/tee/attestation``; the simulator does, so tests
can tell that clients always send one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator

import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from proxy.core.crypto import address_hex
from proxy.simulator.catalog import SimModel, find_model, models_list
from proxy.simulator.chat import ChatAnswer, PolicyViolationError, answer_chat
from proxy.simulator.chunks import Marker
from proxy.simulator.decrypt import is_hex
from proxy.simulator.evidence import TEE_PROVIDER, build_attestation
from proxy.simulator.http_errors import (
    SimulatedHTTPError,
    SimulatedStreamCutError,
    injected_failure,
    venice_error,
)
from proxy.simulator.recorder import RecorderMiddleware
from proxy.simulator.signing import sign_text, signature_text
from proxy.simulator.state import (
    SIGNATURE_TTL_S,
    SimulatorState,
    StoredSignature,
    StreamOutcome,
)

API_PREFIX = "/api/v1"
RATE_LIMIT_REQUESTS = 500


def _common_headers() -> dict[str, str]:
    return {"cf-ray": f"{secrets.token_hex(8)}-SIM"}


def _authorize(request: Request, state: SimulatorState) -> None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise venice_error(401, "Authentication failed", "AUTHENTICATION_FAILED")
    if not state.api_key_ok(token):
        raise venice_error(401, "Invalid API key provided", "INVALID_API_KEY")


def _model_or_404(model_id: str | None) -> SimModel:
    model = find_model(model_id or "")
    if model is None:
        raise venice_error(404, f"Specified model not found: {model_id}", "MODEL_NOT_FOUND")
    return model


def _chat_headers(state: SimulatorState, answer: ChatAnswer) -> dict[str, str]:
    headers = _common_headers() | {
        "x-ratelimit-limit-requests": str(RATE_LIMIT_REQUESTS),
        "x-ratelimit-remaining-requests": str(max(0, RATE_LIMIT_REQUESTS - state.chat_requests)),
        "x-venice-model-id": answer.model.id,
    }
    if answer.model.tee:
        headers |= {"x-venice-tee": "true", "x-venice-tee-provider": TEE_PROVIDER}
    return headers


_IMPOSTOR_KEY = hashlib.sha256(b"venice-e2ee-proxy simulator impostor").digest()


def _store_signature(
    state: SimulatorState, answer: ChatAnswer, raw_request: bytes, response: bytes
) -> None:
    if not answer.model.tee:
        return
    upstream = None if state.faults.phala_legacy else answer.model.upstream_name
    text = signature_text(upstream, raw_request, response)
    state.store_signature(
        answer.meta.id,
        StoredSignature(
            model=answer.model.id,
            text=text,
            # The bad_signature fault signs with a key no attestation vouches for.
            signature=sign_text(
                _IMPOSTOR_KEY if state.faults.bad_signature else answer.enclave.private, text
            ),
            signing_address=address_hex(answer.enclave.public),
            expires_at=time.monotonic() + SIGNATURE_TTL_S,
        ),
    )


async def _stream_body(
    state: SimulatorState, answer: ChatAnswer, raw_request: bytes
) -> AsyncIterator[bytes]:
    assert answer.items is not None
    sent = bytearray()
    first = True
    outcome = StreamOutcome.FAILED
    state.streams_open += 1
    try:
        for item in answer.items:
            if item is Marker.CUT:
                outcome = StreamOutcome.CUT
                raise SimulatedStreamCutError()
            if item is Marker.COMPLETE:
                # Reached only after the server took [DONE]: a disconnect cancels us before this.
                _store_signature(state, answer, raw_request, bytes(sent))
                outcome = StreamOutcome.COMPLETED
                return
            assert isinstance(item, bytes)
            if not first and state.token_delay_s > 0:
                await asyncio.sleep(state.token_delay_s)
            first = False
            sent += item
            yield item
    except (asyncio.CancelledError, GeneratorExit):
        # The reader went away: cancelled while we waited, or closed while suspended at a yield.
        outcome = StreamOutcome.CANCELLED
        raise
    finally:
        state.streams_open -= 1
        state.stream_ended(answer.meta.id, outcome)


def _build_router(state: SimulatorState) -> APIRouter:
    router = APIRouter(prefix=API_PREFIX)

    @router.get("/models")
    async def list_models(request: Request) -> JSONResponse:
        _authorize(request, state)
        body = models_list(request.query_params.get("type"))
        return JSONResponse(body, headers=_common_headers())

    @router.get("/tee/attestation")
    async def attestation(request: Request) -> JSONResponse:
        state.attestation_fetches += 1
        _authorize(request, state)
        query = request.query_params
        model = _model_or_404(query.get("model"))
        if not model.tee:
            raise venice_error(400, "model does not support TEE attestation", "INVALID_MODEL")
        nonce_text = query.get("nonce")
        if nonce_text is None:
            nonce, source = secrets.token_bytes(32), "server"
        elif len(nonce_text) == 64 and is_hex(nonce_text):
            nonce, source = bytes.fromhex(nonce_text), "client"
        else:
            raise venice_error(400, "Nonce must be exactly 32 bytes", "INVALID_REQUEST")
        faults = state.faults
        if faults.wrong_nonce:
            nonce = hashlib.sha256(b"simulator: not your nonce" + nonce).digest()
        body = build_attestation(
            model=model,
            enclave_public=state.enclave_public_key,
            nonce=nonce,
            nonce_source=source,
            phala_legacy=faults.phala_legacy,
            debug=faults.debug_quote,
            include_signing_key=not faults.signing_key_missing,
            instance_seed=state.seed,
            now=time.time(),
        )
        return JSONResponse(body, headers=_common_headers())

    @router.get("/tee/signature")
    async def signature(request: Request) -> JSONResponse:
        _authorize(request, state)
        query = request.query_params
        model = _model_or_404(query.get("model"))
        request_id = query.get("request_id", "")
        stored = state.signature_for(request_id, model.id)
        if stored is None:
            raise venice_error(404, "Chat id not found or expired", "NOT_FOUND")
        body = {
            "text": stored.text,
            "signature": stored.signature,
            "signing_address": stored.signing_address,
            "signing_algo": "ecdsa",
            "model": model.id,
            "requested_request_id": request_id,
            "tee_provider": TEE_PROVIDER,
            "upstream_model": model.upstream_name,
            "verification": {
                "attestation_endpoint": f"{API_PREFIX}/tee/attestation?model={model.id}",
                "description": (
                    "EIP-191 signature by the enclave key over "
                    "model:sha256(request body):sha256(response bytes); recover the signer and "
                    "compare it with the attested signing_address"
                ),
            },
        }
        return JSONResponse(body, headers=_common_headers())

    @router.post("/chat/completions")
    async def chat(request: Request) -> Response:
        state.chat_requests += 1
        _authorize(request, state)
        status = state.take_failure()
        if status is not None:
            raise injected_failure(status)
        raw = await request.body()
        try:
            answer = answer_chat(
                request.headers,
                raw,
                enclave=state.enclave,
                faults=state.faults,
                created=int(time.time()),
                proxy_policy=state.proxy_policy,
                policy_allows=state.policy_allows,
                tool_fault=state.take_tool_fault,
            )
        except PolicyViolationError as exc:
            state.policy_violations.extend(exc.paths)
            raise
        headers = _chat_headers(state, answer)
        if answer.completion is not None:
            data = json.dumps(answer.completion, separators=(",", ":"), ensure_ascii=False)
            payload = data.encode("utf-8")
            _store_signature(state, answer, raw, payload)
            return Response(payload, headers=headers | {"content-type": "application/json"})
        headers |= {"content-type": "text/event-stream", "cache-control": "no-cache"}
        return StreamingResponse(_stream_body(state, answer, raw), headers=headers)

    return router


def create_simulator_app(state: SimulatorState | None = None) -> FastAPI:
    """A simulated Venice API bound to ``state`` (a fresh default state when omitted)."""
    state = state if state is not None else SimulatorState()
    app = FastAPI(
        title="Simulated Venice API (venice-e2ee-proxy)",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.simulator = state

    async def on_simulated_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, SimulatedHTTPError)
        return JSONResponse(
            exc.body, status_code=exc.status_code, headers=_common_headers() | exc.headers
        )

    app.add_exception_handler(SimulatedHTTPError, on_simulated_error)
    app.add_middleware(RecorderMiddleware, state=state)
    app.include_router(_build_router(state))
    return app


class StreamCutLogFilter(logging.Filter):
    """Drop uvicorn's traceback for a deliberate ``cut_stream_after`` connection drop."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, SimulatedStreamCutError)


def run_simulator(host: str, port: int, *, state: SimulatorState | None = None) -> None:
    """Serve a simulated Venice on ``host:port`` until interrupted (base URL ``.../api/v1``)."""
    logging.getLogger("uvicorn.error").addFilter(StreamCutLogFilter())
    uvicorn.run(create_simulator_app(state), host=host, port=port)
