"""What the Venice clients send, and how each answer (or failure) reaches the service layer.

Every request goes through an in-memory :class:`httpx.MockTransport` (no sockets), which records
the request exactly as it would leave: method, URL, header names and values as sent, body, and
the timeouts handed to the transport. Answers are scripted per test: error statuses and bodies,
encodings, sizes, stalls and transport failures.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any

import httpx
import pytest

from proxy.core.errors import (
    UpstreamConnectError,
    UpstreamConnectTimeoutError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
    UpstreamTooLargeError,
)
from proxy.venice.client import (
    ServiceClient,
    UpstreamClient,
    UpstreamStream,
    UpstreamTimeouts,
    status_error,
)
from proxy.venice.transport import WireResponse

BASE = "https://venice.test/api/v1"
KEY = "sk-venice-secret-0123456789"
JSON_HEADERS = [
    ("user-agent", "venice-e2ee-proxy"),
    ("accept", "application/json"),
    ("accept-encoding", "gzip"),
]

Answer = Callable[[httpx.Request], Any]


class Recorder:
    """A mock upstream: answers with ``answer`` and keeps every request it saw."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        result = self.answer(request)
        if asyncio.iscoroutine(result):
            result = await result
        assert isinstance(result, httpx.Response)
        return result

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self))

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]


def sent_headers(request: httpx.Request) -> list[tuple[str, str]]:
    """The headers as they leave, in order, names as written (httpx adds ``Host`` first)."""
    return [(name.decode(), value.decode()) for name, value in request.headers.raw]


def upstream(
    answer: Answer, api_key: str | None = KEY, **kwargs: Any
) -> tuple[UpstreamClient, Recorder]:
    recorder = Recorder(answer)
    return UpstreamClient(BASE, api_key, http_client=recorder.client(), **kwargs), recorder


def responding(headers: dict[str, str], body: bytes) -> Answer:
    """Answers 200 with ``headers`` and ``body`` (streamed: not read ahead by httpx)."""
    return lambda _: httpx.Response(200, headers=headers, stream=Pieces([body]))


def sse(_: httpx.Request) -> httpx.Response:
    return httpx.Response(
        200, headers={"content-type": "text/event-stream"}, content=b"data: 1\n\n"
    )


# --- what is sent ---------------------------------------------------------------------------


async def test_each_json_fetch_sends_exactly_its_path_query_and_the_constant_headers() -> None:
    client, seen = upstream(lambda _: httpx.Response(200, json={"ok": 1}))
    assert await client.get_attestation("e2ee-m", "ab" * 32) == {"ok": 1}
    assert await client.get_signature("e2ee-m", "chatcmpl-7") == {"ok": 1}
    assert await client.list_models() == {"ok": 1}
    urls = [str(request.url) for request in seen.requests]
    assert urls == [
        f"{BASE}/tee/attestation?model=e2ee-m&nonce={'ab' * 32}",
        f"{BASE}/tee/signature?model=e2ee-m&request_id=chatcmpl-7",
        f"{BASE}/models?type=text",
    ]
    for request in seen.requests:
        assert request.method == "GET"
        assert request.content == b""
        assert sent_headers(request) == [
            ("Host", "venice.test"),
            *JSON_HEADERS,
            ("authorization", f"Bearer {KEY}"),
        ]


async def test_without_an_api_key_no_authorization_header_is_sent() -> None:
    client, seen = upstream(lambda _: httpx.Response(200, json={}), api_key=None)
    await client.list_models()
    assert sent_headers(seen.last) == [("Host", "venice.test"), *JSON_HEADERS]
    assert not client.has_api_key
    keyed, _ = upstream(lambda _: httpx.Response(200, json={}))
    assert keyed.has_api_key


async def test_a_trailing_slash_on_the_base_url_is_dropped() -> None:
    recorder = Recorder(lambda _: httpx.Response(200, json={}))
    client = UpstreamClient("https://venice.test/X/", None, http_client=recorder.client())
    await client.list_models()
    assert str(recorder.last.url) == "https://venice.test/X/models?type=text"


async def test_the_chat_request_carries_the_body_and_the_e2ee_headers_as_given() -> None:
    client, seen = upstream(sse)
    body = b'{"model":"e2ee-m","messages":[]}'
    e2ee = {
        "x-venice-tee-client-pub-key": "04" + "ab" * 64,
        "x-venice-tee-model-pub-key": "04" + "cd" * 64,
        "x-venice-tee-signing-algo": "ecdsa",
    }
    stream = await client.open_chat(body, e2ee)
    await stream.aclose()
    request = seen.last
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/chat/completions"
    assert request.content == body
    assert sent_headers(request) == [
        ("Host", "venice.test"),
        ("user-agent", "venice-e2ee-proxy"),
        ("accept", "text/event-stream"),
        ("accept-encoding", "gzip"),
        ("authorization", f"Bearer {KEY}"),
        ("content-type", "application/json"),
        *e2ee.items(),
        ("Content-Length", str(len(body))),
    ]


async def test_a_non_streamed_chat_asks_for_json_and_accepts_a_json_answer() -> None:
    client, seen = upstream(lambda _: httpx.Response(200, json={"id": "chatcmpl-1"}))
    stream = await client.open_chat(b"{}", {}, stream=False)
    body = b"".join([piece async for piece in stream.iter_bytes()])
    await stream.aclose()
    assert json.loads(body) == {"id": "chatcmpl-1"}
    assert dict(sent_headers(seen.last))["accept"] == "application/json"
    assert stream.status_code == 200
    assert stream.headers["content-type"] == "application/json"


async def test_the_transport_gets_the_configured_timeouts() -> None:
    client, seen = upstream(lambda _: httpx.Response(200, json={}))
    client = UpstreamClient(
        BASE,
        None,
        http_client=seen.client(),
        timeouts=UpstreamTimeouts(connect_s=3.0, first_byte_s=9.0, idle_s=7.0),
    )
    await client.list_models()
    assert seen.last.extensions["timeout"] == {
        "connect": 3.0,
        "read": None,  # the stream's own deadlines bound every read
        "write": 60.0,
        "pool": 3.0,
    }
    service_seen = Recorder(lambda _: httpx.Response(200, json={}))
    await ServiceClient(timeout_s=4.0, http_client=service_seen.client()).request_json(
        "GET", "https://nras.test/jwks"
    )
    await ServiceClient(http_client=service_seen.client()).request_json(
        "GET", "https://nras.test/jwks"
    )
    assert [request.extensions["timeout"] for request in service_seen.requests] == [
        {"connect": 4.0, "read": 4.0, "write": 4.0, "pool": 4.0},
        {"connect": 30.0, "read": 30.0, "write": 30.0, "pool": 30.0},
    ]


async def test_a_verifier_request_is_compact_json_and_never_carries_the_venice_key() -> None:
    seen = Recorder(lambda _: httpx.Response(200, json={"verdict": True}))
    service = ServiceClient(http_client=seen.client())
    posted = {"nonce": "ab", "evidence": [1, 2], "text": "é"}
    assert await service.request_json("POST", "https://nras.test/attest", posted) == {
        "verdict": True
    }
    assert await service.request_json("GET", "https://nras.test/jwks") == {"verdict": True}
    post, get = seen.requests
    assert post.method == "POST"
    assert post.content == b'{"nonce":"ab","evidence":[1,2],"text":"\\u00e9"}'
    assert sent_headers(post) == [
        ("Host", "nras.test"),
        *JSON_HEADERS,
        ("content-type", "application/json"),
        ("Content-Length", str(len(post.content))),
    ]
    assert get.method == "GET"
    assert get.content == b""
    assert sent_headers(get) == [("Host", "nras.test"), *JSON_HEADERS]


# --- error statuses ---------------------------------------------------------------------------


def test_a_venice_error_body_gives_its_message_and_code() -> None:
    error = status_error(400, b'{"error": "bad model", "code": "model_x"}', {})
    assert isinstance(error, UpstreamStatusError)
    assert error.upstream_status == 400
    assert error.message == "upstream error 400: bad model"
    assert error.code == "model_x"
    assert error.retry_after is None
    assert error.ratelimit_reset is None
    assert error.upstream_type is None


def test_a_backend_error_body_gives_its_message_code_and_type() -> None:
    body = {"error": {"message": "key mismatch", "type": "e2ee_model_key_mismatch", "code": "k1"}}
    error = status_error(400, json.dumps(body).encode(), {})
    assert error.message == "upstream error 400: key mismatch"
    assert error.code == "k1"
    assert error.upstream_type == "e2ee_model_key_mismatch"
    long_type = {"error": {"message": "m", "type": "t" * 100}}
    assert status_error(400, json.dumps(long_type).encode(), {}).upstream_type == "t" * 64
    empty_type = {"error": {"message": "m", "type": ""}}
    assert status_error(400, json.dumps(empty_type).encode(), {}).upstream_type is None


def test_fields_of_the_wrong_type_are_ignored() -> None:
    body = {"error": {"message": 5, "type": ["x"], "code": 7}, "message": "top", "code": "c2"}
    error = status_error(500, json.dumps(body).encode(), {})
    assert error.message == "upstream error 500: top"
    assert error.code == "c2"
    assert error.upstream_type is None
    nothing = {"error": {"message": None, "code": None}}
    error = status_error(500, json.dumps(nothing).encode(), {})
    assert error.message == 'upstream error 500: {"error": {"message": null, "code": null}}'
    assert error.code == "upstream_error"  # the proxy's own default


def test_the_nested_error_wins_over_top_level_fields() -> None:
    body = {"error": {"message": "inner", "code": "in"}, "message": "outer", "code": "out"}
    error = status_error(500, json.dumps(body).encode(), {})
    assert (error.message, error.code) == ("upstream error 500: inner", "in")
    flat = {"error": "text", "message": "outer", "code": "out"}
    error = status_error(500, json.dumps(flat).encode(), {})
    assert (error.message, error.code) == ("upstream error 500: text", "out")
    top = {"message": "only top", "code": "t"}
    error = status_error(500, json.dumps(top).encode(), {})
    assert (error.message, error.code) == ("upstream error 500: only top", "t")


def test_a_body_without_a_message_falls_back_to_its_text_then_the_reason_phrase() -> None:
    assert status_error(502, b"  bad gateway text \n", {}).message == (
        "upstream error 502: bad gateway text"
    )
    assert status_error(503, b"", {}).message == "upstream error 503: Service Unavailable"
    assert status_error(599, b"  ", {}).message == "upstream error 599: error"
    assert status_error(500, b"[1, 2]", {}).message == "upstream error 500: [1, 2]"


def test_an_undecodable_body_is_read_with_replacement_characters() -> None:
    error = status_error(500, b'{"error": "caf\xe9 \xff"}', {})
    assert error.message == "upstream error 500: caf\ufffd \ufffd"
    error = status_error(500, '{"error": "café"}'.encode(), {})
    assert error.message == "upstream error 500: café"


def test_a_long_message_is_cut_at_500_characters() -> None:
    exact = status_error(500, json.dumps({"error": "m" * 500}).encode(), {})
    assert exact.message == "upstream error 500: " + "m" * 500
    longer = status_error(500, json.dumps({"error": "m" * 501}).encode(), {})
    assert longer.message == "upstream error 500: " + "m" * 500 + "..."


@pytest.mark.parametrize(
    ("status", "hint"),
    [
        (401, "Venice rejected the proxy's API key (check VENICE_API_KEY): "),
        (402, "Venice reports insufficient balance for this request: "),
        (429, "Venice rate limit reached: "),
        (403, ""),
    ],
)
def test_auth_balance_and_rate_limit_errors_carry_a_hint(status: int, hint: str) -> None:
    error = status_error(status, b'{"error": "nope"}', {})
    assert error.message == f"upstream error {status}: {hint}nope"
    assert error.upstream_status == status


def test_retry_after_is_passed_on_and_the_reset_only_for_a_rate_limit() -> None:
    headers = httpx.Headers({"Retry-After": "7", "X-RateLimit-Reset-Requests": "1712345678"})
    limited = status_error(429, b"{}", headers)
    assert (limited.retry_after, limited.ratelimit_reset) == ("7", "1712345678")
    busy = status_error(503, b"{}", headers)
    assert (busy.retry_after, busy.ratelimit_reset) == ("7", None)
    plain = {"retry-after": "3", "x-ratelimit-reset-requests": "9"}
    assert (
        status_error(429, b"", plain).retry_after,
        status_error(429, b"", plain).ratelimit_reset,
    ) == ("3", "9")
    assert status_error(430, b"", plain).ratelimit_reset is None


async def test_an_error_status_of_the_chat_is_raised_with_its_body_and_headers() -> None:
    def answer(_: httpx.Request) -> httpx.Response:
        return httpx.Response(
            400, headers={"retry-after": "2"}, json={"error": "bad request", "code": "c"}
        )

    client, _ = upstream(answer)
    with pytest.raises(UpstreamStatusError) as info:
        await client.open_chat(b"{}", {})
    assert info.value.upstream_status == 400
    assert info.value.message == "upstream error 400: bad request"
    assert info.value.code == "c"
    assert info.value.retry_after == "2"
    assert KEY not in str(info.value)
    assert KEY not in repr(info.value.__dict__)


async def test_an_error_status_of_a_json_fetch_is_raised_with_its_body_and_headers() -> None:
    def answer(_: httpx.Request) -> httpx.Response:
        return httpx.Response(400, headers={"retry-after": "5"}, json={"error": "no such model"})

    client, _ = upstream(answer)
    with pytest.raises(UpstreamStatusError) as info:
        await client.get_attestation("m", "00")
    assert info.value.upstream_status == 400
    assert info.value.message == "upstream error 400: no such model"
    assert info.value.retry_after == "5"
    assert KEY not in str(info.value)


async def test_a_399_is_not_an_error_status() -> None:
    client, _ = upstream(lambda _: httpx.Response(399, json={"fine": True}))
    assert await client.list_models() == {"fine": True}


class Pieces(httpx.AsyncByteStream):
    """A body served in the given pieces; counts the pieces pulled and whether it was closed."""

    def __init__(self, pieces: list[bytes], *, then_forever: bool = False) -> None:
        self.pieces = pieces
        self.then_forever = then_forever
        self.pulled = 0
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            self.pulled += 1
            yield piece
        while self.then_forever:
            self.pulled += 1
            yield b"x" * 1024

    async def aclose(self) -> None:
        self.closed = True


async def test_an_error_body_in_pieces_is_read_whole() -> None:
    body = Pieces([b'{"error": ', b'"split', b' message"}'])
    client, _ = upstream(lambda _: httpx.Response(500, stream=body))
    with pytest.raises(UpstreamStatusError) as info:
        await client.open_chat(b"{}", {})
    assert info.value.message == "upstream error 500: split message"
    assert body.closed


async def test_an_endless_error_body_is_read_to_64_kib_only_and_closed() -> None:
    body = Pieces([b"e" * 65536], then_forever=True)
    client, _ = upstream(lambda _: httpx.Response(503, stream=body))
    with pytest.raises(UpstreamStatusError) as info:
        await client.open_chat(b"{}", {})
    assert body.pulled == 1  # nothing past the 64 KiB it keeps
    assert body.closed
    assert info.value.message == "upstream error 503: " + "e" * 500 + "..."
    body = Pieces([b"e" * 60000, b"f" * 60000], then_forever=True)
    service = ServiceClient(
        http_client=Recorder(lambda _: httpx.Response(500, stream=body)).client()
    )
    with pytest.raises(UpstreamStatusError):
        await service.request_json("GET", "https://nras.test/jwks")
    assert body.pulled == 2
    assert body.closed


async def test_an_error_body_that_breaks_off_still_gives_the_status() -> None:
    class Broken(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b'{"error": "half'
            raise httpx.ReadError("reset")

    client, _ = upstream(lambda _: httpx.Response(502, stream=Broken()))
    with pytest.raises(UpstreamStatusError) as info:
        await client.list_models()
    assert info.value.upstream_status == 502
    assert info.value.message == 'upstream error 502: {"error": "half'


# --- answers that are not what was asked for ------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "shown"),
    [
        ({"content-type": "application/json"}, "application/json"),
        ({}, ""),
        ({"content-type": "text/html; " + "x" * 100}, ("text/html; " + "x" * 100)[:60]),
    ],
)
async def test_a_stream_without_an_event_stream_content_type_is_refused(
    headers: dict[str, str], shown: str
) -> None:
    body = Pieces([b"{}"])
    client, _ = upstream(lambda _: httpx.Response(200, headers=headers, stream=body))
    with pytest.raises(UpstreamError) as info:
        await client.open_chat(b"{}", {})
    assert info.value.code == "upstream_bad_content_type"
    assert info.value.message == (
        f"the upstream answered 200 with content type '{shown}' instead of an event stream"
    )
    assert body.closed


async def test_an_event_stream_content_type_is_matched_case_insensitively() -> None:
    client, _ = upstream(
        lambda _: httpx.Response(200, headers={"content-type": "Text/Event-Stream; charset=utf-8"})
    )
    stream = await client.open_chat(b"{}", {})
    await stream.aclose()


async def test_an_answer_that_is_not_json_is_an_error() -> None:
    client, _ = upstream(lambda _: httpx.Response(200, content=b"<html>"))
    with pytest.raises(UpstreamError) as info:
        await client.list_models()
    assert info.value.code == "upstream_bad_json"
    assert info.value.message == "the answer to /models is not valid JSON"


@pytest.mark.parametrize("encoding", ["identity", "", " GZIP ", "x-gzip"])
async def test_identity_and_gzip_encodings_are_read(encoding: str) -> None:
    raw = b'{"data": [1, 2, 3]}'
    content = gzip.compress(raw) if "gzip" in encoding.lower() else raw
    client, _ = upstream(
        lambda _: httpx.Response(
            200, headers={"content-encoding": encoding}, stream=Pieces([content])
        )
    )
    assert await client.list_models() == {"data": [1, 2, 3]}


async def test_an_encoding_not_asked_for_is_named_in_the_error() -> None:
    for encoding, shown in (("br", "br"), ("Z" * 50, "z" * 40)):
        client, _ = upstream(responding({"content-encoding": encoding}, b"{}"))
        with pytest.raises(UpstreamError) as info:
            await client.list_models()
        assert info.value.code == "upstream_bad_encoding"
        assert info.value.message == (
            f"the upstream answered with content encoding '{shown}', which was not asked for"
        )


async def test_zlib_data_labelled_gzip_is_corrupt() -> None:
    client, _ = upstream(
        lambda _: httpx.Response(
            200, headers={"content-encoding": "gzip"}, stream=Pieces([zlib.compress(b"{}")])
        )
    )
    with pytest.raises(UpstreamError) as info:
        await client.list_models()
    assert info.value.code == "upstream_bad_encoding"
    assert info.value.message == "the upstream's compressed body is corrupt"


# --- sizes ------------------------------------------------------------------------------------


def _json_of_size(size: int) -> bytes:
    raw = b'{"pad": "' + b"a" * (size - 12) + b'"}'
    assert len(raw) == size - 1
    return raw + b" "


async def test_an_answer_of_exactly_the_cap_is_accepted_plain_or_gzipped() -> None:
    cap = 200_000
    raw = _json_of_size(cap)
    for content, headers in (
        (raw, {}),
        # Stored (level 0): the compressed length is over the cap, the decoded body is not.
        (gzip.compress(raw, compresslevel=0), {"content-encoding": "gzip"}),
    ):
        client, _ = upstream(
            responding({**headers, "content-length": str(len(content))}, content),
            max_json_bytes=cap,
        )
        assert await client.list_models() == {"pad": "a" * (cap - 12)}


async def test_one_byte_over_the_cap_is_refused_with_its_code() -> None:
    cap = 200_000
    raw = _json_of_size(cap + 1)
    body = Pieces([raw[:100_000], raw[100_000:]])
    client, _ = upstream(lambda _: httpx.Response(200, stream=body), max_json_bytes=cap)
    with pytest.raises(UpstreamTooLargeError) as info:
        await client.get_signature("m", "r")
    assert info.value.code == "upstream_json_too_large"
    assert info.value.message == (
        "the answer to /tee/signature exceeds 200000 bytes (upstream.max_json_bytes)"
    )
    assert body.closed


async def test_an_answer_in_many_pieces_is_joined_as_sent() -> None:
    document = {"data": [{"id": f"model-{i}"} for i in range(20_000)]}
    raw = json.dumps(document).encode()
    pieces = [raw[start : start + 50_000] for start in range(0, len(raw), 50_000)]
    client, _ = upstream(lambda _: httpx.Response(200, stream=Pieces(pieces)))
    assert await client.list_models() == document


# --- failures and time limits ---------------------------------------------------------------


async def _stall(_: httpx.Request) -> httpx.Response:
    await asyncio.sleep(10)
    return httpx.Response(200, json={})


async def test_an_upstream_that_does_not_answer_in_time_is_a_timeout() -> None:
    client, _ = upstream(_stall, timeouts=UpstreamTimeouts(first_byte_s=0.05))
    with pytest.raises(UpstreamTimeoutError) as info:
        await asyncio.wait_for(client.open_chat(b"{}", {}), 2)
    assert info.value.code == "upstream_timeout"
    assert info.value.message == "the upstream did not answer in time"
    with pytest.raises(UpstreamTimeoutError) as info:
        await asyncio.wait_for(client.get_attestation("m", "00"), 2)
    assert info.value.message == "/tee/attestation did not answer in time"
    service = ServiceClient(timeout_s=0.05, http_client=Recorder(_stall).client())
    with pytest.raises(UpstreamTimeoutError) as info:
        await asyncio.wait_for(service.request_json("GET", "https://nras.test/jwks"), 2)
    assert info.value.message == "https://nras.test/jwks did not answer in time"


def _raising(exc: Exception) -> Answer:
    def answer(_: httpx.Request) -> httpx.Response:
        raise exc

    return answer


@pytest.mark.parametrize(
    ("exc", "kind", "code", "message"),
    [
        (httpx.ConnectError("refused"), UpstreamConnectError, "upstream_unreachable", None),
        (
            httpx.ConnectTimeout("slow"),
            UpstreamConnectTimeoutError,
            "upstream_connect_timeout",
            None,
        ),
        (httpx.ReadTimeout("slow"), UpstreamTimeoutError, "upstream_timeout", None),
        (
            httpx.RemoteProtocolError("bad"),
            UpstreamError,
            "upstream_stream_broken",
            "the upstream connection broke mid-response",
        ),
        (
            httpx.ReadError("reset"),
            UpstreamError,
            "upstream_stream_broken",
            "the upstream connection broke mid-response",
        ),
        (
            httpx.UnsupportedProtocol("ftp"),
            UpstreamError,
            "upstream_error",
            "upstream transport error: UnsupportedProtocol",
        ),
    ],
)
async def test_transport_failures_map_to_the_error_tree(
    exc: Exception, kind: type[UpstreamError], code: str, message: str | None
) -> None:
    client, _ = upstream(_raising(exc))
    service = ServiceClient(http_client=Recorder(_raising(exc)).client())
    calls = (
        lambda: client.open_chat(b"{}", {}),
        client.list_models,
        lambda: service.request_json("GET", "https://nras.test/jwks"),
    )
    for call in calls:
        with pytest.raises(UpstreamError) as info:
            await call()
        assert type(info.value) is kind
        assert info.value.code == code
        if message is not None:
            assert info.value.message == message


# --- the streamed body ----------------------------------------------------------------------


class ScriptedResponse(WireResponse):
    """A wire response whose pieces, waits and failures are scripted."""

    def __init__(self, steps: list[tuple[bytes, bool] | Exception | float]) -> None:
        self.status_code = 200
        self.headers = httpx.Headers({"content-type": "text/event-stream"})
        self.steps = steps
        self.closed = False

    async def pieces(self) -> AsyncIterator[bytes]:
        for step in self.steps:
            if isinstance(step, Exception):
                raise step
            if isinstance(step, float):
                await asyncio.sleep(step)
                continue
            piece, waited = step
            self.waited = waited
            yield piece

    async def aclose(self) -> None:
        self.closed = True


async def test_reads_that_waited_for_the_network_are_counted() -> None:
    response = ScriptedResponse([(b"a", False), (b"b", True), (b"", True), (b"c", True)])
    stream = UpstreamStream(response, UpstreamTimeouts())
    assert stream.reads_waited == 0
    assert (stream.status_code, stream.headers) == (200, response.headers)
    pieces = []
    async for piece in stream.iter_bytes():
        pieces.append(piece)
    assert pieces == [b"a", b"b", b"c"]  # an empty piece is not handed on
    assert stream.reads_waited == 3
    async with stream as same:
        assert same is stream
    assert response.closed


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (httpx.ReadError("reset"), "upstream_stream_broken"),
        (httpx.RemoteProtocolError("bad chunk"), "upstream_stream_broken"),
        (httpx.ReadTimeout("slow"), "upstream_timeout"),
    ],
)
async def test_a_failure_mid_stream_is_translated(exc: Exception, code: str) -> None:
    stream = UpstreamStream(ScriptedResponse([(b"a", False), exc]), UpstreamTimeouts())
    pieces: list[bytes] = []

    async def read_all() -> None:
        async for piece in stream.iter_bytes():
            pieces.append(piece)

    with pytest.raises(UpstreamError) as info:
        await read_all()
    assert pieces == [b"a"]
    assert info.value.code == code


async def test_an_idle_timeout_names_the_limit() -> None:
    stream = UpstreamStream(
        ScriptedResponse([(b"a", False), 5.0]), UpstreamTimeouts(first_byte_s=5.0, idle_s=0.05)
    )
    with pytest.raises(UpstreamTimeoutError) as info:
        await asyncio.wait_for(_drain(stream), 2)
    assert info.value.code == "upstream_idle_timeout"
    assert info.value.message == "the upstream sent nothing for 0.05 s"


async def _drain(stream: UpstreamStream) -> list[bytes]:
    return [piece async for piece in stream.iter_bytes()]


async def test_a_stall_after_reads_that_moved_the_deadline_still_times_out() -> None:
    # The timer armed for the first read fires while a later read waits: its deadline moved on,
    # so it must re-arm itself for the new one instead of giving up (a stall would then hang).
    # First read: deadline 0.1 s. The piece at 0.06 s moves it to 0.16 s; the timer (0.1 s) fires
    # during the stalled second read.
    stream = UpstreamStream(
        ScriptedResponse([0.06, (b"a", True), 10.0]), UpstreamTimeouts(first_byte_s=0.1, idle_s=0.1)
    )
    started = asyncio.get_running_loop().time()
    with pytest.raises(UpstreamTimeoutError) as info:
        await asyncio.wait_for(_drain(stream), 2)
    assert info.value.code == "upstream_idle_timeout"
    assert asyncio.get_running_loop().time() - started < 1.0


async def test_a_timer_firing_between_reads_reports_no_error_to_the_loop() -> None:
    loop = asyncio.get_running_loop()
    reported: list[Mapping[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        stream = UpstreamStream(
            ScriptedResponse([(b"a", False), (b"b", False)]),
            UpstreamTimeouts(first_byte_s=0.05, idle_s=0.05),
        )
        pieces = []
        async for piece in stream.iter_bytes():
            pieces.append(piece)
            await asyncio.sleep(0.12)  # the consumer's time: the timer fires and finds no read
        assert pieces == [b"a", b"b"]
    finally:
        loop.set_exception_handler(previous)
    assert reported == []


async def test_a_whole_in_memory_answer_is_handed_on_in_64_kib_pieces() -> None:
    # An httpx response built with its content is already read (and decoded): the wire hands
    # it on in order, in pieces of at most 64 KiB, and the client does not inflate it again.
    raw = b"".join(b'data: {"n": %d}\n\n' % n for n in range(15_000))
    client, _ = upstream(
        lambda _: httpx.Response(
            200,
            headers={"content-type": "text/event-stream", "content-encoding": "gzip"},
            content=gzip.compress(raw),
        )
    )
    stream = await client.open_chat(b"{}", {})
    pieces = await _drain(stream)
    assert b"".join(pieces) == raw
    assert [len(piece) for piece in pieces] == [65536] * (len(raw) // 65536) + [len(raw) % 65536]


async def test_a_cut_gzip_body_hands_on_what_arrived_then_is_truncated() -> None:
    # A gzip body cut off by the upstream: the inflater holds the last bytes it could decode
    # until it is flushed. They are part of what arrived and reach the relay; then the body is
    # reported cut (no gzip trailer: its length and CRC were never seen), as a stream without
    # its [DONE] is.
    data = b"0" * 300_000
    cut = gzip.compress(data)[:90]
    client, _ = upstream(
        responding({"content-type": "text/event-stream", "content-encoding": "gzip"}, cut)
    )
    stream = await client.open_chat(b"{}", {})
    received: list[bytes] = []

    async def read_all() -> None:
        async for piece in stream.iter_bytes():
            received.append(piece)

    with pytest.raises(UpstreamError) as info:
        await read_all()
    assert (info.value.code, info.value.message) == (
        "upstream_stream_truncated",
        "the upstream's compressed body ended before its end",
    )
    whole = b"".join(received)
    assert whole == data[: len(whole)]
    assert len(whole) == 65536 + 514  # one full piece, then what the flush released


async def test_a_gzip_json_answer_without_its_trailer_is_truncated_not_parsed() -> None:
    # Cut right before the gzip trailer, the JSON inside is whole and would parse; but the
    # trailer's length and CRC were never checked, so the answer is not taken as whole.
    body = gzip.compress(b'{"data": [1, 2, 3]}')
    client, _ = upstream(responding({"content-encoding": "gzip"}, body[:-8]))
    with pytest.raises(UpstreamError) as info:
        await client.list_models()
    assert info.value.code == "upstream_stream_truncated"
    whole, _ = upstream(responding({"content-encoding": "gzip"}, body))
    assert await whole.list_models() == {"data": [1, 2, 3]}


async def test_a_body_read_outside_any_task_is_refused_with_a_clear_error() -> None:
    # A loop callback runs in no task: no deadline could cancel its read, so it is refused.
    stream = UpstreamStream(ScriptedResponse([(b"a", False)]), UpstreamTimeouts())
    loop = asyncio.get_running_loop()
    raised = loop.create_future()

    def read_in_a_callback() -> None:
        body = stream.iter_bytes()
        assert isinstance(body, AsyncGenerator)
        step = body.asend(None)
        try:
            step.send(None)
        except RuntimeError as exc:
            raised.set_result(str(exc))
        finally:
            step.close()

    loop.call_soon(read_in_a_callback)
    assert await raised == "an upstream body must be read from a task"


async def test_every_member_of_a_gzip_body_is_inflated_in_order() -> None:
    # RFC 1952 lets a gzip body hold several members one after the other; each is a gzip
    # stream of its own. The text after the first member was dropped without a word.
    parts = [b"data: one\n\n", b"data: two\n\n" * 20_000, b"data: [DONE]\n\n"]
    body = b"".join(gzip.compress(part) for part in parts)
    splits: list[list[bytes]] = [
        [body],
        [body[:30], body[30:31], body[31:]],
        [bytes([b]) for b in body[:200]] + [body[200:]],
    ]
    for pieces in splits:

        def answer(_: httpx.Request, pieces: list[bytes] = pieces) -> httpx.Response:
            headers = {"content-type": "text/event-stream", "content-encoding": "gzip"}
            return httpx.Response(200, headers=headers, stream=Pieces(pieces))

        client, _ = upstream(answer)
        stream = await client.open_chat(b"{}", {})
        assert b"".join(await _drain(stream)) == b"".join(parts)


async def test_a_gzip_member_split_at_its_boundary_is_read_whole() -> None:
    first, second = gzip.compress(b'{"data": '), gzip.compress(b"[1, 2]}")
    client, _ = upstream(
        lambda _: httpx.Response(
            200, headers={"content-encoding": "gzip"}, stream=Pieces([first, second])
        )
    )
    assert await client.list_models() == {"data": [1, 2]}


async def test_bytes_after_a_gzip_member_that_start_no_member_are_corrupt() -> None:
    body = gzip.compress(b'{"data": []}') + b"trailing garbage"
    client, _ = upstream(responding({"content-encoding": "gzip"}, body))
    with pytest.raises(UpstreamError) as info:
        await client.list_models()
    assert info.value.code == "upstream_bad_encoding"


async def test_a_second_gzip_member_cut_short_is_truncated() -> None:
    body = gzip.compress(b'{"data": ') + gzip.compress(b"[]}")[:-8]
    client, _ = upstream(responding({"content-encoding": "gzip"}, body))
    with pytest.raises(UpstreamError) as info:
        await client.list_models()
    assert info.value.code == "upstream_stream_truncated"
