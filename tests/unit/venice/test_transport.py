"""The upstream client on its real wire (aiohttp under httpx's API), against a raw TCP server.

Each test runs a tiny asyncio server on loopback that records the exact request bytes and
answers with bytes the test chooses, so what the proxy sends, keeps and closes is observed on
the socket, not through any HTTP library's view of it.
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import ipaddress
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import certifi
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proxy.core.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from proxy.http.loopback import free_port
from proxy.venice.client import ServiceClient, UpstreamClient, UpstreamTimeouts
from proxy.venice.transport import Wire as WireLayer
from proxy.venice.transport import WireRequest, WireResponse

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Wire"], Awaitable[None]]


@dataclass
class Wire:
    """What the server saw: each request's head (bytes) and body, and connections opened."""

    heads: list[bytes] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    connections: int = 0
    peer_closed: asyncio.Event = field(default_factory=asyncio.Event)


async def read_request(reader: asyncio.StreamReader, wire: Wire) -> bool:
    """One request off the connection (False at EOF)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return False
    wire.heads.append(head)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    wire.bodies.append(await reader.readexactly(length) if length else b"")
    return True


def header_lines(head: bytes) -> list[tuple[str, str]]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return [
        (name.strip().lower(), value.strip())
        for name, _, value in (line.partition(":") for line in lines if line)
    ]


def answer(status: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers.items())]
    lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[tuple[str, Wire]]:
    wire = Wire()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        wire.connections += 1
        try:
            await handler(reader, writer, wire)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/api/v1", wire
    finally:
        server.close()


@asynccontextmanager
async def venice(url: str, api_key: str | None = "k") -> AsyncIterator[UpstreamClient]:
    """A Venice client for ``url``, closed at the end."""
    client = UpstreamClient(url, api_key)
    try:
        yield client
    finally:
        await client.aclose()


def json_handler(document: object, *, extra: dict[str, str] | None = None) -> Handler:
    """Answers every request on the connection with ``document`` (keep-alive)."""

    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, wire: Wire
    ) -> None:
        while await read_request(reader, wire):
            body = json.dumps(document).encode()
            headers = {"content-type": "application/json", **(extra or {})}
            writer.write(answer("200 OK", headers, body))
            await writer.drain()

    return handler


CHUNKED_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)


def chunked(data: bytes) -> bytes:
    """``data`` as one chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


RATE_LIMITED = json.dumps({"error": "Rate limit exceeded"}).encode()


def reply_once(data: bytes) -> Handler:
    """Reads one request and answers it with exactly ``data``."""

    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, wire: Wire
    ) -> None:
        await read_request(reader, wire)
        writer.write(data)
        await writer.drain()

    return handler


async def test_the_request_on_the_wire_is_exactly_what_the_client_built() -> None:
    async with raw_server(json_handler({"data": []})) as (url, wire):
        client = UpstreamClient(url, "sk-test")
        try:
            assert await client.get_attestation("e2ee-x", "ab" * 32) == {"data": []}
        finally:
            await client.aclose()
    head = wire.heads[0]
    assert head.startswith(
        b"GET /api/v1/tee/attestation?model=e2ee-x&nonce=" + b"ab" * 32 + b" HTTP/1.1\r\n"
    )
    headers = header_lines(head)
    names = [name for name, _ in headers]
    assert names.count("host") == 1
    assert dict(headers)["authorization"] == "Bearer sk-test"
    assert dict(headers)["accept-encoding"] == "gzip"  # only what the client can bound
    assert dict(headers)["accept"] == "application/json"
    assert dict(headers)["user-agent"] == "venice-e2ee-proxy"  # nothing about the machine
    assert names.count("user-agent") == 1
    assert "cookie" not in names


async def test_a_posted_body_arrives_whole_with_its_length() -> None:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "é" * 5000}]})
    async with (
        raw_server(
            reply_once(answer("200 OK", {"content-type": "text/event-stream"}, b"data: [DONE]\n\n"))
        ) as (url, wire),
        venice(url) as client,
    ):
        stream = await client.open_chat(body.encode(), {"x-venice-tee-client-pub-key": "04ab"})
        pieces = [piece async for piece in stream.iter_bytes()]
        await stream.aclose()
    assert b"".join(pieces) == b"data: [DONE]\n\n"
    assert wire.bodies == [body.encode()]
    headers = dict(header_lines(wire.heads[0]))
    assert headers["content-length"] == str(len(body.encode()))
    assert headers["content-type"] == "application/json"
    assert headers["accept"] == "text/event-stream"
    assert headers["x-venice-tee-client-pub-key"] == "04ab"
    assert "transfer-encoding" not in headers


async def test_cookies_the_upstream_sets_are_never_sent_back() -> None:
    handler = json_handler({"ok": True}, extra={"set-cookie": "__cf_bm=tracker; Path=/"})
    async with raw_server(handler) as (url, wire), venice(url) as client:
        await client.list_models()
        await client.list_models()
    assert len(wire.heads) == 2
    assert all("cookie" not in dict(header_lines(head)) for head in wire.heads)


async def test_a_gzipped_answer_is_handed_over_compressed_and_inflated_by_the_client() -> None:
    document = {"data": [{"id": f"model-{i}"} for i in range(500)]}

    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, wire: Wire
    ) -> None:
        await read_request(reader, wire)
        body = gzip.compress(json.dumps(document).encode())
        headers = {"content-type": "application/json", "content-encoding": "gzip"}
        writer.write(answer("200 OK", headers, body))
        await writer.drain()

    async with raw_server(handler) as (url, _), venice(url, None) as client:
        assert await client.list_models() == document


async def test_a_body_read_to_its_end_leaves_the_connection_for_the_next_request() -> None:
    async with raw_server(json_handler({"n": 1})) as (url, wire), venice(url) as client:
        for _ in range(3):
            await client.list_models()
    assert len(wire.heads) == 3
    assert wire.connections == 1


async def test_closing_an_unread_stream_hangs_up_so_the_upstream_stops_generating() -> None:
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, wire: Wire
    ) -> None:
        await read_request(reader, wire)
        writer.write(CHUNKED_SSE_HEAD + chunked(b'data: {"n": 1}\n\n'))
        await writer.drain()
        # Generating forever, until the proxy hangs up.
        if await reader.read(1) == b"":
            wire.peer_closed.set()

    async with raw_server(handler) as (url, wire), venice(url) as client:
        stream = await client.open_chat(b"{}", {})
        pieces = stream.iter_bytes()
        assert await anext(pieces) == b'data: {"n": 1}\n\n'
        await stream.aclose()
        await asyncio.wait_for(wire.peer_closed.wait(), 5.0)


async def test_a_connection_cut_mid_stream_is_a_broken_stream() -> None:
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, wire: Wire
    ) -> None:
        await read_request(reader, wire)
        writer.write(CHUNKED_SSE_HEAD + chunked(b'data: {"n": 1}\n\n'))
        await writer.drain()
        writer.transport.abort()

    async with raw_server(handler) as (url, _), venice(url) as client:
        stream = await client.open_chat(b"{}", {})
        with pytest.raises(UpstreamError) as info:
            async for _ in stream.iter_bytes():
                pass
        await stream.aclose()
    assert info.value.code == "upstream_stream_broken"


async def test_a_malformed_answer_is_a_broken_stream_not_a_crash() -> None:
    malformed = reply_once(b"NOT HTTP AT ALL\r\n\r\n")
    async with raw_server(malformed) as (url, _), venice(url) as client:
        with pytest.raises(UpstreamError) as info:
            await client.open_chat(b"{}", {})
    assert info.value.code == "upstream_stream_broken"


async def test_an_error_status_is_read_and_reported() -> None:
    async with (
        raw_server(
            reply_once(answer("429 Too Many Requests", {"retry-after": "3"}, RATE_LIMITED))
        ) as (url, _),
        venice(url) as client,
    ):
        with pytest.raises(UpstreamStatusError) as info:
            await client.open_chat(b"{}", {})
    assert info.value.upstream_status == 429
    assert info.value.retry_after == "3"
    assert "Rate limit exceeded" in info.value.message


async def test_nobody_listening_is_unreachable() -> None:
    client = UpstreamClient(f"http://127.0.0.1:{free_port()}/api/v1", "k")
    try:
        with pytest.raises(UpstreamConnectError) as info:
            await client.list_models()
    finally:
        await client.aclose()
    assert info.value.code == "upstream_unreachable"


async def test_a_silent_server_times_out() -> None:
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, wire: Wire
    ) -> None:
        await read_request(reader, wire)
        await asyncio.sleep(30)

    async with raw_server(handler) as (url, _):
        service = ServiceClient(timeout_s=0.3)
        upstream = UpstreamClient(url, "k", timeouts=UpstreamTimeouts(first_byte_s=0.3))
        try:
            with pytest.raises(UpstreamTimeoutError):
                await service.request_json("GET", url + "/jwks")
            with pytest.raises(UpstreamTimeoutError):
                await upstream.open_chat(b"{}", {})
        finally:
            await service.aclose()
            await upstream.aclose()


def _no_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


async def test_a_proxy_named_by_the_environment_carries_the_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _no_proxy_settings(monkeypatch)
    async with raw_server(json_handler({"data": []})) as (proxy_url, wire):
        proxy_origin = proxy_url.removesuffix("/api/v1")
        monkeypatch.setenv("HTTP_PROXY", proxy_origin.replace("http://", "http://alice:s3cret@"))
        client = UpstreamClient("http://venice.invalid/api/v1", "sk-test")
        try:
            assert await client.list_models() == {"data": []}
            assert await client.list_models() == {"data": []}
        finally:
            await client.aclose()
    assert len(wire.heads) == 2
    assert wire.heads[0].startswith(b"GET http://venice.invalid/api/v1/models")
    headers = dict(header_lines(wire.heads[0]))
    assert headers["host"] == "venice.invalid"
    assert headers["proxy-authorization"] == "Basic YWxpY2U6czNjcmV0"  # alice:s3cret
    assert headers["authorization"] == "Bearer sk-test"


async def test_all_proxy_serves_any_scheme_and_no_proxy_exempts_a_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _no_proxy_settings(monkeypatch)
    async with (
        raw_server(json_handler({"via": "proxy"})) as (proxy_url, proxy_wire),
        raw_server(json_handler({"via": "direct"})) as (direct_url, direct_wire),
    ):
        monkeypatch.setenv("ALL_PROXY", proxy_url.removesuffix("/api/v1"))
        monkeypatch.setenv("NO_PROXY", "localhost")
        proxied = ServiceClient(timeout_s=5)
        try:
            assert await proxied.request_json("GET", "http://nras.invalid/jwks") == {"via": "proxy"}
            local = direct_url.replace("127.0.0.1", "localhost")
            assert await proxied.request_json("GET", local + "/x") == {"via": "direct"}
        finally:
            await proxied.aclose()
    assert proxy_wire.heads[0].startswith(b"GET http://nras.invalid/jwks HTTP/1.1")
    assert direct_wire.heads[0].startswith(b"GET /api/v1/x HTTP/1.1")
    assert "proxy-authorization" not in dict(header_lines(proxy_wire.heads[0]))


async def test_a_netrc_entry_for_the_host_adds_no_credentials(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _no_proxy_settings(monkeypatch)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login alice password s3cret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".netrc").write_text(netrc.read_text())
    async with raw_server(json_handler({"keys": []})) as (url, wire):
        service = ServiceClient(timeout_s=5)
        try:
            assert await service.request_json("GET", url + "/jwks") == {"keys": []}
        finally:
            await service.aclose()
    headers = dict(header_lines(wire.heads[0]))
    assert "authorization" not in headers
    assert "proxy-authorization" not in headers


async def test_an_https_endpoint_behind_a_proxy_gets_its_credentials_only_on_connect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _no_proxy_settings(monkeypatch)
    async with raw_server(reply_once(answer("403 Forbidden", {}, b"no tunnels here"))) as (
        proxy_url,
        wire,
    ):
        origin = proxy_url.removesuffix("/api/v1")
        monkeypatch.setenv("HTTPS_PROXY", origin.replace("http://", "http://alice:s3cret@"))
        client = UpstreamClient("https://venice.invalid/api/v1", "sk-test")
        try:
            with pytest.raises(UpstreamError):
                await client.list_models()
        finally:
            await client.aclose()
    assert wire.heads[0].startswith(b"CONNECT venice.invalid:443 HTTP/1.1")
    headers = dict(header_lines(wire.heads[0]))
    assert headers["proxy-authorization"] == "Basic YWxpY2U6czNjcmV0"
    assert "authorization" not in headers  # the Venice key only ever travels inside the tunnel


async def test_a_piece_that_had_to_wait_for_the_network_is_counted_as_such() -> None:
    release = asyncio.Event()

    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, wire: Wire
    ) -> None:
        await read_request(reader, wire)
        first = b'data: {"n": 1}\n\n'
        later = b'data: {"n": 2}\n\n'
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(first) + len(later), first)
        )
        await writer.drain()
        await release.wait()
        writer.write(later)
        await writer.drain()

    async with raw_server(handler) as (url, _), venice(url) as client:
        stream = await client.open_chat(b"{}", {})
        pieces = stream.iter_bytes()
        assert await anext(pieces) == b'data: {"n": 1}\n\n'
        assert stream.reads_waited == 0  # it came with the headers: already buffered
        waiting = asyncio.ensure_future(anext(pieces))
        await asyncio.sleep(0.05)
        release.set()
        assert await waiting == b'data: {"n": 2}\n\n'
        assert stream.reads_waited == 1
        await stream.aclose()


# --- the wire itself: what aiohttp adds (nothing), limits, time limits, routes ---------------


async def _send(wire: WireLayer, method: str, url: str, content: bytes | None = None) -> bytes:
    response = await wire.send(WireRequest(method, url, {}, content=content))
    try:
        return b"".join([piece async for piece in response.pieces()])
    finally:
        await response.aclose()


async def test_the_wire_adds_no_headers_of_its_own() -> None:
    async with raw_server(json_handler({})) as (url, server):
        wire = WireLayer(None, httpx.Timeout(5.0))
        try:
            await _send(wire, "GET", url + "/models")
            await _send(wire, "POST", url + "/models", b"\x00\x01")
        finally:
            await wire.aclose()
    get, post = (header_lines(head) for head in server.heads)
    port = url.split(":")[2].split("/")[0]
    assert get == [("host", f"127.0.0.1:{port}")]
    assert post == [("host", f"127.0.0.1:{port}"), ("content-length", "2")]
    assert server.bodies[1] == b"\x00\x01"


async def test_a_verifier_get_carries_only_the_constant_headers_and_no_body() -> None:
    async with raw_server(json_handler({"keys": []})) as (url, server):
        service = ServiceClient(timeout_s=5)
        try:
            assert await service.request_json("GET", url + "/jwks") == {"keys": []}
        finally:
            await service.aclose()
    assert header_lines(server.heads[0])[1:] == [
        ("user-agent", "venice-e2ee-proxy"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip"),
    ]  # no content-length: 0, no content-type
    assert server.bodies == [b""]


async def test_a_path_is_percent_encoded_on_the_wire() -> None:
    async with raw_server(json_handler({})) as (url, server):
        wire = WireLayer(None, httpx.Timeout(5.0))
        try:
            await _send(wire, "GET", url + "/a b/é")
        finally:
            await wire.aclose()
    assert server.heads[0].startswith(b"GET /api/v1/a%20b/%C3%A9 HTTP/1.1\r\n")


async def test_a_redirect_is_handed_over_not_followed() -> None:
    async with raw_server(
        reply_once(answer("302 Found", {"location": "http://elsewhere.invalid/"}, b""))
    ) as (url, server):
        wire = WireLayer(None, httpx.Timeout(5.0))
        try:
            response = await wire.send(WireRequest("GET", url + "/models", {}))
            assert response.status_code == 302
            assert response.headers["location"] == "http://elsewhere.invalid/"
            await response.aclose()
        finally:
            await wire.aclose()
    assert len(server.heads) == 1


async def test_cookies_for_a_named_host_are_never_sent_back() -> None:
    handler = json_handler({"ok": True}, extra={"set-cookie": "session=tracker; Path=/"})
    async with (
        raw_server(handler) as (url, server),
        venice(url.replace("127.0.0.1", "localhost")) as client,
    ):
        await client.list_models()
        await client.list_models()
    assert len(server.heads) == 2
    assert "cookie" not in dict(header_lines(server.heads[1]))


async def test_many_streams_to_one_host_are_open_at_once() -> None:
    held = asyncio.Event()

    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, wire: Wire
    ) -> None:
        await read_request(reader, wire)
        writer.write(CHUNKED_SSE_HEAD + chunked(b"data: 1\n\n"))
        await writer.drain()
        await held.wait()

    async with raw_server(handler) as (url, server), venice(url) as client:
        streams = await asyncio.wait_for(
            asyncio.gather(*(client.open_chat(b"{}", {}) for _ in range(101))), 10
        )
        assert server.connections == 101  # no pool limit: none of them waited for another
        held.set()
        for stream in streams:
            await stream.aclose()


async def test_closing_the_wire_closes_its_connections() -> None:
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, wire: Wire
    ) -> None:
        while await read_request(reader, wire):
            writer.write(answer("200 OK", {"content-type": "application/json"}, b"{}"))
            await writer.drain()
        wire.peer_closed.set()

    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        async with raw_server(handler) as (url, server):
            client = UpstreamClient(url, "k")
            await client.list_models()
            await client.aclose()
            await asyncio.wait_for(server.peer_closed.wait(), 2)
    finally:
        loop.set_exception_handler(previous)
    assert reported == []  # no "Unclosed client session": it was closed, not collected


async def test_a_silent_read_times_out_at_the_read_limit() -> None:
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, wire: Wire
    ) -> None:
        await read_request(reader, wire)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n12345")
        await writer.drain()
        await asyncio.sleep(30)

    async with raw_server(handler) as (url, _):
        wire = WireLayer(None, httpx.Timeout(5.0, read=0.2))
        try:
            response = await wire.send(WireRequest("GET", url + "/x", {}))
            with pytest.raises(httpx.ReadTimeout):
                await asyncio.wait_for(_drain(response), 2)
            await response.aclose()
        finally:
            await wire.aclose()


async def _drain(response: WireResponse) -> bytes:
    return b"".join([piece async for piece in response.pieces()])


@pytest.mark.parametrize(
    "limits",
    [httpx.Timeout(30.0, connect=0.2, pool=30.0), httpx.Timeout(30.0, connect=30.0, pool=0.2)],
    ids=["connect", "pool"],
)
async def test_a_connect_that_hangs_is_a_connect_timeout(
    monkeypatch: pytest.MonkeyPatch, limits: httpx.Timeout
) -> None:
    loop = asyncio.get_running_loop()

    async def hang(*_: object, **__: object) -> None:
        await asyncio.sleep(30)

    monkeypatch.setattr(loop, "sock_connect", hang)  # the TCP handshake never completes
    wire = WireLayer(None, limits)
    try:
        with pytest.raises(httpx.ConnectTimeout):
            await asyncio.wait_for(wire.send(WireRequest("GET", "http://127.0.0.1:9/x", {})), 2)
    finally:
        await wire.aclose()


async def test_the_environment_is_read_once_per_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_proxy_settings(monkeypatch)
    async with (
        raw_server(json_handler({"via": "direct"})) as (direct_url, _),
        raw_server(json_handler({"via": "proxy"})) as (proxy_url, _),
    ):
        wire = WireLayer(None, httpx.Timeout(5.0))
        try:
            # The first 32 endpoints are remembered as they were first routed (direct) ...
            for n in range(32):
                assert json.loads(await _send(wire, "GET", f"{direct_url}/{n}")) == {
                    "via": "direct"
                }
            monkeypatch.setenv("HTTP_PROXY", proxy_url.removesuffix("/api/v1"))
            for n in range(32):
                assert json.loads(await _send(wire, "GET", f"{direct_url}/{n}")) == {
                    "via": "direct"
                }
            # ... and no more: a 33rd is routed anew on every request.
            assert json.loads(await _send(wire, "GET", f"{direct_url}/32")) == {"via": "proxy"}
            monkeypatch.delenv("HTTP_PROXY")
            assert json.loads(await _send(wire, "GET", f"{direct_url}/32")) == {"via": "direct"}
        finally:
            await wire.aclose()


async def test_a_proxy_without_scheme_or_password_is_used_with_basic_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _no_proxy_settings(monkeypatch)
    async with raw_server(json_handler({"data": []})) as (proxy_url, server):
        origin = proxy_url.removeprefix("http://").removesuffix("/api/v1")
        monkeypatch.setenv("HTTP_PROXY", f"alice@{origin}")
        client = UpstreamClient("http://venice.invalid/api/v1", None)
        try:
            assert await client.list_models() == {"data": []}
        finally:
            await client.aclose()
    head = server.heads[0]
    assert head.startswith(b"GET http://venice.invalid/api/v1/models?type=text HTTP/1.1\r\n")
    assert b"\r\nproxy-authorization: Basic YWxpY2U6\r\n" in head  # alice: (empty password)


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own authority (written as PEM), and its key."""

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "loopback test authority")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_tls_trusts_httpx_s_store_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # With no SSL_CERT_FILE / SSL_CERT_DIR, the trust store is certifi's bundle (as httpx's),
    # here replaced by the loopback authority: the system store does not know it.
    _no_proxy_settings(monkeypatch)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    cert, key = _self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    seen = Wire()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await json_handler({"tls": True})(reader, writer, seen)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        monkeypatch.setattr(certifi, "where", lambda: str(cert))
        async with venice(f"https://127.0.0.1:{port}/api/v1") as client:
            assert await client.list_models() == {"tls": True}
        (tmp_path / "other").mkdir()
        other, _ = _self_signed(tmp_path / "other")  # an authority that did not sign it
        monkeypatch.setattr(certifi, "where", lambda: str(other))
        async with venice(f"https://127.0.0.1:{port}/api/v1") as client:
            with pytest.raises(UpstreamConnectError):
                await client.list_models()
    finally:
        server.close()
