"""The load phase's client: one streamed chat request over a bare asyncio Protocol, on loopback.

Why a client of its own: :func:`benchmarks.client.stream_once` (httpx, one ``json.loads`` per
event, a task woken per read) costs about as much CPU as the proxy it measures, and in the load
phase it runs 1,000 streams in the benchmark's own process on a 2-core machine, so the load
generator became the bottleneck. This client does the least work per event that still checks
every stream: the bytes of one read are parsed in the transport's ``data_received`` callback
(no task switch per read), the HTTP framing is parsed by hand, each event's JSON by ``orjson``.
The latency phase keeps ``stream_once``: there fidelity to a real client matters more than cost.

Request: exactly the body and headers of :meth:`benchmarks.client.Target.build` for a plaintext
target, built once per target and sent as is for every stream (they carry nothing per request),
plus ``host``, ``content-length`` and ``connection: close``::

    POST /v1/chat/completions HTTP/1.1            (or /api/v1/chat/completions, direct)
    host: 127.0.0.1:PORT
    content-length: N
    connection: close
    content-type: application/json
    [authorization: Bearer KEY]                   (direct to the simulator)

    {"model":...,"messages":[...],"stream":true}

Keep-alive is off: in the load phase every stream is open at the same time as the others, so
no connection could be reused anyway, and with ``connection: close`` nothing follows the answer
on the connection. The client closes its end once the body's end was read. Not sent (httpx
sends them): ``accept``, ``accept-encoding`` (so answers come uncompressed) and ``user-agent``.

Response: ``HTTP/1.x`` status line, headers (informational 1xx heads are skipped), then a body
framed by ``transfer-encoding: chunked`` (chunk extensions and trailers skipped), by
``content-length`` (typical of error answers) or, with neither, by the connection's end. The
body of a 200 is split into SSE events on ``\\n\\n`` and each event's ``data: `` prefix removed,
as ``stream_once`` does: ``[DONE]`` sets the time to last token, anything else must be a JSON
object without an ``error`` member, whose ``choices[0].delta.content`` (when non-empty) is one
content event. The body of any other status is read to its end and discarded.

Result: a :class:`benchmarks.client.StreamResult` with the same timings and error categories as
``stream_once`` (ttft: the moment the read carrying the first non-empty content arrived; ttlt:
the read carrying ``[DONE]``; both from just before connecting): ``http_<status>``,
``bad_event``, ``in_band_error``, ``no_done``, ``content_mismatch``, and for the transport the
names httpx would give: ``ConnectError`` (connection refused), ``ConnectTimeout`` /
``ReadTimeout`` (the stream's deadline passed before / after connecting; unlike httpx's idle
read timeout it bounds the whole stream), ``ReadError`` (connection reset) and
``RemoteProtocolError`` (malformed framing, or closed before the body's end). One category of
its own: ``too_large`` (more than ``max_response_bytes`` received, head included).

Deliberately not checked: choices other than ``choices[0]`` (``stream_once`` reads all; the
simulator and the proxy send one), SSE fields other than ``data:`` or events spanning several
``data:`` lines (the events are split exactly as ``stream_once`` splits them), the rest of each
chunk's JSON shape, response headers beyond the framing ones (an answer with a
``content-encoding`` other than ``identity``, or a transfer coding other than ``chunked``, is
reported as ``RemoteProtocolError``, never decoded), and anything after the body's end.

E2EE targets that seal their own request (``Target.model_key``: the in-process E2EE client, the
load phase's baseline) get a freshly sealed request and the decryptor of its answer from each
:func:`build_loopback_request`; every event is then rebuilt and opened by that decryptor
(``ChunkDecryptor.rebuild``, as ``stream_once`` does) before its content is read, and a chunk
that does not open fails the stream with the proxy's log code for it
(``e2ee_decryption_failed``, ...).
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import orjson

from benchmarks.client import Prompt, StreamResult, Target
from proxy.core.errors import ProxyError
from proxy.core.response import ChunkDecryptor

# Far beyond any load plan's stream (1,000 streams of 200 tokens take under a minute to end).
DEFAULT_TIMEOUT_S = 300.0
# A 200-token answer through the proxy is about 60 KB.
DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024
# A chunk-size line (hex size and extensions) longer than this is malformed.
_MAX_CHUNK_LINE = 1024

# Where the reader is in the response.
_HEAD = 0
_CHUNK_SIZE = 1
_CHUNK_DATA = 2
_CHUNK_END = 3
_TRAILERS = 4
_FIXED_BODY = 5
_BODY_UNTIL_CLOSE = 6
_DONE = 7


@dataclass(frozen=True, slots=True)
class LoopbackRequest:
    """The bytes of one streamed request (plaintext, or sealed by the in-process E2EE client)
    and where to send them."""

    host: str
    port: int
    raw: bytes
    # For a target that seals its own request: the decryptor of this request's answer.
    decryptor: ChunkDecryptor | None = None


def build_loopback_request(target: Target, prompt: Prompt) -> LoopbackRequest:
    """The request ``target`` would send for ``prompt``, as HTTP/1.1 bytes for a loopback address.

    A target that seals its own messages (``model_key``, the in-process E2EE client) gets a
    freshly sealed request and the decryptor of its answer on every call: build one per stream.
    Raises ``ValueError`` for a URL that is not ``http://`` to a loopback IP address, or a header
    that would not fit in one line.
    """
    url = urlsplit(target.url)
    if url.scheme != "http" or url.hostname is None or url.username is not None:
        raise ValueError(f"{target.name}: not a plain http:// URL: {target.url}")
    try:
        loopback = ipaddress.ip_address(url.hostname).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"{target.name}: the lean client talks to loopback IPs only: {target.url}")
    body, headers, decryptor = target.build(prompt)
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    lines = [
        f"POST {path} HTTP/1.1",
        f"host: {url.netloc}",
        f"content-length: {len(body)}",
        "connection: close",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    if any("\r" in line or "\n" in line for line in lines):
        raise ValueError(f"{target.name}: a header contains a line break")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return LoopbackRequest(
        host=url.hostname, port=url.port or 80, raw=head + body, decryptor=decryptor
    )


class _MalformedResponseError(Exception):
    """The response breaks HTTP/1.1 framing (reported as ``RemoteProtocolError``)."""


class ResponseReader:
    """Sans-I/O reader of one streamed answer: feed it the bytes as they arrive.

    :attr:`outcome` is None until the stream has ended (body complete, error found, or
    :meth:`connection_closed` / :meth:`timed_out` called); then it is the stream's result and
    later calls change nothing. ``now`` is the arrival time of the bytes fed, on the clock that
    gave ``start``.
    """

    __slots__ = (
        "_content_events",
        "_content_matched",
        "_content_mismatch",
        "_decryptor",
        "_events",
        "_expected",
        "_max_response_bytes",
        "_raw",
        "_received",
        "_remaining",
        "_sse",
        "_stage",
        "_start",
        "_status",
        "_ttft",
        "_ttlt",
        "outcome",
    )

    def __init__(
        self,
        *,
        start: float,
        expected: str | None,
        max_response_bytes: int,
        decryptor: ChunkDecryptor | None = None,
    ) -> None:
        self._start = start
        self._decryptor = decryptor
        self._expected = expected
        self._max_response_bytes = max_response_bytes
        self._received = 0
        self._raw = bytearray()  # transport bytes not parsed yet
        self._sse = bytearray()  # body bytes not split into events yet
        self._stage = _HEAD
        self._status = 0
        self._remaining = 0  # bytes left in the current chunk or content-length body
        self._ttft: float | None = None
        self._ttlt: float | None = None
        self._events = 0
        self._content_events = 0
        self._content_matched = 0  # characters of ``expected`` matched so far
        self._content_mismatch = False
        self.outcome: StreamResult | None = None

    def feed(self, data: bytes, now: float) -> None:
        """Take the bytes of one read."""
        if self.outcome is not None:
            return
        self._received += len(data)
        if self._received > self._max_response_bytes:
            self._fail("too_large")
            return
        self._raw += data
        try:
            self._parse(now)
        except _MalformedResponseError:
            self._fail("RemoteProtocolError")

    def connection_closed(self, exc: Exception | None) -> None:
        """The peer closed the connection (``exc``: it was reset or broke)."""
        if self.outcome is not None:
            return
        if self._stage == _BODY_UNTIL_CLOSE:
            self._end_of_body()
        elif self._stage != _HEAD and self._status != 200:
            # An error answer cut short is still an error answer.
            self.outcome = StreamResult(None, None, 0, 0, f"http_{self._status}")
        else:
            self._fail("ReadError" if exc is not None else "RemoteProtocolError")

    def timed_out(self, *, connected: bool) -> None:
        """The stream's deadline passed."""
        if self.outcome is None:
            self._fail("ReadTimeout" if connected else "ConnectTimeout")

    def _fail(self, error: str) -> None:
        self.outcome = StreamResult(None, None, self._events, self._content_events, error)

    def _parse(self, now: float) -> None:
        raw = self._raw
        pos = 0
        while self.outcome is None:
            stage = self._stage
            if stage in (_CHUNK_DATA, _FIXED_BODY):
                take = min(self._remaining, len(raw) - pos)
                if take == 0:
                    break
                self._body(raw[pos : pos + take], now)
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    if stage == _CHUNK_DATA:
                        self._stage = _CHUNK_END
                    else:
                        self._end_of_body()
            elif stage == _CHUNK_END:
                if len(raw) - pos < 2:
                    break
                if raw[pos : pos + 2] != b"\r\n":
                    raise _MalformedResponseError
                pos += 2
                self._stage = _CHUNK_SIZE
            elif stage == _CHUNK_SIZE:
                eol = raw.find(b"\r\n", pos)
                if eol < 0:
                    if len(raw) - pos > _MAX_CHUNK_LINE:
                        raise _MalformedResponseError
                    break
                size = _chunk_size(raw[pos:eol])
                pos = eol + 2
                if size == 0:
                    self._stage = _TRAILERS
                else:
                    self._remaining = size
                    self._stage = _CHUNK_DATA
            elif stage == _HEAD:
                end = raw.find(b"\r\n\r\n", pos)
                if end < 0:
                    break
                self._head(bytes(raw[pos:end]))
                pos = end + 4
            elif stage == _TRAILERS:
                eol = raw.find(b"\r\n", pos)
                if eol < 0:
                    break
                if eol == pos:
                    pos += 2
                    self._end_of_body()
                else:
                    pos = eol + 2  # a trailer field, skipped
            elif stage == _BODY_UNTIL_CLOSE:
                if pos < len(raw):
                    self._body(raw[pos:], now)
                pos = len(raw)
                break
            else:  # _DONE: nothing after the body is read
                pos = len(raw)
                break
        del raw[:pos]

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        code = rest[:3]
        if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
            raise _MalformedResponseError
        status = int(code)
        if 100 <= status < 200:
            return  # informational: the real head follows
        self._status = status
        chunked = False
        length: int | None = None
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                raise _MalformedResponseError
            name = name.strip().lower()
            value = value.strip().lower()
            if name == b"transfer-encoding":
                if value != b"chunked":
                    raise _MalformedResponseError  # another transfer coding: not decoded
                chunked = True
            elif name == b"content-length":
                if not value.isdigit() or (length is not None and int(value) != length):
                    raise _MalformedResponseError
                length = int(value)
            elif name == b"content-encoding" and value != b"identity":
                raise _MalformedResponseError  # never asked for (no accept-encoding): not decoded
        if chunked:
            self._stage = _CHUNK_SIZE
        elif length is not None:
            self._remaining = length
            self._stage = _FIXED_BODY
            if length == 0:
                self._end_of_body()
        else:
            self._stage = _BODY_UNTIL_CLOSE

    def _body(self, data: bytearray, now: float) -> None:
        if self._status != 200:
            return  # an error answer's body is read to its end, not kept
        sse = self._sse
        sse += data
        cut = 0
        while True:
            end = sse.find(b"\n\n", cut)
            if end < 0:
                break
            self._event(sse[cut:end], now)
            if self.outcome is not None:
                return
            cut = end + 2
        del sse[:cut]

    def _event(self, event: bytearray, now: float) -> None:
        if event == b"data: [DONE]":
            self._ttlt = now
            return
        self._events += 1
        try:
            payload = orjson.loads(event.removeprefix(b"data: "))
        except orjson.JSONDecodeError:
            self._fail("bad_event")
            return
        if not isinstance(payload, dict) or "error" in payload:
            self._fail("in_band_error")
            return
        if self._decryptor is not None:
            try:
                payload = self._decryptor.rebuild(payload)
            except ProxyError as exc:  # as stream_once reports it
                self._fail(exc.log_code)
                return
        try:
            text = _first_choice_content(payload)
        except _BadChunkShapeError:
            self._fail("bad_event")
            return
        if not text:
            return
        self._content_events += 1
        if self._ttft is None:
            self._ttft = now
        expected = self._expected
        if expected is not None and not self._content_mismatch:
            if expected.startswith(text, self._content_matched):
                self._content_matched += len(text)
            else:
                self._content_mismatch = True

    def _end_of_body(self) -> None:
        self._stage = _DONE
        if self._status != 200:
            self.outcome = StreamResult(None, None, 0, 0, f"http_{self._status}")
        elif self._ttlt is None or self._ttft is None:
            self._fail("no_done")
        elif self._expected is not None and (
            self._content_mismatch or self._content_matched != len(self._expected)
        ):
            self._fail("content_mismatch")
        else:
            self.outcome = StreamResult(
                self._ttft - self._start,
                self._ttlt - self._start,
                self._events,
                self._content_events,
                None,
            )


class _BadChunkShapeError(Exception):
    """``choices[0].delta.content`` is there but not shaped as a chat completion chunk's."""


def _first_choice_content(payload: dict[str, Any]) -> str | None:
    choices = payload.get("choices")
    if not choices:
        return None
    if not isinstance(choices, list) or not isinstance(choices[0], dict):
        raise _BadChunkShapeError
    delta = choices[0].get("delta") or {}
    if not isinstance(delta, dict):
        raise _BadChunkShapeError
    text = delta.get("content")
    if text is not None and not isinstance(text, str):
        raise _BadChunkShapeError
    return text


def _chunk_size(line: bytearray) -> int:
    digits = line.partition(b";")[0].strip()
    if not digits.isalnum():  # int() would also take a sign, "_" and spaces
        raise _MalformedResponseError
    try:
        return int(digits, 16)
    except ValueError:
        raise _MalformedResponseError from None


class _StreamProtocol(asyncio.Protocol):
    """Sends the request once connected and feeds every read to the reader, in the callback."""

    def __init__(self, request: bytes, reader: ResponseReader, done: asyncio.Future[None]) -> None:
        self._request = request
        self._reader = reader
        self._done = done
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._transport = cast("asyncio.Transport", transport)
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data, time.perf_counter())
        if reader.outcome is not None:
            self._finish()

    def eof_received(self) -> bool:
        return False  # the transport closes and connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._reader.connection_closed(exc)
        self._finish()

    def _finish(self) -> None:
        if not self._done.done():
            self._done.set_result(None)
        if self._transport is not None:
            self._transport.close()


async def stream_once_lean(
    request: LoopbackRequest,
    *,
    expected: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
) -> StreamResult:
    """Send one prepared request and time its answer; never raises for a failed stream.

    ``timeout_s`` bounds the whole stream (connect, answer, body); ``expected`` is the content
    the answer's tokens must add up to, checked token by token as they arrive.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    start = time.perf_counter()
    reader = ResponseReader(
        start=start,
        expected=expected,
        max_response_bytes=max_response_bytes,
        decryptor=request.decryptor,
    )
    transport: asyncio.BaseTransport | None = None
    try:
        async with asyncio.timeout(timeout_s):
            try:
                transport, _ = await loop.create_connection(
                    lambda: _StreamProtocol(request.raw, reader, done), request.host, request.port
                )
            except OSError:
                return StreamResult(None, None, 0, 0, "ConnectError")
            await done
    except TimeoutError:
        reader.timed_out(connected=transport is not None)
    finally:
        if transport is not None:
            transport.close()
    assert reader.outcome is not None, "the stream ended without an outcome"
    return reader.outcome
