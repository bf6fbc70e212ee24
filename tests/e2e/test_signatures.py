"""Response signatures end to end: the simulator signs each completed answer with its enclave
key (EIP-191); the proxy fetches and checks the signer against the attested address."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from proxy.simulator import Faults, SimulatorState
from tests.conftest import CANARY, E2EE_MODEL, ProxyFactory

MESSAGES: Any = [{"role": "user", "content": CANARY}]


def _signature_events(lines: list[str]) -> list[dict[str, object]]:
    events = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == "signature_check":
            events.append(record)
    return events


def _wait_for_signature(
    log_lines: Callable[[], list[str]], completion_id: str
) -> list[dict[str, object]]:
    """This completion's signature_check events (other tests' background checks may log too)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        events = [
            event
            for event in _signature_events(log_lines())
            if event.get("completion_id") == completion_id
        ]
        if events:
            return events
        time.sleep(0.02)
    return []


@pytest.mark.parametrize("stream", [True, False])
def test_async_mode_verifies_after_the_fact(
    make_proxy: ProxyFactory,
    sim_state: SimulatorState,
    log_lines: Callable[[], list[str]],
    stream: bool,
) -> None:
    server = make_proxy(signatures={"mode": "async"})
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    if stream:
        chunks = list(
            client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES, stream=True)
        )
        completion_id = chunks[0].id
    else:
        completion_id = client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES).id
    (event,) = _wait_for_signature(log_lines, completion_id)
    assert event["outcome"] == "ok"
    # Another proxy's background check (an earlier test's) may land in the same simulator.
    fetched = [r.query for r in sim_state.requests if r.path.endswith("/tee/signature")]
    assert any(f"request_id={completion_id}" in query for query in fetched)


def test_async_mode_reports_a_bad_signature_without_blocking(
    make_proxy: ProxyFactory, sim_state: SimulatorState, log_lines: Callable[[], list[str]]
) -> None:
    sim_state.faults = Faults(bad_signature=True)
    server = make_proxy(signatures={"mode": "async"})
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    completion = client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    assert completion.choices[0].message.content
    (event,) = _wait_for_signature(log_lines, completion.id)
    assert event["outcome"] == "mismatch"


def test_strict_mode_passes_a_good_signature(make_proxy: ProxyFactory) -> None:
    server = make_proxy(signatures={"mode": "strict"})
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    completion = client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    assert completion.choices[0].message.content
    chunks = list(client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES, stream=True))
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_strict_mode_withholds_a_non_stream_answer(
    make_proxy: ProxyFactory, sim_state: SimulatorState
) -> None:
    sim_state.faults = Faults(bad_signature=True)
    server = make_proxy(signatures={"mode": "strict"})
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    assert info.value.status_code == 502
    assert "signature" in info.value.message
    assert CANARY not in info.value.message


def test_strict_mode_reports_the_error_before_done(
    make_proxy: ProxyFactory, sim_state: SimulatorState
) -> None:
    sim_state.faults = Faults(bad_signature=True)
    server = make_proxy(signatures={"mode": "strict"})
    with httpx.stream(
        "POST",
        server.url + "/v1/chat/completions",
        json={"model": E2EE_MODEL, "messages": MESSAGES, "stream": True},
    ) as response:
        body = response.read()
    events = body.split(b"\n\n")
    assert events[-2] == b"data: [DONE]"
    error = json.loads(events[-3][6:])
    assert error["error"]["type"] == "attestation_error"
    assert "signature" in error["error"]["message"]
