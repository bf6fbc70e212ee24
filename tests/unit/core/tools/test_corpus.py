"""Every corpus sample parses as expected, whole and streamed split at every position."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.tools.parser import ParsedOutput, collect, parse_output
from proxy.core.tools.stream import ToolCallScanner
from proxy.core.tools.validate import ToolSpec, compile_schema, validate_call
from tests.unit.core.tools.corpus import Sample, load_corpus, samples

SAMPLES = samples()
IDS = [sample.id for sample in SAMPLES]


def _parse(sample: Sample) -> ParsedOutput:
    return parse_output(sample.output, known=sample.known, schemas=sample.schemas)


def _calls(parsed: ParsedOutput) -> list[dict[str, object]]:
    return [{"name": call.name, "arguments": call.arguments} for call in parsed.calls]


def test_corpus_is_large_and_sourced() -> None:
    corpus = load_corpus()
    assert len(SAMPLES) >= 40
    assert len(set(IDS)) == len(IDS)
    for sample in SAMPLES:
        assert sample.source in corpus["sources"], sample.id
    kinds = {sample.expect for sample in SAMPLES}
    assert kinds == {"calls", "invalid", "malformed", "no_call", "unsupported"}
    formats = {sample.format for sample in SAMPLES if sample.expect == "calls"}
    assert {"hermes", "glm", "qwen3_xml", "json", "fenced_json"} <= formats


@pytest.mark.parametrize("sample", SAMPLES, ids=IDS)
def test_sample(sample: Sample) -> None:
    parsed = _parse(sample)
    if sample.expect in ("calls", "invalid"):
        assert not parsed.malformed
        assert _calls(parsed) == sample.calls
        if sample.content is not None:
            assert parsed.content == sample.content
        tools = {
            name: ToolSpec(
                name, None, schema, compile_schema(schema, param="t") if schema else None
            )
            for name, schema in (sample.tools or {c["name"]: None for c in sample.calls}).items()
        }
        problems = [p for i, c in enumerate(parsed.calls, 1) for p in validate_call(c, tools, i)]
        assert bool(problems) == (sample.expect == "invalid")
    elif sample.expect == "malformed":
        assert not parsed.calls
        assert parsed.malformed
        assert parsed.content.strip() == ""  # the broken call is never shown as text
    elif sample.expect == "no_call":
        assert parsed == ParsedOutput(sample.output, (), ())
    else:
        assert not parsed.calls


@pytest.mark.parametrize("sample", SAMPLES, ids=IDS)
def test_every_split_point_gives_the_same_result(sample: Sample) -> None:
    whole = _parse(sample)
    text = sample.output
    for cut in range(len(text) + 1):
        scanner = ToolCallScanner(known=sample.known, schemas=sample.schemas)
        events = [*scanner.feed(text[:cut]), *scanner.feed(text[cut:]), *scanner.finish()]
        assert collect(events) == whole, cut


@pytest.mark.parametrize("sample", SAMPLES, ids=IDS)
def test_character_by_character(sample: Sample) -> None:
    scanner = ToolCallScanner(known=sample.known, schemas=sample.schemas)
    events = [event for char in sample.output for event in scanner.feed(char)]
    assert collect([*events, *scanner.finish()]) == _parse(sample)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_chunking_gives_the_same_result(data: st.DataObject) -> None:
    sample = data.draw(st.sampled_from(SAMPLES))
    text = sample.output
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=12)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    scanner = ToolCallScanner(known=sample.known, schemas=sample.schemas)
    events = [event for piece in pieces for event in scanner.feed(piece)]
    assert collect([*events, *scanner.finish()]) == _parse(sample)
