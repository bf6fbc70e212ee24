"""The simulated answer on the wire (proxy/simulator/chunks.py, docs/protocol.md#streaming): every
event of a plaintext stream, the sealed stream opened with the client's key, each fault exactly
where it is due, and the non-streamed completion."""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxy.core.crypto import generate_keypair, looks_like_ciphertext, open_text
from proxy.core.errors import DecryptionError
from proxy.simulator.answer import AnswerPlan, ChoicePlan
from proxy.simulator.chunks import (
    DONE,
    CompletionMeta,
    Marker,
    _corrupt,
    completion_object,
    cost_of,
    frame,
    midstream_error_event,
    stream_items,
)
from proxy.simulator.faults import Faults
from proxy.simulator.sealing import ResponseSealer

META = CompletionMeta(id="chatcmpl-abc", created=1700000000, model="e2ee-model")
CLIENT = generate_keypair()
NO_FAULTS = Faults()

# Choice 0 thinks twice then says four tokens; choice 1 says one token and is cut by length.
TWO_CHOICES = AnswerPlan(
    (
        ChoicePlan(0, ("r0", "r1"), ("c0", "c1", "c2", "c3"), "stop"),
        ChoicePlan(1, (), ("d0",), "length"),
    ),
    prompt_tokens=3,
)
# Choice 1 has the longer answer: its tokens keep coming after choice 0's.
LONG_SECOND = AnswerPlan(
    (
        ChoicePlan(0, (), ("c0", "c1", "c2", "c3"), "stop"),
        ChoicePlan(1, (), ("d0", "d1", "d2", "d3", "d4", "d5"), "stop"),
    ),
    prompt_tokens=1,
)


def single(tokens: int) -> AnswerPlan:
    return AnswerPlan(
        (ChoicePlan(0, (), tuple(f"t{i}" for i in range(tokens)), "stop"),), prompt_tokens=1
    )


def event(item: bytes | Marker) -> dict[str, Any] | str | Marker:
    """One wire item: the JSON of a ``data:`` event, ``"[DONE]"``, or the marker itself."""
    if isinstance(item, Marker):
        return item
    assert item.startswith(b"data: ")
    assert item.endswith(b"\n\n")
    assert b"\n" not in item[:-2]
    payload = item[len(b"data: ") : -2].decode("utf-8")
    if payload == "[DONE]":
        return payload
    parsed = json.loads(payload)
    assert isinstance(parsed, dict)
    return parsed


def events(
    plan: AnswerPlan, faults: Faults = NO_FAULTS, sealer: ResponseSealer | None = None
) -> list[Any]:
    return [event(item) for item in stream_items(plan, META, faults=faults, sealer=sealer)]


def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-abc",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "e2ee-model",
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def token_deltas(items: list[Any]) -> list[tuple[int, dict[str, Any]]]:
    """(choice index, delta) of every token chunk, in wire order."""
    found: list[tuple[int, dict[str, Any]]] = []
    for item in items:
        if isinstance(item, dict) and item.get("choices"):
            (choice,) = item["choices"]
            delta = choice["delta"]
            if delta and "role" not in delta:
                found.append((choice["index"], delta))
    return found


ERROR_EVENT = {
    "error": {
        "message": "The upstream model failed while generating the response.",
        "type": "server_error",
        "code": "upstream_error",
    }
}


# -- framing -----------------------------------------------------------------------------------


def test_frame_is_compact_utf8_json() -> None:
    assert frame({"a": "é 🦊", "b": [1, 2]}) == 'data: {"a":"é 🦊","b":[1,2]}\n\n'.encode()


def test_done_and_the_error_event() -> None:
    assert DONE == b"data: [DONE]\n\n"
    assert event(midstream_error_event()) == ERROR_EVENT


# -- the plaintext stream, every event ---------------------------------------------------------


def test_plaintext_stream_interleaves_choices_and_ends_with_usage_and_done() -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10}
    cost = {"usd": 0.0000155, "diem": 0.0000155}
    assert events(TWO_CHOICES) == [
        chunk(0, {"role": "assistant", "content": ""}),
        chunk(1, {"role": "assistant", "content": ""}),
        chunk(0, {"reasoning_content": "r0"}),
        chunk(1, {"content": "d0"}),
        chunk(0, {"reasoning_content": "r1"}),
        chunk(0, {"content": "c0"}),
        chunk(0, {"content": "c1"}),
        chunk(0, {"content": "c2"}),
        chunk(0, {"content": "c3"}),
        chunk(0, {}, "stop"),
        chunk(1, {}, "length"),
        {
            "id": "chatcmpl-abc",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "e2ee-model",
            "choices": [],
            "usage": usage,
            "cost": cost,
        },
        "[DONE]",
        Marker.COMPLETE,
    ]


def test_a_plan_without_choices_is_usage_and_done() -> None:
    items = events(AnswerPlan((), prompt_tokens=2))
    assert [item["usage"] for item in items if isinstance(item, dict)] == [
        {"prompt_tokens": 2, "completion_tokens": 0, "total_tokens": 2}
    ]
    assert items[-2:] == ["[DONE]", Marker.COMPLETE]


def test_cost_is_the_decimal_price_without_float_noise() -> None:
    # 0.5 USD per million input tokens and 2 USD per million output tokens, to 10 decimals.
    big = AnswerPlan((ChoicePlan(0, (), ("x",) * 7, "stop"),), prompt_tokens=100_000_000_001)
    assert cost_of(big) == {"usd": 50000.0000145, "diem": 50000.0000145}
    small = AnswerPlan((ChoicePlan(0, (), ("x",), "stop"),), prompt_tokens=1)
    assert cost_of(small) == {"usd": 0.0000025, "diem": 0.0000025}


# -- the sealed stream -------------------------------------------------------------------------


def opened(delta: dict[str, Any]) -> dict[str, Any]:
    return {name: open_text(CLIENT.private, value) for name, value in delta.items()}


def test_near_stream_seals_every_token_and_keeps_the_role_chunk_plain() -> None:
    items = events(TWO_CHOICES, sealer=ResponseSealer(CLIENT.public))
    assert items[:2] == [
        chunk(0, {"role": "assistant", "content": ""}),
        chunk(1, {"role": "assistant", "content": ""}),
    ]
    assert [(index, opened(delta)) for index, delta in token_deltas(items)] == [
        (0, {"reasoning_content": "r0"}),
        (1, {"content": "d0"}),
        (0, {"reasoning_content": "r1"}),
        (0, {"content": "c0"}),
        (0, {"content": "c1"}),
        (0, {"content": "c2"}),
        (0, {"content": "c3"}),
    ]
    assert items[9:11] == [chunk(0, {}, "stop"), chunk(1, {}, "length")]
    assert items[-2:] == ["[DONE]", Marker.COMPLETE]


def test_phala_stream_drops_the_role_content_and_mirrors_reasoning_in_plaintext() -> None:
    sealer = ResponseSealer(CLIENT.public, phala_legacy=True)
    items = events(TWO_CHOICES, Faults(phala_legacy=True), sealer)
    assert items[:2] == [chunk(0, {"role": "assistant"}), chunk(1, {"role": "assistant"})]
    deltas = token_deltas(items)
    reasoning = [delta for _, delta in deltas if "reasoning_content" in delta]
    assert [delta["reasoning"] for delta in reasoning] == ["r0", "r1"]
    assert [open_text(CLIENT.private, d["reasoning_content"]) for d in reasoning] == ["r0", "r1"]


def test_phala_without_reasoning_mirrors_nothing_and_near_never_mirrors() -> None:
    near = token_deltas(events(TWO_CHOICES))
    assert all("reasoning" not in delta for _, delta in near)
    phala = token_deltas(events(TWO_CHOICES, Faults(phala_legacy=True)))
    assert [delta for _, delta in phala if "reasoning" in delta] == [
        {"reasoning_content": "r0", "reasoning": "r0"},
        {"reasoning_content": "r1", "reasoning": "r1"},
    ]


# -- faults ------------------------------------------------------------------------------------


def faulty(plan: AnswerPlan, faults: Faults) -> list[tuple[int, str, str]]:
    """Each token as (choice, field, state): state is "sealed", "plain" or "corrupt"."""
    result: list[tuple[int, str, str]] = []
    for index, delta in token_deltas(events(plan, faults, ResponseSealer(CLIENT.public))):
        ((name, value),) = delta.items()
        if not looks_like_ciphertext(value):
            result.append((index, value, "plain"))
            continue
        try:
            open_text(CLIENT.private, value)
            state = "sealed"
        except DecryptionError:
            # The real blob with the last bit of its tag flipped: flipped back, it opens.
            repaired = value[:-2] + f"{int(value[-2:], 16) ^ 1:02x}"
            open_text(CLIENT.private, repaired)
            state = "corrupt"
        result.append((index, name, state))
    return result


def spoiled(plan: AnswerPlan, faults: Faults) -> list[tuple[int, str, str]]:
    return [token for token in faulty(plan, faults) if token[2] != "sealed"]


@pytest.mark.parametrize(
    ("plan", "at", "token"),
    [
        (TWO_CHOICES, 0, "c0"),
        (TWO_CHOICES, 2, "c2"),
        (LONG_SECOND, 0, "c0"),
        (LONG_SECOND, 2, "c2"),
        (LONG_SECOND, 3, "c3"),
    ],
)
def test_plaintext_chunk_is_one_content_token_of_choice_zero(
    plan: AnswerPlan, at: int, token: str
) -> None:
    assert spoiled(plan, Faults(plaintext_chunk=True, fault_at_token=at)) == [(0, token, "plain")]


@pytest.mark.parametrize(
    ("plan", "at", "position"),
    [(TWO_CHOICES, 0, 3), (TWO_CHOICES, 2, 5), (LONG_SECOND, 1, 2), (LONG_SECOND, 3, 6)],
)
def test_corrupt_ciphertext_is_one_content_blob_of_choice_zero(
    plan: AnswerPlan, at: int, position: int
) -> None:
    tokens = faulty(plan, Faults(corrupt_ciphertext=True, fault_at_token=at))
    assert [token for token in tokens if token[2] != "sealed"] == [(0, "content", "corrupt")]
    assert tokens[position] == (0, "content", "corrupt")


def test_a_fault_past_the_last_content_token_never_fires() -> None:
    assert spoiled(TWO_CHOICES, Faults(plaintext_chunk=True, fault_at_token=4)) == []
    assert spoiled(TWO_CHOICES, Faults(corrupt_ciphertext=True, fault_at_token=4)) == []


def test_both_faults_leak_one_token_and_corrupt_the_next() -> None:
    faults = Faults(plaintext_chunk=True, corrupt_ciphertext=True, fault_at_token=1)
    assert spoiled(LONG_SECOND, faults) == [(0, "c1", "plain"), (0, "content", "corrupt")]
    assert faulty(LONG_SECOND, faults)[4] == (0, "content", "corrupt")


def test_faults_without_a_sealer_leave_the_plaintext_stream_alone() -> None:
    faults = Faults(plaintext_chunk=True, corrupt_ciphertext=True)
    assert events(TWO_CHOICES, faults) == events(TWO_CHOICES)


def test_corrupt_flips_the_last_bit_of_the_tag() -> None:
    assert _corrupt("0a0bff") == "0a0bfe"
    assert _corrupt("0a0b10") == "0a0b11"
    assert _corrupt("ffff0e") == "ffff0f"


@pytest.mark.parametrize(("tokens", "before_error"), [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2)])
def test_midstream_error_comes_half_way_then_done(tokens: int, before_error: int) -> None:
    items = events(single(tokens), Faults(midstream_error=True))
    assert items == [
        chunk(0, {"role": "assistant", "content": ""}),
        *(chunk(0, {"content": f"t{i}"}) for i in range(before_error)),
        ERROR_EVENT,
        "[DONE]",
    ]


def test_cut_comes_before_the_midstream_error_and_after_the_last_token() -> None:
    assert events(single(4), Faults(cut_stream_after=1, midstream_error=True)) == [
        chunk(0, {"role": "assistant", "content": ""}),
        chunk(0, {"content": "t0"}),
        Marker.CUT,
    ]
    assert events(single(2), Faults(cut_stream_after=9)) == [
        chunk(0, {"role": "assistant", "content": ""}),
        chunk(0, {"content": "t0"}),
        chunk(0, {"content": "t1"}),
        Marker.CUT,
    ]


# -- the non-streamed completion ---------------------------------------------------------------


def test_completion_object_joins_the_tokens_of_each_choice() -> None:
    assert completion_object(TWO_CHOICES, META) == {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "e2ee-model",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "c0c1c2c3",
                    "reasoning_content": "r0r1",
                },
                "logprobs": None,
                "finish_reason": "stop",
            },
            {
                "index": 1,
                "message": {"role": "assistant", "content": "d0"},
                "logprobs": None,
                "finish_reason": "length",
            },
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10},
    }
