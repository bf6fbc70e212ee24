"""The incremental SSE codec: line endings, fields, splits anywhere, limits, truncation."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.errors import SSEProtocolError
from proxy.core.sse import (
    DONE,
    LINE_OVERHEAD,
    SSEDecoder,
    SSEEvent,
    decode_json,
    encode_data,
    encode_json,
)

# A realistic upstream stream: CRLF and LF mixed, a comment, a multi-byte character, a usage
# chunk and the terminator.
REALISTIC = (
    b": keep-alive\r\n\r\n"
    b'data: {"id":"chatcmpl-1","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}'
    b"\r\n\r\n"
    b'data: {"id":"chatcmpl-1","choices":[{"index":0,"delta":{"content":"caf\xc3\xa9 \xe2\x82\xac'
    b' \xf0\x9f\x98\x80"}}]}\n\n'
    b"event: message\nid: 7\nretry: 1500\ndata: line one\ndata:line two\n\n"
    b'data: {"choices":[],"usage":{"prompt_tokens":3},"cost":{"usd":0.1}}\r\r'
    b"data: [DONE]\n\n"
)


def parse_all(chunks: list[bytes]) -> tuple[list[SSEEvent], bool]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    events.extend(decoder.finish())
    return events, decoder.truncated


def one_shot(data: bytes) -> list[SSEEvent]:
    events, truncated = parse_all([data])
    assert not truncated
    return events


def test_realistic_stream_one_shot() -> None:
    events = one_shot(REALISTIC)
    assert [e.data for e in events] == [
        '{"id":"chatcmpl-1","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}',
        '{"id":"chatcmpl-1","choices":[{"index":0,"delta":{"content":"café € 😀"}}]}',
        "line one\nline two",
        '{"choices":[],"usage":{"prompt_tokens":3},"cost":{"usd":0.1}}',
        "[DONE]",
    ]
    assert events[2] == SSEEvent(data="line one\nline two", event="message", id="7", retry=1500)
    assert events[0].event is None
    assert events[0].retry is None


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_each_line_ending(eol: bytes) -> None:
    data = b"data: a" + eol + b"data: b" + eol + eol + b"data: c" + eol + eol
    assert [e.data for e in one_shot(data)] == ["a\nb", "c"]


def test_every_split_point_of_realistic_stream_matches_one_shot() -> None:
    expected = one_shot(REALISTIC)
    for i in range(len(REALISTIC) + 1):
        events, truncated = parse_all([REALISTIC[:i], REALISTIC[i:]])
        assert events == expected, f"split at {i}"
        assert not truncated


def test_byte_by_byte_matches_one_shot() -> None:
    chunks = [REALISTIC[i : i + 1] for i in range(len(REALISTIC))]
    assert parse_all(chunks) == (one_shot(REALISTIC), False)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(REALISTIC)), max_size=12))
def test_random_splits_match_one_shot(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    bounds = [0, *points, len(REALISTIC)]
    chunks = [REALISTIC[a:b] for a, b in itertools.pairwise(bounds)]
    assert parse_all(chunks) == (one_shot(REALISTIC), False)


def test_cr_at_chunk_end_then_lf_is_one_line_ending() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\r") == []
    # Were this LF read as a blank line, "x" would be dispatched alone.
    assert decoder.feed(b"\ndata: y\r") == []
    assert decoder.feed(b"\n\r\n") == [SSEEvent(data="x\ny")]
    decoder.finish()
    assert not decoder.truncated


def test_cr_then_lf_in_next_chunk_does_not_dispatch_twice() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r\n\r") == [SSEEvent(data="a")]
    # This LF completes the CR above; it must not be read as a second blank line.
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"data: b\n\n") == [SSEEvent(data="b")]


def test_cr_at_chunk_end_followed_by_other_byte() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\rdata: b\n\n") == [SSEEvent(data="a"), SSEEvent(data="b")]


def test_empty_feed_keeps_pending_cr() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\n") == [SSEEvent(data="a")]


def test_comments_are_ignored() -> None:
    assert one_shot(b": hello\n:\ndata: x\n: mid\n\n: tail\n") == [SSEEvent(data="x")]


def test_field_without_colon_and_space_rules() -> None:
    events = one_shot(b"data\n\ndata:  two spaces\n\ndata:no space\n\n")
    assert [e.data for e in events] == ["", " two spaces", "no space"]


def test_event_without_data_is_not_dispatched() -> None:
    assert one_shot(b"event: ping\n\nid: 3\n\n\n\ndata: x\n\n") == [SSEEvent(data="x", id="3")]


def test_event_type_resets_between_events_and_id_persists() -> None:
    events = one_shot(b"event: a\nid: 1\ndata: x\n\ndata: y\n\nid\ndata: z\n\n")
    assert events == [
        SSEEvent(data="x", event="a", id="1"),
        SSEEvent(data="y", event=None, id="1"),
        SSEEvent(data="z", event=None, id=""),
    ]


def test_invalid_retry_and_id_with_nul_are_ignored() -> None:
    events = one_shot(b"retry: 12a\nid: a\x00b\ndata: x\n\nretry: 5\ndata: y\n\n")
    assert events == [SSEEvent(data="x"), SSEEvent(data="y", retry=5)]


def test_unknown_fields_are_ignored() -> None:
    assert one_shot(b"foo: bar\ndata: x\n\n") == [SSEEvent(data="x")]


def test_leading_bom_is_dropped_once() -> None:
    events = one_shot(b"\xef\xbb\xbfdata: x\n\n\xef\xbb\xbfdata: y\n\n")
    assert events == [SSEEvent(data="x")]


def test_utf8_character_split_across_feeds() -> None:
    encoded = "data: 😀é\n\n".encode()
    for i in range(len(encoded) + 1):
        events, _ = parse_all([encoded[:i], encoded[i:]])
        assert events == [SSEEvent(data="😀é")]


def test_invalid_utf8_raises() -> None:
    decoder = SSEDecoder()
    with pytest.raises(SSEProtocolError):
        decoder.feed(b"data: \xff\xfe\n\n")


def test_invalid_utf8_in_comment_also_raises() -> None:
    with pytest.raises(SSEProtocolError):
        SSEDecoder().feed(b": \xc3\n")


def test_endless_line_raises_without_terminator() -> None:
    decoder = SSEDecoder(max_line_bytes=64)
    for _ in range(8):
        assert decoder.feed(b"a" * 8) == []
    with pytest.raises(SSEProtocolError):
        decoder.feed(b"a")


def test_line_at_limit_is_accepted_and_over_limit_rejected() -> None:
    line = b"data: " + b"a" * 58
    assert len(line) == 64
    assert SSEDecoder(max_line_bytes=64).feed(line + b"\n\n") == [SSEEvent(data="a" * 58)]
    with pytest.raises(SSEProtocolError):
        SSEDecoder(max_line_bytes=63).feed(line + b"\n\n")


def test_data_lines_that_never_end_an_event_are_bounded() -> None:
    decoder = SSEDecoder(max_event_bytes=64 * 1024)
    line = b"data: " + b"x" * 100 + b"\n"
    fed = 0

    def feed_until_refused() -> None:
        nonlocal fed
        while fed < 1024 * 1024:
            decoder.feed(line * 10)
            fed += len(line) * 10

    with pytest.raises(SSEProtocolError) as info:
        feed_until_refused()
    assert info.value.code == "upstream_event_too_large"
    assert "65536 bytes" in info.value.message
    assert fed < 64 * 1024  # cut at the bound, not at the end of the input


def test_tiny_data_lines_count_their_overhead() -> None:
    # "data:ab" is 7 bytes on the wire but a whole string object in memory.
    budget = 100 * (7 + LINE_OVERHEAD)
    decoder = SSEDecoder(max_event_bytes=budget)
    assert decoder.feed(b"data:ab\n" * 100) == []
    with pytest.raises(SSEProtocolError):
        decoder.feed(b"data:ab\n")


def test_the_event_budget_is_per_event() -> None:
    line = b"data: " + b"y" * 40 + b"\n"
    decoder = SSEDecoder(max_event_bytes=10 * (len(line) - 1 + LINE_OVERHEAD))
    for _ in range(100):
        events = decoder.feed(line * 10 + b"\n")
        assert events == [SSEEvent(data="\n".join(["y" * 40] * 10))]
    # comments and other fields cost nothing: they are not kept
    assert decoder.feed(b": ping\n" * 10_000 + b"event: x\n" * 10_000) == []


def test_an_oversized_line_has_the_same_code() -> None:
    with pytest.raises(SSEProtocolError) as info:
        SSEDecoder(max_line_bytes=64).feed(b"data: " + b"a" * 100)
    assert info.value.code == "upstream_event_too_large"


def test_many_small_feeds_of_a_long_line_are_fine() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: ")
    for _ in range(20_000):
        assert decoder.feed(b"ab") == []
    assert decoder.feed(b"\n\n") == [SSEEvent(data="ab" * 20_000)]


def test_truncated_final_event_is_discarded_and_flagged() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\ndata: partial\n") == [SSEEvent(data="a")]
    assert decoder.finish() == []
    assert decoder.truncated


def test_unterminated_final_line_is_flagged() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: a\n\ndata: [DO")
    assert decoder.finish() == []
    assert decoder.truncated


def test_clean_end_is_not_truncated() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: a\n\n: trailing comment\n")
    decoder.finish()
    assert not decoder.truncated


def test_encode_data_frames_lines() -> None:
    assert encode_data("x") == b"data: x\n\n"
    assert encode_data("") == b"data: \n\n"
    assert encode_data("a\nb\r\nc\rd") == b"data: a\ndata: b\ndata: c\ndata: d\n\n"


@pytest.mark.parametrize("text", ["", "x", "a\nb", " lead", "multi\n\nblank", "é😀"])
def test_encode_data_round_trips(text: str) -> None:
    assert one_shot(encode_data(text)) == [SSEEvent(data=text)]


def test_done_constant() -> None:
    assert one_shot(DONE) == [SSEEvent(data="[DONE]")]


def test_encode_json_is_compact_and_round_trips() -> None:
    obj = {"a": [1, 2], "text": "line\nbreak\r\ncafé 😀", "u": "\u2028"}
    framed = encode_json(obj)
    assert framed.startswith(b'data: {"a":[1,2],')
    assert framed.endswith(b"\n\n")
    assert "café".encode() in framed
    (event,) = one_shot(framed)
    assert json.loads(event.data) == obj


def test_encode_json_with_lone_surrogate_stays_valid() -> None:
    obj = json.loads('{"t":"x\\ud800y"}')
    framed = encode_json(obj)
    framed.decode("utf-8")
    (event,) = one_shot(framed)
    assert json.loads(event.data) == obj


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(), max_size=5))
def test_encode_data_sequence_round_trips(texts: list[str]) -> None:
    normalised = [t.replace("\r\n", "\n").replace("\r", "\n") for t in texts]
    events = one_shot(b"".join(encode_data(t) for t in texts))
    assert [e.data for e in events] == normalised


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1, "b": [true, null, "x\\u00e9"]}',
        '{"n": NaN, "i": -Infinity}',
        '{"s": "\\ud800"}',
        '{"a": 1, "a": 2}',
    ],
)
def test_decode_json_reads_what_json_loads_reads(text: str) -> None:
    expected = json.loads(text)
    got = decode_json(text)
    assert json.dumps(got) == json.dumps(expected)


@pytest.mark.parametrize("text", ["{", '{"a": 1} x', "[" * 100_000])
def test_decode_json_refuses_what_json_loads_refuses(text: str) -> None:
    with pytest.raises((ValueError, RecursionError)):
        json.loads(text)
    with pytest.raises((ValueError, RecursionError)):
        decode_json(text)


def test_decode_json_reads_integers_beyond_64_bits_as_floats() -> None:
    assert decode_json('{"big": 123456789012345678901234567890}') == {"big": 1.2345678901234568e29}


def test_encode_json_handles_what_orjson_refuses() -> None:
    big = 1 << 80
    assert encode_json({"n": big}) == b'data: {"n":%d}\n\n' % big
    assert encode_json({"t": "é ✓"}) == 'data: {"t":"é ✓"}\n\n'.encode()


# --- what mutation testing found unpinned (make mutation) ------------------------------------


def test_no_space_field_forms() -> None:
    events = one_shot(b"event:ping\nid:42\nretry:1500\ndata:x\n\n")
    assert events == [SSEEvent(data="x", event="ping", id="42", retry=1500)]


def test_only_one_space_after_the_colon_is_dropped_from_any_field() -> None:
    events = one_shot(b"event:  ping\nid:  7\ndata: x\n\nretry:  15\ndata: y\n\n")
    assert events == [
        SSEEvent(data="x", event=" ping", id=" 7"),
        SSEEvent(data="y", id=" 7"),  # " 15" is not all digits: no retry
    ]
    assert one_shot(b"event:\ndata: x\n\n") == [SSEEvent(data="x", event=None)]


def test_a_data_line_in_the_general_path_joins_like_any_other() -> None:
    # "data" without a colon is the field with an empty value (the spec's rule for any name)
    assert one_shot(b"data\ndata:a\ndata\n\n") == [SSEEvent(data="\na\n")]


def test_a_bom_after_the_very_start_is_not_dropped() -> None:
    bom = "\ufeff".encode()
    # after a first event, and after a first blank line: a BOM there is part of the field name
    assert one_shot(b"data: a\n\n" + bom + b"data: b\n\n") == [SSEEvent(data="a")]
    assert one_shot(b"\n" + bom + b"data: b\n\n") == []
    assert one_shot(b"\r\n" + bom + b"data: b\n\n") == []
    assert one_shot(b": hi\n" + bom + b"data: b\n\n") == []
    # a BOM line of its own at the very start is a blank line
    assert one_shot(bom + b"\ndata: c\n\n") == [SSEEvent(data="c")]


def test_a_stream_cut_after_a_field_without_data_is_truncated() -> None:
    for field in (b"event: ping\n", b"id: 3\n", b"retry: 10\n", b"data\n"):
        decoder = SSEDecoder()
        assert decoder.feed(b"data: a\n\n" + field) == [SSEEvent(data="a")]
        decoder.finish()
        assert decoder.truncated, field
    decoder = SSEDecoder()
    decoder.feed(b"data: a\n\nfoo: bar\n: comment\n")  # unknown fields start no event
    decoder.finish()
    assert not decoder.truncated


def test_error_messages_name_the_problem() -> None:
    with pytest.raises(SSEProtocolError) as info:
        SSEDecoder().feed(b"data: \xff\n\n")
    assert info.value.message == "the event stream is not valid UTF-8"
    with pytest.raises(SSEProtocolError) as info:
        SSEDecoder(max_line_bytes=8).feed(b"data: 123\n")  # a whole line over the limit
    assert info.value.message == "an upstream event-stream line exceeds the size limit of 8 bytes"
    with pytest.raises(SSEProtocolError) as info:
        SSEDecoder(max_line_bytes=8).feed(b"data: 123")  # an unterminated one
    assert info.value.message == "an upstream event-stream line exceeds the size limit of 8 bytes"


def test_the_decoder_reads_on_after_finish() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\ndata: cut\r") == [SSEEvent(data="a")]
    decoder.finish()
    assert decoder.truncated
    # the partial event is gone, and so is the pending CR: a line end at the first byte counts
    assert decoder.feed(b"\ndata: b\n\n") == [SSEEvent(data="b")]
    assert decoder.feed(b"\rdata: c\r\r") == [SSEEvent(data="c")]


def test_finish_forgets_a_pending_cr_even_before_the_first_line() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"\xef\xbb\xbf")  # the stream is cut inside its first line
    decoder.finish()
    # the LF is a line end of its own (a blank line), so the BOM after it is not the start
    assert decoder.feed(b"\n\xef\xbb\xbfdata: x\n\n") == []


class CountingBuffer(bytearray):
    """A bytearray that counts the bytes ``find`` looks at (up to the match, or to the end)."""

    examined = 0

    def find(self, sub: Any, start: Any = None, end: Any = None) -> int:
        found = super().find(sub, start, end)
        first = 0 if start is None else start
        CountingBuffer.examined += (found + 1 if found != -1 else len(self)) - first
        return found


def _examined(chunks: list[bytes]) -> tuple[int, list[SSEEvent]]:
    decoder = SSEDecoder()
    decoder._buf = CountingBuffer()
    CountingBuffer.examined = 0
    events = [event for chunk in chunks for event in decoder.feed(chunk)]
    return CountingBuffer.examined, events


@pytest.mark.parametrize(
    "chunks",
    [
        [b"data: " + b"ab" * 50] * 1 + [b"ab"] * 2_000 + [b"\n\n"],  # a long line in tiny feeds
        [b"data: x\n" * 2_000 + b"\n"],  # many LF lines in one feed, no CR at all
        [b"data: x\r" * 2_000 + b"\r"],  # many CR lines in one feed, no LF at all
        [b"data: x\r\n" * 1_000 + b"\r\n"],
        [bytes([byte]) for byte in b"data: x\r\ndata: y\n\r\n" * 50],
    ],
    ids=["tiny-feeds", "lf-lines", "cr-lines", "crlf-lines", "byte-at-a-time"],
)
def test_each_byte_is_searched_at_most_once_per_line_end_kind(chunks: list[bytes]) -> None:
    # A decoder that searched the buffer again on each feed or each line would be quadratic: a
    # hostile upstream could make the proxy burn CPU with a long line sent in tiny pieces.
    examined, events = _examined(chunks)
    assert events == one_shot(b"".join(chunks))
    assert examined <= 2 * sum(len(chunk) for chunk in chunks)


def test_encode_json_with_lone_surrogate_is_still_compact() -> None:
    obj = json.loads('{"t":"x\\ud800y","n":[1,2],"o":{"k":null}}')
    assert encode_json(obj) == b'data: {"t":"x\\ud800y","n":[1,2],"o":{"k":null}}\n\n'


def test_an_endless_event_is_refused_with_the_event_limit_in_the_message() -> None:
    limit = 100 * (7 + LINE_OVERHEAD)
    decoder = SSEDecoder(max_line_bytes=1024, max_event_bytes=limit)
    with pytest.raises(SSEProtocolError) as info:
        decoder.feed(b"data: x\n" * 1000)
    assert info.value.message == (
        f"an upstream event-stream event exceeds the size limit of {limit} bytes"
    )


def test_data_lines_without_a_colon_count_their_own_length() -> None:
    # "data" alone is a data line with an empty value: 4 bytes on the wire, wherever it sits in
    # the buffer.
    decoder = SSEDecoder(max_event_bytes=100 * (4 + LINE_OVERHEAD))
    assert decoder.feed(b"data\n" * 100) == []
    with pytest.raises(SSEProtocolError):
        decoder.feed(b"data\n")


def test_what_orjson_refuses_is_still_compact_utf_8() -> None:
    big = 1 << 80
    assert encode_json({"n": big, "t": "é ✓"}) == f'data: {{"n":{big},"t":"é ✓"}}\n\n'.encode()


# A read at a real pace holds one whole ``data: …\n\n`` event; the decoder takes it without the
# line scan. These pin that shortcut to what the general path gives for the same bytes.


def _one_event_per_feed(pieces: list[bytes], **limits: int) -> list[SSEEvent]:
    decoder = SSEDecoder(**limits)
    return [event for piece in pieces for event in decoder.feed(piece)]


def _general_path(pieces: list[bytes], **limits: int) -> list[SSEEvent]:
    """The same bytes one at a time: never a whole event in one feed."""
    decoder = SSEDecoder(**limits)
    return [event for byte in b"".join(pieces) for event in decoder.feed(bytes([byte]))]


@pytest.mark.parametrize(
    "pieces",
    [
        # after the first event: plain, empty data, a multi-byte character, a colon-only value
        [b"data: a\n\n", b"data: \n\n", b"data: caf\xc3\xa9\n\n", b"data: :\n\n"],
        # the id persists into events taken whole
        [b"id: 7\ndata: a\n\n", b"data: b\n\n"],
        # an event name in progress when a whole-looking chunk arrives belongs to that event
        [b"data: a\n\n", b"event: x\n", b"data: b\n\n", b"data: c\n\n"],
        # a data line in progress: the chunk's line joins it
        [b"data: a\n\n", b"data: b\n", b"data: c\n\n"],
        # a CR at the end of a read: the next read's LF belongs to it
        [b"data: a\r", b"\ndata: b\n\n", b"data: c\n\n"],
        # look-alikes that are not one whole event
        [b"data: a\n\n", b"data: b\r\n\r\n", b"data: c\n\ndata: d\n\n", b"data:e\n\n"],
        [b"data: a\n\n", b"data: b\n\n\n", b"data: c\ndata: d\n\n", b"event: e\n\n"],
        # a BOM at the very start is dropped once
        [b"\xef\xbb\xbfdata: a\n\n", b"data: \xef\xbb\xbfb\n\n"],
        # a line still open: the whole-looking chunk continues it
        [b"data: a\n\n", b"data: b", b"data: c\n\n", b"data: d\n\n"],
        # a line ended by a CR at the end of a read: the next read is the event's next line
        [b"data: a\n\n", b"data: b\r", b"data: c\n\n", b"data: d\n\n"],
    ],
)
def test_a_whole_event_per_read_decodes_as_the_general_path_does(pieces: list[bytes]) -> None:
    assert _one_event_per_feed(pieces) == _general_path(pieces)


def test_whole_events_keep_the_last_event_id_and_no_event_name() -> None:
    events = _one_event_per_feed([b"event: x\nid: 9\ndata: a\n\n", b"data: b\n\n"])
    assert events == [SSEEvent("a", event="x", id="9"), SSEEvent("b", id="9")]


def test_a_whole_event_keeps_the_line_limit() -> None:
    first = b"data: a\n\n"
    at_limit = b"data: " + b"x" * 14 + b"\n\n"  # a 20-byte line
    assert _one_event_per_feed([first, at_limit], max_line_bytes=20) == [
        SSEEvent("a"),
        SSEEvent("x" * 14),
    ]
    with pytest.raises(SSEProtocolError) as caught:
        _one_event_per_feed([first, b"data: " + b"x" * 15 + b"\n\n"], max_line_bytes=20)
    assert caught.value.code == "upstream_event_too_large"


def test_a_whole_event_keeps_the_event_limit() -> None:
    first = b"data: a\n\n"
    at_limit = b"data: " + b"x" * 14 + b"\n\n"  # counts 20 + LINE_OVERHEAD
    limit = 20 + LINE_OVERHEAD
    assert _one_event_per_feed([first, at_limit], max_event_bytes=limit)[-1] == SSEEvent("x" * 14)
    with pytest.raises(SSEProtocolError) as caught:
        _one_event_per_feed([first, b"data: " + b"x" * 15 + b"\n\n"], max_event_bytes=limit)
    assert caught.value.code == "upstream_event_too_large"
    assert str(limit) in caught.value.message


def test_a_whole_event_of_invalid_utf8_raises() -> None:
    with pytest.raises(SSEProtocolError, match=r"^the event stream is not valid UTF-8$"):
        _one_event_per_feed([b"data: a\n\n", b"data: \xff\n\n"])


def test_a_whole_event_leaves_nothing_behind() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: a\n\n")
    assert decoder.feed(b"data: b\n\n") == [SSEEvent("b")]
    assert decoder.finish() == []
    assert not decoder.truncated
