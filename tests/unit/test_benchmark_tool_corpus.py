"""The tool-call corpus benchmark (benchmarks/tool_corpus.py) reports what the parser does.

Apart from the core's own tests (tests/unit/core/tools/), which ``make mutation`` runs without
the ``benchmarks`` package.
"""

from __future__ import annotations


def test_benchmark_figures() -> None:
    from benchmarks.tool_corpus import corpus_figures, latency_figures

    figures = corpus_figures()
    assert figures["parse_rate"] == 1.0
    assert figures["call_samples"] >= 40
    assert all(a == b for a, b in (v.split("/") for v in figures["expected_behaviour"].values()))
    latency = latency_figures(3)
    assert latency["per_request_us"] > 0
