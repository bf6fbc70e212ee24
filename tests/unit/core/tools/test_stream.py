"""The incremental scanner: what is relayed at once, what is held back, and for how long."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from proxy.core.tools.formats import ParsedCall
from proxy.core.tools.parser import ParsedOutput, collect, parse_output
from proxy.core.tools.stream import (
    Event,
    MalformedCall,
    TextDelta,
    ToolCallFound,
    ToolCallScanner,
)


def _texts(events: Sequence[object]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def test_text_before_a_call_streams_immediately() -> None:
    scanner = ToolCallScanner(known={"get_weather"})
    assert _texts(scanner.feed("Let me check")) == "Let me check"
    assert _texts(scanner.feed(" the weather. ")) == " the weather."  # trailing space held
    assert scanner.feed("<tool") == []  # a possible opening is held
    assert scanner.feed('_call>{"name": "get_weather", "arguments": {"city": "Paris"}}') == []
    events = scanner.feed("</tool_call>")
    assert events == [ToolCallFound(0, "get_weather", {"city": "Paris"})]
    assert scanner.finish() == []  # the held space is dropped: the answer held a call


def test_a_pure_call_shows_no_content() -> None:
    scanner = ToolCallScanner()
    events = scanner.feed('\n\n<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>\n')
    assert [e for e in [*events, *scanner.finish()] if isinstance(e, TextDelta)] == []


def test_plain_text_passes_unchanged_including_trailing_whitespace() -> None:
    text = "A {brace}, a [link](x), <b>html</b>, `code` and\n```python\nx = {'a': 1}\n```\n\n"
    scanner = ToolCallScanner(known={"f"})
    events = [*scanner.feed(text), *scanner.finish()]
    assert _texts(events) == text
    assert not [e for e in events if not isinstance(e, TextDelta)]


def test_holdback_is_short_for_text_that_cannot_be_a_call() -> None:
    scanner = ToolCallScanner(known={"f"})
    assert _texts(scanner.feed('{"city": "Paris"} is JSON')) == '{"city": "Paris"} is JSON'
    assert _texts(scanner.feed("<b>")) == "<b>"
    assert _texts(scanner.feed("```python\n")) == ""  # the body could still be call JSON
    assert _texts(scanner.feed("x = 1")) == "```python\nx = 1"
    assert _texts(scanner.feed(" [x]")) == " [x]"


def test_json_with_a_call_key_is_held_until_it_closes_then_released_as_text() -> None:
    scanner = ToolCallScanner(known={"get_weather"})
    assert scanner.feed('Here: {"name": "Ada", "age": 36') == [TextDelta("Here:")]
    events = scanner.feed("} and more")
    assert _texts(events) == ' {"name": "Ada", "age": 36} and more'


def test_unclosed_json_in_text_is_released_at_the_end() -> None:
    scanner = ToolCallScanner(known={"f"})
    assert _texts(scanner.feed('x {"name": "y", ')) == "x"
    assert _texts(scanner.finish()) == ' {"name": "y", '


def test_untagged_json_naming_an_unknown_tool_is_text() -> None:
    text = '{"name": "other", "arguments": {}}'
    assert parse_output(text, known={"mine"}).content == text
    assert parse_output(text, known=None).calls[0].name == "other"


def test_tool_calls_wrapper_is_a_call_whatever_the_name() -> None:
    parsed = parse_output('{"tool_calls": [{"name": "x", "arguments": {"a": 1}}]}', known={"y"})
    assert [(c.name, c.arguments) for c in parsed.calls] == [("x", {"a": 1})]


def test_openai_shaped_calls_are_read() -> None:
    text = (
        '{"tool_calls": [{"id": "c1", "type": "function", '
        '"function": {"name": "f", "arguments": "{\\"a\\": 2}"}}]}'
    )
    parsed = parse_output(text, known={"f"})
    assert [(c.name, c.arguments) for c in parsed.calls] == [("f", {"a": 2})]


def test_malformed_tagged_call_is_never_text() -> None:
    scanner = ToolCallScanner()
    events = [
        *scanner.feed('Sure. <tool_call>{"name": "f", "arguments": {oops}}</tool_call>'),
        *scanner.finish(),
    ]
    assert _texts(events) == "Sure."
    assert len([e for e in events if isinstance(e, MalformedCall)]) == 1


def test_broken_untagged_json_naming_a_tool_is_malformed() -> None:
    parsed = parse_output('{"name": "f", "arguments": {"a": }', known={"f"})
    assert parsed.malformed
    assert not parsed.calls
    assert parsed.content == ""


def test_text_between_and_after_calls() -> None:
    parsed = parse_output(
        'First.\n<tool_call>{"name": "f", "arguments": {}}</tool_call>\n'
        'Then.\n<tool_call>{"name": "g", "arguments": {}}</tool_call>\n; \n'
    )
    assert [c.name for c in parsed.calls] == ["f", "g"]
    assert parsed.content == "First. Then."


def test_new_tool_call_before_the_previous_closed() -> None:
    parsed = parse_output(
        '<tool_call>{"name": "f", "arguments": {}}\n<tool_call>{"name": "g", "arguments": {}}'
    )
    assert [c.name for c in parsed.calls] == ["f", "g"]


def test_stray_markers_are_dropped() -> None:
    assert parse_output("Done.</tool_call>").content == "Done."
    assert parse_output("[TOOL_CALLS]").content == ""


def test_deep_json_is_bounded() -> None:
    text = '{"name": "f", "arguments": ' + "[" * 200 + "]" * 200 + "}"
    parsed = parse_output(text, known={"f"})
    assert not parsed.calls  # too deep to be a call; reported, not crashed
    assert parsed.malformed


def _nested(depth: int) -> str:
    """A call whose JSON is ``depth`` levels deep, a string at the bottom."""
    lists = depth - 2
    return '{"name": "f", "arguments": {"a": ' + "[" * lists + '"s"' + "]" * lists + "}}"


def test_a_call_too_deep_to_read_shows_none_of_its_text() -> None:
    deepest = parse_output(f"Hi {_nested(64)} ok", known={"f"})
    assert (deepest.content, len(deepest.calls), deepest.malformed) == ("Hi ok", 1, ())
    for depth in (65, 2000):
        for pieces in ([f"Hi {_nested(depth)} ok"], ["Hi ", *_nested(depth), " ok"]):
            scanner = ToolCallScanner(known={"f"})
            parsed = collect(
                [e for piece in pieces for e in scanner.feed(piece)] + scanner.finish()
            )
            assert parsed == ParsedOutput(
                "Hi ok", (), ("the JSON is nested deeper than 64 levels",)
            )
    deep_text = '{"type": ' + "[" * 70 + "]" * 70 + "} ok"  # deep JSON that is no call: text
    assert parse_output(deep_text, known={"f"}).content == deep_text


def test_numbers_are_sequential_and_feed_after_finish_fails() -> None:
    scanner = ToolCallScanner()
    events = scanner.feed(
        '<tool_call>{"name": "a", "arguments": {}}</tool_call>'
        '<tool_call>{"name": "b", "arguments": {}}</tool_call>'
    )
    assert [e.index for e in events if isinstance(e, ToolCallFound)] == [0, 1]
    assert scanner.calls_found == 2
    scanner.finish()
    assert scanner.finish() == []
    try:
        scanner.feed("x")
    except RuntimeError:
        pass
    else:  # pragma: no cover
        raise AssertionError("feed after finish must fail")


def test_collect_merges_events() -> None:
    parsed = collect([TextDelta("a"), ToolCallFound(0, "f", {}), MalformedCall("r")])
    assert parsed.content == "a"
    assert parsed.malformed == ("r",)


def test_the_tool_schemas_type_xml_and_glm_values() -> None:
    xml = "<tool_call>\n<function=f>\n<parameter=code>\n42\n</parameter>\n</function>\n</tool_call>"
    glm = "<tool_call>f\n<arg_key>code</arg_key>\n<arg_value>42</arg_value>\n</tool_call>"
    schemas: dict[str, Any] = {"f": {"properties": {"code": {"type": "string"}}}}
    for text in (xml, glm):
        assert parse_output(text, schemas=schemas).calls[0].arguments == {"code": "42"}
        assert parse_output(text).calls[0].arguments == {"code": 42}


def test_every_convention_is_read_whatever_the_chunking() -> None:
    from proxy.core.tools.conventions import CONVENTIONS

    calls: list[tuple[str, Any]] = [("get_weather", {"city": "Paris", "days": 2}), ("get_time", {})]
    schemas: dict[str, Any] = {"get_weather": {"properties": {"city": {"type": "string"}}}}
    for convention in CONVENTIONS.values():
        text = "I will check.\n" + convention.render_calls(calls) + "\n"
        for cut in range(len(text) + 1):
            scanner = ToolCallScanner(known={"get_weather", "get_time"}, schemas=schemas)
            parsed = collect(
                [*scanner.feed(text[:cut]), *scanner.feed(text[cut:]), *scanner.finish()]
            )
            assert parsed.content == "I will check.", (convention.name, cut)
            assert [(c.name, c.arguments) for c in parsed.calls] == calls, (convention.name, cut)
            assert not parsed.malformed


def _events_per_feed(*pieces: str) -> list[list[Event]]:
    scanner = ToolCallScanner(known={"f"})
    return [*(scanner.feed(piece) for piece in pieces), scanner.finish()]


def test_trailing_whitespace_is_held_until_text_follows() -> None:
    assert _events_per_feed("Hi  ", "there", "\n") == [
        [TextDelta("Hi")],
        [TextDelta("  there")],
        [],
        [TextDelta("\n")],
    ]
    assert _events_per_feed("  \n") == [[], [TextDelta("  \n")]]
    broken = _events_per_feed('Hi <tool_call>{"name": "f", "arguments": {')
    assert broken[0] == [TextDelta("Hi")]
    assert [type(e) for e in broken[1]] == [MalformedCall]  # the held space went with the call


def test_separators_after_a_call_are_dropped() -> None:
    call = '<tool_call>{"name": "f", "arguments": {}}</tool_call>'
    assert _events_per_feed(call + "; Then") == [
        [ToolCallFound(0, "f", {}), TextDelta("Then")],
        [],
    ]
    assert _events_per_feed("Before.\n" + call + "\n;After") == [
        [TextDelta("Before."), ToolCallFound(0, "f", {}), TextDelta(" After")],
        [],
    ]


def test_what_is_held_while_it_could_still_open_a_call() -> None:
    assert _events_per_feed("`", "`", "x") == [[], [], [TextDelta("``x")], []]
    assert _events_per_feed("```" + "a" * 16 + "\n") == [[], [TextDelta("```" + "a" * 16 + "\n")]]
    assert _events_per_feed("```" + "a" * 17 + "\n")[0] == [TextDelta("```" + "a" * 17)]
    assert _events_per_feed("{", '"tool_c', "x") == [[], [], [TextDelta('{"tool_cx')], []]
    assert _events_per_feed('{"', "a" * 11) == [[], [TextDelta('{"' + "a" * 11)], []]
    assert _events_per_feed('{"parameters', '": 1}')[0] == []
    assert _events_per_feed("[", " ", "1]") == [[], [], [TextDelta("[ 1]")], []]
    assert _events_per_feed("<", "b>") == [[], [TextDelta("<b>")], []]
    assert _events_per_feed("[TOOL", "S]") == [[], [TextDelta("[TOOLS]")], []]


def test_call_openings_in_pieces() -> None:
    found = [ToolCallFound(0, "f", {})]
    assert _events_per_feed('{ \n "name": "f", "arguments": {}}') == [found, []]
    assert _events_per_feed('[ \n {"name": "f", "arguments": {}}]') == [found, []]
    assert _events_per_feed('{"function', '": {"name": "f"}}') == [[], found, []]
    assert _events_per_feed('<|python_tag|>{"name": "f", "parameters": {}}') == [found, []]
    assert _events_per_feed("[TOOL", "_CALLS]", '[{"name": "f", "arguments": {}}]') == [
        [],
        [],
        found,
        [],
    ]


def test_brackets_and_quotes_inside_strings_do_not_close_a_call() -> None:
    text = '{"name": "f", "arguments": {"q": "a } \\" ] b", "r": "\\\\"}} done'
    for pieces in ([text], list(text)):
        scanner = ToolCallScanner(known={"f"})
        parsed = collect([e for piece in pieces for e in scanner.feed(piece)] + scanner.finish())
        assert parsed == ParsedOutput("done", (ParsedCall("f", {"q": 'a } " ] b', "r": "\\"}),), ())


def test_json_that_cannot_be_a_call_is_released_before_it_closes() -> None:
    assert _events_per_feed('{"city": "Pa')[0] == [TextDelta('{"city": "Pa')]
    assert _events_per_feed('[""name')[0] == [TextDelta('[""name')]


def test_fenced_calls() -> None:
    call = '{"name": "f", "arguments": {}}'
    found = (ParsedCall("f", {}),)
    assert parse_output(f"```{call}```", known={"f"}) == ParsedOutput("", found, ())
    gemma = f"```tool_code\n{call}\n```"  # Gemma's habit
    assert parse_output(gemma, known={"f"}) == ParsedOutput("", found, ())
    # A fence whose tag is no language tag ("#" is none of its characters) is text; a call
    # inside it is still read.
    assert parse_output(f"```c#\n{call}\n```", known={"f"}) == ParsedOutput("```c# ```", found, ())


# Language tags as Markdown info strings write them: letters, digits and "_+.-", 16 at most.
_TAGS = ["json5", "py3", "JSON", "tool_code", "c++", "objective-c", "vb.net", "a1_b2+c3.d4-e5f6"]


@pytest.mark.parametrize("tag", _TAGS)
def test_a_call_fenced_with_any_language_tag_is_read(tag: str) -> None:
    call = '{"name": "f", "arguments": {"a": 1}}'
    text = f"Calling.\n```{tag}\n{call}\n```\nDone."
    expected = [TextDelta("Calling."), ToolCallFound(0, "f", {"a": 1}), TextDelta(" Done.")]
    for events in _every_chunking(text, {"f"}):
        assert events == expected
    found = (ParsedCall("f", {"a": 1}),)
    assert parse_output(text, known={"f"}) == ParsedOutput("Calling. Done.", found, ())
    assert parse_output(f"```{tag} {call}```", known={"f"}) == ParsedOutput("", found, ())
    tagged = f"<tool_call>\n```{tag}\n{call}\n```\n</tool_call>"
    assert parse_output(tagged, known={"f"}) == ParsedOutput("", found, ())
    # Fenced JSON that is no call stays text, unchanged; broken call JSON is re-asked.
    other = f'```{tag}\n{{"name": "Ada", "bio": "x"}}\n```'
    for events in _every_chunking(other, {"f"}):
        assert events == [TextDelta(other)]
    broken = f'```{tag}\n{{"name": "f", "arguments": {{"a": 1}}\n```\nDone.'
    for events in _every_chunking(broken, {"f"}):
        assert [type(e) for e in events] == [MalformedCall, TextDelta]


@pytest.mark.parametrize("tag", ["c#", "json!", "json5:x", "a" * 17, "json5-tool-call-x"])
def test_a_fence_whose_tag_is_no_language_name_stays_text(tag: str) -> None:
    # Not a call fence: the fence is text. A call written inside it is still read, as JSON in
    # the text is; with a name that is no tool, all of it is text.
    text = f"```{tag}\n{_CALL}\n```"
    for events in _every_chunking(text, {"f"}):
        assert events == [TextDelta(f"```{tag}"), ToolCallFound(0, "f", {}), TextDelta(" ```")]
    assert parse_output(text, known={"f"}) == ParsedOutput(
        f"```{tag} ```", (ParsedCall("f", {}),), ()
    )
    for events in _every_chunking(text, {"g"}):
        assert events == [TextDelta(text)]


def test_the_scanner_and_the_block_reader_agree_on_what_is_no_tag() -> None:
    # A letter outside ASCII: no tag for either (the scanner used to hold such a fence as a
    # call that was then never read, and showed the call inside it as text).
    text = f"```jsön\n{_CALL}\n```"
    for events in _every_chunking(text, {"f"}):
        assert events == [TextDelta("```jsön"), ToolCallFound(0, "f", {}), TextDelta(" ```")]
    # Inside <tool_call> such a fence, or one with a tag longer than 16, is no fence either:
    # the call cannot be read and is re-asked.
    for tag in ("jsön", "c#", "a" * 17):
        tagged = f"<tool_call>```{tag}\n{_CALL}\n```</tool_call>"
        reason = "the tool call is not valid JSON (Expecting value: line 1 column 1 (char 0))"
        assert parse_output(tagged, known={"f"}) == ParsedOutput("", (), (reason,))


_NAMES = {"f", "g", "a", "b", "c"}
_CALL = '{"name": "f", "arguments": {}}'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '<tool_call>{"name": "a"}\n<tool_call>{"name": "b"}\n<tool_call>{"name": "c"}',
            ParsedOutput("", (ParsedCall("a", {}), ParsedCall("b", {}), ParsedCall("c", {})), ()),
        ),
        (
            "A <function=f><parameter=x>1</parameter></function> B <function=g></function> C",
            ParsedOutput("A B C", (ParsedCall("f", {"x": 1}), ParsedCall("g", {})), ()),
        ),
        (f"```json\n{_CALL}\n```Done.", ParsedOutput("Done.", (ParsedCall("f", {}),), ())),
        (f"```{_CALL}``` Done {{x}}.", ParsedOutput("Done {x}.", (ParsedCall("f", {}),), ())),
        (
            f"```json\n{_CALL}\n```\n```json\n{_CALL}\n```",
            ParsedOutput("", (ParsedCall("f", {}), ParsedCall("f", {})), ()),
        ),
        (
            '{"name": "f", "arguments": X} done',
            ParsedOutput(
                " done",
                (),
                ("the tool call is not valid JSON (Expecting value: line 1 column 28 (char 27))",),
            ),
        ),
        (
            '{"name": "f", "arguments": {"a": X}} done',
            ParsedOutput(
                " done",
                (),
                ("the tool call is not valid JSON (Expecting value: line 1 column 34 (char 33))",),
            ),
        ),
        (f"```\nX{_CALL}\n```", ParsedOutput("```\nX ```", (ParsedCall("f", {}),), ())),
        (
            "<function= ></function> ok",
            ParsedOutput(" ok", (), ("a <function=...> tag has no function name",)),
        ),
        (
            'Hi <tool_call>{"name": }</tool_call> ok',
            ParsedOutput(
                "Hi ok",
                (),
                ("the tool call is not valid JSON (Expecting value: line 1 column 10 (char 9))",),
            ),
        ),
    ],
)
def test_where_each_block_ends(text: str, expected: ParsedOutput) -> None:
    assert parse_output(text, known=_NAMES) == expected
    scanner = ToolCallScanner(known=_NAMES)
    assert collect([e for char in text for e in scanner.feed(char)] + scanner.finish()) == expected


def test_a_bare_function_block_is_a_call_as_soon_as_it_closes() -> None:
    scanner = ToolCallScanner(known={"f"})
    assert scanner.feed("<function=f><parameter=x>1</parameter></function> Do") == [
        ToolCallFound(0, "f", {"x": 1}),
        TextDelta("Do"),
    ]


def test_only_ascii_whitespace_is_held_back() -> None:
    # A no-break space ends the text: it is shown even when a call follows.
    call = '<tool_call>{"name": "f", "arguments": {}}</tool_call>'
    assert parse_output("Hi\u00a0" + call).content == "Hi\u00a0"


def _every_chunking(text: str, known: set[str]) -> list[list[Event]]:
    """The events of ``text`` fed whole, cut in two at every point, and char by char; the text
    deltas next to each other merged."""
    chunkings = [[text], *([text[:cut], text[cut:]] for cut in range(1, len(text))), list(text)]
    results: list[list[Event]] = []
    for pieces in chunkings:
        scanner = ToolCallScanner(known=known)
        merged: list[Event] = []
        for event in [e for piece in pieces for e in scanner.feed(piece)] + scanner.finish():
            if isinstance(event, TextDelta) and merged and isinstance(merged[-1], TextDelta):
                merged[-1] = TextDelta(merged[-1].text + event.text)
            else:
                merged.append(event)
        results.append(merged)
    return results


# A call whose argument holds a code fence of its own, as tools that write files are sent.
_WRITE = (
    '{"name": "write_file", "arguments": {"path": "a.md", '
    '"content": "Example:\\n```python\\nprint(1)\\n```\\n"}}'
)
_WRITE_ARGS = {"path": "a.md", "content": "Example:\n```python\nprint(1)\n```\n"}


@pytest.mark.parametrize(
    "text",
    [
        f"Writing it.\n```json\n{_WRITE}\n```\nDone.",
        f"Writing it.\n```json {_WRITE}```Done.",  # no line break before the inner fence
        f"Writing it.\n```\n{_WRITE}\n```\n\nDone.",
        f"Writing it.\n<tool_call>\n```json\n{_WRITE}\n```\n</tool_call>\nDone.",
    ],
)
def test_a_code_fence_inside_an_argument_does_not_close_the_call_fence(text: str) -> None:
    expected = [
        TextDelta("Writing it."),
        ToolCallFound(0, "write_file", _WRITE_ARGS),
        TextDelta(" Done."),
    ]
    for events in _every_chunking(text, {"write_file"}):
        assert events == expected
    assert parse_output(text, known={"write_file"}) == ParsedOutput(
        "Writing it. Done.", (ParsedCall("write_file", _WRITE_ARGS),), ()
    )


def test_escaped_quotes_and_backticks_around_an_inner_fence() -> None:
    call = (
        r'{"name": "write_file", "arguments": {"path": "X.md", "content": '
        r'"Say \"```\" or \\```, `x` and ``X```\n```js\nf(\"`\")\n```"}}'
    )
    arguments = {
        "path": "X.md",
        "content": 'Say "```" or \\```, `x` and ``X```\n```js\nf("`")\n```',
    }
    text = f"```json\n{call}\n```"
    for events in _every_chunking(text, {"write_file"}):
        assert events == [ToolCallFound(0, "write_file", arguments)]
    assert parse_output(text, known={"write_file"}) == ParsedOutput(
        "", (ParsedCall("write_file", arguments),), ()
    )


def test_a_fence_is_held_until_its_closing_fence_outside_the_strings() -> None:
    found = ToolCallFound(0, "f", _WRITE_ARGS)
    head, tail = _WRITE.replace("write_file", "f").split("print(1)")
    assert _events_per_feed("```json\n" + head, "print(1)", tail, "\n``", "`", " ok") == [
        [],
        [],
        [],
        [],
        [found],
        [TextDelta("ok")],
        [],
    ]
    # Fenced JSON that is no call: text, unchanged, once the real closing fence arrived.
    other = '```json\n{"name": "Ada", "bio": "```x```"}\n```'
    assert _events_per_feed(other[:20], other[20:], " ok") == [
        [],
        [TextDelta(other)],
        [TextDelta(" ok")],
        [],
    ]


def test_a_line_break_ends_a_broken_string_in_a_fence() -> None:
    # JSON strings hold no raw line break: the stray quote of broken JSON does not hide the
    # closing fence on a later line, and the text after it is still shown.
    text = '```json\n{"name": "f", "arguments": {"a": "x}}\n```\nDone.'
    reason = (
        "the tool call is not valid JSON "
        "(Unterminated string starting at: line 1 column 34 (char 33))"
    )
    for events in _every_chunking(text, {"f"}):
        assert events == [MalformedCall(reason), TextDelta("\nDone.")]
