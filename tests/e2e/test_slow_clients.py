"""Slow and silent clients cannot hold the proxy: the header deadline and the body deadline.

The proxy runs as ``serve`` runs it (``proxy.cli.main._uvicorn_config``: httptools with the
header deadline, no proxy headers), in front of the simulator; clients are raw sockets, so what
they send and when is exact.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import SecretStr

from proxy.cli.main import _uvicorn_config
from proxy.http.app import create_app
from proxy.http.loopback import ThreadedServer, free_port
from proxy.http.services import Services
from tests.conftest import E2EE_MODEL, SIM_API_KEY, proxy_settings

MESSAGES = [{"role": "user", "content": "Hello"}]
BODY = json.dumps({"model": E2EE_MODEL, "messages": MESSAGES}).encode()
HEAD = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
)


def request_bytes(body: bytes = BODY) -> bytes:
    return HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body


class Served:
    """The proxy under ``serve``'s uvicorn configuration, in a thread."""

    def __init__(self, sim_url: str, **server: Any) -> None:
        self.port = free_port()
        settings = proxy_settings(sim_url, server={"port": self.port, **server})
        self.app = create_app(settings, api_key=SecretStr(SIM_API_KEY))
        self.server = uvicorn.Server(_uvicorn_config(self.app, settings))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "did not start"
            assert self.thread.is_alive(), "did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)

    @property
    def services(self) -> Services:
        services: Services = self.app.state.services
        return services

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)


@pytest.fixture
def served(sim_server: ThreadedServer) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(**server: Any) -> Served:
        proxy = Served(sim_server.url, **server).__enter__()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.__exit__()


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the proxy sends until it closes the connection (10 s at most)."""
    received = b""
    while True:
        piece = sock.recv(65536)
        if not piece:
            return received
        received += piece


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """One ``Content-Length`` response off a kept-alive connection: its status and body."""
    received = b""
    while b"\r\n\r\n" not in received:
        piece = sock.recv(65536)
        assert piece, "closed before a response"
        received += piece
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(
        int(line.split(b":", 1)[1]) for line in lines if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        piece = sock.recv(65536)
        assert piece, "closed inside a response"
        body += piece
    return int(lines[0].split()[1]), body


def logged(log_lines: Callable[[], list[str]], event: str) -> list[dict[str, Any]]:
    found = []
    for line in log_lines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == event:
            found.append(entry)
    return found


# --- the header deadline ------------------------------------------------------------------------


def test_a_connection_that_sends_nothing_is_closed_at_the_header_deadline(
    served: Callable[..., Served], log_lines: Callable[[], list[str]]
) -> None:
    proxy = served(header_timeout_s=0.3)
    started = time.monotonic()
    with proxy.connect() as sock:
        assert read_until_closed(sock) == b""  # closed, without an answer
    assert time.monotonic() - started >= 0.25
    (line,) = logged(log_lines, "client_header_timeout")
    assert line["level"] == "warning"
    assert line["header_timeout_s"] == 0.3
    assert "server.header_timeout_s" in line["hint"]


def test_trickled_header_lines_are_cut_and_nothing_reaches_the_app(
    served: Callable[..., Served], log_lines: Callable[[], list[str]]
) -> None:
    proxy = served(header_timeout_s=0.4)
    with proxy.connect() as sock:
        sock.sendall(HEAD)
        for _ in range(3):  # a header line every 0.1 s: each in time, the whole block late
            time.sleep(0.1)
            sock.sendall(b"X-Slow: 1\r\n")
        assert read_until_closed(sock) == b""
    assert len(logged(log_lines, "client_header_timeout")) == 1
    assert logged(log_lines, "chat_request") == []  # the app never saw a request
    assert proxy.services.drain.in_flight == 0


def test_requests_in_time_are_served_and_an_idle_kept_alive_connection_is_not_cut(
    served: Callable[..., Served], log_lines: Callable[[], list[str]]
) -> None:
    proxy = served(header_timeout_s=0.3)
    with proxy.connect() as sock:
        sock.sendall(request_bytes())
        status, body = read_response(sock)
        assert status == 200
        assert json.loads(body)["choices"][0]["message"]["content"]
        # Idle past the header deadline (but not uvicorn's 5 s keep-alive): the deadline
        # counts a request's headers, not the wait for the next request.
        time.sleep(0.5)
        sock.sendall(request_bytes())
        assert read_response(sock)[0] == 200
    assert logged(log_lines, "client_header_timeout") == []


def test_the_next_request_on_a_kept_alive_connection_has_its_own_deadline(
    served: Callable[..., Served], log_lines: Callable[[], list[str]]
) -> None:
    proxy = served(header_timeout_s=0.3)
    with proxy.connect() as sock:
        sock.sendall(request_bytes())
        assert read_response(sock)[0] == 200
        sock.sendall(HEAD)  # the next request's first lines, then nothing
        assert read_until_closed(sock) == b""
    assert len(logged(log_lines, "client_header_timeout")) == 1


def test_the_header_deadline_is_the_setting(served: Callable[..., Served]) -> None:
    proxy = served()  # the default, 20 s: a silent connection is still open after 0.5 s
    with proxy.connect() as sock:
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(1)
        sock.settimeout(10)
        sock.sendall(request_bytes())
        assert read_response(sock)[0] == 200


# --- the body deadline --------------------------------------------------------------------------


def test_a_body_late_past_its_deadline_is_a_408_and_gives_back_its_place(
    served: Callable[..., Served], log_lines: Callable[[], list[str]]
) -> None:
    proxy = served(body_timeout_s=0.5, max_in_flight=1)
    with proxy.connect() as slow:
        slow.sendall(HEAD + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY[:10])
        deadline = time.monotonic() + 5
        while proxy.services.drain.in_flight == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # The one place is held while the body is late...
        refused = httpx.post(proxy.url + "/v1/chat/completions", content=BODY, headers=JSON)
        assert refused.status_code == 503
        # ...until its deadline: then the late request is refused, readably.
        answer = read_until_closed(slow)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert json.loads(body) == {
        "error": {
            "message": "the request body did not arrive whole within 0.5 s (server.body_timeout_s)",
            "type": "invalid_request_error",
            "param": None,
            "code": "request_timeout",
        }
    }
    again = httpx.post(proxy.url + "/v1/chat/completions", content=BODY, headers=JSON)
    assert again.status_code == 200
    (line,) = [entry for entry in logged(log_lines, "chat_request") if entry.get("status") == 408]
    assert line["error"] == "request_timeout"


def test_a_client_hanging_up_inside_its_body_is_a_499_not_a_crash(
    served: Callable[..., Served], log_lines: Callable[[], list[str]]
) -> None:
    proxy = served()
    with proxy.connect() as sock:
        sock.sendall(HEAD + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY[:10])
        deadline = time.monotonic() + 5
        while proxy.services.drain.in_flight == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    deadline = time.monotonic() + 5
    while proxy.services.drain.in_flight:
        assert time.monotonic() < deadline, "the request was never let go"
        time.sleep(0.01)
    (line,) = [entry for entry in logged(log_lines, "chat_request") if entry.get("status") == 499]
    assert line["error"] == "client_disconnected"
    assert logged(log_lines, "unhandled_error") == []
    assert not any("Traceback" in text for text in log_lines())


JSON = {"content-type": "application/json"}
