"""Operating the proxy for real, end to end: local auth, Host guard, CORS, the in-flight limit,
draining on shutdown, /metrics, /readyz with warm-up models, and the request log line."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
import uvicorn

from proxy.http.guard import DrainController
from proxy.http.loopback import ThreadedServer
from proxy.http.services import Services
from proxy.http.shutdown import DrainingServer
from proxy.simulator import Faults, SimulatorState
from tests.conftest import CANARY, E2EE_MODEL, SIM_API_KEY, ProxyFactory

MESSAGES: Any = [{"role": "user", "content": CANARY}]
LONG: Any = [{"role": "user", "content": f"{CANARY} " + "word " * 100}]


def _services(server: ThreadedServer) -> Services:
    services: Services = server.app.state.services
    return services


def _wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_local_api_keys(make_proxy: ProxyFactory) -> None:
    server = make_proxy(server={"api_keys": ["local-secret-1", "local-secret-2"]})
    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        wrong.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    assert info.value.code == "invalid_api_key"
    for key in ("local-secret-1", "local-secret-2"):
        right = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
        assert right.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES).choices
    assert httpx.get(server.url + "/healthz").status_code == 200  # probes need no key
    assert httpx.get(server.url + "/v1/models").status_code == 401


def test_any_bearer_is_accepted_without_local_keys(proxy: ThreadedServer) -> None:
    for key in ("sk-from-open-webui", ""):
        headers = {"authorization": f"Bearer {key}"} if key else {}
        assert httpx.get(proxy.url + "/v1/models", headers=headers).status_code == 200


def test_host_guard_blocks_dns_rebinding(proxy: ThreadedServer) -> None:
    evil = httpx.get(proxy.url + "/v1/models", headers={"host": "evil.example:8000"})
    assert evil.status_code == 421
    assert evil.json()["error"]["code"] == "host_not_allowed"
    for host in ("localhost", f"localhost:{proxy.port}", f"127.0.0.1:{proxy.port}"):
        assert httpx.get(proxy.url + "/v1/models", headers={"host": host}).status_code == 200


def test_host_allowlist_is_configurable(make_proxy: ProxyFactory) -> None:
    server = make_proxy(server={"allowed_hosts": ["proxy"]})
    assert httpx.get(server.url + "/healthz", headers={"host": "proxy:8000"}).status_code == 200
    assert httpx.get(server.url + "/healthz", headers={"host": "other:8000"}).status_code == 421


def test_cors_is_off_by_default_and_allowlisted_when_on(
    proxy: ThreadedServer, make_proxy: ProxyFactory
) -> None:
    preflight = {
        "origin": "http://app.local",
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type",
    }
    off = httpx.options(proxy.url + "/v1/chat/completions", headers=preflight)
    assert off.status_code == 403  # details in tests/e2e/test_browsers.py
    assert "access-control-allow-origin" not in off.headers
    server = make_proxy(server={"cors_origins": ["http://app.local"]})
    on = httpx.options(server.url + "/v1/chat/completions", headers=preflight)
    assert on.status_code == 204
    assert on.headers["access-control-allow-origin"] == "http://app.local"
    other = httpx.options(
        server.url + "/v1/chat/completions", headers={**preflight, "origin": "http://evil.local"}
    )
    assert other.status_code == 403
    assert other.headers.get("access-control-allow-origin") != "http://evil.local"


def test_in_flight_limit_answers_503_instead_of_queuing(
    make_proxy: ProxyFactory, sim_state: SimulatorState
) -> None:
    server = make_proxy(server={"max_in_flight": 1})
    sim_state.token_delay_s = 0.05
    try:
        with httpx.stream(
            "POST",
            server.url + "/v1/chat/completions",
            json={"model": E2EE_MODEL, "messages": LONG, "stream": True},
        ) as held:
            lines = held.iter_lines()  # keep the iterator: dropping it closes the stream
            next(lines)
            refused = httpx.post(
                server.url + "/v1/chat/completions",
                json={"model": E2EE_MODEL, "messages": MESSAGES},
            )
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["code"] == "overloaded"
    finally:
        sim_state.token_delay_s = 0.0
    assert _wait_for(lambda: _services(server).drain.in_flight == 0)
    again = httpx.post(
        server.url + "/v1/chat/completions", json={"model": E2EE_MODEL, "messages": MESSAGES}
    )
    assert again.status_code == 200


def test_draining_refuses_new_requests_and_finishes_streams(
    make_proxy: ProxyFactory, sim_state: SimulatorState
) -> None:
    server = make_proxy()
    services = _services(server)
    sim_state.token_delay_s = 0.02
    try:
        with httpx.stream(
            "POST",
            server.url + "/v1/chat/completions",
            json={"model": E2EE_MODEL, "messages": LONG, "stream": True},
        ) as running:
            lines = running.iter_lines()
            next(lines)
            services.drain.start_draining()
            refused = httpx.post(
                server.url + "/v1/chat/completions",
                json={"model": E2EE_MODEL, "messages": MESSAGES},
            )
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "shutting_down"
            assert httpx.get(server.url + "/readyz").status_code == 503
            assert httpx.get(server.url + "/healthz").status_code == 200
            rest = list(lines)
    finally:
        sim_state.token_delay_s = 0.0
    assert "data: [DONE]" in rest  # the stream in flight finished normally


async def test_draining_server_stops_only_when_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    stopped: list[int] = []
    monkeypatch.setattr(uvicorn.Server, "handle_exit", lambda self, sig, frame: stopped.append(sig))
    drain = DrainController()
    server = DrainingServer(uvicorn.Config(app="unused:app"), drain, grace_s=10)
    drain.enter()  # a stream in flight
    server.handle_exit(signal.SIGTERM, None)
    assert drain.draining
    await asyncio.sleep(0.05)
    assert stopped == []  # still waiting for the stream
    drain.leave()
    for _ in range(100):
        if stopped:
            break
        await asyncio.sleep(0.01)
    assert stopped == [signal.SIGTERM]
    server.handle_exit(signal.SIGINT, None)  # a second signal goes straight through
    assert stopped == [signal.SIGTERM, signal.SIGINT]


async def test_draining_server_gives_up_after_the_grace_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stopped: list[int] = []
    monkeypatch.setattr(uvicorn.Server, "handle_exit", lambda self, sig, frame: stopped.append(sig))
    drain = DrainController()
    server = DrainingServer(uvicorn.Config(app="unused:app"), drain, grace_s=0.05)
    drain.enter()  # a stream that never ends
    server.handle_exit(signal.SIGTERM, None)
    for _ in range(200):
        if stopped:
            break
        await asyncio.sleep(0.01)
    assert stopped == [signal.SIGTERM]


def test_metrics_move_and_carry_no_content(proxy: ThreadedServer) -> None:
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0)
    client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="e2ee-client-chosen-name-q9z", messages=MESSAGES)
    response = httpx.get(proxy.url + "/metrics")
    assert response.status_code == 200
    text = response.text
    assert 'venice_proxy_requests_total{route="/v1/chat/completions",status="200"}' in text
    assert 'venice_proxy_requests_total{route="/v1/chat/completions",status="404"}' in text
    assert "venice_proxy_ttfb_seconds" in text
    assert "venice_proxy_chunks_relayed_total" in text
    assert "venice_proxy_upstream_ratelimit_remaining" in text
    assert "client-chosen-name-q9z" not in text  # unknown models are labelled "other"
    assert CANARY not in text
    assert SIM_API_KEY not in text


def test_attestation_failures_are_counted_by_check(
    make_proxy: ProxyFactory, sim_state: SimulatorState
) -> None:
    sim_state.faults = Faults(debug_quote=True)
    server = make_proxy()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    text = httpx.get(server.url + "/metrics").text
    assert (
        'venice_proxy_attestation_verification_failures_total{check="quote_debug_disabled"} 1.0'
        in text
    )


def test_readyz_waits_for_warm_up_models(
    make_proxy: ProxyFactory, sim_state: SimulatorState
) -> None:
    server = make_proxy(attestation={"warm_up": [E2EE_MODEL]})
    assert _wait_for(lambda: httpx.get(server.url + "/readyz").status_code == 200)
    assert sim_state.attestation_fetches >= 1
    sim_state.faults = Faults(wrong_nonce=True)
    broken = make_proxy(attestation={"warm_up": [E2EE_MODEL]})
    response = httpx.get(broken.url + "/readyz")
    assert response.status_code == 503
    assert any(E2EE_MODEL in reason for reason in response.json()["reasons"])


def _chat_records(log_lines: Callable[[], list[str]]) -> list[dict[str, Any]]:
    records = []
    for line in log_lines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == "chat_request":
            records.append(record)
    return records


def test_request_log_line(proxy: ThreadedServer, log_lines: Callable[[], list[str]]) -> None:
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0)
    received = list(
        client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES, stream=True)
    )
    # The request's line is written when the stream's generator ends, which can be just after
    # the client read [DONE]: wait for it.
    assert _wait_for(lambda: bool(_chat_records(log_lines)))
    record = _chat_records(log_lines)[-1]
    assert record["status"] == 200
    assert record["upstream_status"] == 200
    assert record["stream"] is True
    assert record["completed"] is True
    assert record["chunks"] == len(received)
    assert record["venice_request_id"]
    assert record["ttfb_ms"] is not None
    assert record["attestation_age_s"] is not None
    assert record["request_id"].startswith("req_")
    assert record["completion_tokens"] > 0
    assert isinstance(record["cost_usd"], float)


def test_request_log_line_of_a_stream_that_failed_midway(
    proxy: ThreadedServer, sim_state: SimulatorState, log_lines: Callable[[], list[str]]
) -> None:
    sim_state.faults = Faults(midstream_error=True)
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0)
    received: list[Any] = []
    stream = client.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIError):
        received.extend(stream)
    assert received
    # The request's line is written when the stream's generator ends: wait for it.
    assert _wait_for(lambda: bool(_chat_records(log_lines)))
    record = _chat_records(log_lines)[-1]
    assert record["completed"] is False
    assert record["chunks"] == len(received)
    assert record["error"]
