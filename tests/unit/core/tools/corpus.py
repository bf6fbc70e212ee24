"""The tool-call corpus (tests/fixtures/tool_calls/corpus.json) as typed samples."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tests.support.fixtures import FIXTURES_DIR

CORPUS_FILE = FIXTURES_DIR / "tool_calls" / "corpus.json"


@dataclass(frozen=True)
class Sample:
    id: str
    source: str
    format: str
    output: str
    expect: str
    calls: list[dict[str, Any]]
    content: str | None
    tools: dict[str, Any] | None

    @property
    def known(self) -> set[str] | None:
        """Declared tool names: the sample's tools, else the names it expects."""
        if self.tools:
            return set(self.tools)
        names = {call["name"] for call in self.calls}
        return names or None

    @property
    def schemas(self) -> dict[str, Any]:
        return dict(self.tools or {})


def load_corpus() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(CORPUS_FILE.read_text(encoding="utf-8"))
    return data


def samples() -> list[Sample]:
    return [
        Sample(
            id=raw["id"],
            source=raw["source"],
            format=raw["format"],
            output=raw["output"],
            expect=raw["expect"],
            calls=raw.get("calls", []),
            content=raw.get("content"),
            tools=raw.get("tools"),
        )
        for raw in load_corpus()["samples"]
    ]
