"""Stop sequences, enforced on the decrypted answer (``stop`` is never sent upstream). Pure.

:class:`StopCutter` cuts one text stream at the first occurrence of any of a few stop strings
(the earliest start in the whole text, so where the chunk borders fall never changes the cut).
It holds back the longest tail of what it was fed that could still be the start of a stop
string (at most ``max(len(stop)) - 1`` characters) and releases it once it cannot be; a match
is only decided when no stop string could still start earlier. It works on decrypted ``str``,
so a stop string inside a multi-byte character cannot half-match.

:class:`ChoiceStops` applies cutters to rebuilt ``chat.completion.chunk`` objects, one per
choice index: content after the cut is dropped, the cut choice ends with
``finish_reason: "stop"``, a choice the upstream finishes first gets its held-back tail in its
finishing delta, and :attr:`ChoiceStops.done` says when every choice has ended and at least one
was cut here (the relay then closes the upstream). Only ``content`` is cut; reasoning is not
the answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

_META_KEYS = ("id", "object", "created", "model", "system_fingerprint")


class StopCutter:
    """Cuts one text stream at the first stop string."""

    __slots__ = ("_pending", "_stops", "matched")

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stop for stop in stops if stop)
        self._pending = ""
        self.matched = False

    def feed(self, text: str) -> str:
        """The text that is safe to emit now (after a match: what came before it)."""
        if self.matched:
            return ""
        buffer = self._pending + text
        match = self._first_match(buffer)
        held = len(buffer) - self._held_back(buffer)  # where a stop could still be starting
        if match is not None and match <= held:
            self.matched = True
            self._pending = ""
            return buffer[:match]
        self._pending = buffer[held:]
        return buffer[:held]

    def flush(self) -> str:
        """The held-back tail, at the end of the stream (cut if it holds a stop string)."""
        pending, self._pending = self._pending, ""
        if self.matched:
            return ""
        match = self._first_match(pending)
        if match is not None:
            self.matched = True
            return pending[:match]
        return pending

    def _first_match(self, buffer: str) -> int | None:
        found = [index for index in (buffer.find(stop) for stop in self._stops) if index >= 0]
        return min(found) if found else None

    def _held_back(self, buffer: str) -> int:
        """The length of the longest tail of ``buffer`` that a stop string starts with."""
        if not buffer:
            return 0
        last = buffer[-1]
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if stop[size - 1] == last and buffer.endswith(stop[:size]):
                    longest = size
                    break
        return longest


class ChoiceStops:
    """Stop strings applied to every choice of one response's rebuilt chunks."""

    __slots__ = ("_choices", "_cutters", "_finished", "_meta", "_stopped", "_stops")

    def __init__(self, stops: Sequence[str], choices: int = 1) -> None:
        self._stops = tuple(stops)
        self._choices = choices
        self._cutters: dict[int, StopCutter] = {}
        self._finished: set[int] = set()
        self._stopped: set[int] = set()
        self._meta: dict[str, Any] = {}

    @property
    def done(self) -> bool:
        """Every choice ended and at least one was cut here: nothing more will be relayed."""
        return bool(self._stopped) and all(i in self._finished for i in range(self._choices))

    @property
    def stopped(self) -> bool:
        """At least one choice was cut at a stop string."""
        return bool(self._stopped)

    def apply(self, chunk: Mapping[str, Any]) -> dict[str, Any] | None:
        """The chunk to relay (content cut), or None when nothing of it is left."""
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices:
            return dict(chunk)
        for key in _META_KEYS:
            if key in chunk:
                self._meta.setdefault(key, chunk[key])
        kept = [out for choice in choices if (out := self._choice(choice)) is not None]
        if not kept and chunk.get("usage") is None:
            return None
        return {**chunk, "choices": kept}

    def flush(self) -> dict[str, Any] | None:
        """At the end of the stream: a chunk with the held-back tails of unfinished choices."""
        tails = []
        for index in sorted(self._cutters):
            if index in self._finished:
                continue
            cutter = self._cutters[index]
            rest = cutter.flush()
            finish = None
            if cutter.matched:
                finish = "stop"
                self._stopped.add(index)
                self._finished.add(index)
            if rest or finish:
                tails.append(
                    {
                        "index": index,
                        "delta": {"content": rest} if rest else {},
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                )
        if not tails:
            return None
        return {**self._meta, "object": "chat.completion.chunk", "choices": tails}

    def _choice(self, choice: Mapping[str, Any]) -> dict[str, Any] | None:
        index = choice.get("index", 0)
        if not isinstance(index, int) or index in self._finished:
            return None  # after its end (local or upstream), a choice says nothing more
        cutter = self._cutters.get(index)
        if cutter is None:
            cutter = self._cutters[index] = StopCutter(self._stops)
        name = "delta" if "delta" in choice else "message"
        body = dict(choice.get(name) or {})
        finish = choice.get("finish_reason")
        content = body.get("content")
        if isinstance(content, str) and content:
            emitted = cutter.feed(content)
            if emitted:
                body["content"] = emitted
            else:
                del body["content"]
        if not cutter.matched and finish is not None:
            rest = cutter.flush()  # the upstream ended this choice: nothing is held back now
            if rest:
                body["content"] = str(body.get("content") or "") + rest
            self._finished.add(index)
        if cutter.matched:
            finish = "stop"
            self._stopped.add(index)
            self._finished.add(index)
        if not body and finish is None:
            return None
        return {**choice, name: body, "finish_reason": finish}
