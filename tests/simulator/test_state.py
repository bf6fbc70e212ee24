"""The simulated server's state: the enclave key and its rotation, the fault budgets, the API key
check, the signature cache and its expiry, the stream outcomes and the reset (pure, no app)."""

from __future__ import annotations

import hashlib
import time

import pytest

from proxy.core.crypto import keypair_from_private
from proxy.simulator.faults import ALWAYS, Faults
from proxy.simulator.state import (
    SIGNATURE_TTL_S,
    STREAM_OUTCOMES_KEPT,
    RecordedRequest,
    SimulatorState,
    StoredSignature,
    StreamOutcome,
    enclave_keypair,
)


def signature(
    model: str = "e2ee-simulated-near", expires_at: float | None = None
) -> StoredSignature:
    return StoredSignature(
        model=model,
        text="text",
        signature="0xsig",
        signing_address="0xaddress",
        expires_at=time.monotonic() + SIGNATURE_TTL_S if expires_at is None else expires_at,
    )


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A monotonic clock the test sets (now[0])."""
    now = [1000.0]
    monkeypatch.setattr("proxy.simulator.state.time.monotonic", lambda: now[0])
    return now


# -- recorded requests -------------------------------------------------------------------------


def test_recorded_request_parses_its_body_and_hides_headers_and_body() -> None:
    request = RecordedRequest(
        method="POST",
        path="/api/v1/chat/completions",
        query="a=1",
        headers={"authorization": "Bearer sk-secret-key"},
        body=b'{"prompt": "private words"}',
    )
    assert request.json() == {"prompt": "private words"}
    text = repr(request)
    assert "sk-secret-key" not in text
    assert "private words" not in text
    assert "POST" in text
    assert "/api/v1/chat/completions" in text


# -- the enclave key ---------------------------------------------------------------------------


def test_enclave_key_is_the_documented_derivation_of_seed_and_generation() -> None:
    for seed, generation in ((0, 0), (3, 0), (3, 2)):
        digest = hashlib.sha256(
            f"venice-simulator enclave key|{seed}|{generation}|0".encode()
        ).digest()
        assert enclave_keypair(seed, generation) == keypair_from_private(digest)
    assert enclave_keypair(0, 0) != enclave_keypair(1, 0)
    assert enclave_keypair(0, 0) != enclave_keypair(0, 1)


def test_rotation_moves_to_the_next_generation_and_keeps_the_seed() -> None:
    state = SimulatorState(seed=5)
    assert state.enclave == enclave_keypair(5, 0)
    assert state.enclave_public_key == enclave_keypair(5, 0).public
    assert len(state.enclave_public_key) == 65
    state.rotate_key()
    assert state.enclave == enclave_keypair(5, 1)
    assert state.enclave_public_key == enclave_keypair(5, 1).public
    assert "generation=1" in repr(state)
    state.rotate_key()
    assert state.enclave == enclave_keypair(5, 2)
    state.reset()
    assert state.enclave == enclave_keypair(5, 2)  # the key survives a reset


def test_a_new_state_starts_clean() -> None:
    state = SimulatorState()
    assert state.seed == 0
    assert state.enclave == enclave_keypair(0, 0)
    assert state.token_delay_s == 0.0
    assert state.proxy_policy is False
    assert state.policy_allows == frozenset()
    assert state.policy_violations == []
    assert state.faults == Faults()
    assert state.take_failure() is None
    assert state.take_tool_fault() is None
    assert state.requests == []
    assert (state.attestation_fetches, state.chat_requests, state.streams_open) == (0, 0, 0)
    assert (state.streams_completed, state.streams_cancelled) == (0, 0)
    assert state.stream_outcomes == {}
    assert state.signature_for("chatcmpl-x", "e2ee-simulated-near") is None
    assert state.api_key_ok("anything") is True  # no key set: any non-empty bearer
    strict = SimulatorState(token_delay_s=0.25, seed=9, proxy_policy=True)
    assert (strict.token_delay_s, strict.seed, strict.proxy_policy) == (0.25, 9, True)


def test_repr_names_seed_generation_faults_and_request_count_only() -> None:
    state = SimulatorState(api_key="sk-very-secret", seed=3)
    state.faults = Faults(debug_quote=True)
    state.requests.append(RecordedRequest("GET", "/p", "", {}, b""))
    assert repr(state) == (
        f"SimulatorState(seed=3, generation=0, faults={Faults(debug_quote=True)!r}, requests=1)"
    )


# -- the API key -------------------------------------------------------------------------------


def test_api_key_check() -> None:
    open_state = SimulatorState()
    assert open_state.api_key_ok("x") is True
    assert open_state.api_key_ok("") is False
    keyed = SimulatorState(api_key="sk-right")
    assert keyed.api_key_ok("sk-right") is True
    assert keyed.api_key_ok("sk-wrong") is False
    assert keyed.api_key_ok("") is False
    assert keyed.api_key_ok("sk-right ") is False


# -- fault budgets -----------------------------------------------------------------------------


def test_failures_are_taken_from_the_budget_then_stop() -> None:
    state = SimulatorState()
    state.faults = Faults(fail_status=429, fail_times=2)
    assert [state.take_failure() for _ in range(4)] == [429, 429, None, None]
    state.faults = Faults(fail_status=503)  # a new value refills the budget (default: once)
    assert [state.take_failure() for _ in range(2)] == [503, None]
    state.faults = Faults(fail_status=500, fail_times=0)
    assert state.take_failure() is None


def test_always_failing_never_runs_out() -> None:
    state = SimulatorState()
    state.faults = Faults(fail_status=500, fail_times=ALWAYS)
    assert [state.take_failure() for _ in range(5)] == [500] * 5


def test_a_budget_without_a_status_fails_nothing() -> None:
    state = SimulatorState()
    state.faults = Faults(fail_times=3, tool_fault_times=3)
    assert state.take_failure() is None
    assert state.take_tool_fault() is None
    # Switching the status on afterwards does not reuse a budget that was never granted.
    state.faults = Faults(debug_quote=True)
    assert state.take_failure() is None


def test_tool_faults_are_taken_from_their_budget() -> None:
    state = SimulatorState()
    state.faults = Faults(tool_fault="no_call", tool_fault_times=2)
    assert [state.take_tool_fault() for _ in range(3)] == ["no_call", "no_call", None]
    state.faults = Faults(tool_fault="malformed_call")  # default: every time
    assert [state.take_tool_fault() for _ in range(4)] == ["malformed_call"] * 4
    state.faults = Faults(tool_fault="broken_object", tool_fault_times=0)
    assert state.take_tool_fault() is None


def test_the_two_budgets_are_separate() -> None:
    state = SimulatorState()
    state.faults = Faults(fail_status=502, fail_times=1, tool_fault="no_call", tool_fault_times=1)
    assert state.take_tool_fault() == "no_call"
    assert state.take_failure() == 502
    assert (state.take_failure(), state.take_tool_fault()) == (None, None)


# -- signatures --------------------------------------------------------------------------------


def test_a_stored_signature_is_found_by_request_id_and_model() -> None:
    state = SimulatorState()
    stored = signature()
    state.store_signature("chatcmpl-1", stored)
    assert state.signature_for("chatcmpl-1", "e2ee-simulated-near") is stored
    assert state.signature_for("chatcmpl-1", "e2ee-simulated-reasoning") is None
    assert state.signature_for("chatcmpl-2", "e2ee-simulated-near") is None


def test_a_signature_expires_at_its_deadline(clock: list[float]) -> None:
    state = SimulatorState()
    stored = signature(expires_at=1010.0)
    state.store_signature("chatcmpl-1", stored)
    clock[0] = 1009.999
    assert state.signature_for("chatcmpl-1", "e2ee-simulated-near") is stored
    clock[0] = 1010.0
    assert state.signature_for("chatcmpl-1", "e2ee-simulated-near") is None


def test_storing_drops_the_expired_signatures_only(clock: list[float]) -> None:
    state = SimulatorState()
    state.store_signature("expired", signature(expires_at=1005.0))
    state.store_signature("due-now", signature(expires_at=1010.0))
    state.store_signature("alive", signature(expires_at=1010.001))
    clock[0] = 1010.0
    state.store_signature("new", signature(expires_at=2000.0))
    assert sorted(state._signatures) == ["alive", "new"]
    assert state.signature_for("alive", "e2ee-simulated-near") is not None
    assert state.signature_for("new", "e2ee-simulated-near") is not None


def test_the_signature_ttl_is_nears_twenty_minutes() -> None:
    assert SIGNATURE_TTL_S == 1200.0


# -- streams -----------------------------------------------------------------------------------


def test_stream_outcomes_are_counted_and_kept_by_completion_id() -> None:
    state = SimulatorState()
    state.stream_ended("a", StreamOutcome.COMPLETED)
    state.stream_ended("b", StreamOutcome.CANCELLED)
    state.stream_ended("c", StreamOutcome.CUT)
    state.stream_ended("d", StreamOutcome.FAILED)
    state.stream_ended("e", StreamOutcome.COMPLETED)
    state.stream_ended("f", StreamOutcome.CANCELLED)
    state.stream_ended("g", StreamOutcome.CUT)
    assert (state.streams_completed, state.streams_cancelled) == (2, 2)
    assert state.stream_outcomes == {
        "a": StreamOutcome.COMPLETED,
        "b": StreamOutcome.CANCELLED,
        "c": StreamOutcome.CUT,
        "d": StreamOutcome.FAILED,
        "e": StreamOutcome.COMPLETED,
        "f": StreamOutcome.CANCELLED,
        "g": StreamOutcome.CUT,
    }


def test_stream_outcomes_keep_exactly_the_latest_ones() -> None:
    state = SimulatorState()
    for index in range(STREAM_OUTCOMES_KEPT):
        state.stream_ended(f"s{index}", StreamOutcome.COMPLETED)
    assert len(state.stream_outcomes) == STREAM_OUTCOMES_KEPT
    assert "s0" in state.stream_outcomes
    state.stream_ended("last", StreamOutcome.CUT)
    state.stream_ended("last2", StreamOutcome.CUT)
    assert len(state.stream_outcomes) == STREAM_OUTCOMES_KEPT
    assert "s0" not in state.stream_outcomes
    assert "s1" not in state.stream_outcomes
    assert "s2" in state.stream_outcomes
    assert state.stream_outcomes["last2"] is StreamOutcome.CUT
    assert state.streams_completed == STREAM_OUTCOMES_KEPT


def test_outcome_values_are_their_names() -> None:
    assert [outcome.value for outcome in StreamOutcome] == [
        "completed",
        "cancelled",
        "cut",
        "failed",
    ]


# -- reset -------------------------------------------------------------------------------------


def test_reset_clears_everything_but_the_key_and_the_open_streams() -> None:
    state = SimulatorState(seed=2)
    state.rotate_key()
    key = state.enclave
    state.requests.append(RecordedRequest("GET", "/p", "", {}, b""))
    state.policy_violations.append("messages[0].name")
    state.policy_allows = frozenset({"user"})
    state.attestation_fetches = 3
    state.chat_requests = 4
    state.streams_open = 1
    state.stream_ended("a", StreamOutcome.COMPLETED)
    state.stream_ended("b", StreamOutcome.CANCELLED)
    state.faults = Faults(fail_status=500, fail_times=ALWAYS, tool_fault="no_call")
    state.store_signature("chatcmpl-1", signature())
    state.reset()
    assert state.requests == []
    assert state.policy_violations == []
    assert state.policy_allows == frozenset()
    assert (state.attestation_fetches, state.chat_requests) == (0, 0)
    assert (state.streams_completed, state.streams_cancelled) == (0, 0)
    assert state.stream_outcomes == {}
    assert state.faults == Faults()
    assert state.take_failure() is None
    assert state.take_tool_fault() is None
    assert state.signature_for("chatcmpl-1", "e2ee-simulated-near") is None
    assert state.enclave == key
    assert state.streams_open == 1  # a stream still winding down decrements it later
