"""The loopback helper: free sockets and ports, and in-thread uvicorn servers (a tiny ASGI app on
127.0.0.1, started and stopped for real: that is the helper's whole job)."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.http import loopback
from proxy.http.loopback import LOOPBACK, ThreadedServer, free_port, free_socket, serve


async def hello(scope: Any, receive: Any, send: Any) -> None:
    """Answers HTTP with its path; takes part in the lifespan protocol."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": scope["path"].encode()})


async def http_only(scope: Any, receive: Any, send: Any) -> None:
    """An app that knows nothing of the lifespan protocol."""
    if scope["type"] != "http":
        raise RuntimeError("http only")
    await hello(scope, receive, send)


def refused(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((LOOPBACK, port)) != 0


def ephemeral_ports() -> range:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return range(int(low), int(high) + 1)


def test_a_free_socket_is_a_tcp_socket_bound_to_loopback_on_a_kernel_port() -> None:
    with free_socket() as sock:
        host, port = sock.getsockname()
        assert host == LOOPBACK == "127.0.0.1"
        assert port in ephemeral_ports()  # the kernel's choice, not a fixed port
        assert sock.family == socket.AF_INET
        assert sock.type == socket.SOCK_STREAM
        assert sock.proto == socket.IPPROTO_TCP  # asyncio sets TCP_NODELAY on what it accepts
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
    with free_socket("0.0.0.0") as sock:
        assert sock.getsockname()[0] == "0.0.0.0"


def test_a_free_port_is_free_again_for_whoever_binds_it() -> None:
    port = free_port()
    assert isinstance(port, int)
    assert 0 < port < 65536
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind((LOOPBACK, port))  # closed, not held
    assert 0 < free_port("0.0.0.0") < 65536


def test_a_threaded_server_serves_on_its_port_in_a_daemon_thread_and_stops() -> None:
    before = set(threading.enumerate())
    server = ThreadedServer(hello)
    assert server.app is hello  # what tests reach the app's state through
    assert server.url == f"http://127.0.0.1:{server.port}"
    assert server.start() is server
    started = set(threading.enumerate()) - before
    assert started
    assert all(thread.daemon for thread in started)  # never keeps the process alive
    try:
        answer = httpx.get(server.url + "/ping", timeout=5)
        assert (answer.status_code, answer.text) == (200, "/ping")
    finally:
        server.stop()
    assert not any(thread.is_alive() for thread in started)
    assert refused(server.port)


def test_the_servers_defaults_are_quiet_and_take_part_in_the_lifespan() -> None:
    config = ThreadedServer(hello).server.config
    assert config.log_level == "warning"
    assert config.log_config is None  # never uvicorn's dictConfig over the process's logging
    assert config.access_log is False
    assert config.lifespan == "on"
    assert config.backlog == 2048
    assert logging.getLogger("uvicorn.error").level == logging.WARNING
    chosen = ThreadedServer(hello, log_level="error", lifespan="off", backlog=16).server.config
    assert (chosen.log_level, chosen.lifespan, chosen.backlog) == ("error", "off", 16)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_an_app_without_the_lifespan_protocol_fails_to_start_at_once() -> None:
    """``lifespan="on"``: a failed start-up ends the thread, and ``start`` says so without
    waiting for its timeout."""
    server = ThreadedServer(http_only, log_level="critical")
    with pytest.raises(RuntimeError, match=r"^the in-thread server did not start$"):
        server.start()
    server.stop()
    with ThreadedServer(http_only, lifespan="off") as plain:
        assert httpx.get(plain.url + "/x", timeout=5).text == "/x"


class SlowStart:
    """An app whose start-up completes only when the test releases it."""

    def __init__(self) -> None:
        self.release = threading.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        assert (await receive())["type"] == "lifespan.startup"
        await asyncio.to_thread(self.release.wait)
        await send({"type": "lifespan.startup.complete"})
        assert (await receive())["type"] == "lifespan.shutdown"
        await send({"type": "lifespan.shutdown.complete"})


def test_a_server_that_is_not_up_by_the_deadline_is_reported() -> None:
    app = SlowStart()
    server = ThreadedServer(app, start_timeout_s=0.05)
    try:
        with pytest.raises(RuntimeError, match="did not start"):
            server.start()
    finally:
        app.release.set()
        server.stop()


class Clock:
    """``time`` for the loopback module: monotonic reads ``readings`` in turn (then far later),
    sleep only records how long it was asked to."""

    def __init__(self, *readings: float) -> None:
        self.readings = list(readings)
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.readings.pop(0) if self.readings else 1e6

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def test_start_waits_twenty_seconds_by_default_and_polls_often(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = SlowStart()
    server = ThreadedServer(app)
    clock = Clock(1000.0, 1020.0, 1020.01)  # the deadline set, at it, just past it
    monkeypatch.setattr(loopback, "time", clock)
    try:
        with pytest.raises(RuntimeError, match="did not start"):
            server.start()
    finally:
        monkeypatch.undo()
        app.release.set()
        server.stop()
    assert clock.readings == []  # still waiting at the deadline, given up just after it
    assert len(clock.sleeps) == 1
    assert all(0 < seconds <= 0.05 for seconds in clock.sleeps)  # a start takes milliseconds


def test_stop_waits_for_the_thread_but_never_forever() -> None:
    server = ThreadedServer(hello).start()
    waited: list[float | None] = []
    join = server._thread.join

    def recording_join(timeout: float | None = None) -> None:
        waited.append(timeout)
        join(timeout)

    server._thread.join = recording_join  # type: ignore[method-assign]
    server.stop()
    assert waited == [10]  # a server that does not exit leaves its daemon thread behind
    assert not server._thread.is_alive()


def test_serve_runs_the_app_for_the_duration_of_the_block() -> None:
    with serve(hello, lifespan="off") as server:
        assert isinstance(server, ThreadedServer)
        assert server.server.config.lifespan == "off"  # the options reach the server
        assert httpx.get(server.url + "/in", timeout=5).text == "/in"
        port = server.port
    assert refused(port)
