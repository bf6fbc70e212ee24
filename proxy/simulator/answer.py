"""The simulator's deterministic "model": the answer is a pure function of the conversation.

- Content: ``"You said: " + <last user message text> + ANSWER_SUFFIX``; with ``n > 1`` choice
  ``i`` is prefixed ``"[i] "``. Prompts with tools or a JSON answer format are answered by
  :mod:`proxy.simulator.tools` instead. For content parts, the text parts are joined with a space.
- Reasoning models first "think" ``"Considering N messages."`` (N = number of messages).
- Tokens: each word with the whitespace before it (``" said:"``), and every emoji its own token,
  so clients see multi-byte UTF-8 split across chunks.
- ``max_tokens`` / ``max_completion_tokens`` cap reasoning + content tokens per choice and turn
  ``finish_reason`` into ``"length"``; otherwise ``"stop"``.
- Usage counts tokens the same way: prompt = tokens of every message's text, completion = all
  emitted tokens of all choices.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ANSWER_PREFIX = "You said: "
ANSWER_SUFFIX = " — ok ✓ 🦊"

_WORD = re.compile(r"\s*\S+|\s+")


def _is_emoji(char: str) -> bool:
    code = ord(char)
    # Pictographs and dingbats; the check mark stays text so the suffix has a 3-byte word.
    return 0x1F000 <= code <= 0x1FAFF or (0x2600 <= code <= 0x27BF and char != "✓")


def tokenize(text: str) -> list[str]:
    """Split into whitespace-attached words, with emoji as tokens of their own."""
    tokens: list[str] = []
    for word in _WORD.findall(text):
        current = ""
        for char in word:
            if _is_emoji(char):
                if current.strip():
                    tokens.append(current)
                    current = ""
                tokens.append(current + char)
                current = ""
            else:
                current += char
        if current:
            tokens.append(current)
    return tokens


def message_text(content: Any) -> str:
    """The text of a message ``content``: a string, or the joined text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            part["text"]
            for part in content
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        ]
        return " ".join(texts)
    return ""


def last_user_text(messages: Sequence[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            return message_text(message.get("content"))
    return ""


@dataclass(frozen=True, slots=True)
class ChoicePlan:
    """What one choice streams: reasoning tokens, then content tokens, then its finish."""

    index: int
    reasoning: tuple[str, ...]
    content: tuple[str, ...]
    finish_reason: str

    @property
    def token_count(self) -> int:
        return len(self.reasoning) + len(self.content)


@dataclass(frozen=True, slots=True)
class AnswerPlan:
    choices: tuple[ChoicePlan, ...]
    prompt_tokens: int

    @property
    def completion_tokens(self) -> int:
        return sum(choice.token_count for choice in self.choices)


def plan_answer(
    messages: Sequence[Any],
    *,
    n: int = 1,
    max_tokens: int | None = None,
    reasoning: bool = False,
    text: str | None = None,
) -> AnswerPlan:
    """The full answer to a (decrypted) conversation; ``text`` replaces the echo (tool calls
    and JSON answers, :mod:`proxy.simulator.tools`) and is never prefixed."""
    answer = text if text is not None else ANSWER_PREFIX + last_user_text(messages) + ANSWER_SUFFIX
    thought = tokenize(f"Considering {len(messages)} messages.") if reasoning else []
    choices: list[ChoicePlan] = []
    for index in range(n):
        content = tokenize((f"[{index}] " if n > 1 and text is None else "") + answer)
        finish = "stop"
        think = list(thought)
        if max_tokens is not None and len(think) + len(content) > max_tokens:
            finish = "length"
            think = think[:max_tokens]
            content = content[: max_tokens - len(think)]
        choices.append(ChoicePlan(index, tuple(think), tuple(content), finish))
    prompt = sum(
        len(tokenize(message_text(m.get("content")))) for m in messages if isinstance(m, Mapping)
    )
    return AnswerPlan(tuple(choices), prompt)
