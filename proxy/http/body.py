"""Reading a client's request: its JSON body (bounded) and its request id.

- Content type: ``application/json`` (parameters allowed) or none; anything else is a 400
  ``unsupported_content_type``.
- Size: at most ``server.max_body_bytes``, checked against ``Content-Length`` first and again
  while reading (413). An empty body is a 400 ``empty_body``.
- JSON per RFC 8259: ``NaN``/``Infinity`` are refused; nesting deeper than Python's parser can
  follow is a 400, not a crash.
- ``X-Request-ID``: kept when it is 1-128 characters of ``[A-Za-z0-9._:-]``, else replaced by
  ``req_`` + 24 hex digits.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

from fastapi import Request

from proxy.core.errors import InvalidRequestError, RequestTooLargeError

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id(request: Request) -> str:
    """The client's ``X-Request-ID`` when it is well-formed, else a fresh one."""
    given = request.headers.get("x-request-id", "")
    return given if _REQUEST_ID.fullmatch(given) else "req_" + secrets.token_hex(12)


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
