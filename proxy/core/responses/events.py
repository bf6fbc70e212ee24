"""Decrypted ``chat.completion.chunk`` dicts -> the Responses API event sequence. Pure.

:class:`ResponseBuilder` is a state machine: :meth:`~ResponseBuilder.start`, then
:meth:`~ResponseBuilder.feed` for every chunk in order, then :meth:`~ResponseBuilder.complete`
after the upstream's ``[DONE]`` or :meth:`~ResponseBuilder.fail` on an error. Each returns the
events to send, every one with the next ``sequence_number`` (from 0). Wire framing
(:func:`encode_event`)::

    event: response.output_text.delta
    data: {"type":"response.output_text.delta","item_id":"msg_…",…,"sequence_number":5}

and the stream simply ends after the last event (the Responses API sends no ``[DONE]``).

Sequence, as OpenAI documents it: ``response.created``, ``response.in_progress``; per output
item ``response.output_item.added``, then

- a message (``msg_…``): ``response.content_part.added`` (``output_text``),
  ``response.output_text.delta``…, ``response.output_text.done``, ``response.content_part.done``
  (a refusal the same way with ``response.refusal.delta`` / ``.done``);
- reasoning (``rs_…``), when the model streams ``reasoning_content`` / ``reasoning``: a
  ``reasoning_text`` content part with ``response.reasoning_text.delta`` / ``.done`` (raw
  reasoning is returned as such, never presented as a summary: ``summary`` stays ``[]``);
- a function call (``fc_…``, from the chat ``tool_calls`` deltas; ``call_id`` is the chat call's
  id): ``response.function_call_arguments.delta``…, ``response.function_call_arguments.done``.
  Its ``response.output_item.added`` waits until the name is whole: name pieces are joined until
  the call's first arguments piece, the start of another output item (text, reasoning, another
  call) or the end of the stream (:meth:`~ResponseBuilder.complete`), whichever comes first;
  the arguments that arrived until then follow the ``added`` event as one delta;

then ``response.output_item.done``; and finally ``response.completed``, or
``response.incomplete`` (``incomplete_details.reason``: ``max_output_tokens`` for
``finish_reason: "length"``, ``content_filter``), or ``response.failed`` with ``error``
(``code`` ``server_error`` / ``rate_limit_exceeded``, the proxy's own code in the message,
``type`` the one the chat error body would report) when the stream broke after it started. A
failed response is never reported as completed.

Usage: chat ``prompt_tokens`` / ``completion_tokens`` / ``total_tokens`` become
``input_tokens`` / ``output_tokens`` / ``total_tokens``, with ``input_tokens_details``
(``cached_tokens``, ``cache_write_tokens``) and ``output_tokens_details.reasoning_tokens`` (0 when
the upstream did not say).

Only choice 0 is read (a Responses request never asks for ``n``). Deliberately not produced:
annotations, logprobs, reasoning summaries, ``encrypted_content``, hosted-tool items.
Tool-call deltas must arrive one call after the other, as OpenAI-compatible servers send them; a
call that resumes after another item started is an :class:`UpstreamError`, and so is a name
piece that arrives after its call's item was sent (the item would otherwise carry a name cut
short).
"""

from __future__ import annotations

import copy
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from proxy.core.errors import ProxyError, UpstreamError
from proxy.core.sse import json_bytes

Event = dict[str, Any]
_REASONING_FIELDS = ("reasoning_content", "reasoning")
_Kind = Literal["message", "reasoning", "function_call"]


def new_id(prefix: str) -> str:
    """A fresh OpenAI-style id: ``prefix`` + ``_`` + 48 hex digits."""
    return f"{prefix}_{secrets.token_hex(24)}"


def encode_event(event: Mapping[str, Any]) -> bytes:
    """One event framed as ``event: <type>`` + ``data: <compact json>`` (the chat relay's
    :func:`~proxy.core.sse.json_bytes`: compact UTF-8, a lone surrogate kept as an escape). The
    frame is one copy of the JSON: a final ``response`` can carry the whole answer."""
    kind = str(event["type"]).encode("ascii")
    return b"".join((b"event: ", kind, b"\ndata: ", json_bytes(event), b"\n\n"))


def map_usage(usage: Mapping[str, Any]) -> dict[str, Any]:
    """Chat usage -> Responses usage (missing counts are 0)."""

    def count(source: Any, name: str) -> int:
        value = source.get(name) if isinstance(source, Mapping) else None
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    prompt = count(usage, "prompt_tokens")
    completion = count(usage, "completion_tokens")
    total = count(usage, "total_tokens") or prompt + completion
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": count(usage.get("prompt_tokens_details"), "cached_tokens"),
            "cache_write_tokens": count(usage.get("prompt_tokens_details"), "cache_write_tokens"),
        },
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": count(usage.get("completion_tokens_details"), "reasoning_tokens")
        },
        "total_tokens": total,
    }


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


def _malformed(what: str) -> UpstreamError:
    return UpstreamError(f"the upstream sent {what}", code="upstream_bad_chunk")


@dataclass(slots=True)
class _Open:
    """The output item currently receiving deltas. The text of its last content part (or a
    call's arguments) arrives in ``pieces``, joined into the item only when it is read: adding
    each delta to one growing string would copy the whole text per delta."""

    item: dict[str, Any]
    output_index: int
    kind: _Kind
    tool_index: int | None = None
    pieces: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Call:
    """One chat tool call being assembled (by its ``index``)."""

    call_id: str | None = None
    name: str = ""
    pending: list[str] = field(default_factory=list)
    item: dict[str, Any] | None = None
    closed: bool = False


class ResponseBuilder:
    """Turns one decrypted chat stream into Responses events and the final ``response``.

    Every event is made in the order it is sent: :meth:`_event` numbers it and queues it, and
    each public method hands the queue out. So a chunk that turns out malformed half-way (an
    :class:`UpstreamError` from :meth:`feed`) leaves the events it already made queued, and
    :meth:`fail` sends them before ``response.failed``: the failed response never lists an item
    or text the client was not sent, and ``sequence_number`` has no gap."""

    def __init__(
        self,
        *,
        model: str,
        echo: Mapping[str, Any],
        response_id: str | None = None,
        created_at: int | None = None,
        make_id: Callable[[str], str] = new_id,
    ) -> None:
        self.model = model
        self.echo = dict(echo)
        self._make_id = make_id
        self.id = response_id or make_id("resp")
        self.created_at = created_at if created_at is not None else int(time.time())
        self.status = "in_progress"
        self.error: dict[str, Any] | None = None
        self.incomplete_details: dict[str, Any] | None = None
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self._sequence = 0
        self._queued: list[Event] = []
        self._output: list[dict[str, Any]] = []
        self._current: _Open | None = None
        self._calls: dict[int, _Call] = {}
        # The call whose name is arriving: its item is sent once the name can no longer grow.
        self._naming: int | None = None
        self._completed_at: int | None = None

    # -- public ---------------------------------------------------------------------------

    def start(self) -> list[Event]:
        """``response.created`` and ``response.in_progress``."""
        self._event("response.created", response=self.response())
        self._event("response.in_progress", response=self.response())
        return self._take()

    def feed(self, chunk: Mapping[str, Any]) -> list[Event]:
        """The events for one decrypted chat chunk (possibly none). On an
        :class:`UpstreamError` the events made before it stay queued for :meth:`fail`."""
        usage = chunk.get("usage")
        if isinstance(usage, Mapping):
            self.usage = map_usage(usage)
        choices = chunk.get("choices")
        if choices is None:
            return self._take()
        if not isinstance(choices, list):
            raise _malformed("a chunk whose choices is not an array")
        for choice in choices:
            if not isinstance(choice, Mapping):
                raise _malformed("a choice that is not an object")
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if delta is not None:
                if not isinstance(delta, Mapping):
                    raise _malformed("a delta that is not an object")
                self._delta(delta)
            finish = choice.get("finish_reason")
            if isinstance(finish, str):
                self.finish_reason = finish
        return self._take()

    def complete(self) -> list[Event]:
        """After a complete upstream stream: send the item of a tool call whose name was still
        arriving, close the open item; ``response.completed`` (or ``response.incomplete`` when
        the output was cut short). A tool call that never got a name is an
        :class:`UpstreamError`."""
        for call in self._calls.values():
            if not call.name:
                raise _malformed("a tool call without a name")
        status, reason = "completed", None
        if self.finish_reason == "length":
            status, reason = "incomplete", "max_output_tokens"
        elif self.finish_reason == "content_filter":
            status, reason = "incomplete", "content_filter"
        self._open_named()
        self._close("completed" if status == "completed" else "incomplete")
        self.status = status
        self.incomplete_details = {"reason": reason} if reason else None
        if status == "completed":
            self._completed_at = int(time.time())
        self._event(f"response.{status}", response=self.response())
        return self._take()

    def fail(self, error: ProxyError) -> list[Event]:
        """The events a chunk made before it failed (see the class), then ``response.failed``
        carrying ``error``; open items are left ``incomplete``. A tool call whose name was still
        arriving never had its item sent, and is left out (its name may be cut short), like one
        that never got a name.

        ``error.type`` is the one the chat error body reports (:attr:`ProxyError.reported_type`:
        an upstream 429 is a ``rate_limit_error``, a 503 a ``server_error``); ``error.code`` is
        one of the Responses API's own codes, ``rate_limit_exceeded`` for a 429 and
        ``server_error`` for anything else, the proxy's code going into the message."""
        if self._current is not None:
            self._joined()
            if self._current.kind != "reasoning":
                self._current.item["status"] = "incomplete"
            self._current = None
        self.status = "failed"
        code = "rate_limit_exceeded" if error.http_status == 429 else "server_error"
        message = error.message if error.code is None else f"{error.message} ({error.code})"
        self.error = {"code": code, "message": message, "type": error.reported_type}
        if error.param is not None:
            self.error["param"] = error.param
        self._event("response.failed", response=self.response())
        return self._take()

    def response(self, *, with_output_text: bool = False) -> dict[str, Any]:
        """The ``response`` object as it stands (a deep copy)."""
        self._joined()
        echo = self.echo
        body: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": self.status,
            "background": False,
            "error": copy.deepcopy(self.error),
            "incomplete_details": copy.deepcopy(self.incomplete_details),
            "instructions": echo.get("instructions"),
            "max_output_tokens": echo.get("max_output_tokens"),
            "metadata": copy.deepcopy(echo.get("metadata") or {}),
            "model": self.model,
            "output": copy.deepcopy(self._output),
            "parallel_tool_calls": echo.get("parallel_tool_calls", True),
            "previous_response_id": None,
            "reasoning": copy.deepcopy(echo.get("reasoning") or {"effort": None, "summary": None}),
            "store": False,
            "temperature": echo.get("temperature"),
            "text": copy.deepcopy(echo.get("text") or {"format": {"type": "text"}}),
            "tool_choice": copy.deepcopy(echo.get("tool_choice", "auto")),
            "tools": copy.deepcopy(echo.get("tools") or []),
            "top_p": echo.get("top_p"),
            "truncation": "disabled",
            "usage": copy.deepcopy(self.usage),
        }
        if self._completed_at is not None:
            body["completed_at"] = self._completed_at
        if with_output_text:
            body["output_text"] = self.output_text()
        return body

    def output_text(self) -> str:
        """The text of every ``output_text`` part, in order (the SDKs' ``output_text``)."""
        self._joined()
        return "".join(
            part.get("text", "")
            for item in self._output
            if item.get("type") == "message"
            for part in item.get("content", ())
            if part.get("type") == "output_text"
        )

    # -- deltas -----------------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> None:
        self._queued.append({"type": kind, **fields, "sequence_number": self._sequence})
        self._sequence += 1

    def _take(self) -> list[Event]:
        events, self._queued = self._queued, []
        return events

    def _delta(self, delta: Mapping[str, Any]) -> None:
        for name in _REASONING_FIELDS:
            reasoning = delta.get(name)
            if isinstance(reasoning, str) and reasoning:
                self._text("reasoning", "reasoning_text", reasoning)
                break
        content = _text_of(delta.get("content"))
        if content:
            self._text("message", "output_text", content)
        refusal = delta.get("refusal")
        if isinstance(refusal, str) and refusal:
            self._text("message", "refusal", refusal)
        calls = delta.get("tool_calls")
        if calls is not None:
            if not isinstance(calls, list):
                raise _malformed("tool_calls that are not an array")
            for call in calls:
                self._tool_delta(call)

    def _text(self, kind: _Kind, part_type: str, text: str) -> None:
        self._open_named()  # text starts another item: a call's name is whole
        current = self._current
        if current is None or current.kind != kind:
            self._close("completed")
            current = self._open(kind)
        item = current.item
        parts: list[dict[str, Any]] = item["content"]
        if not parts or parts[-1]["type"] != part_type:
            if parts:
                self._close_part(current)
            part: dict[str, Any] = (
                {"type": "refusal", "refusal": ""}
                if part_type == "refusal"
                else {"type": part_type, "text": ""}
            )
            if part_type == "output_text":
                part.update(annotations=[], logprobs=[])
            parts.append(part)
            self._part_event("response.content_part.added", current, part)
        index = len(parts) - 1
        common = {
            "item_id": item["id"],
            "output_index": current.output_index,
            "content_index": index,
            "delta": text,
        }
        current.pieces.append(text)
        if part_type == "refusal":
            self._event("response.refusal.delta", **common)
        elif part_type == "reasoning_text":
            self._event("response.reasoning_text.delta", **common)
        else:
            self._event("response.output_text.delta", **common, logprobs=[])

    def _tool_delta(self, call: Any) -> None:
        if not isinstance(call, Mapping):
            raise _malformed("a tool call that is not an object")
        index = call.get("index", 0)
        if not isinstance(index, int) or isinstance(index, bool):
            raise _malformed("a tool call without an integer index")
        state = self._calls.setdefault(index, _Call())
        if state.closed:
            raise _malformed("a tool call that resumed after another output item started")
        function = call.get("function") or {}
        if not isinstance(function, Mapping):
            raise _malformed("a tool call whose function is not an object")
        if isinstance(call.get("id"), str) and call["id"] and state.call_id is None:
            state.call_id = call["id"]
        name = function.get("name")
        arguments = function.get("arguments")
        if arguments is not None and not isinstance(arguments, str):
            raise _malformed("tool call arguments that are not a string")
        # A delta for another call: the call whose name was arriving has all of it.
        if self._naming != index:
            self._open_named()
        if state.item is None:
            if isinstance(name, str) and name:
                if self._naming is None:
                    # The call's first name piece: the item before it is finished.
                    self._close("completed")
                    self._naming = index
                state.name += name
            if arguments:
                state.pending.append(arguments)
                if state.name:
                    self._open_named()
            return
        if self._current is None or self._current.tool_index != index:
            raise _malformed("a tool call that resumed after another output item started")
        if isinstance(name, str) and name:
            raise _malformed("a tool call whose name went on after its item was sent")
        if arguments:
            self._arguments(arguments)

    def _open_named(self) -> None:
        """Sends the item of the call whose name was arriving (if any), now that its name can no
        longer grow, with the arguments that came before its name."""
        index = self._naming
        if index is None:
            return
        self._naming = None
        state = self._calls[index]
        item = {
            "id": self._make_id("fc"),
            "type": "function_call",
            "status": "in_progress",
            "arguments": "",
            "call_id": state.call_id or self._make_id("call"),
            "name": state.name,
        }
        state.item = item
        self._output.append(item)
        self._current = _Open(item, len(self._output) - 1, "function_call", index)
        self._event(
            "response.output_item.added",
            output_index=self._current.output_index,
            item=copy.deepcopy(item),
        )
        pending, state.pending = "".join(state.pending), []
        if pending:
            self._arguments(pending)

    def _arguments(self, text: str) -> None:
        current = self._current
        assert current is not None
        current.pieces.append(text)
        self._event(
            "response.function_call_arguments.delta",
            item_id=current.item["id"],
            output_index=current.output_index,
            delta=text,
        )

    # -- items ------------------------------------------------------------------------------

    def _open(self, kind: _Kind) -> _Open:
        item: dict[str, Any]
        if kind == "reasoning":
            item = {"id": self._make_id("rs"), "type": "reasoning", "summary": [], "content": []}
        else:
            item = {
                "id": self._make_id("msg"),
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
        self._output.append(item)
        current = _Open(item, len(self._output) - 1, kind)
        self._current = current
        self._event(
            "response.output_item.added",
            output_index=current.output_index,
            item=copy.deepcopy(item),
        )
        return current

    def _part_event(self, kind: str, current: _Open, part: Mapping[str, Any]) -> None:
        self._event(
            kind,
            item_id=current.item["id"],
            output_index=current.output_index,
            content_index=len(current.item["content"]) - 1,
            part=copy.deepcopy(dict(part)),
        )

    def _joined(self) -> None:
        """Joins the open item's pieces into its last content part (or a call's arguments)."""
        current = self._current
        if current is None or not current.pieces:
            return
        text = "".join(current.pieces)
        current.pieces.clear()
        if current.kind == "function_call":
            current.item["arguments"] += text
        else:
            part = current.item["content"][-1]
            part["refusal" if part["type"] == "refusal" else "text"] += text

    def _close_part(self, current: _Open) -> None:
        self._joined()
        parts = current.item["content"]
        part = parts[-1]
        common = {
            "item_id": current.item["id"],
            "output_index": current.output_index,
            "content_index": len(parts) - 1,
        }
        if part["type"] == "refusal":
            self._event("response.refusal.done", **common, refusal=part["refusal"])
        elif part["type"] == "reasoning_text":
            self._event("response.reasoning_text.done", **common, text=part["text"])
        else:
            self._event("response.output_text.done", **common, text=part["text"], logprobs=[])
        self._part_event("response.content_part.done", current, part)

    def _close(self, status: str) -> None:
        current = self._current
        if current is None:
            return
        self._joined()
        self._current = None
        item = current.item
        if current.kind == "function_call":
            if current.tool_index is not None:
                self._calls[current.tool_index].closed = True
            self._event(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=current.output_index,
                name=item["name"],
                arguments=item["arguments"],
            )
        elif item["content"]:
            self._close_part(current)
        if current.kind != "reasoning":
            item["status"] = status
        self._event(
            "response.output_item.done",
            output_index=current.output_index,
            item=copy.deepcopy(item),
        )
