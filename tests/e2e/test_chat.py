"""End to end over real sockets: the `openai` package -> uvicorn(proxy) -> uvicorn(simulator).

Real crypto on both sides: the simulator decrypts what the proxy encrypted and encrypts its
answer to the proxy's per-request key. The canary guard in conftest.py checks, after every
test, that the prompt never reached the simulator in plaintext and never reached a log line.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import openai
import pytest

from proxy.core import crypto
from proxy.http.loopback import ThreadedServer
from proxy.simulator import Faults, SimulatorState, StreamOutcome
from tests.conftest import CANARY, E2EE_MODEL, PLAIN_MODEL, REASONING_MODEL, ProxyFactory


def client(server: ThreadedServer, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=server.url + "/v1", api_key="anything-local", max_retries=0, **kwargs
    )


def chat_requests(state: SimulatorState) -> list[dict[str, Any]]:
    bodies = []
    for recorded in state.requests:
        if recorded.path.endswith("/chat/completions"):
            bodies.append(json.loads(recorded.body))
    return bodies


def test_streaming_answer_is_decrypted(proxy: ThreadedServer, sim_state: SimulatorState) -> None:
    prompt = f"Hello {CANARY}"
    stream = client(proxy).chat.completions.create(
        model=E2EE_MODEL, messages=[{"role": "user", "content": prompt}], stream=True
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text.startswith(f"You said: {prompt}")
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1
    (sent,) = chat_requests(sim_state)
    assert sent["stream"] is True
    assert crypto.looks_like_ciphertext(sent["messages"][0]["content"])


def wait_until_topped_up(fresh: crypto.FreshKeys) -> None:
    """Until the proxy's pool of key pairs made ahead is full again (at most 10 s)."""
    deadline = time.monotonic() + 10
    while fresh.wanted() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_key_pairs_are_made_ahead_after_a_request_and_each_is_used_once(
    make_proxy: ProxyFactory, sim_state: SimulatorState
) -> None:
    proxy = make_proxy()
    fresh = proxy.app.state.services.chat.fresh_keys
    assert fresh.wanted()  # nothing made before the first request
    ask = client(proxy).chat.completions.create
    messages: Any = [{"role": "user", "content": f"one {CANARY}"}]
    ask(model=E2EE_MODEL, messages=messages)
    wait_until_topped_up(fresh)
    assert not fresh.wanted()  # topped up to capacity in the background
    for _ in range(3):
        ask(
            model=E2EE_MODEL,
            messages=[*messages, {"role": "assistant", "content": "ok"}, *messages],
        )
    keys_seen = [
        header
        for recorded in sim_state.requests
        if recorded.path.endswith("/chat/completions")
        for header in [recorded.headers.get("x-venice-tee-client-pub-key")]
    ]
    ephemerals = [
        bytes.fromhex(message["content"])[:65]
        for body in chat_requests(sim_state)
        for message in body["messages"]
    ]
    assert len(keys_seen) == 4
    assert len(set(keys_seen)) == 4  # a client key pair per request
    assert len(ephemerals) == 1 + 3 * 3
    assert len(set(ephemerals)) == len(ephemerals)  # and one per sealed message, never twice


def test_no_key_pair_is_made_between_sealing_a_request_and_sending_it(
    make_proxy: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = make_proxy()
    chat = proxy.app.state.services.chat
    fresh = chat.fresh_keys
    ask = client(proxy).chat.completions.create
    messages: Any = [{"role": "user", "content": f"one {CANARY}"}]
    ask(model=E2EE_MODEL, messages=messages)
    wait_until_topped_up(fresh)
    assert not fresh.wanted()
    seen: list[str] = []
    open_chat = chat.upstream.open_chat

    async def sending(*args: Any, **kwargs: Any) -> Any:
        # A client library may pass through the event loop before it writes the request
        # (aiohttp does): nothing else may run in those passes that could have waited.
        seen.append(repr(fresh))
        for _ in range(3):
            await asyncio.sleep(0)
        seen.append(repr(fresh))
        return await open_chat(*args, **kwargs)

    monkeypatch.setattr(chat.upstream, "open_chat", sending)
    ask(model=E2EE_MODEL, messages=messages)
    capacity = fresh.capacity
    # A client key pair and one for the message were taken; none made until the answer began.
    assert seen == [f"FreshKeys({capacity - 2} of {capacity} ready)"] * 2
    wait_until_topped_up(fresh)
    assert not fresh.wanted()  # and made again after


def test_non_streaming_answer_is_one_completion(
    proxy: ThreadedServer, sim_state: SimulatorState
) -> None:
    completion = client(proxy).chat.completions.create(
        model=E2EE_MODEL, messages=[{"role": "user", "content": f"Hi {CANARY}"}]
    )
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content is not None
    assert completion.choices[0].message.content.startswith(f"You said: Hi {CANARY}")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    (sent,) = chat_requests(sim_state)
    assert sent["stream"] is True  # upstream always streams under E2EE


def test_multi_turn_history_every_role_encrypted(
    proxy: ThreadedServer, sim_state: SimulatorState
) -> None:
    messages: list[Any] = [
        {"role": "system", "content": f"system {CANARY}"},
        {"role": "developer", "content": f"developer {CANARY}"},
        {"role": "user", "content": f"first {CANARY}"},
        {"role": "assistant", "content": f"assistant {CANARY}"},
        {"role": "user", "content": ""},
        {"role": "user", "content": [{"type": "text", "text": f"last {CANARY}"}]},
    ]
    completion = client(proxy).chat.completions.create(model=E2EE_MODEL, messages=messages)
    assert completion.choices[0].message.content is not None
    assert completion.choices[0].message.content.startswith(f"You said: last {CANARY}")
    (sent,) = chat_requests(sim_state)
    assert [m["role"] for m in sent["messages"]] == [m["role"] for m in messages]
    for message in sent["messages"]:
        assert crypto.looks_like_ciphertext(message["content"])
    assert len(sent["messages"][4]["content"]) == crypto.MIN_BLOB_HEX  # "" encrypted too


@pytest.mark.parametrize("text", ['["a", "b"]', f'[{{"type": "text", "text": "{CANARY}"}}]'])
def test_a_user_string_that_parses_as_a_json_array_stays_a_string(
    proxy: ThreadedServer, sim_state: SimulatorState, text: str
) -> None:
    # The backends json.loads decrypted content: sent as is, this would become content parts.
    completion = client(proxy).chat.completions.create(
        model=E2EE_MODEL, messages=[{"role": "user", "content": text}]
    )
    assert completion.choices[0].message.content == f"You said: {text} — ok ✓ 🦊"
    (sent,) = chat_requests(sim_state)
    assert crypto.looks_like_ciphertext(sent["messages"][0]["content"])


def test_every_relayed_chunk_is_built_from_the_allowlist(proxy: ThreadedServer) -> None:
    with httpx.stream(
        "POST",
        proxy.url + "/v1/chat/completions",
        json={
            "model": REASONING_MODEL,
            "messages": [{"role": "user", "content": CANARY}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ) as response:
        body = response.read()
    events = [json.loads(e[6:]) for e in body.split(b"\n\n") if e.startswith(b"data: {")]
    assert events
    for event in events:
        assert set(event) <= {"id", "object", "created", "model", "choices", "usage"}
        for choice in event["choices"]:
            assert set(choice) == {"index", "delta", "logprobs", "finish_reason"}
            assert set(choice["delta"]) <= {"role", "content", "reasoning_content", "reasoning"}
    assert set(events[-1]["usage"]) <= {"prompt_tokens", "completion_tokens", "total_tokens"}


def test_venice_parameters_that_carry_no_text_are_forwarded(
    proxy: ThreadedServer, sim_state: SimulatorState
) -> None:
    client(proxy).chat.completions.create(
        model=E2EE_MODEL,
        messages=[{"role": "user", "content": CANARY}],
        temperature=0.2,
        reasoning_effort="low",
        extra_body={
            "venice_parameters": {"disable_thinking": True, "enable_web_search": "off"},
            "top_k": 20,
        },
    )
    (sent,) = chat_requests(sim_state)
    assert sent["venice_parameters"] == {"disable_thinking": True}
    assert (sent["temperature"], sent["reasoning_effort"], sent["top_k"]) == (0.2, "low", 20)


def test_web_search_is_refused_in_any_form(
    proxy: ThreadedServer, sim_state: SimulatorState
) -> None:
    forms: list[dict[str, Any]] = [
        {"web_search_options": {"user_location": {"approximate": {"city": CANARY}}}},
        {"venice_parameters": {"enable_web_search": "auto"}},
        {"venice_parameters": {"enable_web_scraping": True}},
    ]
    for form in forms:
        with pytest.raises(openai.BadRequestError) as info:
            client(proxy).chat.completions.create(
                model=E2EE_MODEL, messages=[{"role": "user", "content": CANARY}], extra_body=form
            )
        assert info.value.code == "e2ee_unsupported"
        assert "outside the enclave" in info.value.message
    with pytest.raises(openai.BadRequestError) as suffix:
        client(proxy).chat.completions.create(
            model=E2EE_MODEL + ":enable_web_search=on",
            messages=[{"role": "user", "content": CANARY}],
        )
    assert suffix.value.param == "model"
    assert chat_requests(sim_state) == []


def test_unicode_survives_chunk_splits(proxy: ThreadedServer) -> None:
    prompt = f"héllo wörld ✓ 🦊 日本語 {CANARY}"
    stream = client(proxy).chat.completions.create(
        model=E2EE_MODEL, messages=[{"role": "user", "content": prompt}], stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text.startswith(f"You said: {prompt}")
    assert "🦊" in text


def test_n_greater_than_one(proxy: ThreadedServer) -> None:
    completion = client(proxy).chat.completions.create(
        model=E2EE_MODEL, messages=[{"role": "user", "content": CANARY}], n=3
    )
    assert [choice.index for choice in completion.choices] == [0, 1, 2]
    for choice in completion.choices:
        assert choice.message.content is not None
        assert CANARY in choice.message.content
    assert len({choice.message.content for choice in completion.choices}) == 3


def test_include_usage_relays_usage_chunk(proxy: ThreadedServer) -> None:
    chunks = list(
        client(proxy).chat.completions.create(
            model=E2EE_MODEL,
            messages=[{"role": "user", "content": CANARY}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens > 0
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_reasoning_fields_are_decrypted(proxy: ThreadedServer) -> None:
    chunks = list(
        client(proxy).chat.completions.create(
            model=REASONING_MODEL, messages=[{"role": "user", "content": CANARY}], stream=True
        )
    )
    reasoning = "".join(
        str((chunk.choices[0].delta.model_extra or {}).get("reasoning_content") or "")
        for chunk in chunks
        if chunk.choices
    )
    assert reasoning.startswith("Considering")
    completion = client(proxy).chat.completions.create(
        model=REASONING_MODEL, messages=[{"role": "user", "content": CANARY}]
    )
    extra = completion.choices[0].message.model_extra or {}
    assert str(extra.get("reasoning_content", "")).startswith("Considering")


def test_raw_sse_framing(proxy: ThreadedServer) -> None:
    with httpx.stream(
        "POST",
        proxy.url + "/v1/chat/completions",
        json={
            "model": E2EE_MODEL,
            "messages": [{"role": "user", "content": CANARY}],
            "stream": True,
        },
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-venice-proxy-e2ee"] == "true"
        assert response.headers["x-venice-proxy-signing-address"].startswith("0x")
        body = response.read()
    events = body.split(b"\n\n")
    assert events[-1] == b""
    assert events[-2] == b"data: [DONE]"
    for event in events[:-2]:
        assert event.startswith(b"data: {")
        payload = json.loads(event[6:])
        assert payload["object"] == "chat.completion.chunk"
        assert "cost" not in payload


# --- refusals: nothing that would leak is forwarded ---------------------------------------


def test_tools_are_refused_for_a_passthrough_model(
    make_proxy: ProxyFactory, sim_state: SimulatorState
) -> None:
    # Tools are emulated inside the encryption for E2EE models only (tests/e2e/test_tools.py);
    # a plaintext model's request keeps the field policy, which refuses them.
    server = make_proxy(privacy={"non_e2ee": "passthrough", "passthrough_models": [PLAIN_MODEL]})
    with pytest.raises(openai.BadRequestError) as info:
        client(server).chat.completions.create(
            model=PLAIN_MODEL,
            messages=[{"role": "user", "content": "hello"}],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        )
    assert info.value.code == "e2ee_unsupported"
    assert chat_requests(sim_state) == []


def test_non_e2ee_model_is_refused(proxy: ThreadedServer, sim_state: SimulatorState) -> None:
    # 400, not 404: the model exists; clients report a 404 as "model not found".
    with pytest.raises(openai.BadRequestError) as info:
        client(proxy).chat.completions.create(
            model=PLAIN_MODEL, messages=[{"role": "user", "content": CANARY}]
        )
    assert info.value.status_code == 400
    assert info.value.code == "model_not_e2ee"
    assert info.value.type == "invalid_request_error"
    assert PLAIN_MODEL in info.value.message
    assert "privacy.passthrough_models" in info.value.message
    assert chat_requests(sim_state) == []


def test_unknown_model_is_404(proxy: ThreadedServer) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client(proxy).chat.completions.create(
            model="e2ee-does-not-exist", messages=[{"role": "user", "content": CANARY}]
        )
    assert info.value.code == "model_not_found"


def test_passthrough_is_explicit(make_proxy: ProxyFactory, sim_state: SimulatorState) -> None:
    server = make_proxy(privacy={"non_e2ee": "passthrough", "passthrough_models": [PLAIN_MODEL]})
    raw = client(server).chat.completions.with_raw_response.create(
        model=PLAIN_MODEL, messages=[{"role": "user", "content": "plain hello"}]
    )
    assert raw.headers["x-venice-proxy-e2ee"] == "false"
    completion = raw.parse()
    assert completion.choices[0].message.content is not None
    assert completion.choices[0].message.content.startswith("You said: plain hello")
    ids = [model.id for model in client(server).models.list()]
    assert PLAIN_MODEL in ids


def test_passthrough_applies_only_to_listed_models(
    make_proxy: ProxyFactory, sim_state: SimulatorState
) -> None:
    # Passthrough is on, but the plaintext model is not listed: the catalogue does not decide.
    server = make_proxy(privacy={"non_e2ee": "passthrough", "passthrough_models": ["other"]})
    with pytest.raises(openai.BadRequestError) as info:
        client(server).chat.completions.create(
            model=PLAIN_MODEL, messages=[{"role": "user", "content": CANARY}]
        )
    assert info.value.code == "model_not_e2ee"
    assert chat_requests(sim_state) == []
    assert PLAIN_MODEL not in [model.id for model in client(server).models.list()]


def test_passthrough_follows_the_field_policy(
    make_proxy: ProxyFactory, sim_state: SimulatorState
) -> None:
    # Plaintext by choice, but the same rules: local-only fields stay local, refusals refuse.
    server = make_proxy(privacy={"non_e2ee": "passthrough", "passthrough_models": [PLAIN_MODEL]})
    completion = client(server).chat.completions.create(
        model=PLAIN_MODEL,
        messages=[{"role": "user", "content": "plain hello"}],
        user="someone@example.com",
        metadata={"session": "s1"},
        stop=["hello"],
        temperature=0.2,
    )
    assert completion.choices[0].message.content == "You said: plain "
    assert completion.choices[0].finish_reason == "stop"
    (sent,) = chat_requests(sim_state)
    assert sent["temperature"] == 0.2
    assert not {"user", "metadata", "stop"} & set(sent)
    with pytest.raises(openai.BadRequestError) as info:
        client(server).chat.completions.create(
            model=PLAIN_MODEL, messages=[{"role": "user", "content": "x"}], logprobs=True
        )
    assert info.value.param == "logprobs"


def test_aliases(make_proxy: ProxyFactory) -> None:
    server = make_proxy(models={"aliases": {"gpt-4o": E2EE_MODEL}})
    completion = client(server).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": CANARY}]
    )
    assert completion.model == E2EE_MODEL
    ids = [model.id for model in client(server).models.list()]
    assert "gpt-4o" in ids


def test_models_lists_only_e2ee(proxy: ThreadedServer) -> None:
    response = httpx.get(proxy.url + "/v1/models", headers={"authorization": "Bearer whatever"})
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    ids = {item["id"] for item in body["data"]}
    assert E2EE_MODEL in ids
    assert PLAIN_MODEL not in ids
    for item in body["data"]:
        assert item["model_spec"]["capabilities"]["supportsE2EE"] is True


def test_attestation_endpoint_reports_checks(proxy: ThreadedServer) -> None:
    response = httpx.get(proxy.url + f"/v1/attestation/{E2EE_MODEL}")
    assert response.status_code == 200
    body = response.json()
    assert body["signing_address"].startswith("0x")
    codes = {check["code"]: check for check in body["report"]["checks"]}
    assert codes["report_data_nonce"]["ok"] is True
    assert codes["quote_debug_disabled"]["ok"] is True
    assert codes["dcap"]["enforced"] is False


def test_attestation_endpoint_only_attests_catalogue_models(
    make_proxy: ProxyFactory, sim_state: SimulatorState
) -> None:
    server = make_proxy(models={"aliases": {"my-alias": E2EE_MODEL, "dangling": "e2ee-nope"}})
    fetches = sim_state.attestation_fetches
    for name in ("e2ee-made-up-name", "x" * 300, "dangling", "e2ee-nope"):
        response = httpx.get(server.url + f"/v1/attestation/{name}")
        assert response.status_code == 404, response.text
        error = response.json()["error"]
        assert error["code"] == "model_not_found"
        assert len(error["message"]) < 200
    assert sim_state.attestation_fetches == fetches  # nothing was attested upstream
    aliased = httpx.get(server.url + "/v1/attestation/my-alias")
    assert aliased.status_code == 200, aliased.text
    assert aliased.json()["model"] == E2EE_MODEL
    assert sim_state.attestation_fetches == fetches + 1


# --- faults -------------------------------------------------------------------------------


def test_upstream_429_becomes_rate_limit(proxy: ThreadedServer, sim_state: SimulatorState) -> None:
    sim_state.faults = Faults(fail_status=429, fail_times=-1)
    with pytest.raises(openai.RateLimitError) as info:
        client(proxy).chat.completions.create(
            model=E2EE_MODEL, messages=[{"role": "user", "content": CANARY}]
        )
    assert info.value.status_code == 429
    assert info.value.response.headers.get("retry-after") == "1"


def test_upstream_500_becomes_server_error(
    proxy: ThreadedServer, sim_state: SimulatorState
) -> None:
    sim_state.faults = Faults(fail_status=500, fail_times=-1)
    with pytest.raises(openai.InternalServerError) as info:
        client(proxy).chat.completions.create(
            model=E2EE_MODEL, messages=[{"role": "user", "content": CANARY}], stream=True
        )
    assert info.value.status_code == 500


def _stream_error(server: ThreadedServer) -> openai.APIError:
    """The error a streaming client sees: an HTTP error if the fault came before the first
    byte, else the in-band error event (both are APIError in the SDK)."""

    def consume() -> None:
        stream = client(server).chat.completions.create(
            model=E2EE_MODEL, messages=[{"role": "user", "content": CANARY}], stream=True
        )
        for _ in stream:
            pass

    with pytest.raises(openai.APIError) as info:
        consume()
    return info.value


def test_cut_stream_is_an_error_not_a_short_answer(
    proxy: ThreadedServer, sim_state: SimulatorState
) -> None:
    sim_state.faults = Faults(cut_stream_after=2)
    error = _stream_error(proxy)
    assert "ended before it was complete" in error.message or "broke" in error.message


def test_plaintext_chunk_fails_closed(proxy: ThreadedServer, sim_state: SimulatorState) -> None:
    sim_state.faults = Faults(plaintext_chunk=True)
    error = _stream_error(proxy)
    assert "unencrypted" in error.message
    with pytest.raises(openai.APIStatusError) as info:
        client(proxy).chat.completions.create(
            model=E2EE_MODEL, messages=[{"role": "user", "content": CANARY}]
        )
    assert info.value.status_code == 502
    assert info.value.code == "e2ee_plaintext_in_stream"


def test_corrupt_ciphertext_fails_closed(proxy: ThreadedServer, sim_state: SimulatorState) -> None:
    sim_state.faults = Faults(corrupt_ciphertext=True)
    with pytest.raises(openai.APIStatusError) as info:
        client(proxy).chat.completions.create(
            model=E2EE_MODEL, messages=[{"role": "user", "content": CANARY}]
        )
    assert info.value.status_code == 502
    assert info.value.code == "e2ee_decryption_failed"


def test_midstream_upstream_error_is_in_band(
    proxy: ThreadedServer, sim_state: SimulatorState
) -> None:
    sim_state.faults = Faults(midstream_error=True)
    error = _stream_error(proxy)
    assert "upstream error" in error.message


def test_wrong_nonce_fails_attestation_before_any_chat(
    make_proxy: ProxyFactory, sim_state: SimulatorState
) -> None:
    sim_state.faults = Faults(wrong_nonce=True)
    server = make_proxy()
    with pytest.raises(openai.APIStatusError) as info:
        client(server).chat.completions.create(
            model=E2EE_MODEL, messages=[{"role": "user", "content": CANARY}]
        )
    assert info.value.status_code == 502
    assert info.value.code in {"nonce_echo", "report_data_nonce"}
    assert chat_requests(sim_state) == []


def test_debug_quote_fails_attestation(make_proxy: ProxyFactory, sim_state: SimulatorState) -> None:
    sim_state.faults = Faults(debug_quote=True)
    server = make_proxy()
    with pytest.raises(openai.APIStatusError) as info:
        client(server).chat.completions.create(
            model=E2EE_MODEL, messages=[{"role": "user", "content": CANARY}], stream=True
        )
    assert info.value.code == "quote_debug_disabled"
    assert chat_requests(sim_state) == []


def test_missing_signing_key_refuses_e2ee(
    make_proxy: ProxyFactory, sim_state: SimulatorState
) -> None:
    sim_state.faults = Faults(signing_key_missing=True)
    server = make_proxy()
    with pytest.raises(openai.APIStatusError) as info:
        client(server).chat.completions.create(
            model=E2EE_MODEL, messages=[{"role": "user", "content": CANARY}]
        )
    assert info.value.status_code == 502
    assert chat_requests(sim_state) == []


def test_key_rotation_reattests_and_retries_once(
    make_proxy: ProxyFactory, sim_state: SimulatorState
) -> None:
    server = make_proxy()
    messages: Any = [{"role": "user", "content": CANARY}]
    client(server).chat.completions.create(model=E2EE_MODEL, messages=messages)
    assert sim_state.attestation_fetches == 1
    sim_state.rotate_key()
    completion = client(server).chat.completions.create(model=E2EE_MODEL, messages=messages)
    assert completion.choices[0].message.content is not None
    assert CANARY in completion.choices[0].message.content
    assert sim_state.attestation_fetches == 2
    assert sim_state.chat_requests == 3  # first, rejected with the old key, retried


def test_phala_key_mismatch_reattests_and_retries_once(
    make_proxy: ProxyFactory, sim_state: SimulatorState
) -> None:
    # Phala answers a stale key with 400 {"type": "e2ee_model_key_mismatch", "code": null}
    # and a message that names no key: the proxy must read the type.
    sim_state.faults = Faults(phala_legacy=True)
    server = make_proxy()
    messages: Any = [{"role": "user", "content": CANARY}]
    client(server).chat.completions.create(model=E2EE_MODEL, messages=messages)
    sim_state.rotate_key()
    completion = client(server).chat.completions.create(model=E2EE_MODEL, messages=messages)
    assert completion.choices[0].message.content is not None
    assert CANARY in completion.choices[0].message.content
    assert sim_state.attestation_fetches == 2
    assert sim_state.chat_requests == 3


def test_phala_legacy_backend(make_proxy: ProxyFactory, sim_state: SimulatorState) -> None:
    sim_state.faults = Faults(phala_legacy=True)
    server = make_proxy()
    stream = client(server).chat.completions.create(
        model=E2EE_MODEL, messages=[{"role": "user", "content": f"legacy {CANARY}"}], stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text.startswith(f"You said: legacy {CANARY}")


def test_cold_model_is_attested_once_for_many_requests(
    make_proxy: ProxyFactory, sim_state: SimulatorState
) -> None:
    server = make_proxy()

    async def burst() -> list[str]:
        async_client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        async with async_client:
            results = await asyncio.gather(
                *(
                    async_client.chat.completions.create(
                        model=E2EE_MODEL, messages=[{"role": "user", "content": f"{i} {CANARY}"}]
                    )
                    for i in range(20)
                )
            )
        return [result.choices[0].message.content or "" for result in results]

    answers = asyncio.run(burst())
    assert all(answer.startswith(f"You said: {i} {CANARY}") for i, answer in enumerate(answers))
    assert sim_state.attestation_fetches == 1


def _wait_for(condition: Any, timeout_s: float = 10.0) -> bool:
    """Poll ``condition`` until true or a generous deadline passes (an event, not a timing)."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


@pytest.mark.parametrize("fault", ["plaintext_chunk", "corrupt_ciphertext"])
def test_midstream_crypto_faults_end_the_stream_in_band(
    proxy: ThreadedServer, sim_state: SimulatorState, fault: str
) -> None:
    # warm the shared proxy's key first (an earlier test may have rotated the enclave key)
    client(proxy).chat.completions.create(
        model=E2EE_MODEL, messages=[{"role": "user", "content": "x"}]
    )
    sim_state.reset()
    sim_state.faults = Faults(
        fault_at_token=3,
        plaintext_chunk=fault == "plaintext_chunk",
        corrupt_ciphertext=fault == "corrupt_ciphertext",
    )
    with httpx.stream(
        "POST",
        proxy.url + "/v1/chat/completions",
        json={
            "model": E2EE_MODEL,
            "messages": [{"role": "user", "content": CANARY}],
            "stream": True,
        },
    ) as response:
        assert response.status_code == 200
        body = response.read()
    events = [json.loads(e[6:]) for e in body.split(b"\n\n") if e.startswith(b"data: {")]
    assert body.endswith(b"data: [DONE]\n\n")
    assert "error" in events[-1]
    expected = (
        "e2ee_plaintext_in_stream" if fault == "plaintext_chunk" else "e2ee_decryption_failed"
    )
    assert events[-1]["error"]["code"] == expected
    content = [e for e in events[:-1] if e["choices"] and e["choices"][0]["delta"].get("content")]
    assert 1 <= len(content) <= 3  # what came before the fault, nothing after it
    assert not any(e["choices"][0].get("finish_reason") for e in events[:-1] if e["choices"])
    assert sim_state.chat_requests == 1  # no retry once bytes reached the client


def test_client_disconnect_cancels_upstream(
    proxy: ThreadedServer, sim_state: SimulatorState
) -> None:
    # The simulator serves the whole session, and a stream of an earlier test can still be
    # ending (completed or cancelled) after that test returned, so its counters are not ours:
    # follow our own stream, by the completion id its first chunk carries.
    sim_state.token_delay_s = 0.05
    try:
        with httpx.stream(
            "POST",
            proxy.url + "/v1/chat/completions",
            json={
                "model": E2EE_MODEL,
                "messages": [{"role": "user", "content": f"{CANARY} " + "word " * 200}],
                "stream": True,
            },
        ) as response:
            lines = (line for line in response.iter_lines() if line.startswith("data: {"))
            completion_id = json.loads(next(lines)[6:])["id"]
            next(lines)
        # the client is gone: the simulator's stream must be cancelled, not run to the end
        assert _wait_for(lambda: completion_id in sim_state.stream_outcomes)
        assert sim_state.stream_outcomes[completion_id] is StreamOutcome.CANCELLED
    finally:
        sim_state.token_delay_s = 0.0


@pytest.mark.parametrize(
    ("status", "exception", "hint"),
    [
        (401, openai.AuthenticationError, "VENICE_API_KEY"),
        (402, openai.APIStatusError, "insufficient balance"),
        (403, openai.PermissionDeniedError, "upstream error 403"),
        (404, openai.NotFoundError, "upstream error 404"),
        (429, openai.RateLimitError, "rate limit"),
        (503, openai.InternalServerError, "upstream error 503"),
    ],
)
def test_upstream_statuses_become_openai_errors(
    proxy: ThreadedServer,
    sim_state: SimulatorState,
    status: int,
    exception: type[openai.APIStatusError],
    hint: str,
) -> None:
    sim_state.faults = Faults(fail_status=status, fail_times=-1)
    with pytest.raises(exception) as info:
        client(proxy).chat.completions.create(
            model=E2EE_MODEL, messages=[{"role": "user", "content": CANARY}]
        )
    assert info.value.status_code == status
    assert hint in info.value.message
    body = info.value.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
