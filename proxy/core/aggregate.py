"""Decrypted ``chat.completion.chunk`` stream -> one OpenAI ``chat.completion``. Pure.

Upstream always streams under E2EE, so a ``stream: false`` client gets the chunks folded into
OpenAI's non-stream shape::

    {"id", "object": "chat.completion", "created", "model",
     "choices": [{"index", "message": {"role", "content", "refusal"[, "reasoning_content"]},
                  "logprobs": null | {"content": [...][, "refusal": [...]]},
                  "finish_reason"}],
     "usage": {...} | null[, "system_fingerprint"][, "service_tier"]}

- Choices are sorted by index; each field's fragments are joined in arrival order.
- ``content`` is ``""`` for a choice that finished without content, ``None`` if it never did.
- Reasoning arrives as ``reasoning_content`` or ``reasoning`` (vLLM versions differ, some send
  both with the same text); per delta the first non-empty one is taken, and the result carries
  it as ``reasoning_content`` only if any arrived.
- ``usage`` is copied whole from the usage chunk (extra fields such as
  ``prompt_tokens_details`` kept). Venice's top-level ``cost`` is not part of OpenAI's object; it
  is exposed as :attr:`CompletionAggregator.cost` for logging.

Deliberately not handled: ``tool_calls`` / ``function_call`` deltas (E2EE requests with tools are
refused before they are sent) and in-band ``error`` chunks (the stream layer stops on those).
A chunk whose ``choices`` or ``delta`` has the wrong JSON type raises :class:`UpstreamError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.core.errors import UpstreamError

_REASONING_FIELDS = ("reasoning_content", "reasoning")


def _malformed() -> UpstreamError:
    return UpstreamError("the upstream sent a malformed completion chunk")


def _text_of(value: Any) -> str:
    """A delta field as text: a string, or the joined ``text`` of a list of content parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(
            part["text"]
            for part in value
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        )
    return ""


@dataclass(slots=True)
class _Choice:
    """Mutable per-choice accumulator (lives only inside one aggregator)."""

    index: int
    role: str = "assistant"
    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)
    saw_content: bool = False
    saw_reasoning: bool = False
    saw_refusal: bool = False
    logprobs_content: list[Any] = field(default_factory=list)
    logprobs_refusal: list[Any] = field(default_factory=list)
    saw_logprobs: bool = False
    saw_logprobs_refusal: bool = False
    finish_reason: str | None = None

    def add_delta(self, delta: Mapping[str, Any]) -> None:
        role = delta.get("role")
        if isinstance(role, str) and role:
            self.role = role
        content = delta.get("content")
        if content is not None:
            self.saw_content = True
            self.content.append(_text_of(content))
        for name in _REASONING_FIELDS:
            reasoning = delta.get(name)
            if isinstance(reasoning, str) and reasoning:
                self.saw_reasoning = True
                self.reasoning.append(reasoning)
                break
        refusal = delta.get("refusal")
        if isinstance(refusal, str):
            self.saw_refusal = True
            self.refusal.append(refusal)

    def add_logprobs(self, logprobs: Mapping[str, Any]) -> None:
        self.saw_logprobs = True
        content = logprobs.get("content")
        if isinstance(content, list):
            self.logprobs_content.extend(content)
        refusal = logprobs.get("refusal")
        if isinstance(refusal, list):
            self.saw_logprobs_refusal = True
            self.logprobs_refusal.extend(refusal)

    def result(self) -> dict[str, Any]:
        content: str | None
        if self.saw_content:
            content = "".join(self.content)
        else:
            content = "" if self.finish_reason is not None else None
        message: dict[str, Any] = {
            "role": self.role,
            "content": content,
            "refusal": "".join(self.refusal) if self.saw_refusal else None,
        }
        if self.saw_reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        logprobs: dict[str, Any] | None = None
        if self.saw_logprobs:
            logprobs = {"content": list(self.logprobs_content)}
            if self.saw_logprobs_refusal:
                logprobs["refusal"] = list(self.logprobs_refusal)
        return {
            "index": self.index,
            "message": message,
            "logprobs": logprobs,
            "finish_reason": self.finish_reason,
        }


class CompletionAggregator:
    """Folds already-decrypted stream chunks into one ``chat.completion`` object."""

    __slots__ = (
        "_choices",
        "_created",
        "_id",
        "_model",
        "_service_tier",
        "_system_fingerprint",
        "_usage",
        "cost",
    )

    def __init__(self) -> None:
        self._choices: dict[int, _Choice] = {}
        self._id: str | None = None
        self._created: int | None = None
        self._model: str | None = None
        self._system_fingerprint: str | None = None
        self._service_tier: str | None = None
        self._usage: dict[str, Any] | None = None
        self.cost: Mapping[str, Any] | None = None
        """Venice's ``cost`` object (``usd``, ``diem``) from the usage chunk, for logging."""

    def add(self, chunk: Mapping[str, Any]) -> None:
        """Fold one decrypted chunk in."""
        if self._id is None and isinstance(chunk.get("id"), str):
            self._id = chunk["id"]
        if self._created is None and isinstance(chunk.get("created"), int):
            self._created = chunk["created"]
        if self._model is None and isinstance(chunk.get("model"), str):
            self._model = chunk["model"]
        fingerprint = chunk.get("system_fingerprint")
        if isinstance(fingerprint, str):
            self._system_fingerprint = fingerprint
        tier = chunk.get("service_tier")
        if isinstance(tier, str):
            self._service_tier = tier
        usage = chunk.get("usage")
        if isinstance(usage, Mapping):
            self._usage = dict(usage)
        cost = chunk.get("cost")
        if isinstance(cost, Mapping):
            self.cost = cost
        choices = chunk.get("choices")
        if choices is None:
            return
        if not isinstance(choices, list):
            raise _malformed()
        for choice in choices:
            self._add_choice(choice)

    def _add_choice(self, choice: Any) -> None:
        if not isinstance(choice, Mapping):
            raise _malformed()
        index = choice.get("index", 0)
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise _malformed()
        state = self._choices.get(index)
        if state is None:
            state = self._choices[index] = _Choice(index)
        delta = choice.get("delta")
        if delta is not None:
            if not isinstance(delta, Mapping):
                raise _malformed()
            state.add_delta(delta)
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, Mapping):
            state.add_logprobs(logprobs)
        finish_reason = choice.get("finish_reason")
        if isinstance(finish_reason, str):
            state.finish_reason = finish_reason

    def result(self) -> dict[str, Any]:
        """The aggregated ``chat.completion`` (callable at any point; does not reset)."""
        completion: dict[str, Any] = {
            "id": self._id if self._id is not None else "",
            "object": "chat.completion",
            "created": self._created if self._created is not None else 0,
            "model": self._model if self._model is not None else "",
            "choices": [self._choices[i].result() for i in sorted(self._choices)],
            "usage": dict(self._usage) if self._usage is not None else None,
        }
        if self._system_fingerprint is not None:
            completion["system_fingerprint"] = self._system_fingerprint
        if self._service_tier is not None:
            completion["service_tier"] = self._service_tier
        return completion
