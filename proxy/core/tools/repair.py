"""The re-ask: judge an answer against the plan, and build the messages that ask again. Pure.

An answer is *usable* when (with tools) every call parsed, names a callable tool and fits its
schema, a call came if ``tool_choice`` demanded one, and (with ``response_format``, when no call
came) the text holds JSON that fits the schema. JSON that parses but misses a non-strict schema
is passed on as it is (OpenAI does not promise more without ``strict``).

Otherwise, while attempts remain, :class:`RepairNeeded` carries two messages to append to the
rendered request: the model's own answer (assistant) and what was wrong with it (user). They are
ordinary message contents, so they travel encrypted like the rest of the conversation; the
problem texts quote the model's values only there. When no attempt remains,
:class:`~proxy.core.tools.errors.ToolEmulationError` is raised with a value-free message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proxy.core.tools.errors import ToolEmulationError
from proxy.core.tools.formats import ParsedCall
from proxy.core.tools.parser import ParsedOutput
from proxy.core.tools.plan import EmulationPlan
from proxy.core.tools.validate import Problem, validate_call, validate_structured

_MAX_CLIENT_PROBLEMS = 3


@dataclass(frozen=True, slots=True)
class Accepted:
    """A usable answer: its text (None when empty) and its calls (arguments as JSON text)."""

    content: str | None
    calls: tuple[ParsedCall, ...]
    finish_reason: str


@dataclass(frozen=True, slots=True)
class RepairNeeded:
    """Ask again: append :attr:`messages` to the rendered request (:func:`with_repair`), send
    it as attempt ``attempt + 1`` and add :attr:`usage` to the next answer's usage."""

    messages: tuple[dict[str, Any], ...]
    usage: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"RepairNeeded(messages={len(self.messages)}, usage={self.usage is not None})"


def with_repair(request: Mapping[str, Any], repair: RepairNeeded) -> dict[str, Any]:
    """The rendered request with the re-ask appended (the input is not mutated)."""
    return {**request, "messages": [*request["messages"], *repair.messages]}


def merge_usage(
    first: Mapping[str, Any] | None, second: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """Two usage objects added up (numbers summed, nested objects merged)."""
    if first is None:
        return dict(second) if second is not None else None
    if second is None:
        return dict(first)
    merged: dict[str, Any] = dict(first)
    for key, value in second.items():
        mine = merged.get(key)
        if isinstance(value, bool) or isinstance(mine, bool):
            merged[key] = value
        elif isinstance(value, int | float) and isinstance(mine, int | float):
            merged[key] = mine + value
        elif isinstance(value, Mapping) and isinstance(mine, Mapping):
            merged[key] = merge_usage(mine, value)
        else:
            merged[key] = value
    return merged


def _call_problems(plan: EmulationPlan, parsed: ParsedOutput) -> list[Problem]:
    problems = [
        Problem(
            reask=f"a tool call could not be read: {reason}", client="a tool call did not parse"
        )
        for reason in parsed.malformed
    ]
    callable_tools = plan.callable_tools
    for number, call in enumerate(parsed.calls, 1):
        problems.extend(validate_call(call, callable_tools, number))
    return problems


def _missing_call(plan: EmulationPlan) -> Problem:
    choice = plan.tool_choice
    target = f"the function {choice.name}" if choice.name else "at least one function"
    return Problem(
        reask=f"you did not call a function, but you must call {target}",
        client="the model did not call a tool although tool_choice requires one",
    )


def _instruction(plan: EmulationPlan, problems: Sequence[Problem], kind: str) -> str:
    listed = "\n".join(f"- {problem.reask}" for problem in problems)
    if kind == "structured":
        ask = (
            "Reply again with ONLY the corrected JSON value, conforming to the required schema, "
            "and nothing else."
        )
    else:
        ask = (
            "Reply again with only the corrected function call(s), written exactly in the "
            "required format, and nothing else."
        )
    return f"Your previous reply could not be used:\n{listed}\n{ask}"


def judge(
    plan: EmulationPlan,
    parsed: ParsedOutput,
    *,
    output_text: str,
    finish_reason: str | None,
    attempt: int,
    usage: Mapping[str, Any] | None = None,
) -> Accepted | RepairNeeded:
    """Decide on one answer (``attempt`` counts from 0). Raises
    :class:`ToolEmulationError` when it is unusable and no re-ask remains."""
    problems: list[Problem] = []
    kind = "call"
    code = "tool_call_invalid"
    calls: tuple[ParsedCall, ...] = ()
    content = parsed.content if plan.calls_enabled else output_text
    if plan.calls_enabled:
        problems = _call_problems(plan, parsed)
        if not problems and not parsed.calls and plan.tool_choice.must_call:
            problems = [_missing_call(plan)]
            code = "tool_call_missing"
        if not problems:
            calls = parsed.calls if plan.parallel_tool_calls else parsed.calls[:1]
    if not problems and not calls and plan.response is not None:
        result = validate_structured(content, plan.response.schema)
        if result.text is None or (result.problems and plan.response.strict):
            problems = list(result.problems)
            kind = "structured"
            code = "structured_output_invalid"
        else:
            content = result.text
    if problems:
        if attempt < plan.repair_attempts:
            reply = output_text if output_text.strip() else "(an empty reply)"
            return RepairNeeded(
                (
                    {"role": "assistant", "content": reply},
                    {"role": "user", "content": _instruction(plan, problems, kind)},
                ),
                dict(usage) if usage is not None else None,
            )
        shown = "; ".join(problem.client for problem in problems[:_MAX_CLIENT_PROBLEMS])
        what = "JSON answer" if kind == "structured" else "tool call"
        raise ToolEmulationError(
            f"the model did not produce a valid {what} after {attempt + 1} attempt(s): {shown}",
            code=code,
        )
    return Accepted(
        content if content else None,
        calls,
        "tool_calls" if calls else (finish_reason or "stop"),
    )


def arguments_json(call: ParsedCall) -> str:
    """A call's arguments as the JSON text OpenAI clients expect."""
    return json.dumps(call.arguments, ensure_ascii=False, separators=(",", ":"))
