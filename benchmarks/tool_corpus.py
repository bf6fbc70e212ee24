"""``python -m benchmarks.tool_corpus [--iterations N] [--json FILE]``: tool-call emulation figures.

1. Parse rate over the corpus of real model outputs (``tests/fixtures/tool_calls/corpus.json``):
   the share of samples holding valid calls that are read into exactly those calls and pass
   schema validation; per format; and how the other kinds behave (invalid calls rejected,
   malformed calls caught, plain answers untouched, unsupported formats not turned into calls).
2. Added latency of emulation per request, in microseconds (median of N): rendering a request
   with 3 tools and a call/result history (``prepare``), reading a streamed answer with a call
   (``ToolStreamTransformer`` over 8-character chunks, validation included), and both together.
   Pure CPU in this process: no network, no crypto (that is the same with or without tools).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from proxy.core.tools import ToolsConfig, ToolStreamTransformer, parse_output, prepare
from proxy.core.tools.formats import ParsedCall
from proxy.core.tools.validate import ToolSpec, compile_schema, validate_call

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "tool_calls" / "corpus.json"

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search_docs",
        "description": "Full-text search in the documentation",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
            "required": ["query"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
REQUEST: dict[str, Any] = {
    "model": "e2ee-qwen3-vl-30b-a3b-p",
    "stream": True,
    "tools": [WEATHER, SEARCH, TIME],
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 18, "sky": "clear"}'},
        {"role": "user", "content": "And in Oslo, in fahrenheit?"},
    ],
}
ANSWER = (
    "Let me check the weather in Oslo for you.\n<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "fahrenheit"}}\n</tool_call>'
)


def _known(sample: dict[str, Any]) -> set[str] | None:
    if sample.get("tools"):
        return set(sample["tools"])
    return {call["name"] for call in sample.get("calls", [])} or None


def _valid(sample: dict[str, Any], calls: Sequence[ParsedCall]) -> bool:
    schemas = sample.get("tools") or {call["name"]: None for call in sample.get("calls", [])}
    tools = {
        name: ToolSpec(name, None, schema, compile_schema(schema, param="p") if schema else None)
        for name, schema in schemas.items()
    }
    return not any(validate_call(call, tools, i) for i, call in enumerate(calls, 1))


def _behaves(sample: dict[str, Any]) -> bool:
    parsed = parse_output(sample["output"], known=_known(sample), schemas=sample.get("tools"))
    got = [{"name": c.name, "arguments": c.arguments} for c in parsed.calls]
    expect = sample["expect"]
    if expect == "calls":
        return got == sample["calls"] and not parsed.malformed and _valid(sample, parsed.calls)
    if expect == "invalid":
        return bool(parsed.calls) and not _valid(sample, parsed.calls)
    if expect == "malformed":
        return not parsed.calls and bool(parsed.malformed)
    if expect == "no_call":
        return not parsed.calls and parsed.content == sample["output"]
    return not parsed.calls


def corpus_figures() -> dict[str, Any]:
    samples = json.loads(CORPUS.read_text(encoding="utf-8"))["samples"]
    by_kind: dict[str, list[bool]] = defaultdict(list)
    by_format: dict[str, list[bool]] = defaultdict(list)
    for sample in samples:
        ok = _behaves(sample)
        by_kind[sample["expect"]].append(ok)
        if sample["expect"] == "calls":
            by_format[sample["format"]].append(ok)
    calls = by_kind["calls"]
    return {
        "samples": len(samples),
        "call_samples": len(calls),
        "parse_rate": sum(calls) / len(calls),
        "parse_rate_by_format": {k: f"{sum(v)}/{len(v)}" for k, v in sorted(by_format.items())},
        "expected_behaviour": {k: f"{sum(v)}/{len(v)}" for k, v in sorted(by_kind.items())},
    }


def _median_us(action: Callable[[], object], iterations: int) -> float:
    action()
    times = []
    for _ in range(iterations):
        start = time.perf_counter_ns()
        action()
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1000


def _chunks(text: str, size: int = 8) -> list[dict[str, Any]]:
    base = {"id": "chatcmpl-b", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"content": text[i : i + size]}}]}
        for i in range(0, len(text), size)
    ]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    chunks.append({**base, "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}})
    return chunks


def latency_figures(iterations: int) -> dict[str, float]:
    config = ToolsConfig()
    prepared = prepare(REQUEST, model_id=REQUEST["model"], config=config)
    plan = prepared.plan
    assert plan is not None
    chunks = _chunks(ANSWER)

    def render() -> object:
        return prepare(REQUEST, model_id=REQUEST["model"], config=config)

    def read() -> object:
        transformer = ToolStreamTransformer(plan)
        for chunk in chunks:
            transformer.feed(chunk)
        return transformer.finish()

    def both() -> object:
        render()
        return read()

    return {
        "render_us": _median_us(render, iterations),
        "stream_parse_validate_us": _median_us(read, iterations),
        "per_request_us": _median_us(both, iterations),
        "answer_chunks": float(len(chunks)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    figures = {"corpus": corpus_figures(), "latency": latency_figures(args.iterations)}
    corpus, latency = figures["corpus"], figures["latency"]
    print(
        f"corpus: {corpus['samples']} samples; {corpus['call_samples']} hold valid calls, "
        f"parsed into exactly those valid calls: {corpus['parse_rate']:.1%}"
    )
    print(f"  by format: {corpus['parse_rate_by_format']}")
    print(f"  every kind behaves as expected: {corpus['expected_behaviour']}")
    print(
        f"emulation cost per request (median of {args.iterations}): "
        f"render {latency['render_us']:.0f} us, "
        f"stream parse+validate {latency['stream_parse_validate_us']:.0f} us "
        f"({latency['answer_chunks']:.0f} chunks), together {latency['per_request_us']:.0f} us"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
