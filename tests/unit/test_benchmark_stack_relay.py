"""The benchmarks' stack relay (benchmarks/stack_relay.py) as the harness runs it, a process of
its own, in front of a tiny HTTP/1.1 upstream on loopback; and the stack floor the harness reads
from its figures (benchmarks/run.py).

Behaviour only: what reaches the upstream (method, path, query, headers, body), what comes back
(status, headers, the body byte for byte and as it comes), 502 when nobody answers, an upstream
that breaks off, and a clean exit on SIGTERM or SIGINT. No timing is asserted.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.run import QUICK, Results, goals, stack_floor
from benchmarks.stack_relay import LOOPBACK, parse_upstream
from proxy.http.loopback import free_port

REPO = Path(__file__).resolve().parents[2]
ANSWER = random.Random(3).randbytes(512 * 1024)  # no repeating pattern: a lost piece shows
FIRST_PIECE = 1000
GATE_TIMEOUT_S = 10.0


@dataclass
class Seen:
    """One request as the upstream read it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


@dataclass
class Upstream:
    """A tiny keep-alive HTTP/1.1 server in a thread of its own:

    - ``/stream``: 200, an event-stream answer with hop-by-hop headers among its own, its body
      ``ANSWER`` chunked, the first ``FIRST_PIECE`` bytes alone, the rest once ``gate`` is set
      (or after ``GATE_TIMEOUT_S``); ``rest_sent`` is set just before the rest goes out;
    - ``/broken``: 200 with a ``content-length`` it never fills, then it hangs up;
    - anything else: 201 with the request body as its body, the request kept in ``seen``.
    """

    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)
    rest_sent: threading.Event = field(default_factory=threading.Event)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                line, *lines = head.decode("latin-1").split("\r\n")[:-2]
                method, target, _ = line.split(" ")
                headers = [
                    (name.strip().lower(), value.strip())
                    for name, _, value in (item.partition(":") for item in lines)
                ]
                length = sum(int(v) for k, v in headers if k == "content-length")
                body = await reader.readexactly(length)
                if target.startswith("/stream"):
                    await self.stream(writer)
                elif target.startswith("/broken"):
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nonly this")
                    await writer.drain()
                    return
                else:
                    self.seen.append(Seen(method, target, headers, body))
                    writer.write(
                        b"HTTP/1.1 201 Created\r\ncontent-type: application/octet-stream\r\n"
                        b"content-length: %d\r\n\r\n" % len(body) + body
                    )
                    await writer.drain()
        finally:
            writer.close()

    async def stream(self, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\n"
            b"Content-Type: text/event-stream\r\n"
            b"X-Custom: kept\r\n"
            b"Set-Cookie: a=1\r\n"
            b"Set-Cookie: b=2\r\n"
            b"Date: Thu, 01 Jan 1970 00:00:00 GMT\r\n"
            b"Server: upstream\r\n"
            b"Connection: keep-alive, X-Hop\r\n"
            b"Keep-Alive: timeout=5\r\n"
            b"X-Hop: named by connection\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )

        def chunk(data: bytes) -> bytes:
            return b"%x\r\n" % len(data) + data + b"\r\n"

        writer.write(chunk(ANSWER[:FIRST_PIECE]))
        await writer.drain()
        for _ in range(int(GATE_TIMEOUT_S / 0.005)):
            if self.gate.is_set():
                break
            await asyncio.sleep(0.005)
        self.rest_sent.set()
        sizes = [1, 100, 5000, 70_000, 3, 200_000]
        start = FIRST_PIECE
        for size in sizes * 10:
            if start >= len(ANSWER):
                break
            writer.write(chunk(ANSWER[start : start + size]))
            start += size
            await writer.drain()
        if start < len(ANSWER):
            writer.write(chunk(ANSWER[start:]))
        writer.write(b"0\r\n\r\n")
        await writer.drain()


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    ready = threading.Event()
    stop: list[asyncio.Event] = []

    async def serve() -> None:
        listening = await asyncio.start_server(server.handle, LOOPBACK, 0)
        server.port = listening.sockets[0].getsockname()[1]
        stop.append(asyncio.Event())
        ready.set()
        await stop[0].wait()
        listening.close()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield server
    loop.call_soon_threadsafe(stop[0].set)
    thread.join(10)
    loop.close()


@dataclass
class RelayProcess:
    """``python -m benchmarks.stack_relay`` as the harness starts it, its ready line read."""

    popen: subprocess.Popen[bytes]
    port: int
    ready_line: str
    stderr_path: Path

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signum)
        try:
            return self.popen.wait(timeout=20)
        finally:
            if self.popen.poll() is None:
                self.popen.kill()
                self.popen.wait()


def start_relay(upstream_url: str, log_dir: Path) -> RelayProcess:
    port = free_port()
    stderr_path = log_dir / f"stack-relay-{port}.err"
    with stderr_path.open("wb") as stderr:
        popen = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.stack_relay",
                "--port",
                str(port),
                "--upstream",
                upstream_url,
            ],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    assert popen.stdout is not None
    line = popen.stdout.readline().decode()  # EOF if it exits instead
    if not line:
        popen.wait(10)
        pytest.fail(f"the stack relay did not start:\n{stderr_path.read_text()}")
    return RelayProcess(popen, port, line.rstrip("\n"), stderr_path)


@pytest.fixture(scope="module")
def relay(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    process = start_relay(f"http://{LOOPBACK}:{upstream.port}", tmp_path_factory.mktemp("stack"))
    yield process
    process.stop()


def test_the_ready_line_names_the_address_the_upstream_and_the_stack(
    relay: RelayProcess, upstream: Upstream
) -> None:
    assert relay.ready_line == (
        f"stack relay listening on {LOOPBACK}:{relay.port} -> http://{LOOPBACK}:{upstream.port} "
        "(loop: uvloop, http: HeaderDeadlineProtocol)"
    )


def test_a_streamed_answer_comes_through_byte_for_byte_as_it_comes_with_its_headers(
    relay: RelayProcess, upstream: Upstream
) -> None:
    """The first piece reaches the client while the upstream still holds the rest back; then
    the whole body is the upstream's, its own headers kept (repeated ones too), the hop-by-hop
    ones and those the server writes itself dropped."""
    upstream.gate.clear()
    upstream.rest_sent.clear()
    with (
        httpx.Client(timeout=30) as client,
        client.stream("GET", relay.url + "/stream?x=1") as response,
    ):
        pieces = response.iter_raw()
        received = [next(pieces)]
        assert not upstream.rest_sent.is_set()  # the relay did not wait for the whole answer
        upstream.gate.set()
        received += list(pieces)
        headers = response.headers
    assert response.status_code == 200
    assert b"".join(received) == ANSWER
    assert headers["content-type"] == "text/event-stream"
    assert headers["x-custom"] == "kept"
    assert headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert headers.get_list("server") == ["uvicorn"]
    assert len(headers.get_list("date")) == 1
    assert headers["date"] != "Thu, 01 Jan 1970 00:00:00 GMT"
    assert headers["transfer-encoding"] == "chunked"  # uvicorn's own chunking
    for hop in ("keep-alive", "x-hop", "connection"):
        assert hop not in headers


def test_method_path_query_headers_and_body_reach_the_upstream_intact(
    relay: RelayProcess, upstream: Upstream
) -> None:
    """A chunked request body arrives whole with its length; the path and query as sent (not
    re-quoted); the request's own headers, repeated ones too, without the hop-by-hop ones."""
    body = random.Random(4).randbytes(1024 * 1024 + 17)

    def pieces() -> Iterator[bytes]:
        for start in range(0, len(body), 100_000):
            yield body[start : start + 100_000]

    upstream.seen.clear()
    with httpx.Client(timeout=30) as client:
        response = client.request(
            "PUT",
            relay.url + "/echo/a%20b;c?q=1&r=%2F&r=2",
            content=pieces(),
            headers=[
                ("authorization", "Bearer kept"),
                ("x-multi", "one"),
                ("x-multi", "two"),
                ("connection", "keep-alive, x-drop"),
                ("x-drop", "named by connection"),
                ("proxy-authorization", "Basic not-for-upstream"),
                ("te", "trailers"),
                ("upgrade", "websocket-no"),
                ("expect", "100-continue"),
            ],
        )
    assert response.status_code == 201
    assert response.content == body
    [seen] = upstream.seen
    assert seen.method == "PUT"
    assert seen.target == "/echo/a%20b;c?q=1&r=%2F&r=2"
    assert seen.body == body
    assert seen.header("content-length") == [str(len(body))]
    assert seen.header("host") == [f"{LOOPBACK}:{upstream.port}"]
    assert seen.header("authorization") == ["Bearer kept"]
    assert seen.header("x-multi") == ["one", "two"]
    for dropped in (
        "transfer-encoding",
        "connection",
        "x-drop",
        "proxy-authorization",
        "te",
        "upgrade",
        "expect",
        "cookie",
    ):
        assert seen.header(dropped) == []


def test_a_request_without_body_goes_with_no_header_added_but_host(
    relay: RelayProcess, upstream: Upstream
) -> None:
    """aiohttp adds no user agent, ``accept``, ``accept-encoding`` or ``content-type`` of its
    own, and no ``content-length`` to a GET without body."""
    upstream.seen.clear()
    with httpx.Client(timeout=30) as client:
        client.headers.clear()  # httpx's own defaults
        response = client.get(relay.url + "/plain", headers={"x-only": "this"})
    assert response.status_code == 201
    assert response.content == b""
    [seen] = upstream.seen
    assert (seen.method, seen.target, seen.body) == ("GET", "/plain", b"")
    assert seen.headers == [("host", f"{LOOPBACK}:{upstream.port}"), ("x-only", "this")]


def test_an_upstream_that_breaks_off_cuts_the_answer_short(relay: RelayProcess) -> None:
    """The client sees an incomplete body, not a complete short one."""
    with (
        httpx.Client(timeout=30) as client,
        client.stream("GET", relay.url + "/broken") as response,
    ):
        assert response.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            response.read()


def test_an_unreachable_upstream_answers_502(tmp_path: Path) -> None:
    process = start_relay(f"http://{LOOPBACK}:{free_port()}", tmp_path)  # nobody listens there
    try:
        with httpx.Client(timeout=30) as client:
            response = client.post(process.url + "/api/v1/chat/completions", content=b"{}")
        assert response.status_code == 502
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        assert response.text.startswith("bad gateway: ")
        assert len(response.content) < 100
    finally:
        assert process.stop() == 0


@pytest.mark.parametrize(
    "signum", [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")]
)
def test_a_signal_stops_it_cleanly(upstream: Upstream, tmp_path: Path, signum: int) -> None:
    """After a relayed request: exit status 0, nothing printed past the ready line, nothing on
    stderr (no traceback, no unclosed session)."""
    process = start_relay(f"http://{LOOPBACK}:{upstream.port}", tmp_path)
    with httpx.Client(timeout=30) as client:
        assert client.post(process.url + "/echo", content=b"ping").content == b"ping"
    assert process.stop(signum) == 0
    assert process.popen.stdout is not None
    assert process.popen.stdout.read() == b""
    assert process.stderr_path.read_text() == ""


def test_the_upstream_argument_is_an_http_url_without_path() -> None:
    assert parse_upstream("http://127.0.0.1:8080") == "http://127.0.0.1:8080"
    assert parse_upstream("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"
    for text in (
        "127.0.0.1:8080",
        "https://127.0.0.1:8080",
        "http://127.0.0.1",
        "http://127.0.0.1:8080/api/v1",
        "http://127.0.0.1:8080?x=1",
    ):
        with pytest.raises(ValueError, match="http://HOST:PORT"):
            parse_upstream(text)


def _measured() -> dict[str, Any]:
    hop = {"ttft_p50": 0.2, "ttlt_p50": 0.3, "ttft_p99": 9.0, "ttlt_p99": 9.0}
    stack_hop = {"ttft_p50": 0.9, "ttlt_p50": 0.8, "ttft_p99": 9.0, "ttlt_p99": 9.0}
    return {
        "latency": {
            "overhead": {
                "added": {
                    "relay_plain_vs_direct_plain": hop,
                    "stack_plain_vs_direct_plain": stack_hop,
                    "proxy_e2ee_vs_direct_e2ee": {"ttft_p50": 3.0, "ttlt_p50": 2.0},
                }
            }
        },
        "paced": {
            "proxy_cpu_us_per_chunk": {"proxy_e2ee": 230.0},
            "relay_cpu_us_per_chunk": {"relay_plain": 40.0},
            "relay_system_us_per_chunk": {"relay_plain": 25.0},
            "stack_cpu_us_per_chunk": {"stack_plain": 95.0},
            "stack_system_us_per_chunk": {"stack_plain": 30.0},
            "runtime_us_per_chunk": {"proxy_e2ee": 230.0, "relay_plain": 38.0, "stack_plain": 97.0},
        },
    }


def test_the_stack_floor_is_read_from_the_stack_relays_figures_and_only_those_measured() -> None:
    assert stack_floor({}) == {}
    details = _measured()
    assert stack_floor(details) == {
        "first_token_added_ms_p50": 0.9,
        "last_token_added_ms_p50": 0.8,
        "paced_cpu_us_per_chunk": 95.0,
        "paced_system_us_per_chunk": 30.0,
        "paced_runtime_us_per_chunk": 97.0,
    }
    details["inprocess"] = {"crypto_floor_us": 50.0}
    assert stack_floor(details)["paced_cpu_plus_crypto_floor_us"] == 147.0
    del details["latency"]
    assert "first_token_added_ms_p50" not in stack_floor(details)


def test_the_goals_carry_both_floors_where_they_were_measured() -> None:
    results = Results(QUICK, quick=True)
    results.details.update(_measured())
    by_name = {goal.name: goal for goal in goals(results)}
    last, first = by_name["added to last token, p50"], by_name["added to first token, p50"]
    paced = by_name["proxy CPU per chunk, 1 ms pace"]
    assert (last.figure, last.floor, last.stack) == (2.0, 0.3, 0.8)
    assert (first.figure, first.floor, first.stack) == (3.0, 0.2, 0.9)
    assert (paced.figure, paced.floor, paced.stack) == (230.0, 40.0, 95.0)
    del results.details["paced"]["stack_cpu_us_per_chunk"]
    paced = {goal.name: goal for goal in goals(results)}["proxy CPU per chunk, 1 ms pace"]
    assert (paced.floor, paced.stack) == (40.0, None)
