"""The simulator's fault switches (proxy/simulator/faults.py): all off by default, and every value
a test could mistype refused at once, with a message that names the switch and what it takes."""

from __future__ import annotations

import re
from typing import Any

import pytest

from proxy.simulator.faults import ALWAYS, TOOL_FAULTS, Faults


def test_everything_is_off_by_default() -> None:
    faults = Faults()
    assert faults.fail_status is None
    assert faults.fail_times == 1
    assert faults.cut_stream_after is None
    assert faults.fault_at_token == 0
    assert faults.tool_fault is None
    assert faults.tool_fault_times == ALWAYS == -1
    assert not any(
        (
            faults.plaintext_chunk,
            faults.corrupt_ciphertext,
            faults.midstream_error,
            faults.wrong_nonce,
            faults.debug_quote,
            faults.phala_legacy,
            faults.signing_key_missing,
            faults.bad_signature,
        )
    )
    with pytest.raises(AttributeError):
        faults.fail_status = 500  # type: ignore[misc]


@pytest.mark.parametrize(
    "values",
    [
        {"fail_status": 400},
        {"fail_status": 599},
        {"fail_status": 429, "fail_times": ALWAYS},
        {"fail_status": 503, "fail_times": 0},
        {"cut_stream_after": 0},
        *({"tool_fault": fault} for fault in TOOL_FAULTS),
        {"tool_fault": "no_call", "tool_fault_times": 0},
        {"tool_fault": "no_call", "tool_fault_times": ALWAYS},
    ],
)
def test_the_edges_of_each_range_are_accepted(values: dict[str, Any]) -> None:
    faults = Faults(**values)
    assert all(getattr(faults, name) == value for name, value in values.items())


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"fail_status": 399}, "fail_status must be an HTTP error status (400-599)"),
        ({"fail_status": 600}, "fail_status must be an HTTP error status (400-599)"),
        ({"fail_times": -2}, "fail_times must be -1 (always) or a count >= 0"),
        ({"cut_stream_after": -1}, "cut_stream_after must be >= 0"),
        (
            {"tool_fault": "sometimes"},
            "tool_fault must be one of invalid_arguments, malformed_call, no_call, broken_object",
        ),
        ({"tool_fault_times": -2}, "tool_fault_times must be -1 (always) or a count >= 0"),
    ],
)
def test_a_value_out_of_range_is_refused_by_name(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        Faults(**values)
    assert str(caught.value) == message
