"""Complete-text tool-call parser: a whole answer in, its text and calls out. Pure.

It is the streaming scanner (:mod:`.stream`) fed the whole text at once, so a streamed answer
and the same answer read whole always agree. Accepted formats are listed in :mod:`.formats`:
Hermes/Qwen ``<tool_call>`` JSON (one or several blocks, closing tag optional at the end),
Qwen3-Coder/Qwen3.5 XML, GLM ``<arg_key>/<arg_value>``, bare JSON ``{"name", "arguments"}``
(or ``parameters``), ``{"tool_calls": [...]}``, JSON arrays of calls, ``` fences bare or with a
language tag (```json, ```json5, ...; a code fence inside an argument string does not close
them), arguments as an object or a JSON string, and any text before (or between) the calls.

What it does not check: whether a call's name is a declared tool or its arguments fit the
schema (:mod:`.validate` does), and whether text after the calls makes sense.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from proxy.core.tools.formats import ParsedCall
from proxy.core.tools.stream import Event, MalformedCall, TextDelta, ToolCallFound, ToolCallScanner


@dataclass(frozen=True, slots=True)
class ParsedOutput:
    """An answer split into its text, its calls and the reasons of calls that did not parse."""

    content: str
    calls: tuple[ParsedCall, ...]
    malformed: tuple[str, ...]


def collect(events: Iterable[Event]) -> ParsedOutput:
    """Fold scanner events into one :class:`ParsedOutput`."""
    text: list[str] = []
    calls: list[ParsedCall] = []
    malformed: list[str] = []
    for event in events:
        if isinstance(event, TextDelta):
            text.append(event.text)
        elif isinstance(event, ToolCallFound):
            calls.append(ParsedCall(event.name, event.arguments))
        elif isinstance(event, MalformedCall):
            malformed.append(event.reason)
    return ParsedOutput("".join(text), tuple(calls), tuple(malformed))


def parse_output(
    text: str,
    *,
    known: Collection[str] | None = None,
    schemas: Mapping[str, Mapping[str, Any] | None] | None = None,
) -> ParsedOutput:
    """Parse a complete answer. ``known`` are the declared tool names (None: any name counts
    for untagged JSON too); ``schemas`` type XML/GLM argument values."""
    scanner = ToolCallScanner(known=known, schemas=schemas)
    return collect([*scanner.feed(text), *scanner.finish()])
