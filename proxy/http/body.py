"""Reading a client's request: its JSON body (bounded) and its request id.

- Content type: ``application/json`` (parameters allowed) or none; anything else is a 400
  ``unsupported_content_type``.
- Size: at most ``server.max_body_bytes``, checked against ``Content-Length`` first and again
  while reading (413). An empty body is a 400 ``empty_body``.
- JSON per RFC 8259: ``NaN``/``Infinity`` are refused; nesting deeper than Python's parser can
  follow is a 400, not a crash.
- ``X-Request-ID``: kept when it is 1-128 characters of ``[A-Za-z0-9._:-]``, else replaced by
  ``req_`` + 24 hex digits (:func:`request_id_from`). :mod:`proxy.http.request_id` decides it
  once per request, outermost, so the handlers, the log line and every response agree.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

from fastapi import Request

from proxy.core.errors import InvalidRequestError, RequestTooLargeError

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
REQUEST_ID_SCOPE_KEY = "venice_proxy.request_id"
"""Where :class:`proxy.http.request_id.RequestIdMiddleware` leaves the request's id in the scope."""


def fresh_request_id() -> str:
    """A new request id of the proxy's own: ``req_`` + 24 hex digits."""
    return "req_" + secrets.token_hex(12)


def request_id_from(given: str | None) -> str:
    """A client's ``X-Request-ID`` value when it is well-formed, else a fresh id."""
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return fresh_request_id()


def client_request_id(request: Request) -> str | None:
    """The client's own ``X-Request-ID`` when it sent a well-formed one, else None."""
    given = request.headers.get("x-request-id")
    return given if given is not None and _REQUEST_ID.fullmatch(given) else None


def request_id(request: Request) -> str:
    """The request's id: the one the middleware chose, else the client's when well-formed,
    else a fresh one."""
    chosen = request.scope.get(REQUEST_ID_SCOPE_KEY)
    if isinstance(chosen, str):
        return chosen
    return request_id_from(request.headers.get("x-request-id"))


async def read_json(request: Request, limit: int) -> Any:
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
