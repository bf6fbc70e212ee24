"""The header deadline's protocol class and how ``serve`` configures uvicorn with it (its
behaviour on real connections: tests/e2e/test_slow_clients.py)."""

from __future__ import annotations

import math

import pytest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from proxy.cli.main import _uvicorn_config
from proxy.http.header_deadline import HeaderDeadlineProtocol, header_deadline_protocol
from proxy.settings import load_settings


def test_the_class_is_uvicorns_httptools_protocol_with_the_deadline() -> None:
    protocol = header_deadline_protocol(2.5)
    assert issubclass(protocol, HttpToolsProtocol)
    assert protocol.__bases__ == (HeaderDeadlineProtocol,)
    assert protocol.__name__ == "HeaderDeadlineProtocol"
    assert protocol.header_timeout_s == 2.5
    assert header_deadline_protocol(7.0).header_timeout_s == 7.0  # one class per deadline
    assert protocol.header_timeout_s == 2.5


@pytest.mark.parametrize("seconds", [0.0, -1.0, math.nan])
def test_a_deadline_that_is_not_above_zero_is_refused(seconds: float) -> None:
    with pytest.raises(ValueError, match=r"^header_timeout_s must be above 0$"):
        header_deadline_protocol(seconds)


def test_serve_runs_uvicorn_with_the_setting_and_without_proxy_headers() -> None:
    settings = load_settings(overrides={"server": {"header_timeout_s": 3.5}}, environ={})
    config = _uvicorn_config(object(), settings)
    assert isinstance(config.http, type)
    assert issubclass(config.http, HeaderDeadlineProtocol)
    assert config.http.header_timeout_s == 3.5
    # The proxy reads no client address: nothing rewrites it from X-Forwarded-For.
    assert config.proxy_headers is False
