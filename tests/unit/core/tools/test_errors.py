"""Tool emulation's error: what a client is told when the model's answer could not be used, and
what the log may say about it."""

from __future__ import annotations

import pytest

from proxy.core.errors import ProxyError, UpstreamError
from proxy.core.tools import ToolEmulationError


def test_the_default_is_an_upstream_error_about_an_invalid_tool_call() -> None:
    error = ToolEmulationError()
    assert isinstance(error, UpstreamError)
    assert error.http_status == 502
    assert error.to_body() == {
        "error": {
            "message": "the model did not produce a valid tool call",
            "type": "upstream_error",
            "param": None,
            "code": "tool_call_invalid",
        }
    }
    assert error.log_code == "tool_call_invalid"
    assert str(error) == "the model did not produce a valid tool call"


@pytest.mark.parametrize("code", ["tool_call_missing", "structured_output_invalid"])
def test_each_code_reaches_the_client_and_the_log(code: str) -> None:
    error = ToolEmulationError("tool 'lookup': $.city: required", code=code)
    assert error.to_body()["error"] == {
        "message": "tool 'lookup': $.city: required",
        "type": "upstream_error",
        "param": None,
        "code": code,
    }
    assert error.log_code == code


def test_it_is_caught_where_every_proxy_error_is() -> None:
    with pytest.raises(ProxyError) as caught:
        raise ToolEmulationError(code="tool_call_missing")
    assert caught.value.message == "the model did not produce a valid tool call"
    assert caught.value.code == "tool_call_missing"
