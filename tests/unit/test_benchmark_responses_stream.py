"""The Responses builder benchmark (benchmarks/responses_stream.py) measures what it says."""

from __future__ import annotations

import pytest


def test_every_token_reaches_the_answer() -> None:
    from benchmarks.responses_stream import builder_figures

    figures = builder_figures(500, "abc")
    assert figures["answer_chars"] == 1500
    assert figures["us_per_token"] > 0
    # the deltas, and the final response carrying the answer once more
    assert figures["bytes_written"] > 2 * 1500


def test_the_command_prints_one_line_per_length(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.responses_stream import main

    assert main(["--tokens", "10", "20"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" tokens:")[0].strip() for line in lines] == ["10", "20"]
