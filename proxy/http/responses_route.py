"""``POST /v1/responses`` (also ``/responses``): the OpenAI Responses API over Venice E2EE.

Translate (:func:`proxy.core.responses.translate_request`), run the resulting chat request
through the same service as ``/v1/chat/completions`` (attestation, encryption, retries), and
answer with the Responses event stream (``stream: true``, ``text/event-stream``) or the final
``response`` object (:mod:`proxy.service.responses`). Errors before the first byte are ordinary
OpenAI error responses whose ``param`` names the Responses parameter (``input[2]``, not the chat
message it became); after it, ``response.failed``. The E2EE headers, ``X-Request-ID``, the log
line, the metrics and the signature policy are the chat route's.

Stateless by design: nothing is stored, so ``GET /v1/responses/{id}`` and friends are unknown
paths (see :mod:`proxy.http.endpoints`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from fastapi import APIRouter, Request
from fastapi.responses import Response

from proxy.core.errors import CLIENT_CLOSED_REQUEST, CLIENT_DISCONNECTED, ProxyError
from proxy.core.responses import ResponseBuilder, ResponsesRequest, translate_request
from proxy.http.answers import answer_headers, whole_answer
from proxy.http.body import read_json
from proxy.http.disconnect import until_disconnect
from proxy.http.event_stream import EventStream
from proxy.http.request_log import RequestRecord
from proxy.http.services import Services
from proxy.service.chat import OpenedAnswer
from proxy.service.responses import responses_object, responses_sse

router = APIRouter()

_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def _in_responses_terms(exc: ProxyError, translated: ResponsesRequest | None) -> ProxyError:
    if translated is not None and exc.param is not None:
        exc.param = translated.input_param(exc.param)
    return exc


@router.post("/v1/responses")
@router.post("/responses")
async def create_response(request: Request) -> Response:
    """The OpenAI Responses API, translated to the encrypted chat path."""
    services: Services = request.app.state.services
    record = RequestRecord.begin(services, request)
    translated: ResponsesRequest | None = None
    try:
        server = services.settings.server
        payload = await read_json(request, server.max_body_bytes, server.body_timeout_s)
        if isinstance(payload, dict) and isinstance(payload.get("model"), str):
            record.model = payload["model"]
        translated = translate_request(payload)
        record.stream = translated.stream
        outcome = await until_disconnect(
            request, services.chat.start(translated.chat, request_id=record.request_id)
        )
    except asyncio.CancelledError:
        record.finish(CLIENT_CLOSED_REQUEST, CLIENT_DISCONNECTED)
        raise
    except ProxyError as exc:
        return record.fail(_in_responses_terms(exc, translated), {})
    record.attach(outcome)

    headers = answer_headers(outcome)
    builder = ResponseBuilder(model=translated.chat["model"], echo=translated.echo)
    if translated.stream:
        return EventStream(
            _stream_body(record, outcome, builder),
            {**_SSE_HEADERS, **headers},
            source_waits=lambda: outcome.upstream.reads_waited,
        )
    gather = responses_object(
        outcome.first,
        outcome.rest,
        builder,
        stats=outcome.stats,
        max_chars=services.chat.max_answer_chars,
    )
    return await whole_answer(request, record, outcome, gather, headers)


async def _stream_body(
    record: RequestRecord, outcome: OpenedAnswer, builder: ResponseBuilder
) -> AsyncGenerator[bytes, None]:
    services = record.services
    signatures = services.signatures
    mode = signatures.mode_for(outcome)

    async def before_done() -> ProxyError | None:
        return await signatures.strict_failure(outcome, record.request_id)

    try:
        async for part in responses_sse(
            outcome.first,
            outcome.rest,
            builder,
            stats=outcome.stats,
            max_chars=services.chat.max_answer_chars,
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
