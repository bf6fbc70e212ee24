"""The simulated Venice app's routes in process (proxy/simulator/app.py): authorization, the
exact error bodies and headers, the chat response's headers, what is signed and when, how each
stream ends, and the runner's wiring. No server is started."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import pytest
import uvicorn

from proxy.core.crypto import address_hex, generate_keypair
from proxy.simulator import app as app_module
from proxy.simulator.app import (
    RATE_LIMIT_REQUESTS,
    StreamCutLogFilter,
    create_simulator_app,
    run_simulator,
)
from proxy.simulator.catalog import find_model
from proxy.simulator.chat import ChatAnswer
from proxy.simulator.chunks import DONE, CompletionMeta, Marker
from proxy.simulator.faults import Faults
from proxy.simulator.http_errors import SimulatedStreamCutError
from proxy.simulator.signing import recover_address, signature_text
from proxy.simulator.state import SIGNATURE_TTL_S, SimulatorState, StreamOutcome
from tests.support.simulator_helpers import (
    API_KEY,
    NEAR_MODEL,
    PLAIN_MODEL,
    REASONING_MODEL,
    client_for,
    e2ee_chat,
)

USER = [{"role": "user", "content": "hi"}]
CF_RAY = re.compile(r"[0-9a-f]{16}-SIM")


def error(message: str, code: str) -> dict[str, str]:
    return {"error": message, "code": code}


# -- authorization -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "body"),
    [
        (None, error("Authentication failed", "AUTHENTICATION_FAILED")),
        ("", error("Authentication failed", "AUTHENTICATION_FAILED")),
        ("Bearer", error("Authentication failed", "AUTHENTICATION_FAILED")),
        ("Bearer    ", error("Authentication failed", "AUTHENTICATION_FAILED")),
        (f"Basic {API_KEY}", error("Authentication failed", "AUTHENTICATION_FAILED")),
        (f"Token {API_KEY}", error("Authentication failed", "AUTHENTICATION_FAILED")),
        ("Bearer nope", error("Invalid API key provided", "INVALID_API_KEY")),
        (f"Bearer {API_KEY}x", error("Invalid API key provided", "INVALID_API_KEY")),
        (f"bearer {API_KEY}", None),
        (f"BEARER  {API_KEY} ", None),
    ],
)
async def test_every_route_asks_for_the_bearer_key(
    authorization: str | None, body: dict[str, str] | None
) -> None:
    state = SimulatorState(api_key=API_KEY)
    headers = {"Authorization": authorization} if authorization is not None else {}
    async with client_for(state, api_key=None) as http:
        responses = [
            await http.get("/models", headers=headers),
            await http.get("/tee/attestation", params={"model": NEAR_MODEL}, headers=headers),
            await http.post(
                "/chat/completions", json={"model": NEAR_MODEL, "messages": USER}, headers=headers
            ),
        ]
    for response in responses:
        if body is None:
            assert response.status_code == 200, response.text
        else:
            assert response.status_code == 401
            assert response.json() == body
            assert CF_RAY.fullmatch(response.headers["cf-ray"])
    # Counted before the key is checked.
    assert (state.attestation_fetches, state.chat_requests) == (1, 1)


async def test_without_a_configured_key_any_non_empty_key_passes() -> None:
    async with client_for(SimulatorState(), api_key="anything") as http:
        assert (await http.get("/models")).status_code == 200
    # The key is everything after the first space (a key with spaces is still a key).
    async with client_for(SimulatorState(), api_key="two words") as http:
        assert (await http.get("/models")).status_code == 200
    async with client_for(SimulatorState(), api_key="") as http:
        assert (await http.get("/models")).json() == error(
            "Authentication failed", "AUTHENTICATION_FAILED"
        )


# -- models and attestation ----------------------------------------------------------------------


async def test_models_pass_the_type_and_carry_a_ray_id() -> None:
    async with client_for(SimulatorState()) as http:
        text = await http.get("/models", params={"type": "text"})
        images = await http.get("/models", params={"type": "image"})
        default = await http.get("/models")
    assert text.json()["type"] == "text"
    assert images.json() == {"object": "list", "type": "image", "data": []}
    assert len(default.json()["data"]) == 3
    assert CF_RAY.fullmatch(default.headers["cf-ray"])
    assert default.headers["cf-ray"] != text.headers["cf-ray"]


@pytest.mark.parametrize(
    ("params", "status", "body"),
    [
        ({}, 404, error("Specified model not found: None", "MODEL_NOT_FOUND")),
        ({"model": "gpt-9"}, 404, error("Specified model not found: gpt-9", "MODEL_NOT_FOUND")),
        (
            {"model": PLAIN_MODEL},
            400,
            error("model does not support TEE attestation", "INVALID_MODEL"),
        ),
        (
            {"model": NEAR_MODEL, "nonce": "ab" * 31},
            400,
            error("Nonce must be exactly 32 bytes", "INVALID_REQUEST"),
        ),
        (
            {"model": NEAR_MODEL, "nonce": "ab" * 33},
            400,
            error("Nonce must be exactly 32 bytes", "INVALID_REQUEST"),
        ),
        (
            {"model": NEAR_MODEL, "nonce": "zz" * 32},
            400,
            error("Nonce must be exactly 32 bytes", "INVALID_REQUEST"),
        ),
        (
            {"model": NEAR_MODEL, "nonce": ""},
            400,
            error("Nonce must be exactly 32 bytes", "INVALID_REQUEST"),
        ),
    ],
)
async def test_attestation_refusals(params: dict[str, str], status: int, body: Any) -> None:
    state = SimulatorState()
    async with client_for(state) as http:
        response = await http.get("/tee/attestation", params=params)
    assert response.status_code == status
    assert response.json() == body
    assert CF_RAY.fullmatch(response.headers["cf-ray"])
    assert state.attestation_fetches == 1


async def test_attestation_binds_the_client_nonce_or_a_server_one() -> None:
    state = SimulatorState(seed=7)
    nonce = bytes(range(32))
    async with client_for(state) as http:
        client = await http.get(
            "/tee/attestation", params={"model": NEAR_MODEL, "nonce": nonce.hex().upper()}
        )
        server = await http.get("/tee/attestation", params={"model": NEAR_MODEL})
        state.faults = Faults(wrong_nonce=True)
        wrong = await http.get(
            "/tee/attestation", params={"model": NEAR_MODEL, "nonce": nonce.hex()}
        )
    assert client.status_code == 200
    assert CF_RAY.fullmatch(client.headers["cf-ray"])
    assert client.json()["nonce"] == nonce.hex()
    assert client.json()["nonce_source"] == "client"
    assert server.json()["nonce_source"] == "server"
    assert len(bytes.fromhex(server.json()["nonce"])) == 32
    other = hashlib.sha256(b"simulator: not your nonce" + nonce).digest()
    assert wrong.json()["nonce"] == other.hex()


# -- chat --------------------------------------------------------------------------------------


async def test_chat_headers_for_a_tee_model_and_a_plain_one() -> None:
    state = SimulatorState()
    async with client_for(state) as http:
        streamed, _ = await e2ee_chat(http, state, USER)
        whole = await http.post("/chat/completions", json={"model": NEAR_MODEL, "messages": USER})
        plain = await http.post("/chat/completions", json={"model": PLAIN_MODEL, "messages": USER})
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert streamed.headers["cache-control"] == "no-cache"
    assert streamed.headers["x-venice-tee"] == "true"
    assert streamed.headers["x-venice-tee-provider"] == "simulator"
    assert streamed.headers["x-venice-model-id"] == NEAR_MODEL
    assert streamed.headers["x-ratelimit-limit-requests"] == str(RATE_LIMIT_REQUESTS) == "500"
    assert streamed.headers["x-ratelimit-remaining-requests"] == "499"
    assert whole.headers["x-ratelimit-remaining-requests"] == "498"
    assert CF_RAY.fullmatch(streamed.headers["cf-ray"])
    assert whole.headers["content-type"] == "application/json"
    assert "cache-control" not in whole.headers
    assert whole.headers["x-venice-tee"] == "true"
    assert plain.headers["x-venice-model-id"] == PLAIN_MODEL
    assert "x-venice-tee" not in plain.headers
    assert "x-venice-tee-provider" not in plain.headers
    assert CF_RAY.fullmatch(plain.headers["cf-ray"])


async def test_remaining_requests_never_go_below_zero() -> None:
    state = SimulatorState()
    state.chat_requests = RATE_LIMIT_REQUESTS
    async with client_for(state) as http:
        response = await http.post(
            "/chat/completions", json={"model": NEAR_MODEL, "messages": USER}
        )
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    state.chat_requests = RATE_LIMIT_REQUESTS - 2
    async with client_for(state) as http:
        response = await http.post(
            "/chat/completions", json={"model": NEAR_MODEL, "messages": USER}
        )
    assert response.headers["x-ratelimit-remaining-requests"] == "1"


async def test_a_completion_is_compact_utf8_json() -> None:
    state = SimulatorState()
    async with client_for(state) as http:
        response = await http.post(
            "/chat/completions",
            json={"model": NEAR_MODEL, "messages": [{"role": "user", "content": "é"}]},
        )
    parsed = response.json()
    assert (
        response.content == json.dumps(parsed, separators=(",", ":"), ensure_ascii=False).encode()
    )
    assert "é" in response.content.decode("utf-8")
    assert abs(parsed["created"] - time.time()) < 60


async def test_an_injected_failure_carries_its_headers_and_skips_the_answer() -> None:
    state = SimulatorState()
    state.faults = Faults(fail_status=429)
    async with client_for(state) as http:
        response = await http.post(
            "/chat/completions", json={"model": NEAR_MODEL, "messages": USER}
        )
    assert response.status_code == 429
    assert response.json() == error("Rate limit exceeded", "RATE_LIMIT_EXCEEDED")
    assert response.headers["retry-after"] == "1"
    assert CF_RAY.fullmatch(response.headers["cf-ray"])


async def test_policy_violations_accumulate() -> None:
    state = SimulatorState(proxy_policy=True)
    async with client_for(state) as http:
        first, _ = await e2ee_chat(http, state, USER, user="u")
        second, _ = await e2ee_chat(
            http, state, USER, stop="x", stream_options={"include_usage": True}
        )
    assert first.status_code == second.status_code == 400
    assert state.policy_violations == ["user", "stream_options", "stop"]


async def test_the_app_answers_with_its_state_and_no_docs() -> None:
    state = SimulatorState()
    app = create_simulator_app(state)
    assert app.state.simulator is state
    # It names itself, so it is never taken for the proxy's own app (tests/unit/http/test_app.py).
    assert app.title == "Simulated Venice API (venice-e2ee-proxy)"
    fresh = create_simulator_app().state.simulator
    assert isinstance(fresh, SimulatorState)
    assert fresh is not state
    async with client_for(state) as http:
        for path in ("/docs", "/redoc", "/openapi.json"):
            for url in (f"http://simulator.test{path}", path):
                assert (await http.get(url)).status_code == 404
        await http.get("/models")
    assert [r.path for r in state.requests][-1] == "/api/v1/models"


# -- signatures --------------------------------------------------------------------------------


async def signed(state: SimulatorState, **body: Any) -> tuple[Any, dict[str, Any]]:
    async with client_for(state) as http:
        response = await http.post("/chat/completions", json={"messages": USER} | body)
        completion_id = response.json()["id"]
        found = await http.get(
            "/tee/signature", params={"model": body["model"], "request_id": completion_id}
        )
    return response, found.json()


async def test_the_signature_body() -> None:
    state = SimulatorState()
    response, body = await signed(state, model=REASONING_MODEL)
    raw = state.requests[0].body
    text = signature_text("simulator/Simulated-Reasoning-1B", raw, response.content)
    assert body == {
        "text": text,
        "signature": body["signature"],
        "signing_address": address_hex(state.enclave_public_key),
        "signing_algo": "ecdsa",
        "model": REASONING_MODEL,
        "requested_request_id": response.json()["id"],
        "tee_provider": "simulator",
        "upstream_model": "simulator/Simulated-Reasoning-1B",
        "verification": {
            "attestation_endpoint": f"/api/v1/tee/attestation?model={REASONING_MODEL}",
            "description": (
                "EIP-191 signature by the enclave key over "
                "model:sha256(request body):sha256(response bytes); recover the signer and "
                "compare it with the attested signing_address"
            ),
        },
    }
    assert recover_address(text, body["signature"]) == body["signing_address"]


async def test_signature_lookups_that_find_nothing() -> None:
    state = SimulatorState()
    async with client_for(state) as http:
        for params in (
            {"model": NEAR_MODEL},
            {"model": NEAR_MODEL, "request_id": "chatcmpl-nope"},
        ):
            response = await http.get("/tee/signature", params=params)
            assert response.status_code == 404
            assert response.json() == error("Chat id not found or expired", "NOT_FOUND")
        unknown = await http.get("/tee/signature", params={"request_id": "x"})
    assert unknown.json() == error("Specified model not found: None", "MODEL_NOT_FOUND")


async def test_a_plain_model_is_not_signed() -> None:
    state = SimulatorState()
    async with client_for(state) as http:
        response = await http.post(
            "/chat/completions", json={"model": PLAIN_MODEL, "messages": USER}
        )
        found = await http.get(
            "/tee/signature", params={"model": PLAIN_MODEL, "request_id": response.json()["id"]}
        )
    assert found.status_code == 404


async def test_phala_signs_without_the_model_and_bad_signature_with_another_key() -> None:
    state = SimulatorState()
    state.faults = Faults(phala_legacy=True)
    response, body = await signed(state, model=NEAR_MODEL)
    assert body["text"] == signature_text(None, state.requests[0].body, response.content)
    assert recover_address(body["text"], body["signature"]) == address_hex(state.enclave_public_key)
    state.faults = Faults(bad_signature=True)
    response, body = await signed(state, model=NEAR_MODEL)
    assert body["text"].startswith("simulator/Simulated-NEAR-1B:")
    assert body["signing_address"] == address_hex(state.enclave_public_key)
    assert recover_address(body["text"], body["signature"]) != body["signing_address"]


async def test_a_signature_lives_for_its_ttl() -> None:
    state = SimulatorState()
    response, _ = await signed(state, model=NEAR_MODEL)
    completion_id = response.json()["id"]
    stored = state.signature_for(completion_id, NEAR_MODEL)
    assert stored is not None
    assert abs(stored.expires_at - (time.monotonic() + SIGNATURE_TTL_S)) < 60


# -- how a stream ends -------------------------------------------------------------------------


def chat_answer(items: Iterator[Any], model: str = NEAR_MODEL) -> ChatAnswer:
    sim_model = find_model(model)
    assert sim_model is not None
    meta = CompletionMeta(id="chatcmpl-test", created=0, model=model)
    return ChatAnswer(sim_model, meta, True, generate_keypair(), items=items)


async def drain(state: SimulatorState, answer: ChatAnswer, raw: bytes = b"{}") -> list[bytes]:
    return [piece async for piece in app_module._stream_body(state, answer, raw)]


async def test_a_completed_stream_is_signed_over_exactly_what_was_sent() -> None:
    state = SimulatorState()
    opened: list[int] = []

    def items() -> Iterator[Any]:
        opened.append(state.streams_open)
        yield b"data: 1\n\n"
        yield b"data: 2\n\n"
        yield DONE
        yield Marker.COMPLETE
        yield b"never sent"

    answer = chat_answer(items())
    assert await drain(state, answer, b'{"r": 1}') == [b"data: 1\n\n", b"data: 2\n\n", DONE]
    assert opened == [1]
    assert state.streams_open == 0
    assert state.stream_outcomes == {"chatcmpl-test": StreamOutcome.COMPLETED}
    stored = state.signature_for("chatcmpl-test", NEAR_MODEL)
    assert stored is not None
    sent = b"data: 1\n\ndata: 2\n\n" + DONE
    assert stored.text == signature_text("simulator/Simulated-NEAR-1B", b'{"r": 1}', sent)
    assert recover_address(stored.text, stored.signature) == stored.signing_address
    assert stored.signing_address == address_hex(answer.enclave.public)


async def test_a_stream_without_completion_is_not_signed() -> None:
    state = SimulatorState()
    assert await drain(state, chat_answer(iter([b"a", DONE]))) == [b"a", DONE]
    assert state.signature_for("chatcmpl-test", NEAR_MODEL) is None
    assert state.stream_outcomes == {"chatcmpl-test": StreamOutcome.FAILED}
    assert state.streams_open == 0


async def test_a_cut_stream_raises_and_is_counted() -> None:
    state = SimulatorState()
    pieces: list[bytes] = []

    async def read() -> None:
        answer = chat_answer(iter([b"a", Marker.CUT, b"b"]))
        async for piece in app_module._stream_body(state, answer, b""):
            pieces.append(piece)

    with pytest.raises(SimulatedStreamCutError):
        await read()
    assert pieces == [b"a"]
    assert state.stream_outcomes == {"chatcmpl-test": StreamOutcome.CUT}
    assert state.streams_open == 0


async def test_a_reader_that_goes_away_cancels_the_stream() -> None:
    state = SimulatorState()
    body = app_module._stream_body(
        state, chat_answer(iter([b"a", b"b", DONE, Marker.COMPLETE])), b""
    )
    assert isinstance(body, AsyncGenerator)
    assert await body.__anext__() == b"a"
    assert state.streams_open == 1
    await body.aclose()
    assert state.stream_outcomes == {"chatcmpl-test": StreamOutcome.CANCELLED}
    assert state.streams_cancelled == 1
    assert state.streams_open == 0
    assert state.signature_for("chatcmpl-test", NEAR_MODEL) is None


async def test_streams_open_counts_each_stream_at_once() -> None:
    state = SimulatorState()
    first = app_module._stream_body(state, chat_answer(iter([b"a", b"b"])), b"")
    second = app_module._stream_body(state, chat_answer(iter([b"c", b"d"])), b"")
    assert isinstance(first, AsyncGenerator)
    assert isinstance(second, AsyncGenerator)
    assert await first.__anext__() == b"a"
    assert await second.__anext__() == b"c"
    assert state.streams_open == 2
    await first.aclose()
    assert state.streams_open == 1
    await second.aclose()
    assert state.streams_open == 0


async def test_a_failing_answer_is_a_failed_stream() -> None:
    state = SimulatorState()

    def items() -> Iterator[Any]:
        yield b"a"
        raise RuntimeError("broken")

    with pytest.raises(RuntimeError):
        await drain(state, chat_answer(items()))
    assert state.stream_outcomes == {"chatcmpl-test": StreamOutcome.FAILED}
    assert state.streams_open == 0


async def test_the_token_delay_falls_between_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[float] = []
    real_sleep = asyncio.sleep

    async def record(delay: float) -> None:
        delays.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", record)
    state = SimulatorState(token_delay_s=0.25)
    assert await drain(state, chat_answer(iter([b"a", b"b", b"c"]))) == [b"a", b"b", b"c"]
    assert delays == [0.25, 0.25]
    delays.clear()
    await drain(SimulatorState(), chat_answer(iter([b"a", b"b"])))
    assert delays == []


# -- the runner --------------------------------------------------------------------------------


def test_run_simulator_serves_the_app_and_hides_deliberate_cuts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[Any, str, int]] = []

    def fake_run(app: Any, *, host: str, port: int) -> None:
        calls.append((app, host, port))

    monkeypatch.setattr(uvicorn, "run", fake_run)
    logger = logging.getLogger("uvicorn.error")
    before = list(logger.filters)
    state = SimulatorState()
    try:
        run_simulator("127.0.0.1", 8123, state=state)
        added = [f for f in logger.filters if f not in before]
    finally:
        logger.filters = before
    [(app, host, port)] = calls
    assert (host, port) == ("127.0.0.1", 8123)
    assert app.state.simulator is state
    assert len(added) == 1
    assert isinstance(added[0], StreamCutLogFilter)
