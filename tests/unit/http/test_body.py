"""Reading a client's JSON body and its request id (proxy.http.body), on bare ASGI requests."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from starlette.requests import Request
from starlette.types import Message

from proxy.core.errors import (
    ClientDisconnectedError,
    InvalidRequestError,
    ProxyError,
    RequestTimeoutError,
    RequestTooLargeError,
    UnsupportedMediaTypeError,
)
from proxy.http.body import (
    REQUEST_ID_SCOPE_KEY,
    check_json_content_type,
    client_request_id,
    fresh_request_id,
    read_json,
    request_id,
    request_id_from,
)

JSON = (b"content-type", b"application/json")
LIMIT = 16
TIMEOUT = 5.0  # seconds: never reached but where a test says so
FRESH = re.compile(r"req_[0-9a-f]{24}")
SEND_JSON = "send the request body as JSON with the header Content-Type: application/json"


class Body:
    """A request whose body arrives in the given chunks; counts the reads."""

    def __init__(self, *chunks: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.chunks = list(chunks)
        self.reads = 0
        scope: dict[str, Any] = {
            "type": "http",
            "method": "POST",
            "path": "/v1/chat/completions",
            "headers": [JSON] if headers is None else headers,
        }
        self.request = Request(scope, self.receive)

    async def receive(self) -> Message:
        self.reads += 1
        if not self.chunks:
            return {"type": "http.request", "body": b"", "more_body": False}
        chunk = self.chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(self.chunks)}


def with_length(length: str) -> list[tuple[bytes, bytes]]:
    return [JSON, (b"content-length", length.encode())]


def assert_error(
    error: ProxyError, kind: type[ProxyError], status: int, code: str | None, message: str
) -> None:
    assert type(error) is kind
    assert error.status == status
    assert error.error_type == "invalid_request_error"
    assert error.code == code
    assert error.param is None
    assert error.message == message


async def refused(body: Body, limit: int = LIMIT) -> ProxyError:
    with pytest.raises(ProxyError) as caught:
        await read_json(body.request, limit, TIMEOUT)
    return caught.value


# -- size ---------------------------------------------------------------------------------------

EXACT = b'{"a":"xxxxxxxx"}'  # 16 bytes: exactly the limit
OVER = b'{"a":"xxxxxxxxx"}'  # 17 bytes: one over


def test_the_bodies_are_at_and_one_over_the_limit() -> None:
    assert len(EXACT) == LIMIT
    assert len(OVER) == LIMIT + 1


async def test_a_body_exactly_at_the_limit_is_read() -> None:
    assert await read_json(Body(EXACT).request, LIMIT, TIMEOUT) == {"a": "xxxxxxxx"}
    declared = Body(EXACT, headers=with_length(str(LIMIT)))
    assert await read_json(declared.request, LIMIT, TIMEOUT) == {"a": "xxxxxxxx"}


async def test_a_body_one_byte_over_the_limit_is_413() -> None:
    error = await refused(Body(OVER))
    assert_error(
        error, RequestTooLargeError, 413, "request_too_large", "the request body exceeds 16 bytes"
    )


async def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    body = Body(EXACT, headers=with_length(str(LIMIT + 1)))
    error = await refused(body)
    assert_error(
        error, RequestTooLargeError, 413, "request_too_large", "the request body exceeds 16 bytes"
    )
    assert body.reads == 0
    huge = Body(EXACT, headers=with_length("99999999999999999999"))
    assert isinstance(await refused(huge), RequestTooLargeError)
    assert huge.reads == 0


async def test_a_declared_length_that_lies_is_checked_again_while_reading() -> None:
    short = Body(OVER, headers=with_length("2"))
    assert_error(
        await refused(short),
        RequestTooLargeError,
        413,
        "request_too_large",
        "the request body exceeds 16 bytes",
    )
    at_limit = Body(OVER, headers=with_length(str(LIMIT)))
    assert isinstance(await refused(at_limit), RequestTooLargeError)


@pytest.mark.parametrize("length", ["abc", "-5", " 17", "1.5e1", ""])
async def test_a_declared_length_that_is_not_digits_is_ignored(length: str) -> None:
    body = Body(EXACT, headers=with_length(length))
    assert await read_json(body.request, LIMIT, TIMEOUT) == {"a": "xxxxxxxx"}
    assert body.reads == 1


async def test_reading_stops_at_the_chunk_that_crosses_the_limit() -> None:
    body = Body(b"[" + b"1," * 4, b"1," * 4, b"1]", b"never read")
    error = await refused(body)  # 9 + 8 = 17 bytes after the second chunk
    assert_error(
        error, RequestTooLargeError, 413, "request_too_large", "the request body exceeds 16 bytes"
    )
    assert body.reads == 2


async def test_chunks_are_joined_and_the_total_counts() -> None:
    assert await read_json(Body(b'{"a":', b"[1,", b"2]}").request, LIMIT, TIMEOUT) == {"a": [1, 2]}
    exact = Body(b'{"a":"xxxx', b'xxxx"}')
    assert await read_json(exact.request, LIMIT, TIMEOUT) == {"a": "xxxxxxxx"}
    over = Body(b'{"a":"xxxx', b'xxxxx"}')
    assert isinstance(await refused(over), RequestTooLargeError)


# -- empty, invalid, constants, nesting ---------------------------------------------------------


@pytest.mark.parametrize("chunks", [(), (b"",), (b"", b"")])
async def test_an_empty_body_is_400_empty_body(chunks: tuple[bytes, ...]) -> None:
    error = await refused(Body(*chunks))
    assert_error(error, InvalidRequestError, 400, "empty_body", "the request body is empty")


@pytest.mark.parametrize(
    "raw",
    [
        b"NaN",
        b"Infinity",
        b"-Infinity",
        b'{"temperature": NaN}',
        b"[1, Infinity]",
        b"{",
        b"nul",
        b'{"a":1}x',
        b'"\xff"',
        b" ",
    ],
)
async def test_nan_infinity_and_what_is_not_json_are_400_invalid_json(raw: bytes) -> None:
    error = await refused(Body(raw), limit=1000)
    assert_error(
        error, InvalidRequestError, 400, "invalid_json", "the request body is not valid JSON"
    )


async def test_what_is_json_is_returned_as_python_values() -> None:
    assert await read_json(Body(b"null").request, LIMIT, TIMEOUT) is None
    assert await read_json(Body(b" [1.5, true] ").request, LIMIT, TIMEOUT) == [1.5, True]
    assert await read_json(Body(b'"\xc3\xa9"').request, LIMIT, TIMEOUT) == "\u00e9"


async def test_nesting_too_deep_for_the_parser_is_a_400() -> None:
    depth = 200_000
    raw = b"[" * depth + b"]" * depth
    error = await refused(Body(raw), limit=len(raw))
    assert_error(error, InvalidRequestError, 400, None, "the request body is nested too deeply")
    assert isinstance(error.__cause__, RecursionError)


async def test_moderate_nesting_is_read() -> None:
    raw = b"[" * 100 + b"]" * 100
    value: Any = await read_json(Body(raw).request, len(raw), TIMEOUT)
    for _ in range(99):
        value = value[0]
    assert value == []


# -- content type ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "application/json",
        "Application/JSON",
        "APPLICATION/JSON; charset=UTF-8",
        "application/json;charset=utf-8",
        " application/json ; charset=utf-8",
        "application/json ",
    ],
)
def test_json_content_types_with_parameters_and_any_case_are_accepted(value: str) -> None:
    check_json_content_type(value)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (None, "no Content-Type"),
        ("", "no Content-Type"),
        ("  ", "no Content-Type"),
        ("; charset=utf-8", "no Content-Type"),
        ("text/plain", "'text/plain'"),
        ("text/plain; charset=application/json", "'text/plain'"),
        ("application/json-seq", "'application/json-seq'"),
        ("application/x-www-form-urlencoded", "'application/x-www-form-urlencoded'"),
        (" Multipart/Form-Data ; boundary=x", "'Multipart/Form-Data'"),
        ("a" * 100, "'" + "a" * 64 + "'"),
    ],
)
def test_other_content_types_are_415_quoting_at_most_64_characters(
    value: str | None, shown: str
) -> None:
    with pytest.raises(UnsupportedMediaTypeError) as caught:
        check_json_content_type(value)
    assert_error(
        caught.value,
        UnsupportedMediaTypeError,
        415,
        "unsupported_content_type",
        f"unsupported content type ({shown}): {SEND_JSON}",
    )


async def test_the_content_type_is_checked_before_anything_is_read() -> None:
    plain = Body(EXACT, headers=[(b"content-type", b"text/plain")])
    assert isinstance(await refused(plain), UnsupportedMediaTypeError)
    assert plain.reads == 0
    missing = Body(EXACT, headers=[(b"content-length", b"999")])
    error = await refused(missing)
    assert_error(
        error,
        UnsupportedMediaTypeError,
        415,
        "unsupported_content_type",
        f"unsupported content type (no Content-Type): {SEND_JSON}",
    )
    assert missing.reads == 0
    parameters = Body(EXACT, headers=[(b"content-type", b"Application/Json; charset=utf-8")])
    assert await read_json(parameters.request, LIMIT, TIMEOUT) == {"a": "xxxxxxxx"}


# -- request ids ----------------------------------------------------------------------------------


def test_a_fresh_request_id_is_req_and_24_hex_digits() -> None:
    first, second = fresh_request_id(), fresh_request_id()
    assert FRESH.fullmatch(first)
    assert FRESH.fullmatch(second)
    assert first != second


@pytest.mark.parametrize(
    "given",
    ["a", "req_123", "Z" * 128, "AZaz09._:-", "0", "trace-id:1.2_3"],
)
def test_a_well_formed_client_id_is_kept(given: str) -> None:
    assert request_id_from(given) == given


@pytest.mark.parametrize(
    "given",
    [None, "", "Z" * 129, "a b", "a/b", "caf\u00e9", "id\n", " id", "a\x00", "<script>"],
)
def test_a_malformed_client_id_is_replaced_by_a_fresh_one(given: str | None) -> None:
    assert FRESH.fullmatch(request_id_from(given))


def _request(headers: list[tuple[bytes, bytes]], **scope: Any) -> Request:
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers, **scope})


def test_client_request_id_is_the_well_formed_header_or_none() -> None:
    assert client_request_id(_request([(b"x-request-id", b"abc-1")])) == "abc-1"
    assert client_request_id(_request([(b"x-request-id", b"Z" * 128)])) == "Z" * 128
    assert client_request_id(_request([(b"x-request-id", b"Z" * 129)])) is None
    assert client_request_id(_request([(b"x-request-id", b"a b")])) is None
    assert client_request_id(_request([(b"x-request-id", b"")])) is None
    assert client_request_id(_request([])) is None


def test_request_id_prefers_the_middleware_choice_then_the_header_then_a_fresh_one() -> None:
    header = [(b"x-request-id", b"from-client")]
    chosen = {REQUEST_ID_SCOPE_KEY: "req_chosen"}
    assert request_id(_request(header, **chosen)) == "req_chosen"
    assert request_id(_request([], **chosen)) == "req_chosen"
    assert request_id(_request(header)) == "from-client"
    assert FRESH.fullmatch(request_id(_request([(b"x-request-id", b"bad id")])))
    assert FRESH.fullmatch(request_id(_request([])))
    # Only a string in the scope counts as the middleware's choice.
    assert request_id(_request(header, **{REQUEST_ID_SCOPE_KEY: 5})) == "from-client"
    assert request_id(_request(header, **{REQUEST_ID_SCOPE_KEY: None})) == "from-client"


# -- time and hang-ups --------------------------------------------------------------------------


class Stalled(Body):
    """A request whose body stops after its first chunks: the next read waits for ever, or
    says the client hung up."""

    def __init__(self, *chunks: bytes, hang_up: bool = False) -> None:
        super().__init__(*chunks, headers=with_length("64"))
        self.hang_up = hang_up

    async def receive(self) -> Message:
        self.reads += 1
        if self.chunks:
            return {"type": "http.request", "body": self.chunks.pop(0), "more_body": True}
        if self.hang_up:
            return {"type": "http.disconnect"}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_body_not_whole_within_the_deadline_is_a_408_naming_the_setting() -> None:
    body = Stalled(b'{"a":', b"1")
    with pytest.raises(RequestTimeoutError) as caught:
        await read_json(body.request, 1024, 0.05)
    assert_error(
        caught.value,
        RequestTimeoutError,
        408,
        "request_timeout",
        "the request body did not arrive whole within 0.05 s (server.body_timeout_s)",
    )
    assert body.reads == 3  # both chunks were read before the wait that ran out


async def test_the_deadline_covers_the_whole_body_not_each_piece() -> None:
    # A piece every 20 ms, each in time, the whole 0.1 s late: refused.
    class Trickle(Body):
        async def receive(self) -> Message:
            await asyncio.sleep(0.02)
            return {"type": "http.request", "body": b" ", "more_body": True}

    with pytest.raises(RequestTimeoutError):
        await read_json(Trickle().request, 1024, 0.1)


async def test_a_body_within_the_deadline_is_read() -> None:
    class Slowish(Body):
        async def receive(self) -> Message:
            await asyncio.sleep(0.01)
            return await super().receive()

    assert await read_json(Slowish(b'{"a":', b"[1]}").request, 1024, 5.0) == {"a": [1]}


async def test_a_client_that_hangs_up_inside_its_body_is_client_disconnected() -> None:
    body = Stalled(b'{"a":', hang_up=True)
    with pytest.raises(ClientDisconnectedError) as caught:
        await read_json(body.request, 1024, TIMEOUT)
    error = caught.value
    assert (error.status, error.code, error.message) == (
        499,
        "client_disconnected",
        "the client hung up before its request was read",
    )
