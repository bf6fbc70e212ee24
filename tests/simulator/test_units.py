"""The simulator's pure parts: tokenizer, signing vectors, measurements against a real capture,
quote builder, request decryption, response sealing and the stream composer."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.core.crypto import (
    address_hex,
    generate_keypair,
    keypair_from_private,
    open_text,
    seal_text,
)
from proxy.simulator import Faults, SimulatedStreamCutError
from proxy.simulator.answer import ANSWER_SUFFIX, plan_answer, tokenize
from proxy.simulator.app import StreamCutLogFilter
from proxy.simulator.chunks import DONE, CompletionMeta, Marker, stream_items
from proxy.simulator.decrypt import decrypt_messages_near, is_hex
from proxy.simulator.http_errors import SimulatedHTTPError
from proxy.simulator.measurements import replay_rtmrs, runtime_event
from proxy.simulator.quote import TdReportFields, build_tdx_quote, report_data_for
from proxy.simulator.sealing import ResponseSealer
from proxy.simulator.signing import eip55, recover_address, sign_text, signature_text
from proxy.simulator.state import SimulatorState, enclave_keypair
from tests.support.fixtures import FIXTURES_DIR

FIXTURES = FIXTURES_DIR / "attestations"
META = CompletionMeta(id="chatcmpl-test", created=1, model="e2ee-simulated-near")


# -- tokenizer ---------------------------------------------------------------------------------


def test_tokenize_keeps_whitespace_attached_and_emoji_alone() -> None:
    assert tokenize("You said: hi" + ANSWER_SUFFIX) == [
        "You",
        " said:",
        " hi",
        " —",
        " ok",
        " ✓",
        " 🦊",
    ]
    assert tokenize("a🦊b") == ["a", "🦊", "b"]


@given(st.text())
def test_tokenize_is_lossless(text: str) -> None:
    assert "".join(tokenize(text)) == text


def test_plan_counts_tokens() -> None:
    plan = plan_answer([{"role": "user", "content": "one two"}], n=3, max_tokens=2)
    assert [c.content for c in plan.choices] == [("[0]", " You"), ("[1]", " You"), ("[2]", " You")]
    assert {c.finish_reason for c in plan.choices} == {"length"}
    assert plan.prompt_tokens == 2
    assert plan.completion_tokens == 6


# -- signing -----------------------------------------------------------------------------------


def test_eip191_signature_matches_the_web3_vector() -> None:
    # web3.js documentation vector for accounts.sign("Some data", key).
    key = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
    signature = sign_text(key, "Some data")
    assert signature == (
        "0xb91467e570a6466aa9e9876cbcd013baba02900b8979d43fe208a4a4f339f5fd"
        "6007e74cd82e037b800186422fc2da167c747ef045e5d18a5f5d4300f8e1a0291c"
    )
    assert recover_address("Some data", signature) == address_hex(keypair_from_private(key).public)
    assert recover_address("Some data!", signature) != address_hex(keypair_from_private(key).public)


def test_eip55_matches_a_real_phala_capture() -> None:
    capture = json.loads((FIXTURES / "attestation_gemma_3_27b_p.json").read_text())
    address = capture["attestation"]["signing_address"]
    assert eip55(bytes.fromhex(address[2:].lower())) == address


def test_signature_text_forms() -> None:
    assert signature_text("org/M", b"req", b"resp").startswith("org/M:")
    assert len(signature_text("org/M", b"req", b"resp").split(":")) == 3
    assert len(signature_text(None, b"req", b"resp").split(":")) == 2


# -- measurements against a real capture ---------------------------------------------------------


def test_replay_and_runtime_event_rule_reproduce_a_real_capture() -> None:
    capture = json.loads((FIXTURES / "attestation_glm_5_1.json").read_text())["attestation"]
    tcb = capture["info"]["tcb_info"]
    rtmrs = replay_rtmrs(capture["event_log"])
    assert [r.hex() for r in rtmrs] == [tcb[f"rtmr{i}"] for i in range(4)]
    for event in capture["event_log"]:
        if event["imr"] == 3:
            ours = runtime_event(event["event"], bytes.fromhex(event["event_payload"]))
            assert ours.digest.hex() == event["digest"]


# -- quote builder -----------------------------------------------------------------------------


def test_quote_builder_rejects_wrong_sizes() -> None:
    with pytest.raises(ValueError, match="report_data"):
        TdReportFields(
            mr_td=bytes(48), mr_config_id=bytes(48), rtmrs=(bytes(48),) * 4, report_data=bytes(63)
        )
    with pytest.raises(ValueError, match="rtmrs"):
        TdReportFields(
            mr_td=bytes(48), mr_config_id=bytes(48), rtmrs=(bytes(47),) * 4, report_data=bytes(64)
        )
    with pytest.raises(ValueError, match="32 bytes"):
        report_data_for(bytes(20), bytes(16))


def test_quote_carries_report_data() -> None:
    data = report_data_for(bytes(range(20)), bytes(range(32)))
    quote = build_tdx_quote(
        TdReportFields(
            mr_td=bytes(48), mr_config_id=bytes(48), rtmrs=(bytes(48),) * 4, report_data=data
        )
    )
    assert quote[568:632] == data


# -- request decryption ------------------------------------------------------------------------


def test_is_hex_rejects_whitespace_and_odd_length() -> None:
    assert is_hex("00aA")
    assert not is_hex("00 aa")
    assert not is_hex("abc")
    assert is_hex("")


def test_near_decrypt_restores_json_arrays_only() -> None:
    enclave = generate_keypair()
    parts = [{"type": "text", "text": "x"}]
    messages: list[Any] = [
        {"role": "user", "content": seal_text(enclave.public, json.dumps(parts))},
        {"role": "user", "content": seal_text(enclave.public, '{"not": "a list"}')},
        {"role": "user", "content": seal_text(enclave.public, "[not json")},
        {"role": "user", "content": [{"type": "text", "text": "passes through"}]},
        "not a dict",
    ]
    opened = decrypt_messages_near(messages, enclave.private)
    assert opened[0]["content"] == parts
    assert opened[1]["content"] == '{"not": "a list"}'
    assert opened[2]["content"] == "[not json"
    assert opened[3] == messages[3]
    assert opened[4] == "not a dict"
    assert messages[0]["content"] != parts, "the input is not mutated"


def test_near_decrypt_error_carries_no_plaintext() -> None:
    enclave = generate_keypair()
    other = generate_keypair()
    with pytest.raises(SimulatedHTTPError) as caught:
        decrypt_messages_near(
            [{"role": "user", "content": seal_text(other.public, "secret words")}], enclave.private
        )
    assert caught.value.status_code == 400
    assert "secret" not in json.dumps(caught.value.body)


# -- response sealing --------------------------------------------------------------------------


def test_near_sealer_fresh_ephemeral_per_field_and_empty_kept() -> None:
    client = generate_keypair()
    sealer = ResponseSealer(client.public)
    delta: dict[str, Any] = {"content": " ", "reasoning": "r", "reasoning_content": "rc"}
    sealer.seal_delta(delta)
    assert {open_text(client.private, v) for v in delta.values()} == {" ", "r", "rc"}
    assert len({v[:130] for v in delta.values()}) == 3
    empty: dict[str, Any] = {"role": "assistant", "content": ""}
    sealer.seal_delta(empty)
    assert empty == {"role": "assistant", "content": ""}
    assert "phala_legacy=False" in repr(sealer)


def test_phala_sealer_one_ephemeral_no_reasoning_and_empty_deleted() -> None:
    client = generate_keypair()
    sealer = ResponseSealer(client.public, phala_legacy=True)
    delta: dict[str, Any] = {"content": "a", "reasoning": "r", "reasoning_content": "rc"}
    sealer.seal_delta(delta)
    assert delta["reasoning"] == "r"
    assert delta["content"][:130] == delta["reasoning_content"][:130]
    assert delta["content"][130:154] != delta["reasoning_content"][130:154]  # nonce per field
    assert open_text(client.private, delta["content"]) == "a"
    assert open_text(client.private, delta["reasoning_content"]) == "rc"
    role: dict[str, Any] = {"role": "assistant", "content": ""}
    sealer.seal_delta(role)
    assert role == {"role": "assistant"}


# -- stream composer ---------------------------------------------------------------------------


def items_for(faults: Faults) -> list[bytes | Marker]:
    plan = plan_answer([{"role": "user", "content": "a b c d"}])
    return list(stream_items(plan, META, faults=faults))


def test_complete_marker_follows_done() -> None:
    items = items_for(Faults())
    assert items[-2:] == [DONE, Marker.COMPLETE]
    assert Marker.CUT not in items


@pytest.mark.parametrize("after", [0, 1, 5, 100])
def test_cut_marker_after_n_token_chunks(after: int) -> None:
    items = items_for(Faults(cut_stream_after=after))
    token_count = len(plan_answer([{"role": "user", "content": "a b c d"}]).choices[0].content)
    assert items[-1] is Marker.CUT
    assert DONE not in items
    assert len(items) - 2 == min(after, token_count)


def test_faults_validate_their_values() -> None:
    with pytest.raises(ValueError, match="fail_status"):
        Faults(fail_status=200)
    with pytest.raises(ValueError, match="fail_times"):
        Faults(fail_status=500, fail_times=-2)
    with pytest.raises(ValueError, match="cut_stream_after"):
        Faults(cut_stream_after=-1)


def test_state_repr_and_keys() -> None:
    state = SimulatorState(api_key="sk-very-secret", seed=3)
    assert "sk-very-secret" not in repr(state)
    assert enclave_keypair(3, 0).public == state.enclave_public_key
    private = state.enclave.private.hex()
    assert private not in repr(state.enclave)


def test_log_filter_hides_only_deliberate_stream_cuts() -> None:
    log_filter = StreamCutLogFilter()

    def record(exc: BaseException | None) -> logging.LogRecord:
        exc_info = (type(exc), exc, None) if exc is not None else None
        return logging.LogRecord("uvicorn.error", logging.ERROR, "", 0, "boom", None, exc_info)

    assert log_filter.filter(record(SimulatedStreamCutError())) is False
    assert log_filter.filter(record(RuntimeError("real bug"))) is True
    assert log_filter.filter(record(None)) is True
