"""Decrypted chat chunks -> Responses events, in detail: every event of a stream exactly as a
client receives it (types, ids, indexes, parts, sequence numbers), the final ``response`` object,
the terminal states (completed, incomplete, failed), usage, wire framing and malformed chunks.

The broad event sequence, checked against the `openai` package's models, is in
``test_responses.py``; this file pins the edges (made to kill the mutants of ``make mutation``
on ``proxy/core/responses/events.py``).
"""

from __future__ import annotations

import json
import re
from itertools import count
from types import SimpleNamespace
from typing import Any

import pytest
from openai.types.responses import Response

from proxy.core.errors import InvalidRequestError, ProxyError, UpstreamError, UpstreamStatusError
from proxy.core.responses import ResponseBuilder, encode_event, map_usage, translate_request
from proxy.core.responses import events as events_module
from proxy.core.responses.events import new_id

NOW = 1_700_000_000


@pytest.fixture(autouse=True)
def _clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events_module, "time", SimpleNamespace(time=lambda: NOW + 0.9))


def builder(echo: dict[str, Any] | None = None, **kwargs: Any) -> ResponseBuilder:
    numbers = count()
    options: dict[str, Any] = {
        "response_id": "resp_1",
        "created_at": 1,
        "make_id": lambda prefix: f"{prefix}_{next(numbers)}",
        **kwargs,
    }
    return ResponseBuilder(model="m", echo=echo or {}, **options)


def chunk(finish_reason: str | None = None, **delta: Any) -> dict[str, Any]:
    return {"id": "c", "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


def tool(
    index: int = 0, call_id: str | None = None, name: str | None = None, arguments: Any = None
) -> dict[str, Any]:
    function: dict[str, Any] = {}
    if name is not None:
        function["name"] = name
    if arguments is not None:
        function["arguments"] = arguments
    call: dict[str, Any] = {"index": index, "function": function}
    if call_id is not None:
        call["id"] = call_id
    return chunk(tool_calls=[call])


def feed_all(b: ResponseBuilder, chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for c in chunks:
        events += b.feed(c)
    return events


def base_response(**changes: Any) -> dict[str, Any]:
    """The ``response`` object of a builder from ``builder()`` with an empty echo."""
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1,
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "metadata": {},
        "model": "m",
        "output": [],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": None,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": None,
        "truncation": "disabled",
        "usage": None,
        **changes,
    }


def ev(kind: str, sequence: int, **fields: Any) -> dict[str, Any]:
    return {"type": kind, **fields, "sequence_number": sequence}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message(item_id: str, status: str, *content: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": list(content),
    }


def reasoning(item_id: str, *content: dict[str, Any]) -> dict[str, Any]:
    return {"id": item_id, "type": "reasoning", "summary": [], "content": list(content)}


def function_call(
    item_id: str, status: str, call_id: str, name: str, arguments: str
) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "arguments": arguments,
        "call_id": call_id,
        "name": name,
    }


# -- one whole stream, event by event ------------------------------------------------------------


def test_every_event_of_a_stream_with_each_kind_of_item() -> None:
    b = builder()
    events = b.start()
    events += feed_all(
        b,
        [
            chunk(role="assistant", reasoning_content="th"),
            chunk(reasoning_content="ink"),
            chunk(content="Hi"),
            chunk(refusal="No"),
            tool(0, call_id="call_a", name="f", arguments="{"),
            tool(0, arguments="}"),
            chunk(finish_reason="tool_calls"),
            {"id": "c", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}},
        ],
    )
    events += b.complete()
    rs = reasoning("rs_0", {"type": "reasoning_text", "text": "think"})
    refusal = {"type": "refusal", "refusal": "No"}
    msg = message("msg_1", "completed", text_part("Hi"), refusal)
    fc = function_call("fc_2", "completed", "call_a", "f", "{}")
    usage = {
        "input_tokens": 3,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 4,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 7,
    }
    rs_at = {"item_id": "rs_0", "output_index": 0, "content_index": 0}
    msg_at = {"item_id": "msg_1", "output_index": 1}
    fc_at = {"item_id": "fc_2", "output_index": 2}
    expected = [
        ev("response.created", 0, response=base_response()),
        ev("response.in_progress", 1, response=base_response()),
        ev("response.output_item.added", 2, output_index=0, item=reasoning("rs_0")),
        ev("response.content_part.added", 3, **rs_at, part={"type": "reasoning_text", "text": ""}),
        ev("response.reasoning_text.delta", 4, **rs_at, delta="th"),
        ev("response.reasoning_text.delta", 5, **rs_at, delta="ink"),
        ev("response.reasoning_text.done", 6, **rs_at, text="think"),
        ev("response.content_part.done", 7, **rs_at, part=rs["content"][0]),
        ev("response.output_item.done", 8, output_index=0, item=rs),
        ev("response.output_item.added", 9, output_index=1, item=message("msg_1", "in_progress")),
        ev("response.content_part.added", 10, **msg_at, content_index=0, part=text_part("")),
        ev("response.output_text.delta", 11, **msg_at, content_index=0, delta="Hi", logprobs=[]),
        ev("response.output_text.done", 12, **msg_at, content_index=0, text="Hi", logprobs=[]),
        ev("response.content_part.done", 13, **msg_at, content_index=0, part=text_part("Hi")),
        ev(
            "response.content_part.added",
            14,
            **msg_at,
            content_index=1,
            part={"type": "refusal", "refusal": ""},
        ),
        ev("response.refusal.delta", 15, **msg_at, content_index=1, delta="No"),
        ev("response.refusal.done", 16, **msg_at, content_index=1, refusal="No"),
        ev("response.content_part.done", 17, **msg_at, content_index=1, part=refusal),
        ev("response.output_item.done", 18, output_index=1, item=msg),
        ev(
            "response.output_item.added",
            19,
            output_index=2,
            item=function_call("fc_2", "in_progress", "call_a", "f", ""),
        ),
        ev("response.function_call_arguments.delta", 20, **fc_at, delta="{"),
        ev("response.function_call_arguments.delta", 21, **fc_at, delta="}"),
        ev("response.function_call_arguments.done", 22, **fc_at, name="f", arguments="{}"),
        ev("response.output_item.done", 23, output_index=2, item=fc),
        ev(
            "response.completed",
            24,
            response=base_response(
                status="completed", output=[rs, msg, fc], usage=usage, completed_at=NOW
            ),
        ),
    ]
    assert events == expected
    assert b.finish_reason == "tool_calls"
    assert (b.status, b.usage, b.error, b.incomplete_details) == ("completed", usage, None, None)
    Response.model_validate(events[-1]["response"])


def test_a_message_can_hold_several_parts_of_one_kind_in_a_row() -> None:
    b = builder()
    events = feed_all(b, [chunk(content="a"), chunk(refusal="x"), chunk(content="b")])
    assert [(e["type"], e.get("content_index")) for e in events] == [
        ("response.output_item.added", None),
        ("response.content_part.added", 0),
        ("response.output_text.delta", 0),
        ("response.output_text.done", 0),
        ("response.content_part.done", 0),
        ("response.content_part.added", 1),
        ("response.refusal.delta", 1),
        ("response.refusal.done", 1),
        ("response.content_part.done", 1),
        ("response.content_part.added", 2),
        ("response.output_text.delta", 2),
    ]
    assert [e["sequence_number"] for e in events] == list(range(11))
    assert b.output_text() == "ab"


def test_one_delta_with_reasoning_content_and_a_tool_call() -> None:
    b = builder()
    events = b.feed(
        {
            "choices": [
                {
                    "delta": {
                        "reasoning": "r",
                        "content": [{"type": "text", "text": "t"}],
                        "tool_calls": [
                            {"index": 0, "id": "c", "function": {"name": "f", "arguments": "{}"}}
                        ],
                    },
                    "finish_reason": None,
                }
            ]
        }
    )
    assert [e["type"] for e in events] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
    ]
    assert [item["id"] for item in b.response()["output"]] == ["rs_0", "msg_1", "fc_2"]


# -- deltas ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        ({"reasoning_content": "a", "reasoning": "b"}, "a"),
        ({"reasoning_content": "", "reasoning": "b"}, "b"),
        ({"reasoning_content": None, "reasoning": "b"}, "b"),
        ({"reasoning_content": 3, "reasoning": "b"}, "b"),
        ({"reasoning": "b"}, "b"),
    ],
)
def test_reasoning_is_read_from_one_field(delta: dict[str, Any], text: str) -> None:
    b = builder()
    events = b.feed(chunk(**delta))
    assert [e["delta"] for e in events if e["type"] == "response.reasoning_text.delta"] == [text]


@pytest.mark.parametrize(
    "delta",
    [
        {},
        {"role": "assistant"},
        {"content": ""},
        {"content": None},
        {"content": 3},
        {"content": {"text": "x"}},
        {"content": [{"type": "image_url"}, "x", {"text": 3}]},
        {"refusal": ""},
        {"refusal": None},
        {"refusal": 5},
        {"reasoning": ""},
        {"reasoning_content": ""},
        {"reasoning": 7},
        {"tool_calls": None},
        {"tool_calls": []},
    ],
)
def test_empty_deltas_open_nothing(delta: dict[str, Any]) -> None:
    b = builder()
    assert b.feed(chunk(**delta)) == []
    assert b.complete() == [
        ev("response.completed", 0, response=base_response(status="completed", completed_at=NOW))
    ]


def test_content_parts_in_a_delta_are_joined() -> None:
    b = builder()
    events = b.feed(
        chunk(
            content=[{"type": "text", "text": "a"}, {"text": 1}, "z", {"type": "text", "text": "b"}]
        )
    )
    assert [e["delta"] for e in events if e["type"] == "response.output_text.delta"] == ["ab"]


@pytest.mark.parametrize(
    ("choices", "text"),
    [
        ([{"delta": {"content": "zero"}}], "zero"),
        ([{"index": 1, "delta": {"content": "one"}}, {"index": 0, "delta": {"content": "0"}}], "0"),
        ([{"index": 2, "delta": {"content": "two"}}], ""),
        ([{"index": 0}], ""),
        ([{"index": 0, "delta": None}], ""),
    ],
)
def test_only_choice_zero_is_read(choices: list[dict[str, Any]], text: str) -> None:
    b = builder()
    b.feed({"choices": choices})
    assert b.output_text() == text


def test_finish_reason_is_the_last_string_given() -> None:
    b = builder()
    b.feed(chunk(finish_reason="length"))
    b.feed({"choices": [{"index": 0, "delta": {}, "finish_reason": None}]})
    assert b.finish_reason == "length"
    b.feed({"choices": [{"index": 0, "finish_reason": "content_filter"}]})
    assert b.finish_reason == "content_filter"
    b.feed({"choices": [{"index": 1, "finish_reason": "stop"}]})
    assert b.finish_reason == "content_filter"
    b.feed({"choices": [{"index": 0, "finish_reason": 3}]})
    assert b.finish_reason == "content_filter"


def test_usage_from_any_chunk_and_the_last_one_wins() -> None:
    b = builder()
    assert b.feed({"usage": {"prompt_tokens": 1}}) == []
    assert b.usage is not None
    assert b.usage["input_tokens"] == 1
    b.feed({**chunk(content="x"), "usage": {"prompt_tokens": 2, "completion_tokens": 1}})
    assert b.usage["input_tokens"] == 2
    b.feed({"choices": None, "usage": None})
    b.feed({"choices": [], "usage": "lots"})
    assert b.usage["total_tokens"] == 3
    assert b.response()["usage"] == b.usage
    assert b.response()["usage"] is not b.usage


# -- tool calls -----------------------------------------------------------------------------------


def test_a_tool_call_waits_for_its_name_then_sends_what_it_buffered() -> None:
    b = builder()
    assert b.feed(tool(0, arguments='{"a"')) == []
    assert b.feed(tool(0, call_id="call_x", arguments=":")) == []
    events = b.feed(tool(0, name="get_weather", arguments="1"))
    assert events == [
        ev(
            "response.output_item.added",
            0,
            output_index=0,
            item=function_call("fc_0", "in_progress", "call_x", "get_weather", ""),
        ),
        ev(
            "response.function_call_arguments.delta",
            1,
            item_id="fc_0",
            output_index=0,
            delta='{"a":1',
        ),
    ]
    # Once the item is out, its id is fixed (a later one is not read).
    b.feed(tool(0, call_id="call_y", arguments="}"))
    assert b.response()["output"] == [
        function_call("fc_0", "in_progress", "call_x", "get_weather", '{"a":1}')
    ]


def test_a_tool_call_name_can_arrive_in_pieces_before_the_item_opens() -> None:
    b = builder()
    assert b.feed(tool(0, name="")) == []
    assert b.feed(tool(0, call_id="", name="")) == []
    assert b.feed(tool(0, call_id="c", name="weather")) == []  # the name may still grow
    assert b.feed(tool(0, arguments="")) == []  # an empty piece does not end it
    events = b.feed(tool(0, arguments="{"))
    assert events[0]["item"] == function_call("fc_0", "in_progress", "c", "weather", "")
    assert len(events) == 2
    b2 = builder()
    b2.feed(chunk(tool_calls=[{"index": 0, "id": "c", "function": None}]))
    b2.feed(tool(0, name="f", arguments="{}"))
    assert b2.response()["output"][0]["call_id"] == "c"


@pytest.mark.parametrize(
    "pieces",
    [
        [tool(0, call_id="call_a", name="get_"), tool(0, name="weather")],
        [tool(0, call_id="call_a", name="get"), tool(0, name="_wea"), tool(0, name="ther")],
        [tool(0, call_id="call_a", name="get"), tool(0, name=""), tool(0, name="_weather")],
    ],
)
def test_a_tool_call_name_in_pieces_is_sent_whole(pieces: list[dict[str, Any]]) -> None:
    b = builder()
    for piece in pieces:
        assert b.feed(piece) == []
    assert b.response()["output"] == []
    events = b.feed(tool(0, arguments='{"city":'))
    events += b.feed(tool(0, arguments='"Oslo"}'))
    events += b.feed(chunk(finish_reason="tool_calls"))
    events += b.complete()
    fc_at = {"item_id": "fc_0", "output_index": 0}
    fc = function_call("fc_0", "completed", "call_a", "get_weather", '{"city":"Oslo"}')
    assert events == [
        ev(
            "response.output_item.added",
            0,
            output_index=0,
            item=function_call("fc_0", "in_progress", "call_a", "get_weather", ""),
        ),
        ev("response.function_call_arguments.delta", 1, **fc_at, delta='{"city":'),
        ev("response.function_call_arguments.delta", 2, **fc_at, delta='"Oslo"}'),
        ev(
            "response.function_call_arguments.done",
            3,
            **fc_at,
            name="get_weather",
            arguments='{"city":"Oslo"}',
        ),
        ev("response.output_item.done", 4, output_index=0, item=fc),
        ev(
            "response.completed",
            5,
            response=base_response(status="completed", output=[fc], completed_at=NOW),
        ),
    ]
    Response.model_validate(events[-1]["response"])


def test_the_last_name_piece_can_come_with_the_first_arguments() -> None:
    b = builder()
    b.feed(tool(0, call_id="call_a", name="get"))
    b.feed(tool(0, name="_wea"))
    events = b.feed(tool(0, name="ther", arguments="{}"))
    assert events == [
        ev(
            "response.output_item.added",
            0,
            output_index=0,
            item=function_call("fc_0", "in_progress", "call_a", "get_weather", ""),
        ),
        ev("response.function_call_arguments.delta", 1, item_id="fc_0", output_index=0, delta="{}"),
    ]


def test_arguments_before_a_name_in_pieces_follow_the_whole_name() -> None:
    b = builder()
    assert b.feed(tool(0, arguments="{")) == []
    assert b.feed(tool(0, name="get_")) == []
    assert b.feed(tool(0, call_id="call_late", name="weather")) == []
    events = b.feed(tool(0, arguments="}"))
    assert events == [
        ev(
            "response.output_item.added",
            0,
            output_index=0,
            # An id that came before the item was sent is still the call's.
            item=function_call("fc_0", "in_progress", "call_late", "get_weather", ""),
        ),
        ev("response.function_call_arguments.delta", 1, item_id="fc_0", output_index=0, delta="{}"),
    ]


def test_a_name_in_pieces_then_the_end_of_the_stream_without_arguments() -> None:
    b = builder()
    b.feed(tool(0, call_id="call_a", name="list_"))
    b.feed(tool(0, name="files"))
    assert b.feed(chunk(finish_reason="tool_calls")) == []
    events = b.complete()
    fc = function_call("fc_0", "completed", "call_a", "list_files", "")
    assert events == [
        ev(
            "response.output_item.added",
            0,
            output_index=0,
            item=function_call("fc_0", "in_progress", "call_a", "list_files", ""),
        ),
        ev(
            "response.function_call_arguments.done",
            1,
            item_id="fc_0",
            output_index=0,
            name="list_files",
            arguments="",
        ),
        ev("response.output_item.done", 2, output_index=0, item=fc),
        ev(
            "response.completed",
            3,
            response=base_response(status="completed", output=[fc], completed_at=NOW),
        ),
    ]


def test_a_name_in_pieces_then_arguments_buffered_before_it_at_the_end() -> None:
    b = builder()
    b.feed(tool(0, call_id="a", arguments="{}"))
    b.feed(tool(0, name="f"))
    b.feed(tool(0, name="g"))
    events = b.complete()
    assert [e["type"] for e in events] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[1]["delta"] == "{}"
    assert b.response()["output"] == [function_call("fc_0", "completed", "a", "fg", "{}")]


def test_two_calls_with_names_in_pieces() -> None:
    b = builder()
    events = feed_all(
        b,
        [
            tool(0, call_id="call_a", name="get_"),
            tool(0, name="weather"),
            # Call 1 starts while call 0 still had no arguments: call 0's name is whole.
            tool(1, call_id="call_b", name="get_"),
            tool(1, name="time"),
            tool(1, arguments='{"tz":'),
            tool(1, arguments='"UTC"}'),
            tool(2, call_id="call_c", name="no"),
            tool(2, name="te", arguments="{}"),
        ],
    )
    events += b.complete()
    fc0 = function_call("fc_0", "completed", "call_a", "get_weather", "")
    fc1 = function_call("fc_1", "completed", "call_b", "get_time", '{"tz":"UTC"}')
    fc2 = function_call("fc_2", "completed", "call_c", "note", "{}")
    at0 = {"item_id": "fc_0", "output_index": 0}
    at1 = {"item_id": "fc_1", "output_index": 1}
    at2 = {"item_id": "fc_2", "output_index": 2}
    assert events == [
        ev(
            "response.output_item.added",
            0,
            output_index=0,
            item=function_call("fc_0", "in_progress", "call_a", "get_weather", ""),
        ),
        ev("response.function_call_arguments.done", 1, **at0, name="get_weather", arguments=""),
        ev("response.output_item.done", 2, output_index=0, item=fc0),
        ev(
            "response.output_item.added",
            3,
            output_index=1,
            item=function_call("fc_1", "in_progress", "call_b", "get_time", ""),
        ),
        ev("response.function_call_arguments.delta", 4, **at1, delta='{"tz":'),
        ev("response.function_call_arguments.delta", 5, **at1, delta='"UTC"}'),
        ev(
            "response.function_call_arguments.done",
            6,
            **at1,
            name="get_time",
            arguments='{"tz":"UTC"}',
        ),
        ev("response.output_item.done", 7, output_index=1, item=fc1),
        ev(
            "response.output_item.added",
            8,
            output_index=2,
            item=function_call("fc_2", "in_progress", "call_c", "note", ""),
        ),
        ev("response.function_call_arguments.delta", 9, **at2, delta="{}"),
        ev("response.function_call_arguments.done", 10, **at2, name="note", arguments="{}"),
        ev("response.output_item.done", 11, output_index=2, item=fc2),
        ev(
            "response.completed",
            12,
            response=base_response(status="completed", output=[fc0, fc1, fc2], completed_at=NOW),
        ),
    ]
    with pytest.raises(UpstreamError) as info:
        b.feed(tool(0, name="_now"))
    assert info.value.message == (
        "the upstream sent a tool call that resumed after another output item started"
    )


def test_a_delta_of_another_call_ends_the_name_being_gathered() -> None:
    b = builder()
    b.feed(tool(0, call_id="a", name="get_"))
    # Call 1 sends arguments before its name: call 0's item is sent with the name it has.
    events = b.feed(tool(1, arguments="{"))
    assert events == [
        ev(
            "response.output_item.added",
            0,
            output_index=0,
            item=function_call("fc_0", "in_progress", "a", "get_", ""),
        )
    ]
    with pytest.raises(UpstreamError) as info:
        b.feed(tool(0, name="weather"))
    assert (info.value.message, info.value.code) == (
        "the upstream sent a tool call whose name went on after its item was sent",
        "upstream_bad_chunk",
    )


@pytest.mark.parametrize(
    "late",
    [
        tool(0, name="weather"),
        tool(0, name="weather", arguments="}"),
        tool(0, call_id="a", name="f"),
    ],
)
def test_a_name_piece_after_the_arguments_started_fails_closed(late: dict[str, Any]) -> None:
    b = builder()
    b.feed(tool(0, call_id="a", name="get_", arguments="{"))
    with pytest.raises(UpstreamError) as info:
        b.feed(late)
    assert info.value.message == (
        "the upstream sent a tool call whose name went on after its item was sent"
    )
    assert info.value.code == "upstream_bad_chunk"
    assert info.value.http_status == 502
    # What the client was told stands: the item as sent, its arguments untouched.
    assert b.response()["output"] == [function_call("fc_0", "in_progress", "a", "get_", "{")]


def test_text_ends_the_name_being_gathered() -> None:
    b = builder()
    opened = b.feed(chunk(content="a"))
    # The first name piece finishes the message; the call's item waits for the whole name.
    closing = b.feed(tool(0, call_id="c", name="get_"))
    assert [e["type"] for e in closing] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert b.feed(tool(0, name="weather")) == []
    events = b.feed(chunk(content="b"))
    fc = function_call("fc_1", "completed", "c", "get_weather", "")
    assert events == [
        ev(
            "response.output_item.added",
            len(opened) + 3,
            output_index=1,
            item=function_call("fc_1", "in_progress", "c", "get_weather", ""),
        ),
        ev(
            "response.function_call_arguments.done",
            len(opened) + 4,
            item_id="fc_1",
            output_index=1,
            name="get_weather",
            arguments="",
        ),
        ev("response.output_item.done", len(opened) + 5, output_index=1, item=fc),
        ev(
            "response.output_item.added",
            len(opened) + 6,
            output_index=2,
            item=message("msg_2", "in_progress"),
        ),
        ev(
            "response.content_part.added",
            len(opened) + 7,
            item_id="msg_2",
            output_index=2,
            content_index=0,
            part=text_part(""),
        ),
        ev(
            "response.output_text.delta",
            len(opened) + 8,
            item_id="msg_2",
            output_index=2,
            content_index=0,
            delta="b",
            logprobs=[],
        ),
    ]


@pytest.mark.parametrize("after", [chunk(reasoning="r"), chunk(refusal="no")])
def test_reasoning_or_a_refusal_ends_the_name_being_gathered(after: dict[str, Any]) -> None:
    b = builder()
    b.feed(tool(0, call_id="c", name="get_"))
    b.feed(tool(0, name="weather"))
    events = b.feed(after)
    assert [e["type"] for e in events[:3]] == [
        "response.output_item.added",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ]
    assert events[0]["item"]["name"] == "get_weather"
    assert events[3]["output_index"] == 1


def test_an_empty_name_piece_is_no_call_yet() -> None:
    b = builder()
    b.feed(chunk(content="a"))
    assert b.feed(tool(0, call_id="c", name="")) == []
    # The message is still open: more text goes on in it.
    events = b.feed(chunk(content="b"))
    assert [e["type"] for e in events] == ["response.output_text.delta"]
    assert b.output_text() == "ab"


def test_failure_while_a_name_is_arriving_leaves_the_call_out() -> None:
    b = builder()
    b.feed(chunk(content="a"))
    b.feed(tool(0, call_id="c", name="get_"))
    (event,) = b.fail(UpstreamError("cut", code="upstream_stream_truncated"))
    assert event["response"]["output"] == [message("msg_0", "completed", text_part("a"))]
    assert event["response"]["status"] == "failed"


def test_a_tool_call_without_an_id_gets_one() -> None:
    b = builder()
    b.feed(chunk(tool_calls=[{"function": {"name": "f", "arguments": ""}}]))
    b.feed(chunk(tool_calls=[{"function": {"arguments": "{}"}}]))
    events = b.complete()
    assert events[0] == ev(
        "response.function_call_arguments.done",
        2,
        item_id="fc_0",
        output_index=0,
        name="f",
        arguments="{}",
    )
    assert b.response()["output"] == [function_call("fc_0", "completed", "call_1", "f", "{}")]


def test_a_second_tool_call_closes_the_first() -> None:
    b = builder()
    b.feed(tool(0, call_id="a", name="f", arguments="{}"))
    events = b.feed(tool(1, call_id="b", name="g", arguments="[]"))
    assert events == [
        ev(
            "response.function_call_arguments.done",
            2,
            item_id="fc_0",
            output_index=0,
            name="f",
            arguments="{}",
        ),
        ev(
            "response.output_item.done",
            3,
            output_index=0,
            item=function_call("fc_0", "completed", "a", "f", "{}"),
        ),
        ev(
            "response.output_item.added",
            4,
            output_index=1,
            item=function_call("fc_1", "in_progress", "b", "g", ""),
        ),
        ev("response.function_call_arguments.delta", 5, item_id="fc_1", output_index=1, delta="[]"),
    ]
    # Text after the calls is a new message item after them.
    events = b.feed(chunk(content="done"))
    assert [e["type"] for e in events[:3]] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added",
    ]
    assert events[2]["output_index"] == 2


@pytest.mark.parametrize(
    "after",
    [chunk(content="x"), chunk(refusal="x"), chunk(reasoning="x"), tool(1, call_id="b", name="g")],
)
def test_a_tool_call_that_resumes_after_another_item_fails_closed(after: dict[str, Any]) -> None:
    b = builder()
    b.feed(tool(0, call_id="a", name="f", arguments="{"))
    b.feed(after)
    for late in (tool(0, arguments="}"), tool(0)):
        with pytest.raises(UpstreamError) as info:
            b.feed(late)
        assert info.value.message == (
            "the upstream sent a tool call that resumed after another output item started"
        )
        assert info.value.code == "upstream_bad_chunk"


def test_a_tool_call_after_the_stream_closed_fails_closed() -> None:
    b = builder()
    b.feed(tool(0, call_id="a", name="f", arguments="{"))
    b.fail(UpstreamError("cut"))
    with pytest.raises(UpstreamError) as info:
        b.feed(tool(0, arguments="}"))
    assert info.value.message == (
        "the upstream sent a tool call that resumed after another output item started"
    )


def test_a_tool_call_delta_without_arguments_sends_nothing() -> None:
    b = builder()
    b.feed(tool(0, call_id="a", name="f", arguments="{"))
    assert b.feed(tool(0)) == []
    assert b.feed(tool(0, arguments="")) == []
    assert b.feed(tool(0, name="")) == []
    assert b.feed(tool(0, call_id="b", name="", arguments="")) == []
    assert b.response()["output"] == [function_call("fc_0", "in_progress", "a", "f", "{")]


# -- closing --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("finish", "status", "reason"),
    [
        (None, "completed", None),
        ("stop", "completed", None),
        ("tool_calls", "completed", None),
        ("length", "incomplete", "max_output_tokens"),
        ("content_filter", "incomplete", "content_filter"),
    ],
)
def test_the_finish_reason_decides_the_terminal_event(
    finish: str | None, status: str, reason: str | None
) -> None:
    b = builder()
    b.feed(chunk(reasoning="r"))
    b.feed(chunk(content="t", finish_reason=finish))
    events = b.complete()
    rs = reasoning("rs_0", {"type": "reasoning_text", "text": "r"})
    msg = message("msg_1", status, text_part("t"))
    done = {} if status == "incomplete" else {"completed_at": NOW}
    details = None if reason is None else {"reason": reason}
    msg_at = {"item_id": "msg_1", "output_index": 1, "content_index": 0}
    assert events == [
        ev("response.output_text.done", 9, **msg_at, text="t", logprobs=[]),
        ev("response.content_part.done", 10, **msg_at, part=text_part("t")),
        ev("response.output_item.done", 11, output_index=1, item=msg),
        ev(
            f"response.{status}",
            12,
            response=base_response(
                status=status, incomplete_details=details, output=[rs, msg], **done
            ),
        ),
    ]
    assert b.status == status
    assert b.incomplete_details == details


def test_an_incomplete_reasoning_item_has_no_status() -> None:
    b = builder()
    b.feed(chunk(reasoning="r", finish_reason="length"))
    events = b.complete()
    assert events[2]["item"] == reasoning("rs_0", {"type": "reasoning_text", "text": "r"})
    assert events[-1]["type"] == "response.incomplete"


def test_an_incomplete_function_call() -> None:
    b = builder()
    b.feed(tool(0, call_id="a", name="f", arguments="{"))
    b.feed(chunk(finish_reason="length"))
    events = b.complete()
    assert events[1]["item"] == function_call("fc_0", "incomplete", "a", "f", "{")
    assert events[2]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_complete_refuses_a_tool_call_that_never_got_a_name() -> None:
    b = builder()
    b.feed(tool(0, call_id="a", name="f", arguments="{}"))
    b.feed(tool(1, call_id="b", arguments="{}"))
    with pytest.raises(UpstreamError) as info:
        b.complete()
    assert (info.value.message, info.value.code) == (
        "the upstream sent a tool call without a name",
        "upstream_bad_chunk",
    )


# -- failure --------------------------------------------------------------------------------------


def test_failure_of_an_open_message() -> None:
    b = builder()
    b.feed(chunk(content="part"))
    events = b.fail(UpstreamError("the upstream stream ended early", code="truncated"))
    msg = message("msg_0", "incomplete", text_part("part"))
    error = {
        "code": "server_error",
        "message": "the upstream stream ended early (truncated)",
        "type": "upstream_error",
    }
    assert events == [
        ev("response.failed", 3, response=base_response(status="failed", error=error, output=[msg]))
    ]
    assert (b.status, b.error) == ("failed", error)
    Response.model_validate(events[0]["response"])


def test_failure_of_an_open_reasoning_item_and_a_closed_message() -> None:
    b = builder()
    b.feed(chunk(content="a"))
    b.feed(chunk(reasoning="r"))
    events = b.fail(ProxyError("boom"))
    response = events[0]["response"]
    assert response["output"] == [
        message("msg_0", "completed", text_part("a")),
        reasoning("rs_1", {"type": "reasoning_text", "text": "r"}),
    ]
    assert response["error"] == {"code": "server_error", "message": "boom", "type": "server_error"}
    assert "completed_at" not in response


def test_failure_of_an_open_function_call() -> None:
    b = builder()
    b.feed(tool(0, call_id="a", name="f", arguments="{"))
    response = b.fail(UpstreamError())[0]["response"]
    assert response["output"] == [function_call("fc_0", "incomplete", "a", "f", "{")]
    assert response["error"]["message"] == "the upstream request failed (upstream_error)"


def test_reading_the_response_mid_stream_loses_no_text() -> None:
    # The open part's text and a call's arguments are joined when read: reading them before
    # more arrives must keep both what was read and what comes after.
    b = builder()
    b.feed(chunk(content="a"))
    assert b.output_text() == "a"
    b.feed(chunk(content="b"))
    assert b.response()["output"][0]["content"][0]["text"] == "ab"
    b.feed(chunk(content="c"))
    b.feed(tool(0, call_id="k", name="f", arguments="{"))
    assert b.response()["output"][1]["arguments"] == "{"
    b.feed(tool(0, arguments='"x":1'))
    b.feed(tool(0, arguments="}"))
    events = b.complete()
    assert b.output_text() == "abc"
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert done[0]["arguments"] == '{"x":1}'
    assert events[-1]["response"]["output"][1]["arguments"] == '{"x":1}'


def test_a_refusal_read_mid_stream_keeps_growing() -> None:
    b = builder()
    b.feed(chunk(refusal="no"))
    assert b.response()["output"][0]["content"][0] == {"type": "refusal", "refusal": "no"}
    b.feed(chunk(refusal=", sorry"))
    (done,) = [e for e in b.complete() if e["type"] == "response.refusal.done"]
    assert done["refusal"] == "no, sorry"


def test_a_chunk_that_fails_half_way_sends_what_it_made_before_response_failed() -> None:
    # The text of the chunk opened a message before its tool_calls turned out malformed: the
    # failed response lists that message, so the client must have been sent it, in sequence.
    b = builder()
    b.start()
    with pytest.raises(UpstreamError) as info:
        b.feed({"choices": [{"index": 0, "delta": {"content": "Hi", "tool_calls": "x"}}]})
    assert info.value.message == "the upstream sent tool_calls that are not an array"
    events = b.fail(info.value)
    msg = message("msg_0", "incomplete", text_part("Hi"))
    assert [(e["type"], e["sequence_number"]) for e in events] == [
        ("response.output_item.added", 2),
        ("response.content_part.added", 3),
        ("response.output_text.delta", 4),
        ("response.failed", 5),
    ]
    assert events[2]["delta"] == "Hi"
    assert events[3]["response"]["output"] == [msg]
    assert b.fail(info.value)[0]["sequence_number"] == 6  # handed out once, not again


def test_a_failing_tool_call_after_another_call_sends_the_first_calls_item() -> None:
    # The second call's delta makes the first call's name whole and closes its item; the same
    # delta's next piece is malformed. The first call's events go out before response.failed.
    b = builder()
    b.feed(tool(0, call_id="a", name="get_"))
    bad = {"index": 1, "function": {"name": "g", "arguments": 7}}
    good = {"index": 1, "function": {"name": "g"}}
    with pytest.raises(UpstreamError):
        b.feed(chunk(tool_calls=[good, bad]))
    events = b.fail(UpstreamError("x"))
    assert [e["type"] for e in events] == [
        "response.output_item.added",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.failed",
    ]
    assert events[0]["item"]["name"] == "get_"
    # The second call's name was still arriving: left out, as fail() documents.
    assert events[3]["response"]["output"] == [function_call("fc_0", "completed", "a", "get_", "")]


def test_failure_before_any_output() -> None:
    b = builder()
    b.start()
    (event,) = b.fail(InvalidRequestError("bad", param="input[0]"))
    assert event == ev(
        "response.failed",
        2,
        response=base_response(
            status="failed",
            error={
                "code": "server_error",
                "message": "bad",
                "type": "invalid_request_error",
                "param": "input[0]",
            },
        ),
    )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            UpstreamStatusError(429, "slow down", code="rate_limited"),
            {
                "code": "rate_limit_exceeded",
                "message": "slow down (rate_limited)",
                "type": "rate_limit_error",
            },
        ),
        (
            UpstreamStatusError(503, "busy"),
            {"code": "server_error", "message": "busy (upstream_error)", "type": "server_error"},
        ),
        (
            UpstreamStatusError(400, "no such thing", param="model"),
            {
                "code": "server_error",
                "message": "no such thing (upstream_error)",
                "type": "invalid_request_error",
                "param": "model",
            },
        ),
        (
            ProxyError("boom", code="internal"),
            {"code": "server_error", "message": "boom (internal)", "type": "server_error"},
        ),
        (
            UpstreamError(),
            {
                "code": "server_error",
                "message": "the upstream request failed (upstream_error)",
                "type": "upstream_error",
            },
        ),
    ],
)
def test_a_failure_reports_the_type_of_the_chat_error_body(
    error: ProxyError, expected: dict[str, str]
) -> None:
    (event,) = builder().fail(error)
    assert event["response"]["error"] == expected
    # The Responses "type" is the chat error body's; "code" is from the Responses vocabulary.
    assert event["response"]["error"]["type"] == error.to_body()["error"]["type"]
    Response.model_validate(event["response"])


# -- the response object --------------------------------------------------------------------------


def test_the_response_reports_the_echo() -> None:
    echo = {
        "instructions": "i",
        "max_output_tokens": 9,
        "metadata": {"k": "v"},
        "parallel_tool_calls": False,
        "reasoning": {"effort": "low", "summary": None},
        "temperature": 0.5,
        "text": {"format": {"type": "json_object"}},
        "tool_choice": {"type": "function", "name": "f"},
        "tools": [{"type": "function", "name": "f"}],
        "top_p": 0.1,
        "store": True,  # never reported: this proxy stores nothing
        "background": True,
        "truncation": "auto",
        "previous_response_id": "resp_0",
    }
    b = builder(echo)
    expected = base_response(
        instructions="i",
        max_output_tokens=9,
        metadata={"k": "v"},
        parallel_tool_calls=False,
        reasoning={"effort": "low", "summary": None},
        temperature=0.5,
        text={"format": {"type": "json_object"}},
        tool_choice={"type": "function", "name": "f"},
        tools=[{"type": "function", "name": "f"}],
        top_p=0.1,
    )
    response = b.response()
    assert response == expected
    # Deep copies: what a caller does with the object does not reach the builder.
    response["metadata"]["k"] = "changed"
    response["tools"][0]["name"] = "changed"
    response["text"]["format"]["type"] = "changed"
    response["reasoning"]["effort"] = "changed"
    response["tool_choice"]["name"] = "changed"
    assert b.response() == expected
    echo["instructions"] = "changed later"
    assert b.response()["instructions"] == "i"


def test_the_response_is_a_deep_copy_of_the_state() -> None:
    b = builder()
    b.feed(chunk(content="a"))
    b.feed({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}})
    first = b.response()
    first["output"][0]["content"][0]["text"] = "changed"
    first["usage"]["input_tokens_details"]["cached_tokens"] = 99
    second = b.response()
    assert second["output"][0]["content"][0]["text"] == "a"
    assert second["usage"]["input_tokens_details"]["cached_tokens"] == 0
    events = b.fail(UpstreamError("x"))
    events[0]["response"]["error"]["code"] = "changed"
    assert b.response()["error"]["code"] == "server_error"
    c = builder()
    c.feed(chunk(content="a", finish_reason="length"))
    c.complete()
    c.response()["incomplete_details"]["reason"] = "changed"
    assert c.response()["incomplete_details"] == {"reason": "max_output_tokens"}


def test_events_carry_snapshots_not_the_live_items() -> None:
    b = builder()
    added = b.feed(chunk(content="a"))
    b.feed(chunk(content="b"))
    assert added[0]["item"]["content"] == []
    assert added[1]["part"]["text"] == ""
    added[1]["part"]["text"] = "changed"
    added[0]["item"]["content"].append("junk")
    events = b.complete()
    assert events[1]["part"] == text_part("ab")
    assert events[2]["item"]["content"] == [text_part("ab")]
    tools = builder()
    opened = tools.feed(tool(0, call_id="a", name="f", arguments="{}"))
    assert opened[0]["item"]["arguments"] == ""
    opened[0]["item"]["name"] = "changed"
    closing = tools.complete()
    assert closing[1]["item"]["name"] == "f"
    closing[1]["item"]["name"] = "changed again"
    assert tools.response()["output"][0]["name"] == "f"


def test_output_text_is_the_text_of_the_messages_only() -> None:
    b = builder()
    feed_all(
        b,
        [
            chunk(reasoning="thinking"),
            chunk(content="one "),
            chunk(refusal="not this"),
            chunk(content="two"),
            tool(0, call_id="a", name="f", arguments="{}"),
            chunk(content=" three"),
        ],
    )
    b.complete()
    assert b.output_text() == "one two three"
    whole = b.response(with_output_text=True)
    assert whole["output_text"] == "one two three"
    assert "output_text" not in b.response()
    assert builder().response(with_output_text=True)["output_text"] == ""


def test_ids_and_creation_time_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    b = ResponseBuilder(model="m", echo={})
    assert re.fullmatch(r"resp_[0-9a-f]{48}", b.id)
    assert b.created_at == NOW
    b.feed(chunk(content="x"))
    b.feed(tool(0, name="f", arguments="{}"))
    message_item, call_item = b.response()["output"]
    assert re.fullmatch(r"msg_[0-9a-f]{48}", message_item["id"])
    assert re.fullmatch(r"fc_[0-9a-f]{48}", call_item["id"])
    assert re.fullmatch(r"call_[0-9a-f]{48}", call_item["call_id"])
    assert ResponseBuilder(model="m", echo={}, created_at=0).created_at == 0
    made: list[str] = []

    def make_id(prefix: str) -> str:
        made.append(prefix)
        return f"{prefix}_x"

    assert ResponseBuilder(model="m", echo={}, make_id=make_id).id == "resp_x"
    assert ResponseBuilder(model="m", echo={}, response_id="resp_given", make_id=make_id).id == (
        "resp_given"
    )
    assert made == ["resp"]


def test_new_id() -> None:
    first, second = new_id("msg"), new_id("msg")
    assert re.fullmatch(r"msg_[0-9a-f]{48}", first)
    assert first != second


# -- usage ----------------------------------------------------------------------------------------


def test_map_usage_reads_every_count() -> None:
    assert map_usage(
        {
            "prompt_tokens": 10,
            "completion_tokens": 20,
            "total_tokens": 31,
            "prompt_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 5},
            "completion_tokens_details": {"reasoning_tokens": 6},
        }
    ) == {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 5},
        "output_tokens": 20,
        "output_tokens_details": {"reasoning_tokens": 6},
        "total_tokens": 31,
    }


@pytest.mark.parametrize("bad", [None, True, "3", 1.5, [3]])
def test_map_usage_counts_only_integers(bad: Any) -> None:
    assert map_usage(
        {
            "prompt_tokens": bad,
            "completion_tokens": 2,
            "total_tokens": bad,
            "prompt_tokens_details": {"cached_tokens": bad, "cache_write_tokens": bad},
            "completion_tokens_details": {"reasoning_tokens": bad},
        }
    ) == {
        "input_tokens": 0,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 2,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 2,
    }


def test_map_usage_details_that_are_not_objects() -> None:
    usage = map_usage(
        {
            "prompt_tokens": 1,
            "total_tokens": 0,
            "prompt_tokens_details": [4],
            "completion_tokens_details": 6,
        }
    )
    assert usage == {
        "input_tokens": 1,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 0,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 1,
    }
    assert map_usage({})["total_tokens"] == 0


# -- framing --------------------------------------------------------------------------------------


def test_encode_event_frames_compact_utf8_json() -> None:
    event = {"type": "response.output_text.delta", "delta": 'ø \u2028 "q"', "sequence_number": 3}
    assert encode_event(event) == (
        b"event: response.output_text.delta\n"
        b'data: {"type":"response.output_text.delta","delta":"'
        + 'ø \u2028 \\"q\\"'.encode()
        + b'","sequence_number":3}\n\n'
    )


def test_encode_event_escapes_what_utf8_cannot_carry() -> None:
    event = {"type": "response.output_text.delta", "delta": "a\ud800ø"}
    framed = encode_event(event)
    assert framed == (
        b"event: response.output_text.delta\n"
        b'data: {"type":"response.output_text.delta","delta":"a\\ud800\\u00f8"}\n\n'
    )
    assert json.loads(framed.split(b"data: ", 1)[1]) == event


# -- malformed chunks -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "what"),
    [
        ({"choices": "nope"}, "a chunk whose choices is not an array"),
        ({"choices": {"index": 0}}, "a chunk whose choices is not an array"),
        ({"choices": ["x"]}, "a choice that is not an object"),
        ({"choices": [{"index": 0, "delta": "text"}]}, "a delta that is not an object"),
        ({"choices": [{"index": 0, "delta": []}]}, "a delta that is not an object"),
        (chunk(tool_calls={"index": 0}), "tool_calls that are not an array"),
        (chunk(tool_calls="f"), "tool_calls that are not an array"),
        (chunk(tool_calls=["f"]), "a tool call that is not an object"),
        (chunk(tool_calls=[{"index": "0"}]), "a tool call without an integer index"),
        (chunk(tool_calls=[{"index": None}]), "a tool call without an integer index"),
        (chunk(tool_calls=[{"index": True}]), "a tool call without an integer index"),
        (chunk(tool_calls=[{"function": "f"}]), "a tool call whose function is not an object"),
        (
            chunk(tool_calls=[{"function": {"name": "f", "arguments": {}}}]),
            "tool call arguments that are not a string",
        ),
        (
            chunk(tool_calls=[{"function": {"name": "f", "arguments": 1}}]),
            "tool call arguments that are not a string",
        ),
    ],
)
def test_malformed_chunks_are_upstream_errors(given: dict[str, Any], what: str) -> None:
    with pytest.raises(UpstreamError) as info:
        builder().feed(given)
    assert info.value.message == f"the upstream sent {what}"
    assert info.value.code == "upstream_bad_chunk"
    assert info.value.http_status == 502


def test_a_choice_at_another_index_is_not_inspected() -> None:
    assert builder().feed({"choices": [{"index": 1, "delta": "not an object"}]}) == []


# -- what the deltas add up to --------------------------------------------------------------------


def deltas_and_done(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Per content part: the deltas joined, and the text its ``.done`` event reports."""
    joined: dict[tuple[str, int], str] = {}
    pairs: list[tuple[str, str]] = []
    for e in events:
        key = (e.get("item_id", ""), e.get("content_index", -1))
        if e["type"].endswith(".delta"):
            joined[key] = joined.get(key, "") + e["delta"]
        elif e["type"] in ("response.output_text.done", "response.reasoning_text.done"):
            pairs.append((joined.pop(key), e["text"]))
        elif e["type"] == "response.refusal.done":
            pairs.append((joined.pop(key), e["refusal"]))
        elif e["type"] == "response.function_call_arguments.done":
            pairs.append((joined.pop(key), e["arguments"]))
    assert not joined
    return pairs


def test_content_and_a_refusal_in_one_delta_are_both_sent() -> None:
    b = builder()
    events = b.feed(chunk(content="I ", refusal="can't"))
    events += b.feed(chunk(refusal=" say"))
    events += b.complete()
    assert deltas_and_done(events) == [("I ", "I "), ("can't say", "can't say")]
    assert b.response()["output"] == [
        message("msg_0", "completed", text_part("I "), {"type": "refusal", "refusal": "can't say"})
    ]


def test_two_entries_for_choice_zero_in_one_chunk_are_both_sent() -> None:
    b = builder()
    events = b.feed(
        {
            "choices": [
                {"index": 0, "delta": {"content": "a"}},
                {"index": 0, "delta": {"content": "b"}},
            ]
        }
    )
    events += b.complete()
    assert deltas_and_done(events) == [("ab", "ab")]


def test_a_tool_call_delta_without_an_index_continues_call_zero() -> None:
    b = builder()
    b.feed(tool(0, call_id="a", name="f", arguments="{"))
    events = b.feed(chunk(tool_calls=[{"function": {"arguments": "}"}}]))
    events += b.complete()
    assert deltas_and_done(events) == [("}", "{}")]
    assert b.response()["output"] == [function_call("fc_0", "completed", "a", "f", "{}")]


@pytest.mark.parametrize(
    "late",
    [
        chunk(tool_calls=[{"index": 0, "function": "not an object"}]),
        chunk(tool_calls=[{"index": 0, "function": {"arguments": 1}}]),
    ],
)
def test_a_resumed_tool_call_is_reported_as_resumed_first(late: dict[str, Any]) -> None:
    b = builder()
    b.feed(tool(0, call_id="a", name="f", arguments="{"))
    b.feed(chunk(content="x"))
    with pytest.raises(UpstreamError) as info:
        b.feed(late)
    assert info.value.message == (
        "the upstream sent a tool call that resumed after another output item started"
    )


def test_complete_leaves_no_item_open() -> None:
    b = builder()
    b.feed(chunk(content="a"))
    b.complete()
    (failed,) = b.fail(UpstreamError("late"))
    assert failed["response"]["output"] == [message("msg_0", "completed", text_part("a"))]


def test_part_and_item_events_are_deep_snapshots() -> None:
    b = builder()
    added = b.feed(chunk(content="a"))
    added[1]["part"]["annotations"].append({"type": "url_citation"})
    closing = b.complete()
    closing[1]["part"]["logprobs"].append({"token": "x"})
    closing[2]["item"]["content"].append({"type": "refusal", "refusal": "x"})
    closing[2]["item"]["content"][0]["annotations"].append({"type": "url_citation"})
    assert b.response()["output"] == [message("msg_0", "completed", text_part("a"))]


def test_nested_echo_values_are_copied_into_each_response() -> None:
    echo = translate_request(
        {
            "model": "m",
            "input": "x",
            "tools": [{"type": "function", "name": "f"}],
            "tool_choice": {"type": "allowed_tools", "tools": [{"type": "function", "name": "f"}]},
            "reasoning": {"effort": "low", "summary": "auto", "context": {"keep": True}},
        }
    ).echo
    b = builder(echo)
    first = b.response()
    first["tool_choice"]["tools"].append({"type": "function", "name": "g"})
    first["reasoning"]["context"]["keep"] = False
    first["tools"][0]["name"] = "changed"
    second = b.response()
    assert second["tool_choice"] == {
        "type": "allowed_tools",
        "tools": [{"type": "function", "name": "f"}],
    }
    assert second["reasoning"] == {"effort": "low", "summary": "auto", "context": {"keep": True}}
    assert second["tools"][0]["name"] == "f"
