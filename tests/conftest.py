"""Shared fixtures: a real simulator and a real proxy on loopback sockets, a canary guard, and a
log capture.

Every end-to-end test that sends a prompt uses :data:`CANARY`; after each test the guard asserts
that the canary never reached the upstream in plaintext (except for requests the test explicitly
sent to a plaintext model), never appeared in a log line, and that the simulator (strict: it
checks the proxy's field policy on its side too) saw no request the policy forbids.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings

from proxy.http.app import create_app
from proxy.http.loopback import ThreadedServer
from proxy.observability.logs import configure_logging
from proxy.settings import Settings, load_settings
from proxy.simulator import (
    SIMULATED_MEASUREMENTS,
    Faults,
    SimulatorState,
    create_simulator_app,
)

CANARY = "CANARY-7f3a9c-secret-prompt"
PLAIN_MODEL = "simulated-plain"
E2EE_MODEL = "e2ee-simulated-near"
REASONING_MODEL = "e2ee-simulated-reasoning"
SIM_API_KEY = "sim-test-key-ab12cd34"

_LOG_BUFFER = io.StringIO()

# `make mutation` runs the tests with --hypothesis-profile=mutation: the same examples on every
# run (so the same mutants survive) and no example database shared between mutants.
hypothesis_settings.register_profile("mutation", derandomize=True, database=None)


@pytest.fixture(scope="session", autouse=True)
def _capture_logs() -> io.StringIO:
    configure_logging("debug", "json", stream=_LOG_BUFFER)
    return _LOG_BUFFER


@pytest.fixture
def log_lines() -> Callable[[], list[str]]:
    """Lines logged since this test started."""
    start = _LOG_BUFFER.tell()

    def lines() -> list[str]:
        return _LOG_BUFFER.getvalue()[start:].splitlines()

    return lines


@pytest.fixture(scope="session")
def sim_state() -> SimulatorState:
    # Strict: every E2EE request must also pass the proxy's field policy on the server side.
    return SimulatorState(api_key=SIM_API_KEY, proxy_policy=True)


@pytest.fixture(scope="session")
def sim_server(sim_state: SimulatorState) -> Iterator[ThreadedServer]:
    server = ThreadedServer(create_simulator_app(sim_state)).start()
    yield server
    server.stop()


def proxy_settings(sim_url: str, **sections: dict[str, Any]) -> Settings:
    """Settings for a proxy in front of the simulator (DCAP off: the simulator's quote is
    synthetic)."""
    overrides: dict[str, Any] = {
        "upstream": {"base_url": sim_url + "/api/v1", "models_cache_ttl_s": 0, "retries": 0},
        "attestation": {
            "dcap": "off",
            "nvidia": "nonce",
            "extra_mrseam": [SIMULATED_MEASUREMENTS["mrseam"]],
            "extra_mrtd": [SIMULATED_MEASUREMENTS["mrtd"]],
        },
    }
    for name, values in sections.items():
        overrides[name] = {**overrides.get(name, {}), **values}
    return load_settings(overrides=overrides, environ={})


ProxyFactory = Callable[..., ThreadedServer]


@pytest.fixture
def make_proxy(sim_server: ThreadedServer) -> Iterator[ProxyFactory]:
    """Start a proxy with custom settings sections; stopped at the end of the test."""
    from pydantic import SecretStr

    started: list[ThreadedServer] = []

    def factory(**sections: dict[str, Any]) -> ThreadedServer:
        settings = proxy_settings(sim_server.url, **sections)
        app = create_app(settings, api_key=SecretStr(SIM_API_KEY))
        server = ThreadedServer(app).start()
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def shared_proxy(sim_server: ThreadedServer) -> Iterator[ThreadedServer]:
    from pydantic import SecretStr

    settings = proxy_settings(sim_server.url)
    server = ThreadedServer(create_app(settings, api_key=SecretStr(SIM_API_KEY))).start()
    yield server
    server.stop()


@pytest.fixture
def proxy(shared_proxy: ThreadedServer, sim_state: SimulatorState) -> Iterator[ThreadedServer]:
    """The default proxy (shared across tests), with a clean simulator."""
    sim_state.faults = Faults()
    yield shared_proxy
    sim_state.faults = Faults()


def assert_no_leak(upstream: Iterable[str], logged: str) -> None:
    """The one leak check: the canary never reached the upstream in plaintext (``upstream``: the
    texts it received: bodies, queries, header values), and neither the canary nor the upstream
    API key appeared in ``logged``."""
    for text in upstream:
        assert CANARY not in text, "the canary reached the upstream in plaintext"
    assert CANARY not in logged, "the canary appeared in the logs"
    assert SIM_API_KEY not in logged, "the upstream API key appeared in the logs"


@pytest.fixture(autouse=True)
def canary_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test: the canary never reached the upstream in plaintext, nor any log line."""
    if "sim_state" not in request.fixturenames:
        yield
        return
    state: SimulatorState = request.getfixturevalue("sim_state")
    state.reset()
    start = _LOG_BUFFER.tell()
    yield
    upstream: list[str] = []
    for recorded in state.requests:
        body = recorded.body.decode("utf-8", errors="replace")
        if f'"model":"{PLAIN_MODEL}"' in body.replace(" ", ""):
            continue  # the test sent this prompt to a plaintext model on purpose
        upstream += [body, str(recorded.query), *recorded.headers.values()]
    assert_no_leak(upstream, _LOG_BUFFER.getvalue()[start:])
    assert state.policy_violations == [], "the proxy sent what its field policy forbids"
