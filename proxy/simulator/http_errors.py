"""Error answers of the simulated server, in the body shapes the real layers use.

Shapes (all JSON):

- Venice gateway (auth, unknown model, rate limits, injected failures; the docs' error table)::

      {"error": "<message>", "code": "<VENICE_CODE>"}

- Venice's E2EE header checks (docs S19)::

      {"error": {"message": "<message>", "type": "invalid_request_error"}}

- NEAR inference-proxy decryption errors (docs/protocol.md#errors)::

      {"error": {"message": "<message>", "type": "bad_request", "param": null, "code": null}}

- Phala legacy (vllm-proxy) E2EE errors::

      {"error": {"message": "<message>", "type": "<phala error type>", "param": null,
                 "code": null}}

Messages are fixed strings or model ids; they never contain prompt text or key material.
"""

from __future__ import annotations

from typing import Any

from proxy.core.errors import ProxyError


class SimulatedHTTPError(ProxyError):
    """An error response the simulator sends: status, body and extra headers."""

    def __init__(
        self, status: int, body: dict[str, Any], *, headers: dict[str, str] | None = None
    ) -> None:
        error = body.get("error")
        message = error.get("message") if isinstance(error, dict) else error
        super().__init__(str(message))
        self.status_code = status
        self.body = body
        self.headers = dict(headers or {})

    @property
    def http_status(self) -> int:
        return self.status_code

    def to_body(self) -> dict[str, Any]:
        return self.body


class SimulatedStreamCutError(ProxyError):
    """Raised inside a streaming body to drop the connection (the ``cut_stream_after`` fault)."""

    default_message = "simulated connection drop"


def venice_error(
    status: int, message: str, code: str, *, headers: dict[str, str] | None = None
) -> SimulatedHTTPError:
    """A Venice gateway error."""
    return SimulatedHTTPError(status, {"error": message, "code": code}, headers=headers)


def gateway_e2ee_error(message: str) -> SimulatedHTTPError:
    """A 400 from Venice's E2EE header checks."""
    return SimulatedHTTPError(400, {"error": {"message": message, "type": "invalid_request_error"}})


def near_error(message: str) -> SimulatedHTTPError:
    """A 400 from NEAR's inference-proxy."""
    return SimulatedHTTPError(
        400, {"error": {"message": message, "type": "bad_request", "param": None, "code": None}}
    )


def phala_error(message: str, error_type: str) -> SimulatedHTTPError:
    """A 400 from Phala's legacy vllm-proxy."""
    return SimulatedHTTPError(
        400, {"error": {"message": message, "type": error_type, "param": None, "code": None}}
    )


_STATUS_MESSAGES: dict[int, tuple[str, str]] = {
    400: ("Invalid request parameters", "INVALID_REQUEST"),
    401: ("Authentication failed", "AUTHENTICATION_FAILED"),
    402: ("Insufficient USD or Diem balance to complete request", "INSUFFICIENT_BALANCE"),
    403: ("Unauthorized access", "UNAUTHORIZED"),
    404: ("Specified model not found", "MODEL_NOT_FOUND"),
    413: ("File size exceeds maximum limit", "INVALID_FILE_SIZE"),
    415: ("Invalid content type", "INVALID_CONTENT_TYPE"),
    429: ("Rate limit exceeded", "RATE_LIMIT_EXCEEDED"),
    500: ("Inference processing failed", "INFERENCE_FAILED"),
    503: ("The model is at capacity. Please try again later.", "MODEL_CAPACITY"),
}


def injected_failure(status: int) -> SimulatedHTTPError:
    """The answer to a ``fail_status`` fault: Venice's message for that status."""
    message, code = _STATUS_MESSAGES.get(status, ("An unknown error occurred", "UNKNOWN_ERROR"))
    headers = {"Retry-After": "1"} if status == 429 else None
    return venice_error(status, message, code, headers=headers)
