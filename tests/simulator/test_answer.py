"""The simulator's deterministic model (proxy/simulator/answer.py): what it echoes, how it splits
tokens (emoji alone, the check mark kept with its word), how max_tokens cuts an answer, and how
usage is counted."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.simulator.answer import (
    ANSWER_PREFIX,
    ANSWER_SUFFIX,
    ChoicePlan,
    last_user_text,
    message_text,
    plan_answer,
    tokenize,
)


@pytest.mark.parametrize(
    "code",
    [0x1F000, 0x1F98A, 0x1FAFF, 0x2600, 0x2764, 0x27BF],
)
def test_pictographs_and_dingbats_are_tokens_of_their_own(code: int) -> None:
    assert tokenize(f"a{chr(code)}b") == ["a", chr(code), "b"]


@pytest.mark.parametrize("code", [0x1EFFF, 0x1FB00, 0x25FF, 0x27C0, ord("✓"), ord("é")])
def test_other_characters_stay_in_their_word(code: int) -> None:
    assert tokenize(f"a{chr(code)}b") == [f"a{chr(code)}b"]


def test_last_user_text_skips_other_roles_and_non_objects() -> None:
    messages: list[Any] = [
        {"role": "user", "content": "first"},
        {"role": "user", "content": "question"},
        {"role": "assistant", "content": "reply"},
        {"content": "no role"},
        "stray",
    ]
    assert last_user_text(messages) == "question"
    assert last_user_text([{"role": "assistant", "content": "x"}, 3]) == ""


def test_message_text_joins_text_parts_with_one_space() -> None:
    content = [
        {"type": "text", "text": "one"},
        {"type": "image_url", "image_url": {"url": "data:,"}},
        {"type": "text", "text": None},
        "stray",
        {"type": "text", "text": "two"},
    ]
    assert message_text(content) == "one two"
    assert message_text("plain") == "plain"
    assert message_text(None) == ""
    assert message_text({"text": "not a list"}) == ""


def test_echo_of_the_last_user_message() -> None:
    plan = plan_answer(
        [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        ]
    )
    (choice,) = plan.choices
    assert choice == ChoicePlan(0, (), tuple(tokenize("You said: hi" + ANSWER_SUFFIX)), "stop")
    assert "".join(choice.content) == ANSWER_PREFIX + "hi" + ANSWER_SUFFIX
    assert plan.prompt_tokens == 3  # "be", " brief", "hi"


def test_no_user_message_echoes_nothing() -> None:
    (choice,) = plan_answer([{"role": "system", "content": "x"}]).choices
    assert "".join(choice.content) == ANSWER_PREFIX + ANSWER_SUFFIX


def test_choices_are_numbered_only_when_there_are_several() -> None:
    messages = [{"role": "user", "content": "q"}]
    (only,) = plan_answer(messages, n=1).choices
    assert "".join(only.content) == "You said: q" + ANSWER_SUFFIX
    two = plan_answer(messages, n=2).choices
    assert [c.index for c in two] == [0, 1]
    assert ["".join(c.content) for c in two] == [
        "[0] You said: q" + ANSWER_SUFFIX,
        "[1] You said: q" + ANSWER_SUFFIX,
    ]


def test_given_text_replaces_the_echo_and_is_never_numbered() -> None:
    plan = plan_answer([{"role": "user", "content": "q"}], n=2, text='{"a": 1}')
    assert ["".join(c.content) for c in plan.choices] == ['{"a": 1}', '{"a": 1}']
    assert [c.index for c in plan.choices] == [0, 1]
    (single,) = plan_answer([], text="").choices
    assert single.content == ()


def test_reasoning_counts_the_messages_first() -> None:
    messages: list[Any] = [{"role": "user", "content": "q"}, "stray"]
    (choice,) = plan_answer(messages, reasoning=True).choices
    assert choice.reasoning == ("Considering", " 2", " messages.")
    assert plan_answer(messages, reasoning=True).prompt_tokens == 1


def test_max_tokens_cuts_reasoning_then_content() -> None:
    messages = [{"role": "user", "content": "q"}]
    full = plan_answer(messages, reasoning=True).choices[0]
    total = full.token_count
    exact = plan_answer(messages, reasoning=True, max_tokens=total).choices[0]
    assert exact == full
    assert exact.finish_reason == "stop"

    cut = plan_answer(messages, reasoning=True, max_tokens=5).choices[0]
    assert cut.reasoning == full.reasoning
    assert cut.content == full.content[:2]
    assert cut.finish_reason == "length"

    thinking_only = plan_answer(messages, reasoning=True, max_tokens=2).choices[0]
    assert thinking_only.reasoning == full.reasoning[:2]
    assert thinking_only.content == ()
    assert thinking_only.finish_reason == "length"


def test_usage_counts_every_choice() -> None:
    plan = plan_answer([{"role": "user", "content": "q"}], n=2, max_tokens=3, reasoning=True)
    assert [c.token_count for c in plan.choices] == [3, 3]
    assert plan.completion_tokens == 6
