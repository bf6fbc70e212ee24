"""Every simulator fault, including a real-socket truncation and Phala legacy semantics."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from proxy.core.crypto import generate_keypair, looks_like_ciphertext, open_text, seal_text
from proxy.core.errors import DecryptionError
from proxy.simulator import (
    Faults,
    SimulatedStreamCutError,
    SimulatorState,
    StreamOutcome,
    recover_address,
)
from proxy.simulator.state import STREAM_OUTCOMES_KEPT
from tests.support.simulator_helpers import (
    API_KEY,
    NEAR_MODEL,
    REASONING_MODEL,
    USER_TEXT,
    ThreadedSimulator,
    client_for,
    collect,
    e2ee_chat,
    e2ee_headers,
    encrypt_messages,
    json_events,
    sse_events,
)

USER = [{"role": "user", "content": USER_TEXT}]
ANSWER = f"You said: {USER_TEXT} — ok ✓ 🦊"


def token_blobs(chunks: list[dict[str, Any]], field: str = "content") -> list[str]:
    return [
        c["choices"][0]["delta"][field]
        for c in chunks
        if c.get("choices") and c["choices"][0]["delta"].get(field)
    ]


def drain_into(response: httpx.Response, sink: bytearray) -> None:
    for piece in response.iter_raw():
        sink += piece


async def test_fail_status_429_once_then_success() -> None:
    state = SimulatorState()
    state.faults = Faults(fail_status=429)
    async with client_for(state) as http:
        first = await http.post("/chat/completions", json={"model": NEAR_MODEL, "messages": USER})
        attestation = await http.get("/tee/attestation", params={"model": NEAR_MODEL})
        second = await http.post("/chat/completions", json={"model": NEAR_MODEL, "messages": USER})
    assert first.status_code == 429
    assert first.headers["retry-after"] == "1"
    assert first.json() == {"error": "Rate limit exceeded", "code": "RATE_LIMIT_EXCEEDED"}
    assert attestation.status_code == 200
    assert second.status_code == 200
    assert state.chat_requests == 2


async def test_fail_times_counts_and_always() -> None:
    state = SimulatorState()
    state.faults = Faults(fail_status=503, fail_times=2)
    body = {"model": NEAR_MODEL, "messages": USER}
    async with client_for(state) as http:
        statuses = [(await http.post("/chat/completions", json=body)).status_code for _ in range(3)]
        assert statuses == [503, 503, 200]
        state.faults = Faults(fail_status=500, fail_times=-1)
        always = [(await http.post("/chat/completions", json=body)) for _ in range(4)]
        state.faults = Faults(fail_status=500, fail_times=0)
        never = await http.post("/chat/completions", json=body)
    assert [r.status_code for r in always] == [500] * 4
    assert "retry-after" not in always[0].headers
    assert isinstance(always[0].json()["error"], str)
    assert never.status_code == 200


async def test_cut_stream_raises_inside_the_app() -> None:
    state = SimulatorState()
    state.faults = Faults(cut_stream_after=2)
    async with client_for(state) as http:
        with pytest.raises(SimulatedStreamCutError):
            await e2ee_chat(http, state, USER)


async def test_each_stream_outcome_is_kept_by_completion_id() -> None:
    state = SimulatorState()
    async with client_for(state) as http:
        response, _ = await e2ee_chat(http, state, USER)
        completed = json_events(response.content)[0]["id"]
        state.faults = Faults(cut_stream_after=2)
        with pytest.raises(SimulatedStreamCutError):
            await e2ee_chat(http, state, USER)
    assert state.stream_outcomes[completed] is StreamOutcome.COMPLETED
    assert list(state.stream_outcomes.values()) == [StreamOutcome.COMPLETED, StreamOutcome.CUT]
    assert (state.streams_completed, state.streams_cancelled, state.streams_open) == (1, 0, 0)
    state.reset()
    assert state.stream_outcomes == {}


def test_stream_outcomes_keep_only_the_latest() -> None:
    state = SimulatorState()
    for index in range(STREAM_OUTCOMES_KEPT + 2):
        state.stream_ended(f"chatcmpl-{index}", StreamOutcome.CANCELLED)
    assert len(state.stream_outcomes) == STREAM_OUTCOMES_KEPT
    assert "chatcmpl-1" not in state.stream_outcomes
    assert f"chatcmpl-{STREAM_OUTCOMES_KEPT + 1}" in state.stream_outcomes
    assert state.streams_cancelled == STREAM_OUTCOMES_KEPT + 2


def test_cut_stream_truncates_the_body_on_a_real_socket() -> None:
    state = SimulatorState(api_key=API_KEY)
    state.faults = Faults(cut_stream_after=3)
    received = bytearray()
    with (
        ThreadedSimulator(state) as server,
        httpx.Client(
            base_url=server.base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10
        ) as http,
    ):
        body = {"model": NEAR_MODEL, "messages": USER, "stream": True}
        with http.stream("POST", "/chat/completions", json=body) as response:
            assert response.status_code == 200
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                drain_into(response, received)
        # The server survives the drop and serves the next request.
        state.faults = Faults()
        healthy = http.post("/chat/completions", json=body)
    events = sse_events(bytes(received))
    assert "[DONE]" not in events
    assert len(events) == 1 + 3  # the role chunk, then exactly three token chunks
    assert healthy.status_code == 200
    assert sse_events(healthy.content)[-1] == "[DONE]"


def test_stream_is_incremental_on_a_real_socket() -> None:
    state = SimulatorState(api_key=API_KEY, token_delay_s=0.05)
    with (
        ThreadedSimulator(state) as server,
        httpx.Client(
            base_url=server.base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10
        ) as http,
    ):
        body = {"model": NEAR_MODEL, "messages": USER, "stream": True}
        with http.stream("POST", "/chat/completions", json=body) as response:
            pieces = response.iter_raw()
            first = next(pieces)
            rest = b"".join(pieces)
    assert b"[DONE]" not in first
    assert (first + rest).endswith(b"data: [DONE]\n\n")


async def test_plaintext_chunk_leaks_one_content_token() -> None:
    state = SimulatorState()
    state.faults = Faults(plaintext_chunk=True)
    async with client_for(state) as http:
        response, client = await e2ee_chat(http, state, USER)
    blobs = token_blobs(json_events(response.content))
    leaked = [b for b in blobs if not looks_like_ciphertext(b)]
    assert leaked == ["You"]
    assert "".join(open_text(client.private, b) for b in blobs[1:]) == ANSWER[len("You") :]


async def test_corrupt_ciphertext_breaks_exactly_one_blob() -> None:
    state = SimulatorState()
    state.faults = Faults(corrupt_ciphertext=True)
    async with client_for(state) as http:
        response, client = await e2ee_chat(http, state, USER)
    blobs = token_blobs(json_events(response.content))
    assert all(looks_like_ciphertext(b) for b in blobs)
    failures = 0
    for blob in blobs:
        try:
            open_text(client.private, blob)
        except DecryptionError:
            failures += 1
    assert failures == 1


async def test_midstream_error_then_done_and_no_signature() -> None:
    state = SimulatorState()
    state.faults = Faults(midstream_error=True)
    async with client_for(state) as http:
        response, _ = await e2ee_chat(http, state, USER)
        events = sse_events(response.content)
        chunks = json_events(response.content)
        signature = await http.get(
            "/tee/signature", params={"model": NEAR_MODEL, "request_id": chunks[0]["id"]}
        )
    assert events[-1] == "[DONE]"
    error = chunks[-1]["error"]
    assert error["type"] == "server_error"
    assert error["code"] == "upstream_error"
    assert error["message"]
    assert not any(c.get("usage") for c in chunks)
    assert not any(c["choices"][0].get("finish_reason") for c in chunks[:-1])
    assert 0 < len(token_blobs(chunks)) < len(ANSWER.split())
    assert signature.status_code == 404


async def test_phala_legacy_stream_semantics() -> None:
    state = SimulatorState()
    state.faults = Faults(phala_legacy=True)
    async with client_for(state) as http:
        response, client = await e2ee_chat(http, state, USER)
        chunks = json_events(response.content)
        signed = await http.get(
            "/tee/signature", params={"model": NEAR_MODEL, "request_id": chunks[0]["id"]}
        )
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    blobs = token_blobs(chunks)
    assert len({b[:130] for b in blobs}) == 1, "one server ephemeral per response"
    assert len({b[130:154] for b in blobs}) == len(blobs), "fresh GCM nonce per field"
    assert collect(chunks, client) == {0: ANSWER}
    text = signed.json()["text"]
    assert len(text.split(":")) == 2
    assert recover_address(text, signed.json()["signature"]) == signed.json()["signing_address"]


async def test_phala_legacy_leaves_reasoning_in_plaintext() -> None:
    state = SimulatorState()
    state.faults = Faults(phala_legacy=True)
    async with client_for(state) as http:
        response, client = await e2ee_chat(http, state, USER, model=REASONING_MODEL)
    chunks = json_events(response.content)
    assert collect(chunks, client, "reasoning_content") == {0: "Considering 1 messages."}
    assert collect(chunks, None, "reasoning") == {0: "Considering 1 messages."}


async def test_phala_legacy_request_rules() -> None:
    state = SimulatorState()
    state.faults = Faults(phala_legacy=True)
    key = state.enclave_public_key
    client = generate_keypair()

    async def post(messages: list[dict[str, Any]]) -> httpx.Response:
        body = {"model": NEAR_MODEL, "messages": messages, "stream": True}
        async with client_for(state) as http:
            return await http.post(
                "/chat/completions", json=body, headers=e2ee_headers(client, key)
            )

    for bad in ("plain", "", "abc"):
        response = await post([{"role": "user", "content": bad}])
        assert response.status_code == 400
        assert (
            response.json()["error"]["message"] == "Encrypted message content must be hex-encoded"
        )
    tampered = seal_text(key, "x")[:-2] + "00"
    failed = await post([{"role": "user", "content": tampered}])
    assert failed.status_code == 400
    assert failed.json()["error"]["message"] == "Decryption failed"
    parts = [{"type": "text", "text": seal_text(key, "in parts")}]
    ok = await post([{"role": "user", "content": parts}, {"role": "assistant", "content": None}])
    assert ok.status_code == 200
    assert collect(json_events(ok.content), client) == {0: "You said: in parts — ok ✓ 🦊"}
    sealed_empty = encrypt_messages([{"role": "system", "content": ""}, *USER], key)
    assert (await post(sealed_empty)).status_code == 200
