"""Relay a decrypted chat stream as the Responses API: an event stream or one ``response``.

The chat request was opened by :meth:`proxy.service.chat.ChatService.start` exactly like a
chat completion (attested key, encryption, retries, read-ahead); these helpers consume the same
decrypted batches (:func:`proxy.service.relay.decrypted_batches`) and hand every chunk to a
:class:`proxy.core.responses.ResponseBuilder`.

- :func:`responses_sse`: ``response.created`` / ``response.in_progress`` first, one client write
  per upstream read, then ``response.completed`` (or ``response.incomplete``). The answer is
  bounded like a gathered one (``max_chars``): ``response.completed`` carries it whole, so the
  builder holds it. An error after the first byte (a chunk that does not decrypt, plaintext, a
  cut stream, Venice's in-band error, an answer over the bound, a strict signature failure from
  ``before_done``) becomes ``response.failed`` with the error: never a completed response. The
  events the failing batch (and chunk) made before the error go out first, so
  ``response.failed`` never lists output the client was not sent.
- :func:`responses_object`: the final ``response`` object (with ``output_text``); errors
  propagate, so the handler answers them as ordinary OpenAI errors.

Both record usage and Venice's ``cost`` in :class:`proxy.service.relay.StreamStats` for the log
line, as the chat relay does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from proxy.core.errors import ProxyError
from proxy.core.responses import ResponseBuilder, encode_event
from proxy.service.relay import AnswerLimit, Batch, BeforeDone, StreamStats, is_usage_chunk


def _note(chunk: Mapping[str, Any], stats: StreamStats) -> Mapping[str, Any]:
    if is_usage_chunk(chunk):
        stats.usage = dict(chunk["usage"])
        stats.cost = chunk.get("cost")
    return chunk


def _encoded(events: list[dict[str, Any]]) -> bytes:
    return b"".join(encode_event(event) for event in events)


async def responses_sse(
    first: Batch,
    rest: AsyncIterator[Batch],
    builder: ResponseBuilder,
    *,
    stats: StreamStats,
    max_chars: int,
    before_done: BeforeDone | None = None,
) -> AsyncIterator[bytes]:
    """The Responses event stream for one opened chat stream (bytes, framed). The builder holds
    the whole output for ``response.completed``, so the answer is bounded like a gathered one:
    past ``max_chars`` characters of text (:class:`~proxy.service.relay.AnswerLimit`) the
    stream ends with ``response.failed`` (``upstream_answer_too_large``)."""
    limit = AnswerLimit(max_chars)
    yield _encoded(builder.start())
    # The events of the batch being fed: if a later chunk of it fails, they still go out, before
    # response.failed (which lists what they announced).
    pending: list[dict[str, Any]] = []
    try:
        limit.take(first)
        for chunk in first:
            pending += builder.feed(_note(chunk, stats))
        if pending:
            out, pending = _encoded(pending), []
            yield out
        async for batch in rest:
            limit.take(batch)
            for chunk in batch:
                pending += builder.feed(_note(chunk, stats))
            if pending:
                out, pending = _encoded(pending), []
                yield out
        if before_done is not None:
            failure = await before_done()
            if failure is not None:
                raise failure
        closing = builder.complete()
    except ProxyError as exc:
        stats.error_code = exc.log_code
        closing = pending + builder.fail(exc)
    yield _encoded(closing)


async def responses_object(
    first: Batch,
    rest: AsyncIterator[Batch],
    builder: ResponseBuilder,
    *,
    stats: StreamStats,
    max_chars: int,
) -> dict[str, Any]:
    """The final ``response`` object for one opened chat stream, of at most ``max_chars``
    characters of text (:class:`~proxy.service.relay.AnswerLimit`; errors propagate)."""
    limit = AnswerLimit(max_chars)
    limit.take(first)
    for chunk in first:
        builder.feed(_note(chunk, stats))
    async for batch in rest:
        limit.take(batch)
        for chunk in batch:
            builder.feed(_note(chunk, stats))
    builder.complete()
    return builder.response(with_output_text=True)
