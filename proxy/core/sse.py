"""Incremental server-sent-events codec (WHATWG HTML "event stream" rules). Pure, no I/O.

Wire format (what Venice and every OpenAI-style backend send)::

    data: {"id":"chatcmpl-…","choices":[…]}\\n
    \\n
    data: [DONE]\\n
    \\n

Decoding follows the WHATWG parsing rules: lines end in CRLF, LF or CR (a CR that ends one chunk
and an LF that starts the next are one line ending, not two); a line starting with ``:`` is a
comment; a field without a colon is that name with an empty value; one space after the colon is
stripped; several ``data`` lines join with ``\\n``; a blank line dispatches the event, unless it
has no ``data`` line; a leading BOM is dropped; unknown fields are ignored.

Where this diverges from the spec, on purpose:

- Invalid UTF-8 raises :class:`SSEProtocolError` instead of decoding to U+FFFD: the payload is
  JSON, so garbage means a broken stream, and a relay must not silently alter it.
- A line longer than ``max_line_bytes``, or an event whose ``data`` lines add up to more than
  ``max_event_bytes``, raises :class:`SSEProtocolError` with code ``upstream_event_too_large``
  (bounded memory against an endless line, and against ``data:`` lines that never end an
  event). Each data line counts its raw length plus :data:`LINE_OVERHEAD` bytes, what holding
  one more line costs in memory, so many tiny lines are bounded too. Both limits default to
  :data:`DEFAULT_MAX_EVENT_BYTES` (4 MiB).
- At end of input the spec silently discards an unterminated event; :meth:`SSEDecoder.finish`
  discards it too but sets :attr:`SSEDecoder.truncated`, so the caller can fail closed instead of
  passing a cut-off stream off as a complete one.
- An empty or absent ``event`` field is reported as ``None`` (the spec's "message").
- ``retry`` is reported on the event whose block carried it (the spec only updates a
  reconnection time), and ``id`` is the spec's last-event-ID buffer, which persists across events.

Deliberately not checked here: what ``data`` contains (JSON parsing belongs to the caller).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.core.errors import SSEProtocolError

DONE: bytes = b"data: [DONE]\n\n"
DEFAULT_MAX_EVENT_BYTES = 4 * 1024 * 1024
LINE_OVERHEAD = 64
"""Bytes each ``data`` line counts towards ``max_event_bytes`` beyond its own length."""

_CR = 0x0D
_LF = 0x0A
_BOM = "\ufeff"


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event."""

    data: str
    event: str | None = None
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Bytes in, events out: ``feed(chunk)`` any number of times, then ``finish()`` at EOF.

    Each byte is scanned once for line ends: the unterminated tail is kept in one bytearray and
    only the newly fed bytes are searched, so many tiny feeds stay linear.
    """

    __slots__ = (
        "_buf",
        "_data",
        "_dirty",
        "_event",
        "_event_bytes",
        "_last_id",
        "_max_event",
        "_max_line",
        "_retry",
        "_scanned",
        "_skip_lf",
        "_started",
        "_truncated",
    )

    def __init__(
        self,
        *,
        max_line_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        self._max_line = max_line_bytes
        self._max_event = max_event_bytes
        # What the data lines of the event in progress count towards max_event_bytes.
        self._event_bytes = 0
        self._buf = bytearray()
        # Bytes of _buf already known to hold no line end.
        self._scanned = 0
        # The previous line ended with a CR as the last byte fed; a following LF belongs to it.
        self._skip_lf = False
        self._started = False
        self._data: list[str] = []
        self._event: str | None = None
        self._retry: int | None = None
        self._last_id: str | None = None
        # A field line arrived since the last dispatch (an event is in progress).
        self._dirty = False
        self._truncated = False

    @property
    def truncated(self) -> bool:
        """True if :meth:`finish` found an unterminated line or event (the stream was cut)."""
        return self._truncated

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume ``chunk`` (split anywhere) and return the events it completed."""
        if not chunk:
            return []
        if (
            self._started
            and not self._buf
            and not self._skip_lf
            and not self._dirty
            and chunk.startswith(b"data: ")
            and chunk.find(b"\n") == len(chunk) - 2
            and chunk.endswith(b"\n\n")
            and b"\r" not in chunk
            and len(chunk) - 2 <= self._max_line
            and len(chunk) - 2 + LINE_OVERHEAD <= self._max_event
        ):
            return [self._whole_event(chunk)]
        start_in_chunk = 0
        if self._skip_lf:
            self._skip_lf = False
            if chunk[0] == _LF:
                start_in_chunk = 1
        buf = self._buf
        if start_in_chunk:
            buf += memoryview(chunk)[start_in_chunk:]
        else:
            buf += chunk
        events: list[SSEEvent] = []
        start = 0
        end_of_buf = len(buf)
        scan_from = self._scanned
        # Cached positions of the next CR / LF; -1 means none up to the end of the buffer, which
        # stays true until more bytes arrive, so each byte is searched at most once per kind.
        cr = buf.find(b"\r", scan_from)
        lf = buf.find(b"\n", scan_from)
        while cr != -1 or lf != -1:
            if cr != -1 and (lf == -1 or cr < lf):
                line_end = cr
                if cr + 1 < end_of_buf:
                    next_start = cr + 2 if buf[cr + 1] == _LF else cr + 1
                else:
                    next_start = cr + 1
                    self._skip_lf = True
            else:
                line_end = lf
                next_start = lf + 1
            if line_end - start > self._max_line:
                raise self._too_large("line")
            event = self._line(buf, start, line_end)
            if event is not None:
                events.append(event)
            start = next_start
            if cr != -1 and cr < start:
                cr = buf.find(b"\r", start)
            if lf != -1 and lf < start:
                lf = buf.find(b"\n", start)
        if start:
            del buf[:start]
        if len(buf) > self._max_line:
            raise self._too_large("line")
        self._scanned = len(buf)
        return events

    def _whole_event(self, chunk: bytes) -> SSEEvent:
        """The one event of a chunk that is exactly ``data: …\\n\\n`` with no other line end,
        fed between events: what the general path would give for it, without the line scan
        (most upstream reads at a real pace are one such event)."""
        try:
            data = chunk[6:-2].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SSEProtocolError("the event stream is not valid UTF-8") from exc
        return SSEEvent(data=data, id=self._last_id)

    def finish(self) -> list[SSEEvent]:
        """Signal end of input. An unterminated final event is discarded and sets ``truncated``.

        Always returns an empty list (kept for symmetry with :meth:`feed`).
        """
        if self._buf or self._dirty:
            self._truncated = True
        self._buf.clear()
        self._scanned = 0
        self._skip_lf = False
        self._reset_event()
        return []

    def _too_large(self, what: str) -> SSEProtocolError:
        limit = self._max_line if what == "line" else self._max_event
        return SSEProtocolError(
            f"an upstream event-stream {what} exceeds the size limit of {limit} bytes",
            code="upstream_event_too_large",
        )

    def _add_data(self, value: str, raw_length: int) -> None:
        self._event_bytes += raw_length + LINE_OVERHEAD
        if self._event_bytes > self._max_event:
            raise self._too_large("event")
        self._dirty = True
        self._data.append(value)

    def _reset_event(self) -> None:
        self._data = []
        self._event_bytes = 0
        self._event = None
        self._retry = None
        self._dirty = False

    def _line(self, buf: bytearray, start: int, end: int) -> SSEEvent | None:
        if start == end:
            return self._dispatch()
        try:
            line = buf[start:end].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SSEProtocolError("the event stream is not valid UTF-8") from exc
        if not self._started:
            self._started = True
            if line.startswith(_BOM):
                line = line[1:]
                if not line:
                    return self._dispatch()
        # Fast path for the one field that matters on the hot path.
        if line.startswith("data:"):
            self._add_data(line[6:] if line.startswith(" ", 5) else line[5:], end - start)
            return None
        if line[0] == ":":
            return None
        colon = line.find(":")
        if colon == -1:
            name, value = line, ""
        else:
            name = line[:colon]
            value = line[colon + 2 :] if line.startswith(" ", colon + 1) else line[colon + 1 :]
        if name == "data":
            self._add_data(value, end - start)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" in value:
                return None
            self._last_id = value
        elif name == "retry":
            if not (value.isascii() and value.isdigit()):
                return None
            self._retry = int(value)
        else:
            return None
        self._dirty = True
        return None

    def _dispatch(self) -> SSEEvent | None:
        if not self._started:
            self._started = True
        if not self._data:
            self._reset_event()
            return None
        event = SSEEvent(
            data="\n".join(self._data),
            event=self._event or None,
            id=self._last_id,
            retry=self._retry,
        )
        self._reset_event()
        return event


def encode_data(data: str) -> bytes:
    """Frame ``data`` as one event; each of its lines becomes a ``data:`` line."""
    if "\r" in data:
        data = data.replace("\r\n", "\n").replace("\r", "\n")
    return ("data: " + data.replace("\n", "\ndata: ") + "\n\n").encode("utf-8")


def encode_json(obj: Mapping[str, Any]) -> bytes:
    """Compact JSON framed as one event. JSON text never holds a raw CR or LF, so one line.
    The frame is one copy of the JSON (a large event is not copied twice)."""
    return b"".join((b"data: ", json_bytes(obj), b"\n\n"))


def json_bytes(obj: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON text.

    orjson on the hot path (about 15x faster than the stdlib here, same compact UTF-8 text);
    what orjson refuses (a lone surrogate, an integer beyond 64 bits, a non-string key) goes
    through :mod:`json` as before.
    """
    try:
        return orjson.dumps(obj)
    except TypeError:
        return _encode_json_stdlib(obj)


def _encode_json_stdlib(obj: Mapping[str, Any]) -> bytes:
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (from a "\\ud800" escape upstream) has no UTF-8 form; the ASCII
        # form keeps it as an escape, which is still the same JSON value.
        return json.dumps(obj, separators=(",", ":")).encode("ascii")


def decode_json(data: str | bytes) -> Any:
    """JSON text to Python values, as :func:`json.loads` reads it, with one difference.

    orjson first (3-4x faster on an upstream chunk); whatever it refuses (``NaN``, lone
    surrogate escapes, nesting deeper than 1024, invalid text) is read again by
    :func:`json.loads`, which accepts it or raises its own ``ValueError`` / ``RecursionError``.
    The difference: an integer beyond 64 bits comes back as a float (orjson's reading), which
    the rebuild then treats as no integer (``created`` becomes 0, such an ``index`` ends the
    answer); no upstream sends one, and checking every event for long digit runs would cost
    more than the whole parse.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)
