"""Retries end to end against the simulator (the pure policy: test_retry_policy.py)."""

from __future__ import annotations

import openai
import pytest

from proxy.simulator import Faults, SimulatorState
from tests.conftest import CANARY, E2EE_MODEL, ProxyFactory


def test_transient_failures_are_retried_with_fresh_encryption(
    make_proxy: ProxyFactory, sim_state: SimulatorState
) -> None:
    sim_state.faults = Faults(fail_status=503, fail_times=2)
    server = make_proxy(upstream={"retries": 2})
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    completion = client.chat.completions.create(
        model=E2EE_MODEL, messages=[{"role": "user", "content": CANARY}]
    )
    assert completion.choices[0].message.content is not None
    assert CANARY in completion.choices[0].message.content
    assert sim_state.chat_requests == 3
    chats = [r for r in sim_state.requests if r.path.endswith("/chat/completions")]
    client_keys = {r.headers["x-venice-tee-client-pub-key"] for r in chats}
    bodies = {r.body for r in chats}
    assert len(client_keys) == 3
    assert len(bodies) == 3


def test_retries_are_bounded(make_proxy: ProxyFactory, sim_state: SimulatorState) -> None:
    sim_state.faults = Faults(fail_status=502, fail_times=-1)
    server = make_proxy(upstream={"retries": 2})
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model=E2EE_MODEL, messages=[{"role": "user", "content": CANARY}]
        )
    assert info.value.status_code == 502
    assert sim_state.chat_requests == 3


def test_no_retry_once_bytes_reached_the_client(
    make_proxy: ProxyFactory, sim_state: SimulatorState
) -> None:
    sim_state.faults = Faults(midstream_error=True)
    server = make_proxy(upstream={"retries": 2})
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    stream = client.chat.completions.create(
        model=E2EE_MODEL,
        messages=[{"role": "user", "content": f"{CANARY} one two three four five six"}],
        stream=True,
    )
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass
    assert sim_state.chat_requests == 1


def test_connection_refused_is_a_clear_502(make_proxy: ProxyFactory) -> None:
    from proxy.http.loopback import free_socket

    sock = free_socket()
    dead = f"http://127.0.0.1:{sock.getsockname()[1]}/api/v1"
    sock.close()
    server = make_proxy(upstream={"base_url": dead, "retries": 1, "retry_max_delay_s": 0.01})
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model=E2EE_MODEL, messages=[{"role": "user", "content": CANARY}]
        )
    assert info.value.status_code == 502
    assert info.value.code == "upstream_unreachable"
