"""Stop sequences on the decrypted answer: across chunk borders, several strings, multi-byte
text, several choices, and the held-back tail."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.stop import ChoiceStops, StopCutter


def cut(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    """What a cutter emits for ``pieces`` (with the final flush) and whether it matched."""
    cutter = StopCutter(stops)
    out = "".join(cutter.feed(piece) for piece in pieces) + cutter.flush()
    return out, cutter.matched


def expected(stops: list[str], text: str) -> tuple[str, bool]:
    """The reference: cut at the earliest start of any stop string in the whole text."""
    found = [index for stop in stops if stop and (index := text.find(stop)) >= 0]
    return (text[: min(found)], True) if found else (text, False)


def test_a_stop_inside_one_piece() -> None:
    assert cut(["STOP"], ["hello STOP world"]) == ("hello ", True)


def test_a_stop_across_chunk_borders() -> None:
    assert cut(["STOP"], ["hello S", "T", "OP world"]) == ("hello ", True)


def test_a_partial_match_that_fails_is_released() -> None:
    cutter = StopCutter(["STOP"])
    assert cutter.feed("hello ST") == "hello "  # "ST" held back: it could start STOP
    assert cutter.feed("ONE") == "STONE"
    assert cutter.flush() == ""
    assert not cutter.matched


def test_held_back_text_is_at_most_the_longest_stop_minus_one() -> None:
    cutter = StopCutter(["abcdef", "xy"])
    assert cutter.feed("zzzzabcde") == "zzzz"
    assert cutter.flush() == "abcde"


def test_several_stops_the_earliest_start_wins() -> None:
    assert cut(["world", "lo w"], ["hel", "lo wor", "ld"]) == ("hel", True)
    assert cut(["END", "STOP"], ["a STOP b END"]) == ("a ", True)
    # "bc" is complete first, but "abcd" may still start earlier: the cutter waits.
    cutter = StopCutter(["bc", "abcd"])
    assert cutter.feed("abc") == ""
    assert not cutter.matched
    assert cutter.feed("d") == ""
    assert cutter.matched
    assert cut(["bc", "abcd"], ["abc", "x"]) == ("a", True)
    assert cut(["bc", "abcd"], ["ab", "c"]) == ("a", True)  # decided by the final flush


def test_nothing_after_a_match() -> None:
    cutter = StopCutter(["x"])
    assert cutter.feed("axb") == "a"
    assert cutter.feed("more") == ""
    assert cutter.flush() == ""


@pytest.mark.parametrize(
    ("stops", "pieces", "result"),
    [
        (["🦊"], ["ok ✓", " 🦊", " after"], "ok ✓ "),
        (["✓ 🦊"], ["ok ", "✓", " ", "🦊"], "ok "),
        (["日本"], ["これは日", "本語"], "これは"),
        (["é"], ["caf", "é au lait"], "caf"),
        (["e\u0301"], ["cafe", "\u0301"], "caf"),  # combining accent: matched as code points
    ],
)
def test_multi_byte_text(stops: list[str], pieces: list[str], result: str) -> None:
    assert cut(stops, pieces) == (result, True)


def test_empty_stops_are_ignored() -> None:
    assert cut(["", "z"], ["abc"]) == ("abc", False)
    assert cut([], ["abc"]) == ("abc", False)


_ALPHABET = "ab🦊"


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet=_ALPHABET, max_size=30),
    stops=st.lists(st.text(alphabet=_ALPHABET, min_size=1, max_size=4), min_size=1, max_size=4),
    splits=st.lists(st.integers(min_value=0, max_value=30), max_size=8),
)
def test_any_split_gives_the_same_cut(text: str, stops: list[str], splits: list[int]) -> None:
    bounds = sorted({0, len(text), *(min(s, len(text)) for s in splits)})
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    whole = cut(stops, [text])
    assert cut(stops, pieces) == whole
    assert whole == expected(stops, text)


# --- chunks ----------------------------------------------------------------------------------


def chunk(index: int, finish: str | None = None, **delta: Any) -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def run(stops: ChoiceStops, chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = [kept for c in chunks if (kept := stops.apply(c)) is not None]
    tail = stops.flush()
    return [*out, tail] if tail is not None else out


def text_of(chunks: list[dict[str, Any]], index: int = 0) -> str:
    return "".join(
        choice["delta"].get("content") or ""
        for c in chunks
        for choice in c["choices"]
        if choice["index"] == index
    )


def finishes(chunks: list[dict[str, Any]], index: int = 0) -> list[str]:
    return [
        choice["finish_reason"]
        for c in chunks
        for choice in c["choices"]
        if choice["index"] == index and choice["finish_reason"]
    ]


def test_chunks_cut_and_finish_with_stop() -> None:
    stops = ChoiceStops(["STOP"])
    out = run(
        stops,
        [
            chunk(0, role="assistant", content=""),
            chunk(0, content="hello S"),
            chunk(0, content="TOP"),
            chunk(0, content=" never"),
            chunk(0, "length"),
        ],
    )
    assert out[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert text_of(out) == "hello "
    assert finishes(out) == ["stop"]
    assert stops.done
    assert stops.stopped


def test_held_back_tail_comes_with_the_upstream_finish() -> None:
    stops = ChoiceStops(["STOP"])
    out = run(stops, [chunk(0, content="almost ST"), chunk(0, "length")])
    assert text_of(out) == "almost ST"
    assert finishes(out) == ["length"]
    assert out[-1]["choices"][0]["delta"] == {"content": "ST"}
    assert not stops.stopped


def test_held_back_tail_is_flushed_when_the_stream_ends_without_a_finish() -> None:
    stops = ChoiceStops(["STOP"])
    out = run(stops, [chunk(0, content="almost ST")])
    assert text_of(out) == "almost ST"
    assert out[-1]["id"] == "c"


def test_each_choice_is_cut_on_its_own() -> None:
    stops = ChoiceStops(["X"], choices=2)
    out = run(
        stops,
        [
            chunk(0, content="a0"),
            chunk(1, content="b0"),
            chunk(0, content="X a1"),
        ],
    )
    assert text_of(out, 0) == "a0"
    assert finishes(out, 0) == ["stop"]
    assert not stops.done  # choice 1 is still going
    out += run(stops, [chunk(1, content=" b1 X"), chunk(0, content="late")])
    assert text_of(out, 1) == "b0 b1 "
    assert finishes(out, 1) == ["stop"]
    assert text_of(out, 0) == "a0"
    assert stops.done


def test_reasoning_is_not_cut() -> None:
    stops = ChoiceStops(["STOP"])
    out = run(stops, [chunk(0, reasoning_content="think STOP think"), chunk(0, content="ok")])
    assert out[0]["choices"][0]["delta"] == {"reasoning_content": "think STOP think"}
    assert text_of(out) == "ok"


def test_usage_chunks_pass() -> None:
    usage = {"id": "c", "choices": [], "usage": {"total_tokens": 3}}
    assert ChoiceStops(["x"]).apply(usage) == usage


def test_done_needs_a_local_stop() -> None:
    stops = ChoiceStops(["never"])
    run(stops, [chunk(0, content="abc"), chunk(0, "stop")])
    assert not stops.done


# --- what a client sees, chunk by chunk (pinned by mutation testing) ----------------------------


def test_a_stop_is_decided_as_soon_as_nothing_can_start_earlier() -> None:
    # "ab" is complete at 1 and "abcd" could only start there too: cut now, not at the end.
    cutter = StopCutter(["ab", "abcd"])
    assert cutter.feed("xab") == "x"
    assert cutter.matched
    assert cutter.feed("cd") == ""


def test_text_is_held_back_only_while_it_can_still_start_a_stop() -> None:
    cutter = StopCutter(["abc"])
    assert cutter.feed("zb") == "zb"  # ends in a letter of the stop, but not in its start
    assert cutter.feed("za") == "z"  # "a" could start "abc"
    assert cutter.feed("bz") == "abz"


def test_the_finishing_chunk_carries_its_own_text_and_the_held_back_tail() -> None:
    stops = ChoiceStops(["STOP"])
    assert stops.apply(chunk(0, content="a S")) is not None
    last = stops.apply(chunk(0, "length", content="T and S"))
    assert last is not None
    assert last["choices"] == [
        {"index": 0, "delta": {"content": "ST and S"}, "logprobs": None, "finish_reason": "length"}
    ]
    assert stops.flush() is None  # nothing was left for the end of the stream
    assert not stops.stopped


def test_a_choice_finished_upstream_says_nothing_more() -> None:
    stops = ChoiceStops(["X"], choices=2)
    run(stops, [chunk(0, "stop", content="a0"), chunk(1, content="b0 X b1")])
    assert stops.apply(chunk(0, content="late")) is None
    assert stops.done  # choice 0 ended upstream, choice 1 here


def test_a_chunk_whose_choices_all_ended_is_not_relayed_unless_it_has_usage() -> None:
    stops = ChoiceStops(["X"])
    run(stops, [chunk(0, content="aX")])
    assert stops.apply(chunk(0, content="more")) is None
    with_usage = {**chunk(0, content="more"), "usage": {"total_tokens": 5}}
    assert stops.apply(with_usage) == {**with_usage, "choices": []}


def test_chunks_without_choices_pass_unchanged() -> None:
    stops = ChoiceStops(["x"])
    for passing in ({"id": "c", "choices": []}, {"id": "c"}, {"id": "c", "choices": "odd"}):
        assert stops.apply(passing) == passing


def test_a_choice_without_an_index_is_choice_zero() -> None:
    stops = ChoiceStops(["STOP"])
    out = stops.apply({"id": "c", "choices": [{"delta": {"content": "a STOP b"}}]})
    assert out == {"id": "c", "choices": [{"delta": {"content": "a "}, "finish_reason": "stop"}]}
    assert stops.done


def test_a_whole_message_is_cut_like_a_delta() -> None:
    stops = ChoiceStops(["STOP"])
    choice = {"index": 0, "message": {"role": "assistant", "content": "a STOP b"}}
    out = stops.apply({"id": "c", "choices": [{**choice, "finish_reason": "length"}]})
    assert out == {
        "id": "c",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "a "}, "finish_reason": "stop"}
        ],
    }


def test_the_final_flush_chunk() -> None:
    stops = ChoiceStops(["STOP"])
    stops.apply(chunk(0, content="almost ST"))
    assert stops.flush() == {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "delta": {"content": "ST"}, "logprobs": None, "finish_reason": None}
        ],
    }


def test_a_stop_decided_by_the_final_flush_ends_the_choice_with_stop() -> None:
    stops = ChoiceStops(["bc", "abcd"])  # "abcd" could start at "a" until the stream ends
    stops.apply(chunk(0, content="ab"))
    stops.apply(chunk(0, content="c"))
    tail = stops.flush()
    assert tail is not None
    assert tail["choices"] == [
        {"index": 0, "delta": {"content": "a"}, "logprobs": None, "finish_reason": "stop"}
    ]
    assert stops.done
    assert stops.flush() is None


def test_the_final_flush_skips_finished_choices_but_not_the_others() -> None:
    stops = ChoiceStops(["STOP"], choices=3)
    stops.apply(chunk(0, "stop", content="done"))
    stops.apply(chunk(1, content="b ST"))
    stops.apply(chunk(2, content="c ST"))
    tail = stops.flush()
    assert tail is not None
    assert [(c["index"], c["delta"]) for c in tail["choices"]] == [
        (1, {"content": "ST"}),
        (2, {"content": "ST"}),
    ]
