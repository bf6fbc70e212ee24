"""Property tests for the SSE decoder: arbitrary streams, arbitrary byte splits.

test_sse.py already splits one realistic stream at random points. Here the *stream* is random
too: events with any number of ``data`` lines (any Unicode, astral included, with or without the
optional space), ``event``/``id``/``retry`` fields (valid and invalid), comments, unknown
fields, bare field names, blank lines with no event, a leading BOM and a mix of CRLF, LF and CR
line endings. A small model of the WHATWG rules predicts the events; the decoder must produce
exactly them whether fed in one piece, split at arbitrary byte offsets (UTF-8 sequences
included), or cut short (then: a prefix of them, and ``truncated`` set when the cut fell inside
an event).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.sse import SSEDecoder, SSEEvent

# Field values: any Unicode scalar value but CR and LF (they would end the line).
_VALUE = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=30)
_NAME = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n:"), max_size=8)


@dataclass(frozen=True)
class Line:
    text: str
    # What the model must do with it.
    kind: str  # "data" | "event" | "id" | "retry" | "ignored"
    value: str = ""


def _field(draw: st.DrawFn, name: str, value: str) -> str:
    """``name: value``, or ``name:value`` (same value) when the value does not start with a
    space: the decoder drops one space after the colon, and only one."""
    if not value.startswith(" ") and draw(st.booleans()):
        return f"{name}:{value}"
    return f"{name}: {value}"


@st.composite
def lines(draw: st.DrawFn) -> Line:
    kind = draw(st.sampled_from(["data", "data", "data", "event", "id", "retry", "noise"]))
    value = draw(_VALUE)
    if kind == "data":
        if draw(st.booleans()) and not value.startswith(" "):
            return Line("data:" + value, "data", value)
        if value == "" and draw(st.booleans()):
            return Line("data", "data", "")  # a field name alone: empty value
        return Line("data: " + value, "data", value)
    if kind == "event":
        return Line(_field(draw, "event", value), "event", value)
    if kind == "id":
        if "\0" in value:
            return Line(_field(draw, "id", value), "ignored")  # ids holding NUL are ignored
        return Line(_field(draw, "id", value), "id", value)
    if kind == "retry":
        if draw(st.booleans()):
            digits = draw(st.integers(min_value=0, max_value=10**12))
            return Line(_field(draw, "retry", str(digits)), "retry", str(digits))
        return Line(_field(draw, "retry", value + "x"), "ignored")  # never all ASCII digits
    noise = draw(st.sampled_from(["comment", "unknown", "bare"]))
    if noise == "comment":
        return Line(":" + value, "ignored")
    name = draw(_NAME.filter(lambda n: n not in ("data", "event", "id", "retry", "")))
    if noise == "unknown":
        return Line(_field(draw, name, value), "ignored")
    return Line(name, "ignored")


Block = list[Line]
_BLOCKS = st.lists(st.lists(lines(), max_size=5), max_size=6)
_EOLS = st.sampled_from(["\n", "\r\n", "\r"])


def expected_events(blocks: list[Block]) -> list[SSEEvent]:
    """The WHATWG model: a blank line dispatches if there was data; ``id`` persists."""
    events: list[SSEEvent] = []
    last_id: str | None = None
    for block in blocks:
        data: list[str] = []
        event: str | None = None
        retry: int | None = None
        for line in block:
            if line.kind == "data":
                data.append(line.value)
            elif line.kind == "event":
                event = line.value or None
            elif line.kind == "id":
                last_id = line.value
            elif line.kind == "retry":
                retry = int(line.value)
        if data:
            events.append(SSEEvent("\n".join(data), event=event, id=last_id, retry=retry))
    return events


_DIRTY = frozenset({"data", "event", "id", "retry"})


@dataclass(frozen=True)
class Boundary:
    """The byte offset just after one line, and what a stream cut there has seen."""

    offset: int
    complete_blocks: int  # blocks whose blank line came at or before this offset
    in_event: bool  # a field line of an unfinished block came before this offset


def encode_with_boundaries(
    blocks: list[Block], eols: list[str], bom: bool
) -> tuple[bytes, list[Boundary]]:
    """The blocks as wire bytes (each line with its own line ending), and the line ends."""
    out = bytearray("\ufeff".encode() if bom else b"")
    boundaries: list[Boundary] = []
    previous = ""
    eol_cycle = itertools.cycle(eols)
    for index, block in enumerate(blocks):
        dirty = False
        for line in [*block, Line("", "blank")]:
            eol = next(eol_cycle)
            if previous == "\r" and line.text == "" and eol == "\n":
                # CR then LF would read as one CRLF line ending, swallowing this blank line.
                eol = "\r"
            out += (line.text + eol).encode("utf-8")
            previous = eol
            blank = line.kind == "blank"
            dirty = dirty or line.kind in _DIRTY
            boundary = Boundary(len(out), index + 1 if blank else index, dirty and not blank)
            if eol == "\r\n":
                # A CR alone already ends the line: a cut between CR and LF is a line end too.
                boundaries.append(replace(boundary, offset=boundary.offset - 1))
            boundaries.append(boundary)
    return bytes(out), boundaries


def encode(blocks: list[Block], eols: list[str], bom: bool) -> bytes:
    return encode_with_boundaries(blocks, eols, bom)[0]


def decode(chunks: list[bytes]) -> tuple[list[SSEEvent], bool]:
    decoder = SSEDecoder()
    events = [event for chunk in chunks for event in decoder.feed(chunk)]
    events.extend(decoder.finish())
    return events, decoder.truncated


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=300, deadline=None)
@given(_BLOCKS, st.lists(_EOLS, min_size=1, max_size=4), st.booleans(), st.lists(st.integers()))
def test_random_streams_decode_as_modelled_under_any_split(
    blocks: list[Block], eols: list[str], bom: bool, cuts: list[int]
) -> None:
    # A BOM alone (no line at all) is left out: the decoder holds it as an unterminated line.
    data = encode(blocks, eols, bom and bool(blocks))
    expected = expected_events(blocks)
    assert decode([data]) == (expected, False)
    assert decode(split(data, cuts)) == (expected, False)


@settings(max_examples=100, deadline=None)
@given(_BLOCKS, st.lists(_EOLS, min_size=1, max_size=4))
def test_byte_at_a_time_equals_one_shot(blocks: list[Block], eols: list[str]) -> None:
    data = encode(blocks, eols, bom=False)
    assert decode([data[i : i + 1] for i in range(len(data))]) == decode([data])


@settings(max_examples=200, deadline=None)
@given(_BLOCKS, st.lists(_EOLS, min_size=1, max_size=4), st.integers(min_value=0))
def test_a_cut_stream_yields_a_prefix_and_says_so(
    blocks: list[Block], eols: list[str], cut: int
) -> None:
    data, boundaries = encode_with_boundaries(blocks, eols, bom=False)
    cut %= len(data) + 1
    events, truncated = decode([data[:cut]])
    at = {boundary.offset: boundary for boundary in boundaries}
    if cut == 0:
        assert (events, truncated) == ([], False)
    elif cut in at:
        # Cut between lines: the complete blocks' events, and "truncated" exactly when an
        # event had started (a comment or an ignored field starts nothing).
        boundary = at[cut]
        assert events == expected_events(blocks[: boundary.complete_blocks])
        assert truncated == boundary.in_event
    else:
        # Cut inside a line: never a silent clean end.
        previous = max(
            (b for b in boundaries if b.offset < cut), key=lambda b: b.offset, default=None
        )
        done = previous.complete_blocks if previous is not None else 0
        assert events == expected_events(blocks[:done])
        assert truncated
