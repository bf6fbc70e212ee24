"""The error tree's OpenAI vocabulary: the ``type`` an error reports is defined once
(``ProxyError.reported_type``), and the chat error body says the same."""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxy.core.errors import (
    _STATUS_TYPES,
    AttestationError,
    AttestationRateLimitedError,
    AuthenticationError,
    ClientDisconnectedError,
    CryptoError,
    DecryptionError,
    InvalidPublicKeyError,
    InvalidRequestError,
    ModelNotE2EEError,
    ModelNotFoundError,
    PlaintextInStreamError,
    ProxyError,
    QuoteParseError,
    RequestTimeoutError,
    RequestTooLargeError,
    SSEProtocolError,
    UnsupportedForE2EEError,
    UnsupportedMediaTypeError,
    UpstreamConnectError,
    UpstreamConnectTimeoutError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
    UpstreamTooLargeError,
)
from proxy.http.errors import proxy_error_response

# Every status the table maps, and three it does not: two server errors and a client error.
STATUSES = [*sorted(_STATUS_TYPES), 500, 502, 418]
EXPECTED = {**_STATUS_TYPES, 500: "server_error", 502: "server_error", 418: "upstream_error"}


@pytest.mark.parametrize("status", STATUSES)
def test_an_upstream_status_reports_one_type_in_the_body_and_the_property(status: int) -> None:
    error = UpstreamStatusError(status, "upstream said no", code="c", param="p")
    assert error.reported_type == EXPECTED[status]
    assert error.to_body() == {
        "error": {
            "message": "upstream said no",
            "type": error.reported_type,
            "param": "p",
            "code": "c",
        }
    }
    assert error.error_type == "upstream_error"  # the class's own, for logs and the tree


def test_the_status_table_is_openai_s_vocabulary() -> None:
    assert _STATUS_TYPES == {
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


@pytest.mark.parametrize("status", [599, 499, 399])
def test_statuses_at_the_edges(status: int) -> None:
    expected = "server_error" if status >= 500 else "upstream_error"
    error = UpstreamStatusError(status, "x")
    assert error.reported_type == expected
    assert error.to_body()["error"]["type"] == expected


@pytest.mark.parametrize(
    ("error", "error_type"),
    [
        (ProxyError(), "server_error"),
        (InvalidRequestError("bad"), "invalid_request_error"),
        (AuthenticationError(), "authentication_error"),
        (DecryptionError(), "e2ee_error"),
        (AttestationRateLimitedError(), "attestation_error"),
        (UpstreamError(), "upstream_error"),
        (UpstreamTimeoutError(), "upstream_error"),
    ],
)
def test_every_other_error_reports_its_class_type(error: ProxyError, error_type: str) -> None:
    assert error.reported_type == error_type == error.error_type
    assert error.to_body()["error"]["type"] == error_type


# -- every class: status, type, code and message as a client sees them --------------------------

# (class, HTTP status, OpenAI type, code, default message): the tree in the module's docstring.
TREE = [
    (ProxyError, 500, "server_error", None, "internal proxy error"),
    (InvalidRequestError, 400, "invalid_request_error", None, "invalid request"),
    (UnsupportedForE2EEError, 400, "invalid_request_error", "e2ee_unsupported", "invalid request"),
    (ModelNotE2EEError, 400, "invalid_request_error", "model_not_e2ee", "invalid request"),
    (ModelNotFoundError, 404, "invalid_request_error", "model_not_found", "invalid request"),
    (RequestTimeoutError, 408, "invalid_request_error", "request_timeout", "invalid request"),
    (RequestTooLargeError, 413, "invalid_request_error", "request_too_large", "invalid request"),
    (
        ClientDisconnectedError,
        499,
        "invalid_request_error",
        "client_disconnected",
        "the client hung up before its request was read",
    ),
    (
        UnsupportedMediaTypeError,
        415,
        "invalid_request_error",
        "unsupported_content_type",
        "send the request body as JSON with the header Content-Type: application/json",
    ),
    (
        AuthenticationError,
        401,
        "authentication_error",
        "invalid_api_key",
        "invalid or missing local API key",
    ),
    (CryptoError, 502, "e2ee_error", None, "end-to-end encryption failed"),
    (
        InvalidPublicKeyError,
        502,
        "e2ee_error",
        "invalid_public_key",
        "invalid secp256k1 public key",
    ),
    (
        DecryptionError,
        502,
        "e2ee_error",
        "e2ee_decryption_failed",
        "a response field from the enclave could not be decrypted",
    ),
    (
        PlaintextInStreamError,
        502,
        "e2ee_error",
        "e2ee_plaintext_in_stream",
        "the upstream returned unencrypted content for an end-to-end encrypted request; "
        "the response was discarded",
    ),
    (
        AttestationError,
        502,
        "attestation_error",
        "attestation_failed",
        "the model's TEE attestation did not verify",
    ),
    (
        QuoteParseError,
        502,
        "attestation_error",
        "quote_parse",
        "the TDX quote could not be parsed",
    ),
    (
        AttestationRateLimitedError,
        503,
        "attestation_error",
        "attestation_rate_limited",
        "the model was attested too often in the last minute; retry shortly",
    ),
    (
        SSEProtocolError,
        502,
        "upstream_error",
        "upstream_bad_stream",
        "the upstream sent a malformed event stream",
    ),
    (UpstreamError, 502, "upstream_error", "upstream_error", "the upstream request failed"),
    (
        UpstreamTooLargeError,
        502,
        "upstream_error",
        "upstream_too_large",
        "the upstream's answer exceeds the proxy's size limit",
    ),
    (UpstreamTimeoutError, 504, "upstream_error", "upstream_timeout", "the upstream timed out"),
    (
        UpstreamConnectTimeoutError,
        504,
        "upstream_error",
        "upstream_connect_timeout",
        "the upstream did not accept the connection in time",
    ),
    (
        UpstreamConnectError,
        502,
        "upstream_error",
        "upstream_unreachable",
        "the upstream could not be reached",
    ),
]


def _body(message: str, error_type: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


@pytest.mark.parametrize(("cls", "status", "error_type", "code", "message"), TREE)
def test_each_error_class_answers_with_its_status_and_envelope(
    cls: type[ProxyError], status: int, error_type: str, code: str | None, message: str
) -> None:
    error = cls()
    assert error.http_status == status
    assert error.to_body() == _body(message, error_type, None, code)
    assert error.message == message
    assert str(error) == message  # what a log or a test that catches it reads
    assert error.code == code
    assert error.param is None
    assert error.foreign is False
    # Our own code (or the type when there is none) is what a log line may name.
    assert error.log_code == (code or error_type)


@pytest.mark.parametrize(("cls", "status", "error_type", "code", "message"), TREE)
def test_a_raise_site_s_message_code_and_param_replace_the_defaults(
    cls: type[ProxyError], status: int, error_type: str, code: str | None, message: str
) -> None:
    del code, message
    error = cls("the model field is missing", code="missing_model", param="model")
    assert error.http_status == status
    assert error.to_body() == _body(
        "the model field is missing", error_type, "model", "missing_model"
    )
    assert str(error) == "the model field is missing"
    assert error.log_code == "missing_model"


def test_the_tree_is_the_one_the_docstring_draws() -> None:
    parents = {
        UnsupportedForE2EEError: InvalidRequestError,
        ModelNotE2EEError: InvalidRequestError,
        ModelNotFoundError: InvalidRequestError,
        RequestTimeoutError: InvalidRequestError,
        RequestTooLargeError: InvalidRequestError,
        ClientDisconnectedError: ProxyError,
        UnsupportedMediaTypeError: InvalidRequestError,
        InvalidRequestError: ProxyError,
        AuthenticationError: ProxyError,
        InvalidPublicKeyError: CryptoError,
        DecryptionError: CryptoError,
        PlaintextInStreamError: CryptoError,
        CryptoError: ProxyError,
        QuoteParseError: AttestationError,
        AttestationRateLimitedError: AttestationError,
        AttestationError: ProxyError,
        SSEProtocolError: ProxyError,
        UpstreamStatusError: UpstreamError,
        UpstreamTooLargeError: UpstreamError,
        UpstreamConnectTimeoutError: UpstreamTimeoutError,
        UpstreamTimeoutError: UpstreamError,
        UpstreamConnectError: UpstreamError,
        UpstreamError: ProxyError,
    }
    for cls, parent in parents.items():
        assert cls.__bases__ == (parent,), cls
    assert ProxyError.__bases__ == (Exception,)
    assert {cls for cls, *_ in TREE} | {UpstreamStatusError} == {*parents, ProxyError}


def test_an_empty_message_or_code_is_kept_not_replaced_by_the_default() -> None:
    error = AttestationError("", code="")
    assert error.to_body() == _body("", "attestation_error", None, "")
    # An empty code logs as the type: never as nothing.
    assert error.log_code == "attestation_error"


def test_a_decryption_error_carries_no_detail() -> None:
    error = DecryptionError()
    assert error.args == ("a response field from the enclave could not be decrypted",)
    assert error.param is None


# -- foreign errors: text another party chose never reaches a log line ----------------------------


def test_a_foreign_error_logs_its_class_and_status_never_its_code() -> None:
    error = UpstreamError("the upstream said CANARY", code="CANARY-code", foreign=True)
    assert error.foreign is True
    assert error.log_code == "UpstreamError:502"
    # The client still sees what the upstream said.
    assert error.to_body() == _body(
        "the upstream said CANARY", "upstream_error", None, "CANARY-code"
    )


def test_an_upstream_status_error_is_always_foreign() -> None:
    error = UpstreamStatusError(429, "slow down CANARY", code="CANARY-code")
    assert error.foreign is True
    assert error.log_code == "UpstreamStatusError:429"
    assert "CANARY" not in error.log_code


@pytest.mark.parametrize(
    ("upstream_status", "http_status"),
    [
        (400, 400),
        (401, 401),
        (404, 404),
        (429, 429),
        (499, 499),
        (500, 500),
        (503, 503),
        (599, 599),
        (399, 502),
        (200, 502),
        (302, 502),
        (600, 502),
        (0, 502),
        (-1, 502),
    ],
)
def test_an_upstream_status_passes_through_only_when_it_is_an_error(
    upstream_status: int, http_status: int
) -> None:
    error = UpstreamStatusError(upstream_status, "x")
    assert error.http_status == http_status
    assert error.log_code == f"UpstreamStatusError:{http_status}"


def test_an_upstream_status_error_keeps_the_hints_and_its_own_type_private() -> None:
    error = UpstreamStatusError(
        429,
        "upstream error 429: Venice rate limit reached",
        code="rate_limited",
        param="model",
        retry_after="7",
        ratelimit_reset="1776995999",
        upstream_type="e2ee_model_key_mismatch",
    )
    assert error.upstream_status == 429
    assert error.retry_after == "7"
    assert error.ratelimit_reset == "1776995999"
    assert error.upstream_type == "e2ee_model_key_mismatch"
    assert str(error) == "upstream error 429: Venice rate limit reached"
    assert error.to_body() == _body(
        "upstream error 429: Venice rate limit reached", "rate_limit_error", "model", "rate_limited"
    )
    assert "e2ee_model_key_mismatch" not in repr(error.to_body())
    bare = UpstreamStatusError(502, "x")
    assert (bare.retry_after, bare.ratelimit_reset, bare.upstream_type) == (None, None, None)
    # No code from the upstream: the client reads UpstreamError's own.
    assert (bare.code, bare.param) == ("upstream_error", None)


@pytest.mark.parametrize(("seconds", "header"), [(56.2, "57"), (57.0, "57"), (0.1, "1")])
def test_the_attestation_rate_limit_says_when_to_retry(seconds: float, header: str) -> None:
    error = AttestationRateLimitedError("attested too often", retry_after_s=seconds)
    response = proxy_error_response(error)
    assert response.status_code == 503
    assert response.headers["retry-after"] == header
    assert json.loads(bytes(response.body)) == _body(
        "attested too often", "attestation_error", None, "attestation_rate_limited"
    )
    assert AttestationRateLimitedError().retry_after is None
    # Like every error, it takes the base's keywords (a foreign one logs its class and status).
    foreign = AttestationRateLimitedError(code="theirs", param="p", foreign=True)
    assert (foreign.code, foreign.param, foreign.log_code) == (
        "theirs",
        "p",
        "AttestationRateLimitedError:503",
    )


def test_an_upstream_status_passes_its_retry_after_on() -> None:
    limited = proxy_error_response(UpstreamStatusError(429, "slow down", retry_after="7"))
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "7"
    assert json.loads(bytes(limited.body)) == _body(
        "slow down", "rate_limit_error", None, "upstream_error"
    )
    without = proxy_error_response(UpstreamStatusError(503, "busy"))
    assert without.status_code == 503
    assert "retry-after" not in without.headers
    assert json.loads(bytes(without.body)) == _body("busy", "server_error", None, "upstream_error")


@pytest.mark.parametrize(("cls", "status", "error_type", "code", "message"), TREE)
def test_the_http_answer_is_the_envelope_with_the_class_status(
    cls: type[ProxyError], status: int, error_type: str, code: str | None, message: str
) -> None:
    response = proxy_error_response(cls())
    assert response.status_code == status
    assert json.loads(bytes(response.body)) == _body(message, error_type, None, code)
    assert "retry-after" not in response.headers
