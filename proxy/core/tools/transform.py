"""Decrypted OpenAI answers -> OpenAI answers with ``tool_calls`` or validated JSON. Pure.

Streaming (:class:`ToolStreamTransformer`), per upstream ``chat.completion.chunk``:

- ``content`` is scanned for calls. Text that is certainly not a call is relayed at once (in the
  same chunk, other delta fields such as ``role`` and ``reasoning_content`` untouched); text that
  belongs to a call is never relayed as content.
- Held back until :meth:`ToolStreamTransformer.finish`: calls (released only once every call of
  the answer validated, so an invalid one can still be re-asked), the upstream ``finish_reason``,
  usage, and *all* content when the answer must be JSON (``response_format``) or when this is a
  re-ask (its text is only relayed if it ends without calls).
- :meth:`~ToolStreamTransformer.finish` returns :class:`StreamFinished` with the closing chunks:
  held content, then per call a chunk ``{"index", "id": "call_...", "type": "function",
  "function": {"name", "arguments": ""}}`` and argument fragments, then ``finish_reason``
  (``"tool_calls"`` when calls came) and the usage chunk, summed over all attempts; or
  :class:`~proxy.core.tools.repair.RepairNeeded`; or raises
  :class:`~proxy.core.tools.errors.ToolEmulationError`.

A re-ask cannot take back text already relayed: it is the one visible seam (the client may see
the first attempt's text before the corrected call).

Non-streaming (:func:`finish_completion`): the aggregated ``chat.completion`` is judged the same
way and rewritten: ``message.tool_calls``, ``content`` (None when only calls came),
``finish_reason``, usage summed.

Deliberately not handled: ``n > 1`` (refused by :func:`~proxy.core.tools.render.prepare`), calls
inside ``reasoning_content``, upstream ``tool_calls`` deltas (Venice's E2EE API never sends them
for these requests; they are dropped).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from proxy.core.tools.formats import ParsedCall
from proxy.core.tools.parser import ParsedOutput
from proxy.core.tools.plan import EmulationPlan
from proxy.core.tools.repair import (
    Accepted,
    RepairNeeded,
    arguments_json,
    judge,
    merge_usage,
)
from proxy.core.tools.stream import Event, MalformedCall, TextDelta, ToolCallFound, ToolCallScanner

ARGUMENT_FRAGMENT = 512
_TEMPLATE_FIELDS = ("id", "object", "created", "model", "system_fingerprint", "service_tier")
_DROPPED_DELTA_FIELDS = ("content", "tool_calls", "function_call")


def new_call_id() -> str:
    """An OpenAI-style tool call id: ``call_`` and 24 random hex digits."""
    return "call_" + secrets.token_hex(12)


def _text_of(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(
            part["text"]
            for part in value
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        )
    return ""


@dataclass(frozen=True, slots=True)
class StreamFinished:
    """The chunks that close the client's stream (before ``[DONE]``)."""

    chunks: tuple[dict[str, Any], ...]


@dataclass(frozen=True, slots=True)
class CompletionFinished:
    """The rewritten non-streaming ``chat.completion``."""

    completion: dict[str, Any]


class _Reader:
    """Scanner state shared by both paths: raw text kept for the re-ask."""

    def __init__(self, plan: EmulationPlan) -> None:
        self.scanner = (
            ToolCallScanner(known=plan.tools.keys(), schemas=plan.schemas)
            if plan.calls_enabled
            else None
        )
        self.raw: list[str] = []
        self.text: list[str] = []
        self.calls: list[ParsedCall] = []
        self.malformed: list[str] = []

    def feed(self, text: str) -> str:
        """Consume content; return the text that is certainly not a call."""
        self.raw.append(text)
        if self.scanner is None:
            self.text.append(text)
            return text
        return self._events(self.scanner.feed(text))

    def finish(self) -> str:
        return self._events(self.scanner.finish()) if self.scanner is not None else ""

    def _events(self, events: list[Event]) -> str:
        released = []
        for event in events:
            if isinstance(event, TextDelta):
                released.append(event.text)
            elif isinstance(event, ToolCallFound):
                self.calls.append(ParsedCall(event.name, event.arguments))
            elif isinstance(event, MalformedCall):
                self.malformed.append(event.reason)
        text = "".join(released)
        self.text.append(text)
        return text

    def parsed(self) -> ParsedOutput:
        return ParsedOutput("".join(self.text), tuple(self.calls), tuple(self.malformed))


def _tool_call_deltas(
    template: Mapping[str, Any], calls: tuple[ParsedCall, ...], new_id: Callable[[], str]
) -> list[dict[str, Any]]:
    chunks: list[dict[str, Any]] = []
    for index, call in enumerate(calls):
        opening = {
            "index": index,
            "id": new_id(),
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        chunks.append(_chunk(template, {"tool_calls": [opening]}))
        arguments = arguments_json(call)
        for start in range(0, len(arguments), ARGUMENT_FRAGMENT):
            fragment = arguments[start : start + ARGUMENT_FRAGMENT]
            chunks.append(
                _chunk(
                    template,
                    {"tool_calls": [{"index": index, "function": {"arguments": fragment}}]},
                )
            )
    return chunks


def _chunk(
    template: Mapping[str, Any], delta: dict[str, Any], finish_reason: str | None = None
) -> dict[str, Any]:
    return {
        **template,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


class ToolStreamTransformer:
    """One attempt's decrypted chunks in, client chunks out (see the module docstring).

    ``attempt`` counts from 0; ``prior_usage`` is the usage of earlier attempts
    (:attr:`RepairNeeded.usage`); ``new_id`` makes tool call ids (tests pass a counter).
    """

    def __init__(
        self,
        plan: EmulationPlan,
        *,
        attempt: int = 0,
        prior_usage: Mapping[str, Any] | None = None,
        new_id: Callable[[], str] = new_call_id,
    ) -> None:
        self._plan = plan
        self._attempt = attempt
        self._reader = _Reader(plan)
        self._hold_text = plan.response is not None or attempt > 0
        self._usage: dict[str, Any] | None = dict(prior_usage) if prior_usage else None
        self._saw_usage = False
        self._template: dict[str, Any] = {"object": "chat.completion.chunk"}
        self._finish_reason: str | None = None
        self._new_id = new_id

    def feed(self, chunk: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Chunks to relay now for one upstream chunk (possibly none)."""
        for name in _TEMPLATE_FIELDS:
            if name in chunk and name not in self._template:
                self._template[name] = chunk[name]
        usage = chunk.get("usage")
        if isinstance(usage, Mapping):
            self._saw_usage = True
            self._usage = merge_usage(self._usage, usage)
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices:
            return []
        out_choices = []
        for choice in choices:
            if not isinstance(choice, Mapping):
                continue
            delta = choice.get("delta")
            delta = delta if isinstance(delta, Mapping) else {}
            released = ""
            text = _text_of(delta.get("content"))
            if text:
                released = self._reader.feed(text)
                if self._hold_text:
                    released = ""
            finish = choice.get("finish_reason")
            if isinstance(finish, str):
                self._finish_reason = finish
            new_delta = {k: v for k, v in delta.items() if k not in _DROPPED_DELTA_FIELDS}
            if released:
                new_delta["content"] = released
            if new_delta or choice.get("logprobs"):
                out_choices.append({**choice, "delta": new_delta, "finish_reason": None})
        if not out_choices:
            return []
        relayed = {k: v for k, v in chunk.items() if k not in ("usage", "cost")}
        relayed["choices"] = out_choices
        return [relayed]

    def finish(self) -> StreamFinished | RepairNeeded:
        """Close the attempt after the upstream's ``[DONE]``."""
        tail = self._reader.finish()
        decision = judge(
            self._plan,
            self._reader.parsed(),
            output_text="".join(self._reader.raw),
            finish_reason=self._finish_reason,
            attempt=self._attempt,
            usage=self._usage,
        )
        if isinstance(decision, RepairNeeded):
            return decision
        chunks: list[dict[str, Any]] = []
        content = self._closing_content(decision, tail)
        if content:
            chunks.append(_chunk(self._template, {"content": content}))
        chunks.extend(_tool_call_deltas(self._template, decision.calls, self._new_id))
        chunks.append(_chunk(self._template, {}, decision.finish_reason))
        if self._usage is not None:
            chunks.append({**self._template, "choices": [], "usage": self._usage})
        return StreamFinished(tuple(chunks))

    def _closing_content(self, decision: Accepted, tail: str) -> str:
        if not self._hold_text:
            return tail  # everything before was relayed as it came
        if decision.calls:
            return ""  # a re-ask's chatter around its calls is dropped
        return decision.content or ""

    @property
    def usage_seen(self) -> bool:
        """Whether the upstream sent a usage object in this attempt."""
        return self._saw_usage


def finish_completion(
    plan: EmulationPlan,
    completion: Mapping[str, Any],
    *,
    attempt: int = 0,
    prior_usage: Mapping[str, Any] | None = None,
    new_id: Callable[[], str] = new_call_id,
) -> CompletionFinished | RepairNeeded:
    """Judge and rewrite one aggregated ``chat.completion`` (choice 0)."""
    choices = completion.get("choices")
    choice: Mapping[str, Any] = (
        choices[0]
        if isinstance(choices, list) and choices and isinstance(choices[0], Mapping)
        else {}
    )
    message = choice.get("message")
    message = message if isinstance(message, Mapping) else {}
    reader = _Reader(plan)
    reader.feed(_text_of(message.get("content")))
    reader.finish()
    usage = merge_usage(
        prior_usage,
        completion.get("usage") if isinstance(completion.get("usage"), Mapping) else None,
    )
    finish = choice.get("finish_reason")
    decision = judge(
        plan,
        reader.parsed(),
        output_text="".join(reader.raw),
        finish_reason=finish if isinstance(finish, str) else None,
        attempt=attempt,
        usage=usage,
    )
    if isinstance(decision, RepairNeeded):
        return decision
    new_message: dict[str, Any] = {
        k: v for k, v in message.items() if k not in ("tool_calls", "function_call")
    }
    new_message["role"] = "assistant"
    new_message["content"] = decision.content
    if decision.calls:
        new_message["tool_calls"] = [
            {
                "id": new_id(),
                "type": "function",
                "function": {"name": call.name, "arguments": arguments_json(call)},
            }
            for call in decision.calls
        ]
    elif decision.content is None:
        new_message["content"] = ""
    new_choice = {
        **choice,
        "index": 0,
        "message": new_message,
        "finish_reason": decision.finish_reason,
    }
    return CompletionFinished({**completion, "choices": [new_choice], "usage": usage})
