"""What the chat and Responses routes share once the upstream answer is open.

- :func:`answer_headers`: the E2EE headers of the answer (``X-Venice-Proxy-E2EE``, signing
  address, TCB status) plus ``X-Venice-Proxy-Trust`` (``enclave`` | ``gateway``: where the
  encryption ends) when the key's report has a trust level.
- :func:`whole_answer`: a non-streaming answer: gather it (cancelled when the client hangs up),
  apply ``signatures.mode`` (``strict`` withholds an answer whose signature does not verify,
  ``async`` checks it in the background), log the request's one line, answer with JSON.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from proxy.core.errors import CLIENT_CLOSED_REQUEST, CLIENT_DISCONNECTED, ProxyError
from proxy.http.disconnect import until_disconnect
from proxy.http.request_log import RequestRecord
from proxy.service.chat import OpenedAnswer


def answer_headers(outcome: OpenedAnswer) -> dict[str, str]:
    """The answer's own headers, with the trust level when the attestation names one."""
    headers = dict(outcome.headers)
    if outcome.key is not None and outcome.key.report.trust_level:
        headers["x-venice-proxy-trust"] = outcome.key.report.trust_level
    return headers


async def whole_answer(
    request: Request,
    record: RequestRecord,
    outcome: OpenedAnswer,
    gather: Awaitable[dict[str, Any]],
    headers: dict[str, str],
) -> Response:
    """Gather a non-streaming answer and answer with it, or with the error that ended it."""
    signatures = record.services.signatures
    mode = signatures.mode_for(outcome)
    try:
        body = await until_disconnect(request, gather)
        if mode == "strict":
            failure = await signatures.strict_failure(outcome, record.request_id)
            if failure is not None:
                raise failure
    except asyncio.CancelledError:
        record.finish(CLIENT_CLOSED_REQUEST, CLIENT_DISCONNECTED)
        raise
    except ProxyError as exc:
        return record.fail(exc, headers)
    finally:
        await outcome.aclose()
    if mode == "async":
        record.services.spawn(signatures.check(outcome, record.request_id))
    record.first_byte()
    record.finish(200)
    return JSONResponse(body, headers=headers)
