"""Compose the simulated SSE answer (docs/protocol.md#streaming) as bytes, with faults applied.
Pure.

Wire format, each event framed ``data: <compact JSON>\\n\\n`` (UTF-8, not ASCII-escaped)::

    {"id","object":"chat.completion.chunk","created","model",
     "choices":[{"index":i,"delta":{"role":"assistant","content":""},"logprobs":null,
                 "finish_reason":null}]}                         one role chunk per choice
    ... "delta":{"reasoning_content":<tok>} / {"content":<tok>}   one token per chunk,
                                                                  choices interleaved
    ... "delta":{},"finish_reason":"stop"|"length"               one per choice
    {"id",...,"choices":[],"usage":{prompt_tokens,completion_tokens,total_tokens},
     "cost":{"usd","diem"}}                                       Venice's usage chunk, always
    data: [DONE]

All chunks share one ``id``, ``created`` and ``model`` (the request's Venice model id). Under
E2EE the token fields are sealed by a :class:`ResponseSealer`. Under Phala legacy semantics a
reasoning model also mirrors its thoughts into ``reasoning`` (as vLLM versions that emit both
fields do), which that backend leaves in plaintext.

The composer yields bytes and two markers: :data:`Marker.CUT` (drop the connection here) and
:data:`Marker.COMPLETE` (after ``[DONE]``: the stream finished and may be signed).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from proxy.simulator.answer import AnswerPlan
from proxy.simulator.faults import Faults
from proxy.simulator.sealing import ResponseSealer

DONE = b"data: [DONE]\n\n"
USD_PER_INPUT_TOKEN = 0.5 / 1_000_000
USD_PER_OUTPUT_TOKEN = 2.0 / 1_000_000


class Marker(enum.Enum):
    CUT = "cut"
    COMPLETE = "complete"


StreamItem = bytes | Marker


@dataclass(frozen=True, slots=True)
class CompletionMeta:
    """What every chunk of one response shares."""

    id: str
    created: int
    model: str


def frame(obj: Mapping[str, Any]) -> bytes:
    """One SSE event carrying compact JSON."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return b"data: " + text.encode("utf-8") + b"\n\n"


def usage_of(plan: AnswerPlan) -> dict[str, int]:
    completion = plan.completion_tokens
    return {
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": plan.prompt_tokens + completion,
    }


def cost_of(plan: AnswerPlan) -> dict[str, float]:
    usd = round(
        plan.prompt_tokens * USD_PER_INPUT_TOKEN + plan.completion_tokens * USD_PER_OUTPUT_TOKEN,
        10,
    )
    return {"usd": usd, "diem": usd}


def _chunk(meta: CompletionMeta, index: int, delta: dict[str, Any], finish: str | None) -> bytes:
    return frame(
        {
            "id": meta.id,
            "object": "chat.completion.chunk",
            "created": meta.created,
            "model": meta.model,
            "choices": [
                {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            ],
        }
    )


def _token_steps(plan: AnswerPlan, *, mirror_reasoning: bool) -> list[tuple[int, dict[str, Any]]]:
    """Every token delta in wire order: step by step, one chunk per choice per step."""
    per_choice: list[list[dict[str, Any]]] = []
    for choice in plan.choices:
        deltas: list[dict[str, Any]] = []
        for token in choice.reasoning:
            delta = {"reasoning_content": token}
            if mirror_reasoning:
                delta["reasoning"] = token
            deltas.append(delta)
        deltas.extend({"content": token} for token in choice.content)
        per_choice.append(deltas)
    steps: list[tuple[int, dict[str, Any]]] = []
    for step in range(max((len(d) for d in per_choice), default=0)):
        for choice, deltas in zip(plan.choices, per_choice, strict=True):
            if step < len(deltas):
                steps.append((choice.index, deltas[step]))
    return steps


def _corrupt(blob_hex: str) -> str:
    """Flip the last bit of the GCM tag."""
    last = int(blob_hex[-2:], 16) ^ 0x01
    return blob_hex[:-2] + f"{last:02x}"


def midstream_error_event() -> bytes:
    """Venice's in-band error after a stream has started."""
    return frame(
        {
            "error": {
                "message": "The upstream model failed while generating the response.",
                "type": "server_error",
                "code": "upstream_error",
            }
        }
    )


def stream_items(
    plan: AnswerPlan,
    meta: CompletionMeta,
    *,
    faults: Faults,
    sealer: ResponseSealer | None = None,
) -> Iterator[StreamItem]:
    """The whole streamed answer, with ``faults`` applied."""
    phala = faults.phala_legacy
    for choice in plan.choices:
        delta: dict[str, Any] = {"role": "assistant", "content": ""}
        if sealer is not None:
            sealer.seal_delta(delta)
        yield _chunk(meta, choice.index, delta, None)

    steps = _token_steps(plan, mirror_reasoning=phala and any(c.reasoning for c in plan.choices))
    error_after = max(1, len(steps) // 2) if faults.midstream_error else None
    leaked = tampered = False
    content_tokens = 0
    for sent, (index, token_delta) in enumerate(steps):
        if sent == faults.cut_stream_after:
            yield Marker.CUT
            return
        if sent == error_after:
            yield midstream_error_event()
            yield DONE
            return
        delta = dict(token_delta)
        if sealer is not None:
            first_content = (
                index == 0 and "content" in delta and content_tokens >= faults.fault_at_token
            )
            if index == 0 and "content" in delta:
                content_tokens += 1
            leak = faults.plaintext_chunk and not leaked and first_content
            sealer.seal_delta(delta, skip=frozenset({"content"}) if leak else frozenset())
            leaked = leaked or leak
            if faults.corrupt_ciphertext and not tampered and not leak and first_content:
                delta["content"] = _corrupt(delta["content"])
                tampered = True
        yield _chunk(meta, index, delta, None)

    if faults.cut_stream_after is not None:
        yield Marker.CUT
        return
    if error_after is not None:
        yield midstream_error_event()
        yield DONE
        return
    for choice in plan.choices:
        yield _chunk(meta, choice.index, {}, choice.finish_reason)
    yield frame(
        {
            "id": meta.id,
            "object": "chat.completion.chunk",
            "created": meta.created,
            "model": meta.model,
            "choices": [],
            "usage": usage_of(plan),
            "cost": cost_of(plan),
        }
    )
    yield DONE
    yield Marker.COMPLETE


def completion_object(plan: AnswerPlan, meta: CompletionMeta) -> dict[str, Any]:
    """The non-streamed ``chat.completion`` (plaintext path only)."""
    choices: list[dict[str, Any]] = []
    for choice in plan.choices:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(choice.content)}
        if choice.reasoning:
            message["reasoning_content"] = "".join(choice.reasoning)
        choices.append(
            {
                "index": choice.index,
                "message": message,
                "logprobs": None,
                "finish_reason": choice.finish_reason,
            }
        )
    return {
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "choices": choices,
        "usage": usage_of(plan),
    }
