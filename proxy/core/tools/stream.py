"""Incremental tool-call scanner: content text deltas in, events out. Pure, no I/O.

``feed(delta) -> [event]`` and ``finish() -> [event]``, in the style of h11: any split of the
same text yields the same events once merged (tested over every split point).

Events:

- :class:`TextDelta`: answer text that is certainly not part of a call. Text is held back only
  while a possible call opening is pending: a prefix of ``<tool_call>`` / ``<function=`` /
  ``[TOOL_CALLS]`` / ``<|python_tag|>``, a ``{`` or ``[`` whose first key could still be a call
  key (``name``, ``tool_calls``, ``function``, ``arguments``, ...), or a ``` fence whose body
  could still start with such JSON. Its language tag, if any, is one as :mod:`.formats` reads
  it (``FENCE_LANGUAGE``: up to 16 ASCII letters, digits and ``_+.-``); a fence with anything
  else there is text (JSON inside it is read like any JSON in the text). Trailing whitespace is
  held until more text follows, and dropped when the answer turned out to hold calls (so a pure
  call shows no content at all).
- :class:`ToolCallFound`: one complete call (index, name, decoded arguments), emitted when its
  block closed (``</tool_call>``, ``</function>``, the closing fence, the JSON's last brace) or
  at :meth:`ToolCallScanner.finish` (a block cut off by the end of the answer). The closing
  fence is the first ``` outside the JSON's strings: a code fence inside an argument (a file's
  content, a Markdown text) belongs to the call.
- :class:`MalformedCall`: a block that was meant as a call but cannot be read. Its text is never
  shown as content; the caller re-asks.

Calls are emitted whole, not as name/argument fragments: the proxy releases a call to its
client only after the arguments validated against the tool's schema (so that an invalid call can
still be re-asked), and a partial call would only be buffered again.

Untagged JSON and fenced JSON that is not a call (see :mod:`.formats`) goes out as text,
unchanged, once it closed. Deliberately not handled: calls inside reasoning fields (only
``content`` is scanned) and a ``<tool_call>`` that is meant as literal text. A fence's brackets
are not matched, only its strings: a ``` outside a string closes it even in unbalanced JSON
(which then does not read), and a raw line break ends a string (JSON strings cannot hold one),
so a stray quote does not hide the closing fence on a later line.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from proxy.core.tools.formats import (
    FENCE_LANGUAGE,
    MAX_JSON_DEPTH,
    CallSyntaxError,
    ParsedCall,
    looks_like_call,
    parse_json_calls,
    parse_tagged,
    parse_xml_calls,
)


@dataclass(frozen=True, slots=True)
class TextDelta:
    """Answer text for the client."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallFound:
    """One complete call, numbered from 0 in the order written."""

    index: int
    name: str
    arguments: Any


@dataclass(frozen=True, slots=True)
class MalformedCall:
    """A block meant as a call that could not be read; ``reason`` is for the re-ask."""

    reason: str


Event = TextDelta | ToolCallFound | MalformedCall
_Mode = Literal["tagged", "function", "json", "fence"]

TAG_OPEN = "<tool_call>"
TAG_CLOSE = "</tool_call>"
FUNCTION_OPEN = "<function="
FUNCTION_CLOSE = "</function>"
_DROPPED_MARKERS = ("<|python_tag|>", "[TOOL_CALLS]", TAG_CLOSE)
_ANGLE_MARKERS = (TAG_OPEN, FUNCTION_OPEN, "<|python_tag|>", TAG_CLOSE)
_CALL_KEYS = ("name", "tool_calls", "function", "arguments", "parameters", "type", "id")
_MAX_KEY = max(len(key) for key in _CALL_KEYS)
_TRIGGER = re.compile(r"[<{\[`]")
_WHITESPACE = " \t\r\n"
_SEPARATORS = " \t\r\n;,"

_Verdict = Literal["yes", "no", "partial"]


def _object_head(text: str, pos: int) -> _Verdict:
    """Whether the object starting at ``text[pos] == "{"`` opens with a call key."""
    pos += 1
    while pos < len(text) and text[pos] in _WHITESPACE:
        pos += 1
    if pos >= len(text):
        return "partial"
    if text[pos] != '"':
        return "no"
    end = text.find('"', pos + 1)
    key = text[pos + 1 : end if end != -1 else len(text)]
    if end == -1:
        if len(key) <= _MAX_KEY and any(k.startswith(key) for k in _CALL_KEYS):
            return "partial"
        return "no"
    return "yes" if key in _CALL_KEYS else "no"


def _json_head(text: str, pos: int) -> _Verdict:
    """Whether the JSON value at ``pos`` (``{`` or ``[``) could be a call."""
    if text[pos] == "{":
        return _object_head(text, pos)
    pos += 1
    while pos < len(text) and text[pos] in _WHITESPACE:
        pos += 1
    if pos >= len(text):
        return "partial"
    return _object_head(text, pos) if text[pos] == "{" else "no"


def _fence_head(text: str) -> _Verdict:
    """Whether ``text`` (starting with a backtick) opens a fence holding call JSON."""
    if len(text) < 3:
        return "partial" if "```".startswith(text) else "no"
    if not text.startswith("```"):
        return "no"
    tag = FENCE_LANGUAGE.match(text, 3)
    if tag is None:  # a run of tag characters too long for a language name
        return "no"
    pos = tag.end()
    while pos < len(text) and text[pos] in _WHITESPACE:
        pos += 1
    if pos >= len(text):
        return "partial"
    return _json_head(text, pos) if text[pos] in "{[" else "no"


class ToolCallScanner:
    """Finds calls in an answer's content as it streams. One instance per answer."""

    def __init__(
        self,
        *,
        known: Collection[str] | None = None,
        schemas: Mapping[str, Mapping[str, Any] | None] | None = None,
    ) -> None:
        self._known = known
        self._schemas: Mapping[str, Mapping[str, Any] | None] = schemas or {}
        self._buf = ""
        self._mode: _Mode | None = None
        self._block = ""
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._too_deep = False
        self._pending_ws = ""
        self._after_call = False
        self._calls = 0
        self._malformed = 0
        self._emitted = False
        self._finished = False

    @property
    def calls_found(self) -> int:
        """How many calls were emitted so far."""
        return self._calls

    def feed(self, text: str) -> list[Event]:
        """Events for one more piece of content text."""
        if self._finished:
            raise RuntimeError("feed() after finish()")
        self._buf += text
        out: list[Event] = []
        self._process(out, eof=False)
        return _merged(out)

    def finish(self) -> list[Event]:
        """Events for the end of the answer: an unterminated block is read as it stands."""
        if self._finished:
            return []
        self._finished = True
        out: list[Event] = []
        self._process(out, eof=True)
        if self._pending_ws and not self._calls and not self._malformed:
            out.append(TextDelta(self._pending_ws))
        self._pending_ws = ""
        return _merged(out)

    # -- scanning -----------------------------------------------------------------------------

    def _process(self, out: list[Event], *, eof: bool) -> None:
        while True:
            if self._mode is None:
                if not self._scan_text(out, eof=eof):
                    return
            elif not self._scan_block(out, eof=eof):
                return

    def _scan_text(self, out: list[Event], *, eof: bool) -> bool:
        """Consume text up to the next possible opening; False when waiting for more."""
        match = _TRIGGER.search(self._buf)
        if match is None:
            self._text(out, self._buf)
            self._buf = ""
            return False
        start = match.start()
        if start:
            self._text(out, self._buf[:start])
            self._buf = self._buf[start:]
        verdict, action = self._classify(self._buf)
        if verdict == "partial" and not eof:
            return False
        if verdict == "yes":
            if action in _DROPPED_MARKERS:
                self._buf = self._buf[len(action) :]
            else:
                self._open(action)
            return True
        self._text(out, self._buf[0])
        self._buf = self._buf[1:]
        return True

    def _classify(self, text: str) -> tuple[_Verdict, str]:
        first = text[0]
        if first == "<":
            for marker in _ANGLE_MARKERS:
                if text.startswith(marker):
                    return "yes", marker if marker in _DROPPED_MARKERS else _mode_for(marker)
            if any(marker.startswith(text) for marker in _ANGLE_MARKERS):
                return "partial", ""
            return "no", ""
        if first == "`":
            return _fence_head(text), "fence"
        if first == "[":
            if text.startswith("[TOOL_CALLS]"):
                return "yes", "[TOOL_CALLS]"
            if "[TOOL_CALLS]".startswith(text):
                return "partial", ""
        return _json_head(text, 0), "json"

    def _open(self, mode: str) -> None:
        assert mode in ("tagged", "function", "json", "fence")
        self._mode = mode  # type: ignore[assignment]
        self._block = ""
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._too_deep = False

    def _scan_block(self, out: list[Event], *, eof: bool) -> bool:
        """Grow the open block; when it closed (or the answer ended), read it."""
        start = len(self._block)
        self._block += self._buf
        self._buf = ""
        end = self._block_end(start)
        if end is None:
            if not eof:
                return False
            end = len(self._block)
        block, self._buf = self._block[:end], self._block[end:]
        mode = self._mode
        self._mode = None
        self._block = ""
        assert mode is not None
        self._read_block(out, mode, block)
        return True

    def _block_end(self, start: int) -> int | None:
        block = self._block
        if self._mode == "tagged":
            pos = max(len(TAG_OPEN), start - len(TAG_CLOSE))
            close = block.find(TAG_CLOSE, pos)
            reopen = block.find(TAG_OPEN, pos)
            if reopen != -1 and (close == -1 or reopen < close):
                return reopen  # a new call opened before this one closed
            return close + len(TAG_CLOSE) if close != -1 else None
        if self._mode == "function":
            close = block.find(FUNCTION_CLOSE, max(0, start - len(FUNCTION_CLOSE)))
            return close + len(FUNCTION_CLOSE) if close != -1 else None
        if self._mode == "fence":
            return self._fence_end(start)
        return self._json_end(start)

    def _fence_end(self, start: int) -> int | None:
        """The end of the first ``` outside a JSON string, resumable across feeds.

        A code fence inside an argument (a file's content, a Markdown answer) does not close the
        call's fence. A line break ends a string as well as ``"``: JSON strings cannot hold one,
        so the stray quote of broken JSON does not hide the closing fence on a later line.
        Scanning starts after the opening backticks; the language tag and the whitespace up to
        the body hold neither quotes nor backticks."""
        block = self._block
        for pos in range(max(start, 3), len(block)):
            char = block[pos]
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif char == "\\":
                    self._escape = True
                elif char in '"\n':
                    self._in_string = False
            elif char == '"':
                self._in_string = True
            elif block.startswith("```", pos - 2):
                # The two characters before are backticks outside a string too: a string's
                # last character is its closing quote or a line break.
                return pos + 1
        return None

    def _json_end(self, start: int) -> int | None:
        """String-aware bracket matching, resumable across feeds."""
        block = self._block
        for pos in range(start, len(block)):
            char = block[pos]
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif char == "\\":
                    self._escape = True
                elif char == '"':
                    self._in_string = False
            elif char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
                if self._depth > MAX_JSON_DEPTH:
                    self._too_deep = True  # read to its end all the same: none of it is text
            elif char in "}]":
                self._depth -= 1
                if self._depth == 0:
                    return pos + 1
        return None

    def _read_block(self, out: list[Event], mode: _Mode, block: str) -> None:
        try:
            calls: list[ParsedCall] | None
            if mode == "tagged":
                inner = block[len(TAG_OPEN) :]
                if inner.endswith(TAG_CLOSE):
                    inner = inner[: -len(TAG_CLOSE)]
                calls = parse_tagged(inner, known=self._known, schemas=self._schemas)
            elif mode == "function":
                calls = parse_xml_calls(block, self._schemas)
            elif self._too_deep:
                raise CallSyntaxError(f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels")
            else:
                calls = parse_json_calls(block, known=self._known, explicit=False)
        except CallSyntaxError as exc:
            if mode in ("tagged", "function") or looks_like_call(block, self._known):
                self._malformed += 1
                self._pending_ws = ""
                out.append(MalformedCall(str(exc)))
            else:
                self._text(out, block)
            return
        if calls is None:
            self._text(out, block)
            return
        self._pending_ws = ""
        self._after_call = True
        for call in calls:
            out.append(ToolCallFound(self._calls, call.name, call.arguments))
            self._calls += 1

    def _text(self, out: list[Event], text: str) -> None:
        if self._after_call:
            text = text.lstrip(_SEPARATORS)
            if not text:
                return
            self._after_call = False
            if self._emitted:
                text = " " + text
        body = text.rstrip(_WHITESPACE)
        trailing = text[len(body) :]
        if body:
            out.append(TextDelta(self._pending_ws + body))
            self._pending_ws = trailing
            self._emitted = True
        else:
            self._pending_ws += trailing


def _mode_for(marker: str) -> str:
    return "tagged" if marker == TAG_OPEN else "function"


def _merged(events: list[Event]) -> list[Event]:
    merged: list[Event] = []
    for event in events:
        if isinstance(event, TextDelta) and merged and isinstance(merged[-1], TextDelta):
            merged[-1] = TextDelta(merged[-1].text + event.text)
        else:
            merged.append(event)
    return merged
