"""One exception tree for the whole proxy; each error knows its HTTP status and OpenAI error type.

::

    ProxyError                         500 server_error
    ├── InvalidRequestError            400 invalid_request_error
    │   ├── UnsupportedForE2EEError    400 invalid_request_error  code=e2ee_unsupported
    │   ├── ModelNotE2EEError          400 invalid_request_error  code=model_not_e2ee
    │   ├── ModelNotFoundError         404 invalid_request_error  code=model_not_found
    │   ├── RequestTimeoutError        408 invalid_request_error  code=request_timeout
    │   ├── RequestTooLargeError       413 invalid_request_error  code=request_too_large
    │   └── UnsupportedMediaTypeError  415 invalid_request_error  code=unsupported_content_type
    ├── ClientDisconnectedError        499 invalid_request_error  code=client_disconnected
    ├── AuthenticationError            401 authentication_error
    ├── CryptoError                    502 e2ee_error
    │   ├── InvalidPublicKeyError      502 e2ee_error             code=invalid_public_key
    │   ├── DecryptionError            502 e2ee_error             code=e2ee_decryption_failed
    │   └── PlaintextInStreamError     502 e2ee_error             code=e2ee_plaintext_in_stream
    ├── AttestationError               502 attestation_error      code=<stable check code>
    │   ├── QuoteParseError            502 attestation_error      code=quote_parse
    │   └── AttestationRateLimitedError 503 attestation_error     code=attestation_rate_limited
    ├── SSEProtocolError               502 upstream_error         code=upstream_bad_stream
    │                                                             (or upstream_event_too_large)
    └── UpstreamError                  502 upstream_error
        ├── UpstreamStatusError        the upstream's status, mapped type
        ├── UpstreamTooLargeError      502 upstream_error         code=upstream_json_too_large
        │                                                         or upstream_read_ahead_exceeded
        │                                                         or upstream_answer_too_large
        ├── UpstreamTimeoutError       504 upstream_error         code=upstream_timeout
        │   └── UpstreamConnectTimeoutError 504                   code=upstream_connect_timeout
        └── UpstreamConnectError       502 upstream_error         code=upstream_unreachable

The OpenAI error body ``{"error": {"message", "type", "param", "code"}}`` is built in one place,
:func:`error_body`, and the ``type`` an error reports is :attr:`ProxyError.reported_type` (the
chat error body and a Responses stream's ``response.failed`` both read it). Messages never
contain prompt or completion text, keys or key material: decryption errors carry no detail at
all.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar


def error_body(
    message: str, error_type: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The OpenAI error envelope."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


class ProxyError(Exception):
    """Base of every error the proxy reports to a client."""

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None
    default_message: ClassVar[str] = "internal proxy error"

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        param: str | None = None,
        foreign: bool = False,
    ) -> None:
        self.message = message if message is not None else self.default_message
        self.code = code if code is not None else self.default_code
        self.param = param
        self.foreign = foreign
        # The client's Retry-After (an HTTP date or seconds), where this error knows when a
        # retry can succeed: the upstream said so, or the proxy's own rate limit will reopen.
        self.retry_after: str | None = None
        super().__init__(self.message)

    @property
    def log_code(self) -> str:
        """The code safe to log: ours, never text another party chose (an upstream's error
        code could echo anything, the prompt included)."""
        if self.foreign:
            return f"{type(self).__name__}:{self.http_status}"
        return self.code or self.error_type

    @property
    def http_status(self) -> int:
        """The HTTP status a client sees for this error."""
        return self.status

    @property
    def reported_type(self) -> str:
        """The OpenAI error ``type`` a client is told: in :meth:`to_body`'s envelope and in a
        Responses stream's ``response.failed``. The class's :attr:`error_type`, except where a
        subclass maps it (:class:`UpstreamStatusError`)."""
        return self.error_type

    def to_body(self) -> dict[str, Any]:
        """This error as an OpenAI error envelope."""
        return error_body(self.message, self.reported_type, param=self.param, code=self.code)


class InvalidRequestError(ProxyError):
    """The client's request is malformed or asks for something we will not do."""

    status = 400
    error_type = "invalid_request_error"
    default_message = "invalid request"


class UnsupportedForE2EEError(InvalidRequestError):
    """The request uses a feature whose data would leave the machine in plaintext."""

    default_code = "e2ee_unsupported"


class ModelNotE2EEError(InvalidRequestError):
    """The model exists but has no E2EE, and it is not a configured passthrough model."""

    default_code = "model_not_e2ee"


class ModelNotFoundError(InvalidRequestError):
    """The model does not exist upstream."""

    status = 404
    default_code = "model_not_found"


class RequestTimeoutError(InvalidRequestError):
    """The request body did not arrive whole in time (``server.body_timeout_s``)."""

    status = 408
    default_code = "request_timeout"


CLIENT_CLOSED_REQUEST = 499
"""The de facto status for "the client hung up first" (logged; no client reads it)."""
CLIENT_DISCONNECTED = "client_disconnected"
"""The log's error code for a request whose client hung up, before or during the answer."""


class ClientDisconnectedError(ProxyError):
    """The client hung up before its request was read whole. Nobody reads the answer: the
    status (:data:`CLIENT_CLOSED_REQUEST`) and code are for the log line."""

    status = CLIENT_CLOSED_REQUEST
    error_type = "invalid_request_error"
    default_code = CLIENT_DISCONNECTED
    default_message = "the client hung up before its request was read"


class RequestTooLargeError(InvalidRequestError):
    """The request body exceeds the configured limit."""

    status = 413
    default_code = "request_too_large"


class UnsupportedMediaTypeError(InvalidRequestError):
    """The request body is not declared as ``application/json``."""

    status = 415
    default_code = "unsupported_content_type"
    default_message = "send the request body as JSON with the header Content-Type: application/json"


class AuthenticationError(ProxyError):
    """A local bearer token is missing or wrong."""

    status = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"
    default_message = "invalid or missing local API key"


class CryptoError(ProxyError):
    """An E2EE crypto failure."""

    status = 502
    error_type = "e2ee_error"
    default_message = "end-to-end encryption failed"


class InvalidPublicKeyError(CryptoError):
    """Bytes that are not a secp256k1 public key."""

    default_code = "invalid_public_key"
    default_message = "invalid secp256k1 public key"


class DecryptionError(CryptoError):
    """A blob did not decrypt. Deliberately carries no detail."""

    default_code = "e2ee_decryption_failed"
    default_message = "a response field from the enclave could not be decrypted"


class PlaintextInStreamError(CryptoError):
    """The upstream sent plaintext where the protocol requires ciphertext."""

    default_code = "e2ee_plaintext_in_stream"
    default_message = (
        "the upstream returned unencrypted content for an end-to-end encrypted request; "
        "the response was discarded"
    )


class AttestationError(ProxyError):
    """The model's TEE attestation could not be fetched or did not verify."""

    status = 502
    error_type = "attestation_error"
    default_code = "attestation_failed"
    default_message = "the model's TEE attestation did not verify"


class QuoteParseError(AttestationError):
    """The TDX quote is not a well-formed v4 quote."""

    default_code = "quote_parse"
    default_message = "the TDX quote could not be parsed"


class AttestationRateLimitedError(AttestationError):
    """The model was attested as often as ``attestation.max_fetches_per_minute`` allows;
    ``retry_after_s`` (rounded up to whole seconds) becomes the answer's ``Retry-After``."""

    status = 503
    default_code = "attestation_rate_limited"
    default_message = "the model was attested too often in the last minute; retry shortly"

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        param: str | None = None,
        foreign: bool = False,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, code=code, param=param, foreign=foreign)
        if retry_after_s is not None:
            self.retry_after = str(max(1, math.ceil(retry_after_s)))


class SSEProtocolError(ProxyError):
    """The upstream stream is not valid server-sent events (or a line is too long)."""

    status = 502
    error_type = "upstream_error"
    default_code = "upstream_bad_stream"
    default_message = "the upstream sent a malformed event stream"


class UpstreamError(ProxyError):
    """The upstream (Venice) failed."""

    status = 502
    error_type = "upstream_error"
    default_code = "upstream_error"
    default_message = "the upstream request failed"


_STATUS_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class UpstreamStatusError(UpstreamError):
    """The upstream answered with an error status; the client sees the same status."""

    def __init__(
        self,
        upstream_status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after: str | None = None,
        ratelimit_reset: str | None = None,
        upstream_type: str | None = None,
    ) -> None:
        super().__init__(message, code=code, param=param, foreign=True)
        self.upstream_status = upstream_status
        # The backend's own error type (Phala: "e2ee_model_key_mismatch"); never sent on.
        self.upstream_type = upstream_type
        self.retry_after = retry_after
        self.ratelimit_reset = ratelimit_reset

    @property
    def http_status(self) -> int:
        if 400 <= self.upstream_status < 600:
            return self.upstream_status
        return 502

    @property
    def reported_type(self) -> str:
        """The OpenAI type of the upstream's status (:data:`_STATUS_TYPES`; any other 5xx is a
        ``server_error``, anything else an ``upstream_error``)."""
        error_type = _STATUS_TYPES.get(self.upstream_status)
        if error_type is None:
            error_type = "server_error" if self.upstream_status >= 500 else "upstream_error"
        return error_type


class UpstreamTooLargeError(UpstreamError):
    """The upstream sent more than a configured bound allows (a JSON answer, the stream before
    its first text, or the text of an answer gathered whole); the response was closed at the
    bound."""

    default_code = "upstream_too_large"
    default_message = "the upstream's answer exceeds the proxy's size limit"


class UpstreamTimeoutError(UpstreamError):
    """The upstream did not connect, answer or continue in time."""

    status = 504
    default_code = "upstream_timeout"
    default_message = "the upstream timed out"


class UpstreamConnectTimeoutError(UpstreamTimeoutError):
    """The upstream did not accept the connection in time (nothing was sent: safe to retry)."""

    default_code = "upstream_connect_timeout"
    default_message = "the upstream did not accept the connection in time"


class UpstreamConnectError(UpstreamError):
    """The upstream could not be reached."""

    default_code = "upstream_unreachable"
    default_message = "the upstream could not be reached"
