"""The simulated server's error answers (proxy/simulator/http_errors.py): each layer's body shape,
status and headers, and Venice's message and code for an injected failure."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.core.errors import ProxyError
from proxy.simulator.http_errors import (
    SimulatedHTTPError,
    SimulatedStreamCutError,
    gateway_e2ee_error,
    injected_failure,
    near_error,
    phala_error,
    venice_error,
)


def test_an_error_keeps_its_status_body_and_a_copy_of_its_headers() -> None:
    headers = {"Retry-After": "3"}
    body: dict[str, Any] = {"error": {"message": "nope", "type": "bad_request"}}
    error = SimulatedHTTPError(418, body, headers=headers)
    headers["X-Later"] = "changed"
    assert isinstance(error, ProxyError)
    assert error.status_code == 418
    assert error.http_status == 418
    assert error.body is body
    assert error.to_body() is body
    assert error.headers == {"Retry-After": "3"}
    assert str(error) == "nope"
    assert error.message == "nope"
    assert SimulatedHTTPError(400, {"error": "x"}).headers == {}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"error": "flat text", "code": "C"}, "flat text"),
        ({"error": {"message": "nested text"}}, "nested text"),
        ({"error": {"type": "no message"}}, "None"),
        ({"detail": "elsewhere"}, "None"),
    ],
)
def test_the_message_comes_from_either_body_shape(body: dict[str, Any], message: str) -> None:
    assert str(SimulatedHTTPError(400, body)) == message


def test_a_stream_cut_has_its_own_message() -> None:
    assert str(SimulatedStreamCutError()) == "simulated connection drop"
    assert isinstance(SimulatedStreamCutError(), ProxyError)


def test_venice_gateway_shape() -> None:
    error = venice_error(404, "Specified model not found: m", "MODEL_NOT_FOUND")
    assert error.status_code == 404
    assert error.body == {"error": "Specified model not found: m", "code": "MODEL_NOT_FOUND"}
    assert error.headers == {}
    assert venice_error(429, "slow", "RATE", headers={"Retry-After": "1"}).headers == {
        "Retry-After": "1"
    }


def test_e2ee_header_check_shape() -> None:
    error = gateway_e2ee_error("Invalid public key")
    assert error.status_code == 400
    assert error.body == {
        "error": {"message": "Invalid public key", "type": "invalid_request_error"}
    }
    assert error.headers == {}


def test_near_shape() -> None:
    error = near_error("Decryption failed")
    assert error.status_code == 400
    assert error.body == {
        "error": {
            "message": "Decryption failed",
            "type": "bad_request",
            "param": None,
            "code": None,
        }
    }


def test_phala_shape() -> None:
    error = phala_error("bad key", "e2ee_model_key_mismatch")
    assert error.status_code == 400
    assert error.body == {
        "error": {
            "message": "bad key",
            "type": "e2ee_model_key_mismatch",
            "param": None,
            "code": None,
        }
    }


@pytest.mark.parametrize(
    ("status", "message", "code"),
    [
        (400, "Invalid request parameters", "INVALID_REQUEST"),
        (401, "Authentication failed", "AUTHENTICATION_FAILED"),
        (402, "Insufficient USD or Diem balance to complete request", "INSUFFICIENT_BALANCE"),
        (403, "Unauthorized access", "UNAUTHORIZED"),
        (404, "Specified model not found", "MODEL_NOT_FOUND"),
        (413, "File size exceeds maximum limit", "INVALID_FILE_SIZE"),
        (415, "Invalid content type", "INVALID_CONTENT_TYPE"),
        (429, "Rate limit exceeded", "RATE_LIMIT_EXCEEDED"),
        (500, "Inference processing failed", "INFERENCE_FAILED"),
        (503, "The model is at capacity. Please try again later.", "MODEL_CAPACITY"),
        (502, "An unknown error occurred", "UNKNOWN_ERROR"),
        (599, "An unknown error occurred", "UNKNOWN_ERROR"),
    ],
)
def test_an_injected_failure_answers_venices_message_and_code(
    status: int, message: str, code: str
) -> None:
    error = injected_failure(status)
    assert error.status_code == status
    assert error.body == {"error": message, "code": code}
    assert error.headers == ({"Retry-After": "1"} if status == 429 else {})
