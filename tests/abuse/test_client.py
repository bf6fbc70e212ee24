"""Client faults: a client that hangs up, and a client that stops reading.

The client is a raw socket, so the test decides exactly when it stops reading or hangs up (and
how small its receive buffer is). The proxy runs with long upstream timeouts here, so only the
client's behaviour can make it release the upstream: the fake upstream
(:mod:`tests.support.fake_upstream`) would otherwise hold the connection for 30 s and count a forced
close.

Checks after each: the proxy closed the upstream connection, its event loop is back to its idle
task count, and the canary prompt reached neither the upstream in plaintext nor the logs.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterator

import pytest

from proxy.http.loopback import ThreadedServer
from tests.conftest import CANARY, E2EE_MODEL
from tests.support.fake_upstream import Behaviour, FakeUpstream, ProxyHarness, proxy_harness

MiB = 1 << 20
# The client's receive buffer: small and fixed, so the kernel cannot hide a missing
# back-pressure by buffering on the client's side.
CLIENT_RCVBUF = 64 * 1024


@pytest.fixture(scope="module")
def harness() -> Iterator[ProxyHarness]:
    with proxy_harness(
        upstream={"first_byte_timeout_s": 60, "idle_timeout_s": 60, "models_cache_ttl_s": 600}
    ) as harness:
        with _Client(harness.server) as client:
            client.send_chat()
            assert client.read_all().endswith(b"0\r\n\r\n")  # warm: the model is attested
        yield harness


@pytest.fixture(autouse=True)
def leak_guard(harness: ProxyHarness, log_lines: Callable[[], list[str]]) -> Iterator[None]:
    harness.fake.reset()
    yield
    harness.assert_clean("\n".join(log_lines()))


class _Client:
    """A raw HTTP/1.1 client on a socket with a small receive buffer."""

    def __init__(self, server: ThreadedServer) -> None:
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Set before connect so the window is small from the start.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF)
        self.sock.settimeout(30)
        self.sock.connect(("127.0.0.1", server.port))
        self.received = bytearray()

    def __enter__(self) -> _Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send_chat(self) -> None:
        body = json.dumps(
            {
                "model": E2EE_MODEL,
                "messages": [{"role": "user", "content": f"{CANARY} go on"}],
                "stream": True,
            }
        ).encode()
        head = (
            "POST /v1/chat/completions HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{self.server.port}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self.sock.sendall(head.encode() + body)

    def read_until(self, marker: bytes) -> bytes:
        while marker not in self.received:
            data = self.sock.recv(65536)
            assert data, "the proxy closed the connection"
            self.received += data
        return bytes(self.received)

    def read_all(self) -> bytes:
        while not self.received.endswith(b"0\r\n\r\n"):
            data = self.sock.recv(65536)
            if not data:
                break
            self.received += data
        return bytes(self.received)

    def hang_up(self) -> None:
        # RST rather than FIN: the abrupt way a killed client goes away.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
        self.sock.close()


def test_hang_up_while_waiting_for_the_first_byte(harness: ProxyHarness) -> None:
    harness.fake.reset(Behaviour("stall_body"))
    with _Client(harness.server) as client:
        client.send_chat()
        assert harness.fake.wait_until(lambda: harness.fake.chat_requests == 1)
        client.hang_up()
    # leak_guard: the upstream connection must be closed well before the 60 s timeouts.


def test_hang_up_mid_stream_while_upstream_is_silent(harness: ProxyHarness) -> None:
    harness.fake.reset(Behaviour("stall", text_chunks=2))
    with _Client(harness.server) as client:
        client.send_chat()
        client.read_until(b'"finish_reason":null}]}\n\n')
        client.hang_up()


def test_hang_up_mid_stream_while_upstream_floods(harness: ProxyHarness) -> None:
    harness.fake.reset(Behaviour("flood"))
    with _Client(harness.server) as client:
        client.send_chat()
        client.read_until(b"data: ")
        client.hang_up()


def test_hang_up_before_the_first_byte_is_logged(
    harness: ProxyHarness, log_lines: Callable[[], list[str]]
) -> None:
    harness.fake.reset(Behaviour("stall_body"))
    with _Client(harness.server) as client:
        client.send_chat()
        assert harness.fake.wait_until(lambda: harness.fake.chat_requests == 1)
        client.hang_up()
    harness.settle()  # the request has ended (see ProxyHarness.settle)
    assert harness.fake.settled()

    def logged() -> bool:
        return any('"chat_request"' in line for line in log_lines())

    assert harness.fake.wait_until(logged, timeout_s=1), "no log line for the request"
    line = next(json.loads(line) for line in log_lines() if '"chat_request"' in line)
    assert line["error"] == "client_disconnected"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _steady(fake: FakeUpstream, read: Callable[[], int], polls: int = 30) -> int:
    """The value once it stopped changing for ``polls`` consecutive polls (or at a deadline)."""
    last = read()
    stable = 0

    def settled() -> bool:
        nonlocal last, stable
        now = read()
        stable = stable + 1 if now == last else 0
        last = now
        return stable >= polls

    fake.wait_until(settled, timeout_s=20)
    return last


def test_slow_reader_back_pressures_the_upstream(harness: ProxyHarness) -> None:
    fake = harness.fake
    fake.reset(Behaviour("flood"))  # endless: it stops only when it cannot write
    rss_before = _rss_bytes()
    with _Client(harness.server) as client:
        client.send_chat()
        client.read_until(b"data: ")
        # The client now reads nothing. Without back-pressure the proxy would keep reading the
        # upstream and buffer everything in memory; with it, the upstream's writes block.
        sent = _steady(fake, lambda: fake.bytes_sent)
        rss_growth = _rss_bytes() - rss_before
        assert fake.open_chat_connections == 1  # still streaming, merely blocked
        # Kernel socket buffers on the two hops (autotuned, up to tens of MiB) are all that
        # may hold the data in flight.
        assert sent < 128 * MiB, f"the upstream pushed {sent / MiB:.0f} MiB into the proxy"
        assert rss_growth < 64 * MiB, f"the proxy grew by {rss_growth / MiB:.0f} MiB"
        # Reading again resumes the stream: it was paused, not broken.
        before = fake.bytes_sent
        for _ in range(64):
            client.sock.recv(65536)
        assert fake.wait_until(lambda: fake.bytes_sent > before)
        client.hang_up()
