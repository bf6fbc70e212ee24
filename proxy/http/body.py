"""Reading a client's request: its JSON body (bounded) and its request id.

- Content type: ``application/json`` (parameters such as ``charset`` allowed, case-insensitive).
  Anything else, and a missing ``Content-Type``, is a 415 ``unsupported_content_type`` that says
  to send ``Content-Type: application/json``. A missing one is refused too: a browser page's
  ``no-cors`` fetch with a Blob body sends none, and JSON is never implied.
- Size: at most ``server.max_body_bytes``, checked against ``Content-Length`` first and again
  while reading (413). An empty body is a 400 ``empty_body``.
- Time: the whole body within ``server.body_timeout_s`` of the handler starting to read it
  (the headers are in by then), else a 408 ``request_timeout``: a client that trickles its body,
  or declares more than it sends, must not hold one of ``server.max_in_flight``'s places for
  ever. A client that hangs up while its body is read is a :class:`ClientDisconnectedError`
  (logged as 499 ``client_disconnected``), not a crash. Deliberately not bounded here: the
  time between two pieces of the body (only the whole counts).
- JSON per RFC 8259: ``NaN``/``Infinity`` are refused; nesting deeper than Python's parser can
  follow is a 400, not a crash.
- ``X-Request-ID``: kept when it is 1-128 characters of ``[A-Za-z0-9._:-]``, else replaced by
  ``req_`` + 24 hex digits (:func:`request_id_from`). :mod:`proxy.http.request_id` decides it
  once per request, outermost, so the handlers, the log line and every response agree.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from typing import Any

from fastapi import Request
from starlette.requests import ClientDisconnect

from proxy.core.errors import (
    ClientDisconnectedError,
    InvalidRequestError,
    RequestTimeoutError,
    RequestTooLargeError,
    UnsupportedMediaTypeError,
)

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


_MAX_SHOWN_CONTENT_TYPE = 64


def check_json_content_type(value: str | None) -> None:
    """Raise :class:`UnsupportedMediaTypeError` unless ``value`` is ``application/json``
    (with optional parameters). The refusal quotes at most 64 characters of what was sent."""
    media_type = (value or "").split(";")[0].strip()
    if media_type.lower() == "application/json":
        return
    shown = f"'{media_type[:_MAX_SHOWN_CONTENT_TYPE]}'" if media_type else "no Content-Type"
    raise UnsupportedMediaTypeError(
        f"unsupported content type ({shown}): send the request body as JSON with the header "
        "Content-Type: application/json"
    )


async def read_json(request: Request, limit: int, timeout_s: float) -> Any:
    """The request's JSON body (rules in the module docstring): at most ``limit`` bytes, whole
    within ``timeout_s`` seconds; nothing is read before the content type is checked."""
    check_json_content_type(request.headers.get("content-type"))
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestTooLargeError(f"the request body exceeds {limit} bytes")
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for part in request.stream():
                body += part
                if len(body) > limit:
                    raise RequestTooLargeError(f"the request body exceeds {limit} bytes")
    except TimeoutError:
        raise RequestTimeoutError(
            f"the request body did not arrive whole within {timeout_s:g} s (server.body_timeout_s)"
        ) from None
    except ClientDisconnect:
        raise ClientDisconnectedError() from None
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
