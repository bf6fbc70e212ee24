"""The simulator's chat endpoint: E2EE round trips with real crypto on the client side, the
plaintext path, every error string, the recorder, key rotation, signatures and /models."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from proxy.core.crypto import (
    address_hex,
    generate_keypair,
    looks_like_ciphertext,
    open_text,
    seal,
    seal_text,
)
from proxy.simulator import Faults, SimulatorState, recover_address
from tests.support.simulator_helpers import (
    API_KEY,
    NEAR_MODEL,
    PLAIN_MODEL,
    REASONING_MODEL,
    client_for,
    collect,
    e2ee_chat,
    e2ee_headers,
    encrypt_messages,
    json_events,
    sse_events,
)

SUFFIX = " — ok ✓ 🦊"
USER = [{"role": "user", "content": "héllo wörld"}]


def near_error(response: Any, message: str) -> None:
    assert response.status_code == 400, response.text
    assert response.json() == {
        "error": {"message": message, "type": "bad_request", "param": None, "code": None}
    }


def gateway_error(response: Any, message: str) -> None:
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"].startswith(message)
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_e2ee_stream_decrypts_to_an_answer_derived_from_the_prompt() -> None:
    state = SimulatorState(api_key=API_KEY)
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "héllo wörld"},
    ]
    async with client_for(state) as http:
        response, client = await e2ee_chat(http, state, messages)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["x-venice-tee"] == "true"
    assert response.headers["x-venice-tee-provider"] == "simulator"
    assert response.headers["cf-ray"]
    assert int(response.headers["x-ratelimit-remaining-requests"]) <= int(
        response.headers["x-ratelimit-limit-requests"]
    )
    events = sse_events(response.content)
    assert events[-1] == "[DONE]"
    chunks = json_events(response.content)
    assert collect(chunks, client) == {0: "You said: héllo wörld" + SUFFIX}
    # The role chunk stays plaintext; every token chunk is a blob with a fresh ephemeral key.
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    sealed = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert sealed
    assert all(looks_like_ciphertext(blob) for blob in sealed)
    assert len({blob[:130] for blob in sealed}) == len(sealed)
    # Emoji and the 3-byte check mark arrive as tokens of their own.
    tokens = [open_text(client.private, blob) for blob in sealed]
    assert tokens[-2:] == [" ✓", " 🦊"]
    # One id / created / model everywhere; finish, then Venice's usage chunk.
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert len({c["created"] for c in chunks}) == 1
    assert chunks[0]["id"].startswith("chatcmpl-")
    assert {c["model"] for c in chunks} == {NEAR_MODEL}
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-2]["choices"][0]["delta"] == {}
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["object"] == "chat.completion.chunk"
    usage = usage_chunk["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["completion_tokens"] == len(sealed)
    assert set(usage_chunk["cost"]) == {"usd", "diem"}


async def test_content_parts_are_restored_and_joined() -> None:
    state = SimulatorState()
    parts = [{"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}]
    async with client_for(state) as http:
        response, client = await e2ee_chat(http, state, [{"role": "user", "content": parts}])
    assert collect(json_events(response.content), client) == {
        0: "You said: part one part two" + SUFFIX
    }


async def test_n_choices_and_max_tokens() -> None:
    state = SimulatorState()
    async with client_for(state) as http:
        many, client = await e2ee_chat(http, state, USER, n=2)
        short, client2 = await e2ee_chat(http, state, USER, max_tokens=3)
        shorter, client3 = await e2ee_chat(http, state, USER, max_completion_tokens=2)
    texts = collect(json_events(many.content), client)
    assert texts == {i: f"[{i}] You said: héllo wörld" + SUFFIX for i in (0, 1)}
    finishes = [
        c["choices"][0]["finish_reason"]
        for c in json_events(many.content)
        if c["choices"] and c["choices"][0]["finish_reason"]
    ]
    assert finishes == ["stop", "stop"]
    short_chunks = json_events(short.content)
    assert collect(short_chunks, client2) == {0: "You said: héllo"}
    assert short_chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert short_chunks[-1]["usage"]["completion_tokens"] == 3
    assert collect(json_events(shorter.content), client3) == {0: "You said:"}


async def test_reasoning_model_streams_encrypted_reasoning_first() -> None:
    state = SimulatorState()
    messages = [{"role": "system", "content": "s"}, *USER]
    async with client_for(state) as http:
        response, client = await e2ee_chat(http, state, messages, model=REASONING_MODEL)
    chunks = json_events(response.content)
    assert collect(chunks, client, "reasoning_content") == {0: "Considering 2 messages."}
    assert collect(chunks, client) == {0: "You said: héllo wörld" + SUFFIX}
    kinds = [next(iter(c["choices"][0]["delta"])) for c in chunks[1:-2]]
    first_content = kinds.index("content")
    assert set(kinds[:first_content]) == {"reasoning_content"}
    assert set(kinds[first_content:]) == {"content"}


async def test_plaintext_path_for_e2ee_and_plain_models() -> None:
    state = SimulatorState()
    async with client_for(state) as http:
        streamed = await http.post(
            "/chat/completions", json={"model": NEAR_MODEL, "messages": USER, "stream": True}
        )
        whole = await http.post("/chat/completions", json={"model": PLAIN_MODEL, "messages": USER})
    assert collect(json_events(streamed.content), None) == {0: "You said: héllo wörld" + SUFFIX}
    assert streamed.headers["x-venice-tee"] == "true"
    assert whole.status_code == 200
    assert whole.headers["content-type"] == "application/json"
    assert "x-venice-tee" not in whole.headers
    body = whole.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "You said: héllo wörld" + SUFFIX,
    }
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["total_tokens"] > 0


async def test_plaintext_reasoning_non_stream() -> None:
    async with client_for(SimulatorState()) as http:
        response = await http.post(
            "/chat/completions", json={"model": REASONING_MODEL, "messages": USER}
        )
    message = response.json()["choices"][0]["message"]
    assert message["reasoning_content"] == "Considering 1 messages."


async def test_recorder_keeps_every_request_in_order() -> None:
    state = SimulatorState(api_key=API_KEY)
    async with client_for(state) as http:
        await http.get("/models", params={"type": "text"})
        _response, client = await e2ee_chat(http, state, USER)
        await http.get("/no/such/route")
    assert [(r.method, r.path) for r in state.requests] == [
        ("GET", "/api/v1/models"),
        ("POST", "/api/v1/chat/completions"),
        ("GET", "/api/v1/no/such/route"),
    ]
    models, chat, _ = state.requests
    assert models.query == "type=text"
    assert chat.headers["authorization"] == f"Bearer {API_KEY}"
    assert chat.headers["x-venice-tee-client-pub-key"] == client.public_hex
    assert chat.json()["model"] == NEAR_MODEL
    assert "héllo" not in chat.body.decode()
    assert API_KEY not in repr(chat)
    assert state.chat_requests == 1


async def test_key_rotation_makes_old_key_requests_fail() -> None:
    state = SimulatorState()
    old_key = state.enclave_public_key
    state.rotate_key()
    assert state.enclave_public_key != old_key
    async with client_for(state) as http:
        stale, _ = await e2ee_chat(http, state, USER, model_key=old_key)
        # A correct header but a body sealed to the old key fails at decryption too.
        client = generate_keypair()
        body = {"model": NEAR_MODEL, "messages": encrypt_messages(USER, old_key), "stream": True}
        sealed_to_old = await http.post(
            "/chat/completions", json=body, headers=e2ee_headers(client, state.enclave_public_key)
        )
        fresh, _ = await e2ee_chat(http, state, USER)
    near_error(stale, "Decryption failed")
    near_error(sealed_to_old, "Decryption failed")
    assert fresh.status_code == 200


def _sealed_user(content: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": content}]


async def raw_e2ee(state: SimulatorState, messages: list[dict[str, Any]], **extra: Any) -> Any:
    client = generate_keypair()
    body = {"model": NEAR_MODEL, "messages": messages, "stream": True} | extra
    async with client_for(state) as http:
        return await http.post(
            "/chat/completions",
            json=body,
            headers=e2ee_headers(client, state.enclave_public_key),
        )


async def test_near_decryption_errors() -> None:
    state = SimulatorState()
    key = state.enclave_public_key
    good = seal_text(key, "x")
    tampered = good[:-2] + f"{int(good[-2:], 16) ^ 1:02x}"
    not_utf8 = seal(key, b"\xff\xfe").hex()
    near_error(
        await raw_e2ee(state, _sealed_user("plain text")), "Encrypted field is not valid hex"
    )
    near_error(await raw_e2ee(state, _sealed_user("abc")), "Encrypted field is not valid hex")
    near_error(await raw_e2ee(state, _sealed_user("ab" * 20)), "Decryption failed")
    near_error(await raw_e2ee(state, _sealed_user(tampered)), "Decryption failed")
    near_error(
        await raw_e2ee(state, _sealed_user(not_utf8)), "Decrypted content is not valid UTF-8"
    )
    history = [{"role": "user", "content": good}, {"role": "assistant", "content": "plain"}]
    near_error(await raw_e2ee(state, history), "Encrypted field is not valid hex")
    reasoning = [{"role": "assistant", "content": good, "reasoning_content": "thought"}]
    near_error(await raw_e2ee(state, reasoning), "Encrypted field is not valid hex")
    reasoning2 = [{"role": "assistant", "content": good, "reasoning": "thought"}]
    near_error(await raw_e2ee(state, reasoning2), "Encrypted field is not valid hex")


async def test_near_leniency_empty_null_and_uppercase_hex() -> None:
    state = SimulatorState()
    key = state.enclave_public_key
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": ""},
        {"role": "assistant", "content": None},
        {"role": "user", "content": seal_text(key, "shout").upper()},
    ]
    response = await raw_e2ee(state, messages)
    assert response.status_code == 200, response.text


async def test_e2ee_header_errors() -> None:
    state = SimulatorState()
    client = generate_keypair()
    key = state.enclave_public_key
    body = {"model": NEAR_MODEL, "messages": encrypt_messages(USER, key), "stream": True}
    full = e2ee_headers(client, key)
    async with client_for(state) as http:

        async def post(headers: dict[str, str], **changes: Any) -> Any:
            return await http.post("/chat/completions", json=body | changes, headers=headers)

        partial = {k: v for k, v in full.items() if k != "X-Venice-TEE-Model-Pub-Key"}
        gateway_error(await post(partial), "Invalid E2EE headers")
        assert "X-Venice-TEE-Model-Pub-Key" in (await post(partial)).json()["error"]["message"]
        gateway_error(
            await post(full | {"X-Venice-TEE-Signing-Algo": "ed25519"}),
            "Unsupported signing algorithm",
        )
        gateway_error(
            await post(full | {"X-Venice-TEE-Client-Pub-Key": "04" + "00" * 64}),
            "Invalid public key",
        )
        gateway_error(await post(full, stream=False), "E2EE requires streaming")
        gateway_error(await post(full, model=PLAIN_MODEL), "Model does not support E2EE")
        lower = {k.lower(): v for k, v in full.items()}
        lower["x-venice-tee-signing-algo"] = "ECDSA"
        assert (await post(lower)).status_code == 200


async def test_request_validation_and_unknown_model() -> None:
    async with client_for(SimulatorState()) as http:
        unknown = await http.post("/chat/completions", json={"model": "gpt-9", "messages": USER})
        no_messages = await http.post("/chat/completions", json={"model": NEAR_MODEL})
        bad_json = await http.post("/chat/completions", content=b"{not json")
        bad_n = await http.post(
            "/chat/completions", json={"model": NEAR_MODEL, "messages": USER, "n": 0}
        )
        bad_max = await http.post(
            "/chat/completions", json={"model": NEAR_MODEL, "messages": USER, "max_tokens": "3"}
        )
    assert unknown.status_code == 404
    assert "gpt-9" in unknown.json()["error"]
    assert unknown.json()["code"] == "MODEL_NOT_FOUND"
    for response in (no_messages, bad_json, bad_n, bad_max):
        assert response.status_code == 400
        assert isinstance(response.json()["error"], str)


async def test_auth_is_required_everywhere() -> None:
    state = SimulatorState(api_key=API_KEY)
    async with client_for(state, api_key=None) as http:
        missing = await http.post("/chat/completions", json={"model": NEAR_MODEL, "messages": USER})
        empty = await http.get("/models", headers={"Authorization": "Bearer "})
        wrong = await http.get("/models", headers={"Authorization": "Bearer nope"})
        basic = await http.get("/models", headers={"Authorization": f"Basic {API_KEY}"})
    for response in (missing, empty, wrong, basic):
        assert response.status_code == 401
        assert isinstance(response.json()["error"], str)
    assert state.chat_requests == 1
    async with client_for(SimulatorState(), api_key="anything") as http:
        assert (await http.get("/models")).status_code == 200


async def test_signature_recovers_the_enclave_address_and_hashes_the_exchange() -> None:
    state = SimulatorState()
    async with client_for(state) as http:
        response, _ = await e2ee_chat(http, state, USER)
        request_id = json_events(response.content)[0]["id"]
        signed = await http.get(
            "/tee/signature", params={"model": NEAR_MODEL, "request_id": request_id}
        )
        missing = await http.get(
            "/tee/signature", params={"model": NEAR_MODEL, "request_id": "chatcmpl-nope"}
        )
        wrong_model = await http.get(
            "/tee/signature", params={"model": REASONING_MODEL, "request_id": request_id}
        )
    assert signed.status_code == 200, signed.text
    body = signed.json()
    assert body["requested_request_id"] == request_id
    assert body["signing_algo"] == "ecdsa"
    assert body["signing_address"] == address_hex(state.enclave_public_key)
    assert recover_address(body["text"], body["signature"]) == body["signing_address"]
    assert int(body["signature"][-2:], 16) in (27, 28)
    model_name, request_hash, response_hash = body["text"].split(":")
    assert model_name == body["upstream_model"]
    assert request_hash == hashlib.sha256(state.requests[0].body).hexdigest()
    assert response_hash == hashlib.sha256(response.content).hexdigest()
    for response_404 in (missing, wrong_model):
        assert response_404.status_code == 404
        assert response_404.json()["error"] == "Chat id not found or expired"


async def test_plaintext_non_stream_is_signed_over_the_json_bytes() -> None:
    state = SimulatorState()
    async with client_for(state) as http:
        response = await http.post(
            "/chat/completions", json={"model": NEAR_MODEL, "messages": USER}
        )
        signed = await http.get(
            "/tee/signature", params={"model": NEAR_MODEL, "request_id": response.json()["id"]}
        )
    text = signed.json()["text"]
    assert text.endswith(hashlib.sha256(response.content).hexdigest())
    assert recover_address(text, signed.json()["signature"]) == address_hex(
        state.enclave_public_key
    )


async def test_models_list() -> None:
    async with client_for(SimulatorState()) as http:
        response = await http.get("/models", params={"type": "text"})
        images = await http.get("/models", params={"type": "image"})
    body = response.json()
    assert body["object"] == "list"
    by_id = {item["id"]: item for item in body["data"]}
    assert set(by_id) == {NEAR_MODEL, REASONING_MODEL, PLAIN_MODEL}
    for model_id in (NEAR_MODEL, REASONING_MODEL):
        spec = by_id[model_id]["model_spec"]
        assert spec["privacy"] == "private"
        assert spec["capabilities"]["supportsE2EE"] is True
        assert spec["capabilities"]["supportsTeeAttestation"] is True
    plain = by_id[PLAIN_MODEL]["model_spec"]["capabilities"]
    assert plain["supportsE2EE"] is False
    assert plain["supportsTeeAttestation"] is False
    assert by_id[REASONING_MODEL]["model_spec"]["capabilities"]["supportsReasoning"] is True
    for item in body["data"]:
        assert item["object"] == "model"
        assert item["owned_by"] == "venice.ai"
        assert item["type"] == "text"
        spec = item["model_spec"]
        assert {"name", "availableContextTokens", "capabilities"} <= set(spec)
        assert {"supportsFunctionCalling", "supportsVision"} <= set(spec["capabilities"])
    assert images.json()["data"] == []


@pytest.mark.parametrize("model", [NEAR_MODEL, REASONING_MODEL])
async def test_state_reset_clears_recorder_counters_and_faults(model: str) -> None:
    state = SimulatorState()
    state.faults = Faults(debug_quote=True)
    async with client_for(state) as http:
        await http.get("/tee/attestation", params={"model": model})
        await http.post("/chat/completions", json={"model": model, "messages": USER})
    key = state.enclave_public_key
    state.reset()
    assert state.requests == []
    assert (state.attestation_fetches, state.chat_requests) == (0, 0)
    assert state.faults == Faults()
    assert state.enclave_public_key == key
