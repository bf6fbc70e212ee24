"""Tool calling and structured outputs on the relay: the decrypted answer read back into
OpenAI ``tool_calls`` / validated JSON, with the re-ask loop (:mod:`proxy.core.tools`).

:meth:`proxy.service.chat.ChatService.start` opens the first upstream attempt with the rendered
request (tools, results and schemas only inside the encrypted messages) and hands the opened
attempt to :func:`emulated_batches`, whose chunks replace the outcome's ``first``/``rest``. Routes
and the Responses relay consume them as any other chunks.

- Streaming client: every decrypted chunk goes through
  :class:`~proxy.core.tools.ToolStreamTransformer` (text that is certainly not a call is relayed
  at once; calls, the finish reason and usage are held); after the upstream's ``[DONE]``
  :meth:`~proxy.core.tools.ToolStreamTransformer.finish` closes the answer.
- Non-streaming client: each attempt is aggregated and judged by
  :func:`~proxy.core.tools.finish_completion`; the accepted completion is handed on as chunks
  (content, ``tool_calls`` deltas, finish reason, usage), which the relay folds back into one
  ``chat.completion`` (:class:`proxy.core.aggregate.CompletionAggregator`).
- A re-ask (:class:`~proxy.core.tools.RepairNeeded`) is a complete new encrypted request (fresh
  client key pair, the usual retries and re-attestation) opened by ``reopen``; nothing of the
  failed attempt reaches the client beyond text already streamed (the one seam, see
  :mod:`proxy.core.tools.transform`). At most ``[tools] repair_attempts`` re-asks; then
  :class:`~proxy.core.tools.ToolEmulationError` (502) propagates: an HTTP error before the first
  byte, in-band after it.
- Stop sequences are applied by the caller *after* this, to the text content only: tool-call
  arguments are never cut (see :meth:`proxy.service.chat.ChatService.start`).

The plan and the re-ask messages hold the client's tool definitions and the model's values:
nothing here logs them.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol

from proxy.core.tools import (
    CompletionFinished,
    EmulationPlan,
    RepairNeeded,
    StreamFinished,
    ToolStreamTransformer,
    finish_completion,
    with_repair,
)
from proxy.service.relay import (
    DEFAULT_MAX_ANSWER_CHARS,
    AnswerLimit,
    Batch,
    StreamStats,
    aggregate,
)


class Attempt(Protocol):
    """What :func:`emulated_batches` needs of one opened upstream attempt."""

    first: Batch
    rest: AsyncIterator[Batch]

    async def aclose(self) -> None: ...


Reopen = Callable[[dict[str, Any]], Awaitable[Attempt]]
"""Open a new upstream attempt for a rendered request (encrypted afresh)."""


async def emulated_batches(
    plan: EmulationPlan,
    body: Mapping[str, Any],
    attempt: Attempt,
    reopen: Reopen,
    *,
    client_stream: bool,
    stats: StreamStats,
    max_answer_chars: int = DEFAULT_MAX_ANSWER_CHARS,
) -> AsyncGenerator[Batch, None]:
    """The client's chunks for an emulated request, over as many upstream attempts as the
    re-asks need (``attempt`` is the first, already opened and read ahead). Each attempt may
    hold at most ``max_answer_chars`` characters of text, streamed or not (the scanner holds a
    call until it closes; a non-streamed answer is read whole)."""
    number = 0
    usage: dict[str, Any] | None = None
    rendered = dict(body)
    ids = _StreamId()
    while True:
        result: StreamFinished | CompletionFinished | RepairNeeded
        if client_stream:
            # The scanner holds a call's text until the call closes: an attempt's text is
            # bounded streamed too, or an endless call would grow the proxy without bound.
            limit = AnswerLimit(max_answer_chars)
            limit.take(attempt.first)
            transformer = ToolStreamTransformer(plan, attempt=number, prior_usage=usage)
            out = [relayed for chunk in attempt.first for relayed in transformer.feed(chunk)]
            if out:
                yield ids.same(out)
            async for batch in attempt.rest:
                limit.take(batch)
                out = [relayed for chunk in batch for relayed in transformer.feed(chunk)]
                if out:
                    yield ids.same(out)
            result = transformer.finish()
        else:
            completion = await aggregate(
                attempt.first, attempt.rest, stats, max_chars=max_answer_chars
            )
            stats.usage = None
            result = finish_completion(plan, completion, attempt=number, prior_usage=usage)
        if isinstance(result, StreamFinished):
            yield ids.same(list(result.chunks))
            return
        if isinstance(result, CompletionFinished):
            yield completion_chunks(result.completion)
            return
        # RepairNeeded: ask again in a new encrypted request; the client stream stays open.
        await attempt.aclose()
        rendered = with_repair(rendered, result)
        usage = result.usage
        number += 1
        stats.completed = False
        stats.completion_id = None
        attempt = await reopen(rendered)


class _StreamId:
    """One client stream keeps one ``id`` (the first the client saw), whichever upstream
    attempt a chunk came from (a re-ask is a new upstream completion with an id of its own)."""

    def __init__(self) -> None:
        self._id: Any = None

    def same(self, batch: Batch) -> Batch:
        for chunk in batch:
            if self._id is None:
                self._id = chunk.get("id")
            elif "id" in chunk:
                chunk["id"] = self._id
        return batch


def completion_chunks(completion: Mapping[str, Any]) -> Batch:
    """A (single-choice) ``chat.completion`` as the stream chunks that aggregate back to it:
    role and text, then the calls, then the finish reason, then usage. Text and calls are
    separate chunks so that a stop sequence in the text ends the answer before the calls, as
    in a streamed answer."""
    template = {
        key: completion[key]
        for key in ("id", "created", "model", "system_fingerprint")
        if key in completion
    }
    template["object"] = "chat.completion.chunk"

    def chunk(index: Any, delta: dict[str, Any], finish: Any = None) -> dict[str, Any]:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**template, "choices": [choice]}

    chunks: Batch = []
    for choice in completion.get("choices") or []:
        message = choice.get("message") or {}
        index = choice.get("index", 0)
        delta: dict[str, Any] = {"role": message.get("role", "assistant")}
        if isinstance(message.get("content"), str):
            delta["content"] = message["content"]
        if isinstance(message.get("reasoning_content"), str):
            delta["reasoning_content"] = message["reasoning_content"]
        chunks.append(chunk(index, delta))
        calls = message.get("tool_calls")
        if calls:
            numbered = [{"index": position, **call} for position, call in enumerate(calls)]
            chunks.append(chunk(index, {"tool_calls": numbered}))
        chunks.append(chunk(index, {}, choice.get("finish_reason")))
    usage = completion.get("usage")
    if isinstance(usage, Mapping):
        chunks.append({**template, "choices": [], "usage": dict(usage)})
    return chunks
