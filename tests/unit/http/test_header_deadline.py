"""The header deadline's protocol class and how ``serve`` configures uvicorn with it (its
behaviour on real connections: tests/e2e/test_slow_clients.py)."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from proxy.cli.main import _uvicorn_config
from proxy.http.header_deadline import HeaderDeadlineProtocol, header_deadline_protocol
from proxy.settings import load_settings

Lines = Callable[[], list[str]]


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


# --- the protocol on a fake transport, on the running loop ------------------------------------


class Transport:
    """What uvicorn's protocol uses of an asyncio transport; records writes and the close."""

    def __init__(self) -> None:
        self.written = b""
        self.closed = 0

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default
        )

    def is_closing(self) -> bool:
        return self.closed > 0

    def close(self) -> None:
        self.closed += 1

    def write(self, data: bytes) -> None:
        self.written += data

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_protocol(self, protocol: object) -> None:
        pass


async def hello(scope: Any, receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def connected(seconds: float) -> tuple[HeaderDeadlineProtocol, Transport]:
    config = uvicorn.Config(hello, log_config=None, lifespan="off")
    config.load()
    protocol = header_deadline_protocol(seconds)(
        config=config, server_state=ServerState(), app_state={}
    )
    transport = Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport


REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


async def test_a_silent_connection_is_closed_once_at_its_deadline(log_lines: Lines) -> None:
    protocol, transport = connected(0.05)
    await asyncio.sleep(0.02)
    assert transport.closed == 0
    await asyncio.sleep(0.08)
    assert transport.closed == 1
    assert transport.written == b""  # no answer: nothing was asked
    (line,) = [json.loads(text) for text in log_lines() if "client_header_timeout" in text]
    assert {key: line[key] for key in line if key != "timestamp"} == {
        "event": "client_header_timeout",
        "component": "proxy.listener",
        "level": "warning",
        "header_timeout_s": 0.05,
        "hint": "a client kept a connection open without sending a whole request; "
        "raise server.header_timeout_s if a real client is this slow",
    }
    protocol.connection_lost(None)


async def test_the_first_byte_does_not_restart_the_first_requests_clock() -> None:
    protocol, transport = connected(0.08)
    await asyncio.sleep(0.05)
    protocol.data_received(b"GET / HTTP/1.1\r\n")
    await asyncio.sleep(0.05)  # 0.1 s after the opening, 0.05 s after the first byte
    assert transport.closed == 1


async def test_headers_in_time_disarm_it_and_the_next_request_gets_its_own() -> None:
    protocol, transport = connected(0.05)
    protocol.data_received(REQUEST)
    await asyncio.sleep(0.1)  # the answer is written, the connection kept alive
    assert transport.written.startswith(b"HTTP/1.1 200 OK")
    assert transport.closed == 0
    protocol.data_received(b"GET / HTTP/1.1\r\n")  # the next request's first byte arms it
    await asyncio.sleep(0.03)
    assert transport.closed == 0
    await asyncio.sleep(0.05)
    assert transport.closed == 1
    protocol.connection_lost(None)


@pytest.mark.parametrize("error", [None, ConnectionResetError()])
async def test_a_lost_connection_disarms_it(error: Exception | None) -> None:
    protocol, transport = connected(0.05)
    protocol.connection_lost(error)
    # uvicorn closes its side on a clean loss only, told which one it was
    assert transport.closed == (1 if error is None else 0)
    await asyncio.sleep(0.1)
    assert transport.closed == (1 if error is None else 0)


async def test_a_connection_already_closing_is_not_closed_again_nor_logged(
    log_lines: Lines,
) -> None:
    _, transport = connected(0.05)
    transport.closed = 1  # closing on its own already
    await asyncio.sleep(0.1)
    assert transport.closed == 1
    assert not any("client_header_timeout" in text for text in log_lines())
