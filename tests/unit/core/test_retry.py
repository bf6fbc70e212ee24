"""Retry policy (pure) and retries end to end against the simulator."""

from __future__ import annotations

import random

import openai
import pytest

from proxy.core.errors import (
    AttestationError,
    DecryptionError,
    UpstreamConnectError,
    UpstreamConnectTimeoutError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from proxy.core.retry import RetryPolicy, hinted_delay, retry_delay, retry_reason
from proxy.simulator import Faults, SimulatorState
from tests.conftest import CANARY, E2EE_MODEL, ProxyFactory

POLICY = RetryPolicy(max_retries=3, base_delay_s=0.5, max_delay_s=8.0, max_total_s=30.0)


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (UpstreamStatusError(429, "x"), "rate_limited"),
        (UpstreamStatusError(503, "x"), "server_error"),
        (UpstreamStatusError(500, "x"), "server_error"),
        (UpstreamStatusError(400, "x"), None),
        (UpstreamStatusError(401, "x"), None),
        (UpstreamConnectError(), "connect"),
        (UpstreamTimeoutError(), None),
        (UpstreamConnectTimeoutError(), "timeout"),
        (UpstreamError("cut", code="upstream_stream_broken"), "stream_broken"),
        (AttestationError(), None),
        (DecryptionError(), None),
    ],
)
def test_what_is_retried(exc: Exception, reason: str | None) -> None:
    assert retry_reason(exc) == reason  # type: ignore[arg-type]


def test_backoff_is_jittered_exponential_and_bounded() -> None:
    rng = random.Random(1)
    exc = UpstreamStatusError(503, "x")
    for index in range(3):
        delay = retry_delay(POLICY, index, exc, elapsed_s=0, now=0, rng=rng)
        assert delay is not None
        assert 0 <= delay <= 0.5 * 2**index
    assert retry_delay(POLICY, 3, exc, elapsed_s=0, now=0, rng=rng) is None
    hinted = UpstreamStatusError(503, "x", retry_after="1")
    assert retry_delay(POLICY, 0, hinted, elapsed_s=29.5, now=0) is None  # past max_total_s
    assert retry_delay(POLICY, 0, hinted, elapsed_s=28.5, now=0) == 1.0


def test_retry_after_is_honoured() -> None:
    exc = UpstreamStatusError(429, "x", retry_after="2")
    assert retry_delay(POLICY, 0, exc, elapsed_s=0, now=0) == 2.0
    long_wait = UpstreamStatusError(429, "x", retry_after="120")
    assert retry_delay(POLICY, 0, long_wait, elapsed_s=0, now=0) is None  # the client decides
    dated = UpstreamStatusError(429, "x", retry_after="Thu, 01 Jan 1970 00:00:05 GMT")
    assert hinted_delay(dated, now=1.0) == pytest.approx(4.0)
    reset = UpstreamStatusError(429, "x", ratelimit_reset="103")
    assert hinted_delay(reset, now=100.0) == pytest.approx(3.0)


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
