"""Rebuilt ``chat.completion.chunk`` stream -> one OpenAI ``chat.completion``. Pure.

Upstream always streams under E2EE, so a ``stream: false`` client gets the chunks folded into
OpenAI's non-stream shape::

    {"id", "object": "chat.completion", "created", "model",
     "choices": [{"index", "message": {"role", "content", "refusal": null
                                       [, "reasoning_content"]},
                  "logprobs": null, "finish_reason"}],
     "usage": {...} | null[, "system_fingerprint"]}

The input is what :class:`~proxy.core.response.ChunkRebuilder` produced: only the decrypted
text fields of :data:`proxy.core.fields.RESPONSE_TEXT_FIELDS`, a role, a finish reason and
usage numbers can be in it (``refusal``, ``tool_calls`` and logprobs end the answer before they
get here, so the result always says ``refusal: null`` and ``logprobs: null``).

- Choices are sorted by index; each field's fragments are joined in arrival order.
- ``content`` is ``""`` for a choice that finished without content, ``None`` if it never did.
- Reasoning arrives as ``reasoning_content`` or ``reasoning`` (vLLM versions differ, some send
  both with the same text); per delta the first non-empty one is taken, and the result carries
  it as ``reasoning_content`` only if any arrived.
- ``usage`` is copied whole from the usage chunk.
- ``tool_calls`` deltas (only ever made by the proxy's own tool emulation, never relayed from
  the upstream) are joined per call ``index``: ``id``, ``type`` and the function ``name`` from
  the first fragment that has them, ``arguments`` concatenated; a message with calls and no
  content says ``content: null``, as OpenAI's does.

A chunk whose ``choices`` or ``delta`` has the wrong JSON type raises :class:`UpstreamError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.core.errors import UpstreamError
from proxy.core.fields import RESPONSE_CONTAINERS, RESPONSE_TEXT_FIELDS

_REASONING_FIELDS = tuple(name for name in RESPONSE_TEXT_FIELDS if name != "content")


def _malformed() -> UpstreamError:
    return UpstreamError("the upstream sent a malformed completion chunk")


@dataclass(slots=True)
class _Choice:
    """Mutable per-choice accumulator (lives only inside one aggregator)."""

    index: int
    role: str = "assistant"
    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    saw_content: bool = False
    saw_reasoning: bool = False
    finish_reason: str | None = None
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)

    def add_delta(self, delta: Mapping[str, Any]) -> None:
        role = delta.get("role")
        if isinstance(role, str) and role:
            self.role = role
        content = delta.get("content")
        if isinstance(content, str):
            self.saw_content = True
            self.content.append(content)
        for name in _REASONING_FIELDS:
            reasoning = delta.get(name)
            if isinstance(reasoning, str) and reasoning:
                self.saw_reasoning = True
                self.reasoning.append(reasoning)
                break
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                self._add_call(call)

    def _add_call(self, fragment: Any) -> None:
        if not isinstance(fragment, Mapping) or not isinstance(fragment.get("index"), int):
            raise _malformed()
        call = self.calls.setdefault(
            fragment["index"],
            {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
        )
        if isinstance(fragment.get("id"), str) and not call["id"]:
            call["id"] = fragment["id"]
        function = fragment.get("function")
        if isinstance(function, Mapping):
            if isinstance(function.get("name"), str) and not call["function"]["name"]:
                call["function"]["name"] = function["name"]
            if isinstance(function.get("arguments"), str):
                call["function"]["arguments"] += function["arguments"]

    def result(self) -> dict[str, Any]:
        content: str | None
        if self.saw_content and (self.content != [""] or not self.calls):
            content = "".join(self.content)
        else:
            content = "" if self.finish_reason is not None and not self.calls else None
        message: dict[str, Any] = {"role": self.role, "content": content, "refusal": None}
        if self.saw_reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.calls:
            message["tool_calls"] = [self.calls[i] for i in sorted(self.calls)]
        return {
            "index": self.index,
            "message": message,
            "logprobs": None,
            "finish_reason": self.finish_reason,
        }


class CompletionAggregator:
    """Folds rebuilt stream chunks into one ``chat.completion`` object."""

    __slots__ = ("_choices", "_created", "_id", "_model", "_system_fingerprint", "_usage")

    def __init__(self) -> None:
        self._choices: dict[int, _Choice] = {}
        self._id: str | None = None
        self._created: int | None = None
        self._model: str | None = None
        self._system_fingerprint: str | None = None
        self._usage: dict[str, Any] | None = None

    def add(self, chunk: Mapping[str, Any]) -> None:
        """Fold one rebuilt chunk in."""
        if self._id is None and isinstance(chunk.get("id"), str) and chunk["id"]:
            self._id = chunk["id"]
        if self._created is None and isinstance(chunk.get("created"), int) and chunk["created"]:
            self._created = chunk["created"]
        if self._model is None and isinstance(chunk.get("model"), str) and chunk["model"]:
            self._model = chunk["model"]
        fingerprint = chunk.get("system_fingerprint")
        if isinstance(fingerprint, str):
            self._system_fingerprint = fingerprint
        usage = chunk.get("usage")
        if isinstance(usage, Mapping):
            self._usage = dict(usage)
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
        for name in RESPONSE_CONTAINERS:
            body = choice.get(name)
            if body is None:
                continue
            if not isinstance(body, Mapping):
                raise _malformed()
            state.add_delta(body)
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
        return completion
