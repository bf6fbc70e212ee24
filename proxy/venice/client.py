"""The Venice clients (with their wire, :mod:`proxy.venice.transport`: what sends them).

Every transport failure is translated once, here, into the proxy's error tree
(``raise UpstreamTimeoutError(...) from exc``), the way httpx maps httpcore's exceptions.

Timeouts: ``connect_timeout_s`` bounds the TCP/TLS connect; ``first_byte_timeout_s`` bounds the
wait for the response headers and the first body bytes (prefill can be slow); ``idle_timeout_s``
bounds every later gap between body chunks. There is deliberately no total cap: a long generation
that keeps producing tokens is never cut.

Sizes: a JSON answer (attestation, models, signature, NRAS) is read incrementally and may hold
at most ``max_json_bytes`` decoded bytes (``upstream.max_json_bytes``; a larger declared
``Content-Length`` is refused before reading); past that the response is closed and
:class:`UpstreamTooLargeError` (code ``upstream_json_too_large``) raised at once. Error bodies are
read up to 64 KiB. Compressed bodies: the client asks for ``gzip`` only and inflates every body
itself in pieces of at most 64 KiB, so a small compressed chunk never becomes a large buffer at
once (a gzip bomb is cut at the same bounds); any other ``Content-Encoding`` is an
``upstream_bad_encoding`` error.

Error bodies: Venice answers ``{"error": "text", "details": ...}`` and, for errors relayed from the
TEE backend, ``{"error": {"message": ..., "type": ..., "code": ...}}``. Both are reduced to a short
message (truncated) for the client; they describe the request, never its (encrypted) content.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx

from proxy.core.errors import (
    ProxyError,
    UpstreamConnectError,
    UpstreamConnectTimeoutError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
    UpstreamTooLargeError,
)
from proxy.venice.transport import PIECE_BYTES, Wire, WireRequest, WireResponse

_MAX_ERROR_MESSAGE = 500
_MAX_ERROR_BODY = 64 * 1024
DEFAULT_MAX_JSON_BYTES = 4 * 1024 * 1024
ACCEPT_ENCODING = "gzip"
USER_AGENT = "venice-e2ee-proxy"  # constant: nothing about the client or the machine
# What every request of both clients asks for: JSON (or an event stream, set per request), only
# the encoding the clients can bound, and the constant user agent.
_JSON_HEADERS = {
    "user-agent": USER_AGENT,
    "accept": "application/json",
    "accept-encoding": ACCEPT_ENCODING,
}


@dataclass(frozen=True, slots=True)
class UpstreamTimeouts:
    """Connect, time-to-first-byte and idle-gap limits, in seconds."""

    connect_s: float = 10.0
    first_byte_s: float = 120.0
    idle_s: float = 120.0


def _error_message(status: int, payload: Any, text: str) -> tuple[str, str | None, str | None]:
    """Pull a readable message, code and type out of a Venice or backend error body."""
    message: str | None = None
    code: str | None = None
    error_type: str | None = None
    if isinstance(payload, Mapping):
        err = payload.get("error")
        if isinstance(err, Mapping):
            message = err.get("message") if isinstance(err.get("message"), str) else None
            code = err.get("code") if isinstance(err.get("code"), str) else None
            error_type = err.get("type") if isinstance(err.get("type"), str) else None
        elif isinstance(err, str):
            message = err
        if message is None and isinstance(payload.get("message"), str):
            message = payload["message"]
        if code is None and isinstance(payload.get("code"), str):
            code = payload["code"]
    if message is None:
        message = text.strip() or httpx.codes.get_reason_phrase(status) or "error"
    if len(message) > _MAX_ERROR_MESSAGE:
        message = message[:_MAX_ERROR_MESSAGE] + "..."
    return message, code, error_type


_STATUS_HINTS: dict[int, str] = {
    401: "Venice rejected the proxy's API key (check VENICE_API_KEY)",
    402: "Venice reports insufficient balance for this request",
    429: "Venice rate limit reached",
}


def status_error(status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamStatusError:
    """An :class:`UpstreamStatusError` for a non-2xx answer."""
    text = body[:_MAX_ERROR_BODY].decode("utf-8", errors="replace")
    try:
        payload: Any = json.loads(text)
    except (ValueError, RecursionError):
        payload = None
    message, code, error_type = _error_message(status, payload, text)
    hint = _STATUS_HINTS.get(status)
    if hint:
        message = f"{hint}: {message}"
    return UpstreamStatusError(
        status,
        f"upstream error {status}: {message}",
        code=code,
        retry_after=headers.get("retry-after"),
        ratelimit_reset=headers.get("x-ratelimit-reset-requests") if status == 429 else None,
        upstream_type=error_type[:64] if error_type else None,
    )


_GZIP_WINDOW = 16 + zlib.MAX_WBITS  # zlib's window bits for a gzip header and trailer


def _inflater(response: WireResponse) -> Any:
    """A zlib decompressor for the response's ``Content-Encoding`` (None for identity)."""
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(_GZIP_WINDOW)
    raise UpstreamError(
        f"the upstream answered with content encoding '{encoding[:40]}', which was not asked for",
        code="upstream_bad_encoding",
    )


def _body(response: WireResponse) -> AsyncIterator[bytes]:
    """The body, decompressed, in pieces of at most 64 KiB (raw pieces as the wire reads them,
    at most 64 KiB too; an uncompressed body is the wire's own iterator, one layer less on
    every chunk). Transport failures are raised as httpx errors."""
    inflater = None if response.already_decoded else _inflater(response)
    if inflater is None:
        return response.pieces()
    return _inflated(response, inflater)


async def _inflated(response: WireResponse, inflater: Any) -> AsyncIterator[bytes]:
    """The body inflated, member after member: a gzip body may hold several members, one after
    the other (RFC 1952, 2.2), and each is inflated and checked (length and CRC) in turn. Bytes
    after a member that do not start another are corrupt, never dropped."""
    async for raw in response.pieces():
        data = raw
        while data:
            if inflater.eof:
                inflater = zlib.decompressobj(_GZIP_WINDOW)
            try:
                piece = inflater.decompress(data, PIECE_BYTES)
            except zlib.error as exc:
                raise UpstreamError(
                    "the upstream's compressed body is corrupt", code="upstream_bad_encoding"
                ) from exc
            if piece:
                yield piece
            data = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
    tail = inflater.flush()
    if tail:
        yield tail
    if not inflater.eof:
        # Cut before the gzip trailer (its length and CRC never checked): what arrived was
        # handed on, but the body is not whole, as a stream without its [DONE] is not.
        raise UpstreamError(
            "the upstream's compressed body ended before its end",
            code="upstream_stream_truncated",
        )


class UpstreamStream:
    """An open streaming response. Use as an async context manager; always closed on exit."""

    def __init__(self, response: WireResponse, timeouts: UpstreamTimeouts) -> None:
        self._response = response
        self._timeouts = timeouts
        self.headers: Mapping[str, str] = response.headers
        self.status_code = response.status_code
        # Pieces for which the read had to wait for the network: while this count moves, the
        # event loop runs between pieces (a writer relaying them need not yield on its own).
        self.reads_waited = 0

    async def __aenter__(self) -> UpstreamStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the upstream connection (cancels generation at the upstream)."""
        await self._response.aclose()

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        """The body as it arrives; the first chunk within the first-byte limit, later ones
        within the idle limit (the time the consumer spends between reads does not count).

        The limits are kept by one :class:`_ReadDeadline` per body, not an ``asyncio.timeout``
        per read: that one schedules and cancels a timer and makes three ``getpid`` system calls
        (``get_running_loop``'s fork check) on every token of every stream.
        """
        iterator = _body(self._response)
        limit = self._timeouts.first_byte_s
        deadline = _ReadDeadline(asyncio.get_running_loop())
        try:
            while True:
                cancelling = deadline.start(limit)
                try:
                    chunk = await anext(iterator)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError as exc:
                    if deadline.expired(cancelling):
                        raise UpstreamTimeoutError(
                            f"the upstream sent nothing for {limit:g} s",
                            code="upstream_idle_timeout",
                        ) from exc
                    raise
                except httpx.HTTPError as exc:
                    raise _translate(exc) from exc
                finally:
                    deadline.stop()
                limit = self._timeouts.idle_s
                if self._response.waited:
                    self.reads_waited += 1
                if chunk:
                    yield chunk
        finally:
            deadline.close()


# A timer that fires this close to its deadline counts as on time (loop clock granularity).
_TIMER_SLACK_S = 0.001


class _ReadDeadline:
    """The read deadline of one streamed body.

    One timer stays armed while reads keep coming: each read only moves the deadline, and a
    timer that fires early re-arms itself at the current one. Past the deadline it cancels the
    reading task; :meth:`expired` tells that cancellation apart from any other (the bookkeeping
    of ``asyncio.timeout``: the task's cancellation count). Between reads (the consumer's time)
    the timer holds no task: a firing then does nothing, and a body abandoned unclosed keeps
    nothing alive through it. The reading task is looked up on every read (a body may be read
    by one task, then another), with the loop given, so no ``getpid``.
    """

    __slots__ = ("_deadline", "_fired", "_handle", "_loop", "_task")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._task: asyncio.Task[Any] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._fired = False

    def start(self, limit: float) -> int:
        """A read starts in the current task; returns that task's cancellation count."""
        task = asyncio.current_task(self._loop)
        if task is None:
            raise RuntimeError("an upstream body must be read from a task")
        self._task = task
        deadline = self._loop.time() + limit
        self._deadline = deadline
        handle = self._handle
        if handle is None or handle.when() > deadline + _TIMER_SLACK_S:
            if handle is not None:
                handle.cancel()
            self._handle = self._loop.call_at(deadline, self._check)
        return task.cancelling()

    def stop(self) -> None:
        """The read returned (or failed): nothing is timed until the next :meth:`start`."""
        self._task = None

    def expired(self, cancelling: int) -> bool:
        """True when the deadline cancelled the read (and no one else asked to cancel)."""
        if not self._fired or self._task is None:
            return False
        self._fired = False
        return self._task.uncancel() <= cancelling

    def close(self) -> None:
        """The body ended: disarm."""
        self._task = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        self._handle = None
        task = self._task
        if task is None:
            return  # between reads; the next start() arms the timer again
        if self._deadline - self._loop.time() > _TIMER_SLACK_S:
            self._handle = self._loop.call_at(self._deadline, self._check)
            return
        self._fired = True
        task.cancel()


def _translate(exc: httpx.HTTPError) -> ProxyError:
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return UpstreamConnectTimeoutError()
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeoutError()
    if isinstance(exc, httpx.ConnectError):
        return UpstreamConnectError()
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
        return UpstreamError(
            "the upstream connection broke mid-response", code="upstream_stream_broken"
        )
    return UpstreamError(f"upstream transport error: {type(exc).__name__}")


class UpstreamClient:
    """Venice's REST API: attestation, models and streaming chat."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeouts: UpstreamTimeouts | None = None,
        http_client: httpx.AsyncClient | None = None,
        max_json_bytes: int = DEFAULT_MAX_JSON_BYTES,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_json_bytes = max_json_bytes
        self._api_key = api_key
        self.timeouts = timeouts or UpstreamTimeouts()
        self._wire = Wire(
            http_client,
            httpx.Timeout(
                connect=self.timeouts.connect_s, read=None, write=60.0, pool=self.timeouts.connect_s
            ),
        )
        # The same for every request (the key included): built once, copied per request.
        self._base_headers = {**_JSON_HEADERS}
        if api_key:
            self._base_headers["authorization"] = f"Bearer {api_key}"

    @property
    def has_api_key(self) -> bool:
        """True when a Venice API key is configured."""
        return bool(self._api_key)

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The headers of one request: the client's own (built once), then ``extra``."""
        return {**self._base_headers, **extra} if extra else dict(self._base_headers)

    async def aclose(self) -> None:
        """Close the connection pool if this object created it."""
        await self._wire.aclose()

    async def _get_json(self, path: str, params: Mapping[str, str]) -> Any:
        request = WireRequest("GET", self.base_url + path, self._headers(), params=params)
        return await _send_for_json(
            self._wire, request, self.timeouts.first_byte_s, path, self.max_json_bytes
        )

    async def get_attestation(self, model: str, nonce_hex: str) -> Any:
        """``GET /tee/attestation?model=&nonce=`` as parsed JSON."""
        return await self._get_json("/tee/attestation", {"model": model, "nonce": nonce_hex})

    async def get_signature(self, model: str, request_id: str) -> Any:
        """``GET /tee/signature?model=&request_id=`` as parsed JSON."""
        return await self._get_json("/tee/signature", {"model": model, "request_id": request_id})

    async def list_models(self) -> Any:
        """``GET /models?type=text`` as parsed JSON."""
        return await self._get_json("/models", {"type": "text"})

    async def open_chat(
        self, body: bytes, headers: Mapping[str, str], *, stream: bool = True
    ) -> UpstreamStream:
        """``POST /chat/completions``; returns the open response once its headers arrived.

        A non-2xx answer is read (bounded), closed and raised as :class:`UpstreamStatusError`.
        """
        request = WireRequest(
            "POST",
            self.base_url + "/chat/completions",
            content=body,
            headers=self._headers(
                {
                    "content-type": "application/json",
                    "accept": "text/event-stream" if stream else "application/json",
                    **headers,
                }
            ),
        )
        try:
            async with asyncio.timeout(self.timeouts.first_byte_s):
                response = await self._wire.send(request)
        except TimeoutError as exc:
            raise UpstreamTimeoutError(
                "the upstream did not answer in time", code="upstream_timeout"
            ) from exc
        except httpx.HTTPError as exc:
            raise _translate(exc) from exc
        if response.status_code >= 400:
            try:
                body_bytes = await _read_bounded(response)
            finally:
                await response.aclose()
            raise status_error(response.status_code, body_bytes, response.headers)
        content_type = response.headers.get("content-type", "")
        if stream and not content_type.lower().startswith("text/event-stream"):
            await response.aclose()
            raise UpstreamError(
                f"the upstream answered {response.status_code} with content type "
                f"'{content_type[:60]}' instead of an event stream",
                code="upstream_bad_content_type",
            )
        return UpstreamStream(response, self.timeouts)


async def _read_bounded(response: WireResponse) -> bytes:
    """Up to 64 KiB of an error body (what could be read of it; never an error)."""
    data = bytearray()
    try:
        async for chunk in _body(response):
            data += chunk
            if len(data) >= _MAX_ERROR_BODY:
                break
    except (httpx.HTTPError, ProxyError):
        pass
    return bytes(data[:_MAX_ERROR_BODY])


async def _read_capped(response: WireResponse, limit: int, what: str) -> bytes:
    """The whole body if it holds at most ``limit`` decoded bytes, else
    :class:`UpstreamTooLargeError` as soon as it is known (declared length or bytes read)."""

    def too_large() -> UpstreamTooLargeError:
        return UpstreamTooLargeError(
            f"the answer to {what} exceeds {limit} bytes (upstream.max_json_bytes)",
            code="upstream_json_too_large",
        )

    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit and "content-encoding" not in response.headers:
        raise too_large()
    # Pieces joined once at the end: no reallocation copies while reading.
    pieces: list[bytes] = []
    size = 0
    async for chunk in _body(response):
        pieces.append(chunk)
        size += len(chunk)
        if size > limit:
            raise too_large()
    return b"".join(pieces)


class ServiceClient:
    """Plain JSON over HTTP(S) to third-party verifiers (NVIDIA NRAS). It never sends the
    Venice API key; failures map to the same error tree as the upstream's."""

    def __init__(
        self,
        *,
        timeout_s: float = 30.0,
        http_client: httpx.AsyncClient | None = None,
        max_json_bytes: int = DEFAULT_MAX_JSON_BYTES,
    ) -> None:
        self._timeout_s = timeout_s
        self._max_json_bytes = max_json_bytes
        self._wire = Wire(http_client, httpx.Timeout(timeout_s))

    async def aclose(self) -> None:
        """Close the connection pool if this object created it."""
        await self._wire.aclose()

    async def request_json(self, method: str, url: str, body: Any = None) -> Any:
        """``method url`` with an optional JSON body; the JSON answer."""
        headers = dict(_JSON_HEADERS)
        content: bytes | None = None
        if body is not None:
            content = json.dumps(body, separators=(",", ":")).encode("utf-8")
            headers["content-type"] = "application/json"
        request = WireRequest(method, url, headers, content=content)
        return await _send_for_json(self._wire, request, self._timeout_s, url, self._max_json_bytes)


async def _send_for_json(
    wire: Wire, request: WireRequest, timeout_s: float, what: str, limit: int
) -> Any:
    """Send ``request`` and parse its JSON answer (at most ``limit`` bytes, read within
    ``timeout_s`` like the headers); the response is always closed; every failure in our error
    tree."""
    try:
        async with asyncio.timeout(timeout_s):
            response = await wire.send(request)
            try:
                if response.status_code >= 400:
                    raise status_error(
                        response.status_code, await _read_bounded(response), response.headers
                    )
                body = await _read_capped(response, limit, what)
            finally:
                await response.aclose()
    except TimeoutError as exc:
        raise UpstreamTimeoutError(f"{what} did not answer in time") from exc
    except httpx.HTTPError as exc:
        raise _translate(exc) from exc
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise UpstreamError(
            f"the answer to {what} is not valid JSON", code="upstream_bad_json"
        ) from exc
