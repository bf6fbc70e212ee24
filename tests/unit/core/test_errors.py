"""The error tree's OpenAI vocabulary: the ``type`` an error reports is defined once
(``ProxyError.reported_type``), and the chat error body says the same."""

from __future__ import annotations

import pytest

from proxy.core.errors import (
    _STATUS_TYPES,
    AttestationRateLimitedError,
    AuthenticationError,
    DecryptionError,
    InvalidRequestError,
    ProxyError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)

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
