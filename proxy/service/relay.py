"""Upstream SSE bytes -> rebuilt, decrypted OpenAI chunks -> client SSE bytes or one
chat.completion.

Stream rules (docs/protocol.md#streaming):

- Upstream frames are ``data: <json>`` events ending with ``data: [DONE]``. Any JSON event with a
  top-level ``error`` is Venice's in-band failure: it becomes our error, never content.
- Every chunk is rebuilt from the field policy's allowlist by
  :class:`~proxy.core.response.ChunkRebuilder` (:class:`~proxy.core.response.ChunkDecryptor`
  for E2EE): text fields are decrypted, text the proxy did not decrypt ends the answer, and
  nothing else reaches the client. Venice's ``cost`` is kept for the log line only.
- A stream that ends without ``[DONE]`` (cut connection, truncated last event) is an error: a
  short answer must never look like a complete one.
- Stop sequences (:func:`stop_at`) are cut from the decrypted answer here; once every choice
  ended and one was cut, the upstream is closed (or, when the answer's signature must be
  checked, read to its end and discarded).
- To the client: each chunk is serialized compactly as ``data: <json>\\n\\n``. The usage chunk
  (``choices: []``) is relayed only when the client asked for ``stream_options.include_usage``;
  a chunk left with neither choices nor usage is not relayed. Once bytes were sent, an error is
  reported in-band as ``data: {"error": {...}}`` followed by ``data: [DONE]``, which the OpenAI
  SDKs raise as ``APIError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.core.aggregate import CompletionAggregator
from proxy.core.errors import ProxyError, SSEProtocolError, UpstreamError, UpstreamTooLargeError
from proxy.core.fields import RESPONSE_CONTAINERS, RESPONSE_TEXT_FIELDS
from proxy.core.response import ChunkRebuilder, has_text
from proxy.core.sse import DEFAULT_MAX_EVENT_BYTES, DONE, SSEDecoder, decode_json, encode_json
from proxy.core.stop import ChoiceStops

_DRAIN_LIMIT_BYTES = 64 * 1024
_DRAIN_LIMIT_S = 2.0


@dataclass(slots=True)
class StreamStats:
    """Counters for the request's log line (never any content).

    ``chunks`` and ``completed`` describe what was read from the upstream (every chunk parsed;
    its ``[DONE]`` arrived); ``sent`` and ``delivered`` what went to a streaming client (chunks
    handed to the server; ``[DONE]`` after a complete answer, no error).
    """

    chunks: int = 0
    usage: dict[str, Any] | None = None
    cost: Any = None
    completed: bool = False
    stopped: bool = False  # cut at a stop sequence by the proxy
    sent: int = 0
    delivered: bool = False
    error_code: str | None = field(default=None)
    completion_id: str | None = None


def _upstream_error(payload: Mapping[str, Any]) -> UpstreamError:
    err = payload.get("error")
    message = "the upstream reported an error mid-stream"
    code = "upstream_error"
    if isinstance(err, Mapping):
        if isinstance(err.get("message"), str):
            message = f"upstream error mid-stream: {err['message'][:300]}"
        if isinstance(err.get("code"), str):
            code = err["code"]
    elif isinstance(err, str):
        message = f"upstream error mid-stream: {err[:300]}"
    return UpstreamError(message, code=code, foreign=True)


Batch = list[dict[str, Any]]


def _parse_event(data: str, rebuilder: ChunkRebuilder, stats: StreamStats) -> dict[str, Any]:
    try:
        chunk = decode_json(data)
    except (ValueError, RecursionError) as exc:
        raise SSEProtocolError("the upstream sent an event that is not valid JSON") from exc
    if not isinstance(chunk, dict):
        raise SSEProtocolError("the upstream sent an event that is not a JSON object")
    if "error" in chunk:
        raise _upstream_error(chunk)
    if isinstance(chunk.get("cost"), Mapping):
        stats.cost = chunk["cost"]
    rebuilt = rebuilder.rebuild(chunk)
    if stats.completion_id is None and rebuilt["id"]:
        stats.completion_id = rebuilt["id"]
    stats.chunks += 1
    return rebuilt


async def decrypted_batches(
    body: AsyncIterator[bytes],
    rebuilder: ChunkRebuilder,
    stats: StreamStats,
    *,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    max_read_ahead_bytes: int | None = None,
) -> AsyncGenerator[Batch, None]:
    """Parse, decrypt and rebuild the upstream event stream until ``[DONE]``, one batch per
    upstream read (so the client gets one write per read, not one per chunk), except that the
    first batch ends at the answer's first text: its first words go out before the rest of a
    buffered read is opened (on an E2EE stream every chunk costs an ECDH, so a burst of N
    chunks would otherwise delay the first token by N of them).

    One event (and one line) may hold at most ``max_event_bytes`` (``upstream.max_event_bytes``,
    see :class:`~proxy.core.sse.SSEDecoder`); beyond that the stream fails with
    ``upstream_event_too_large``. When a chunk fails, the good chunks before it in the same read
    are yielded first, then the error is raised.

    ``max_read_ahead_bytes`` (``upstream.max_read_ahead_bytes``; None: no bound) bounds the
    upstream bytes read before the answer's first text: past it, before that read is parsed,
    :class:`~proxy.core.errors.UpstreamTooLargeError` with code
    ``upstream_read_ahead_exceeded`` (an E2EE answer is held back until its first text opened).
    """
    decoder = SSEDecoder(max_line_bytes=max_event_bytes, max_event_bytes=max_event_bytes)
    awaiting_text = True
    read_ahead = 0
    async for data in body:
        if awaiting_text and max_read_ahead_bytes is not None:
            read_ahead += len(data)
            if read_ahead > max_read_ahead_bytes:
                raise UpstreamTooLargeError(
                    f"the upstream sent more than {max_read_ahead_bytes} bytes before the first "
                    "text of its answer (upstream.max_read_ahead_bytes)",
                    code="upstream_read_ahead_exceeded",
                )
        batch: Batch = []
        try:
            for event in decoder.feed(data):
                if event.data == "[DONE]":
                    stats.completed = True
                    break
                chunk = _parse_event(event.data, rebuilder, stats)
                batch.append(chunk)
                if awaiting_text and has_text(chunk):
                    awaiting_text = False
                    yield batch
                    batch = []
        except ProxyError:
            if batch:
                yield batch
            raise
        if batch:
            yield batch
        if stats.completed:
            await _drain(body)
            return
    decoder.finish()
    raise UpstreamError(
        "the upstream stream ended before it was complete (no [DONE])",
        code="upstream_stream_truncated",
    )


async def _drain(body: AsyncIterator[bytes]) -> None:
    """Read the upstream body to its end after ``[DONE]`` (bounded), instead of hanging up.

    A backend signs only a stream that completed without a disconnect
    (docs/protocol.md#signatures), and a body read to its end lets the connection be reused.
    """
    remaining = _DRAIN_LIMIT_BYTES
    try:
        async with asyncio.timeout(_DRAIN_LIMIT_S):
            async for data in body:
                remaining -= len(data)
                if remaining <= 0:
                    return
    except (TimeoutError, ProxyError):
        return


async def stop_at(
    batches: AsyncGenerator[Batch, None],
    stops: ChoiceStops,
    stats: StreamStats,
    *,
    read_to_end: bool = False,
) -> AsyncGenerator[Batch, None]:
    """``batches`` with the stop sequences cut out of the answer.

    Once every choice ended and one was cut here, the stream ends (the caller then closes the
    upstream, which cancels the generation), unless ``read_to_end``: then the rest is read
    and only usage passes (strict signature checking needs a completed stream).
    """
    try:
        async for batch in batches:
            out = [kept for chunk in batch if (kept := stops.apply(chunk)) is not None]
            if out:
                yield out
            if stops.done:
                stats.stopped = True
                if not read_to_end:
                    return
        tail = stops.flush()
        if tail is not None:
            yield [tail]
    finally:
        await batches.aclose()


def is_usage_chunk(chunk: Mapping[str, Any]) -> bool:
    """Venice's closing chunk: no choices, a usage object."""
    return not chunk.get("choices") and isinstance(chunk.get("usage"), Mapping)


BeforeDone = Callable[[], Awaitable[ProxyError | None]]


async def sse_to_client(
    first: Batch,
    rest: AsyncIterator[Batch],
    *,
    include_usage: bool,
    stats: StreamStats,
    before_done: BeforeDone | None = None,
) -> AsyncIterator[bytes]:
    """Client SSE bytes: the already-read ``first`` chunks, then ``rest``, then ``[DONE]``.

    One write per upstream read. Errors after this starts are reported in-band.
    ``before_done`` runs after a complete upstream stream and before ``[DONE]``; an error it
    returns is reported in-band (strict signature checking).
    """
    try:
        if first:
            out, count = _client_bytes(first, include_usage, stats)
            if out:
                yield out
                stats.sent += count
        async for batch in rest:
            out, count = _client_bytes(batch, include_usage, stats)
            if out:
                yield out
                stats.sent += count
        if before_done is not None:
            failure = await before_done()
            if failure is not None:
                raise failure
    except ProxyError as exc:
        stats.error_code = exc.log_code
        yield encode_json(exc.to_body())
    yield DONE
    stats.delivered = stats.completed and stats.error_code is None


def _client_bytes(batch: Batch, include_usage: bool, stats: StreamStats) -> tuple[bytes, int]:
    """The batch's client bytes and how many chunks they hold."""
    if len(batch) == 1:  # a real pace: one token per read
        part = _client_chunk(batch[0], include_usage, stats)
        return (b"", 0) if part is None else (part, 1)
    parts = [
        part
        for part in (_client_chunk(chunk, include_usage, stats) for chunk in batch)
        if part is not None
    ]
    return b"".join(parts), len(parts)


def _client_chunk(chunk: dict[str, Any], include_usage: bool, stats: StreamStats) -> bytes | None:
    if not chunk.get("choices"):
        usage = chunk.get("usage")
        if isinstance(usage, Mapping):  # Venice's closing usage chunk (is_usage_chunk)
            stats.usage = chunk["usage"]
            return encode_json(chunk) if include_usage else None
        return None  # nothing left to say after the rebuild
    if not include_usage:
        chunk.pop("usage", None)
    return encode_json(chunk)


DEFAULT_MAX_ANSWER_CHARS = 4_000_000


class AnswerLimit:
    """Bounds the text of an answer the proxy gathers or holds (a non-streamed answer, any
    attempt of tool emulation, streamed or not): at most ``max_chars`` characters of decrypted
    text (``content``, reasoning, and the arguments of calls emulation made from it) over all
    choices (``upstream.max_answer_chars``). An upstream that never stops sending, or a call
    that never closes, gets ``upstream_answer_too_large`` instead of growing the proxy without
    bound."""

    __slots__ = ("_left", "max_chars")

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self._left = max_chars

    def take(self, batch: Batch) -> None:
        """Count ``batch``'s text; raise once the answer holds more than the limit."""
        for chunk in batch:
            for choice in chunk.get("choices") or ():
                for name in RESPONSE_CONTAINERS:
                    body = choice.get(name)
                    if body:
                        self._left -= _text_length(body)
        if self._left < 0:
            raise UpstreamTooLargeError(
                f"the upstream's answer exceeds {self.max_chars} characters, more than the "
                "proxy holds for one answer; raise upstream.max_answer_chars for longer ones",
                code="upstream_answer_too_large",
            )


def _text_length(body: Mapping[str, Any]) -> int:
    length = 0
    for name in RESPONSE_TEXT_FIELDS:
        text = body.get(name)
        if text:
            length += len(text)
    for call in body.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(function, Mapping) and isinstance(function.get("arguments"), str):
            length += len(function["arguments"])
    return length


async def aggregate(
    first: Batch, rest: AsyncIterator[Batch], stats: StreamStats, *, max_chars: int
) -> dict[str, Any]:
    """One ``chat.completion`` built from the whole stream, of at most ``max_chars`` characters
    of text (:class:`AnswerLimit`; errors propagate)."""
    aggregator = CompletionAggregator()
    limit = AnswerLimit(max_chars)
    limit.take(first)
    for chunk in first:
        aggregator.add(chunk)
    async for batch in rest:
        limit.take(batch)
        for chunk in batch:
            aggregator.add(chunk)
    result = aggregator.result()
    usage = result.get("usage")
    stats.usage = usage if isinstance(usage, dict) else None
    return result
