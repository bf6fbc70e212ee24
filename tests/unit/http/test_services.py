"""The shared services (:mod:`proxy.http.services`): that every setting reaches the object it
configures, what the observers count and log, the trust level per model, background work, the
DCAP collateral source and the warm-up loop. No server: the upstream is the simulator app called
in-process (real attestation and real crypto), or a scripted stand-in.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest
from pydantic import SecretStr

from proxy.attestation import AttestationPolicy, MeasurementPins
from proxy.core.errors import AttestationError, ProxyError, UpstreamStatusError
from proxy.core.tools import ToolsConfig
from proxy.http.guard import DrainController
from proxy.http.services import (
    WARM_RETRY_MAX_S,
    WARM_RETRY_MIN_S,
    Services,
    attestation_policy,
    build_services,
    collateral_source,
    keep_warm,
    model_trust,
)
from proxy.observability.audit import AuditLog
from proxy.service.dcap_collateral import platform_key
from proxy.service.nras_client import NrasSource
from proxy.service.trust_state import STATE_FILE, TrustState
from proxy.settings import Settings
from proxy.simulator import SIMULATED_MEASUREMENTS, SimulatorState, create_simulator_app
from proxy.simulator.faults import Faults
from tests.support.attestation_helpers import FIXTURES_BY_NAME, body_of
from tests.unit.http.route_fakes import attested_key

Lines = Callable[[], list[str]]
SIM_URL = "http://simulator.test/api/v1"
NEAR = "e2ee-simulated-near"
REASONING = "e2ee-simulated-reasoning"
HEX96 = "ab" * 48
KMS_ROOT = "02" + "cd" * 32
APP_ID = "ef" * 20


def sim_settings(**sections: dict[str, Any]) -> Settings:
    attestation = {
        "dcap": "off",
        "nvidia": "nonce",
        "extra_mrseam": [SIMULATED_MEASUREMENTS["mrseam"]],
        "extra_mrtd": [SIMULATED_MEASUREMENTS["mrtd"]],
        **sections.pop("attestation", {}),
    }
    upstream = {"base_url": SIM_URL, "retry_max_delay_s": 0.01, **sections.pop("upstream", {})}
    return Settings.model_validate({"upstream": upstream, "attestation": attestation, **sections})


def sim_services(settings: Settings, state: SimulatorState | None = None) -> Services:
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_simulator_app(state or SimulatorState()))
    )
    return build_services(settings, api_key=SecretStr("sk-sim-test"), http_client=client)


def sample(services: Services, name: str, **labels: str) -> float | None:
    return services.metrics.registry.get_sample_value(f"venice_proxy_{name}", labels)


def events(lines: Lines, event: str) -> list[dict[str, Any]]:
    return [line for line in map(json.loads, lines()) if line.get("event") == event]


# --- what the settings configure ---------------------------------------------------------------


def test_the_attestation_policy_is_the_one_the_settings_ask_for() -> None:
    settings = Settings.model_validate(
        {
            "attestation": {
                "dcap": "off",
                "nvidia": "off",
                "allowed_tcb_status": ["UpToDate", "OutOfDate"],
                "software": "off",
                "allow_dev_image": True,
                "pins": {"m1": {"mrtd": [HEX96], "rtmr0": [HEX96.upper()]}},
                "gateway_models": "allow",
                "trust_levels": {"m1": "gateway"},
                "allow_unpinned_images": True,
                "extra_mrseam": [HEX96],
                "extra_mrtd": ["cd" * 48],
                "gateway_kms_roots": [KMS_ROOT],
                "gateway_app_ids": [APP_ID],
            }
        }
    )
    assert attestation_policy(settings) == AttestationPolicy(
        dcap="off",
        nvidia="off",
        allowed_tcb_status=frozenset({"UpToDate", "OutOfDate"}),
        software="off",
        allow_dev_image=True,
        pins={"m1": MeasurementPins(mrtd=(HEX96,), rtmr0=(HEX96,))},
        gateway_models="allow",
        trust_levels={"m1": "gateway"},
        allow_unpinned_images=True,
        extra_mrseam=frozenset({HEX96}),
        extra_mrtd=frozenset({"cd" * 48}),
        gateway_kms_roots=frozenset({KMS_ROOT}),
        gateway_app_ids=frozenset({APP_ID}),
    )
    policy = attestation_policy(settings)
    assert isinstance(policy.allowed_tcb_status, frozenset)
    assert policy.pins["m1"].rtmr1 == ()


def test_the_default_attestation_policy_is_the_strict_one() -> None:
    assert attestation_policy(Settings()) == AttestationPolicy(nvidia="nras")


def test_without_dcap_there_is_no_collateral_source() -> None:
    settings = Settings.model_validate({"attestation": {"dcap": "off"}})
    assert collateral_source(settings) is None


async def test_a_collateral_file_is_read_instead_of_asking_a_pccs(tmp_path: Path) -> None:
    saved = tmp_path / "collateral.json"
    saved.write_text(json.dumps({"tcb_info": "saved"}), encoding="utf-8")
    settings = Settings.model_validate(
        {"attestation": {"collateral_file": str(saved), "pccs_url": "http://pccs.invalid/"}}
    )
    source = collateral_source(settings)
    assert source is not None
    quote = _fixture_quote()
    platform_key(quote)  # a real quote, so the cache can key it
    assert await source(quote) == {"tcb_info": "saved"}
    saved.write_text(json.dumps({"tcb_info": "changed"}), encoding="utf-8")
    assert await source(quote) == {"tcb_info": "saved"}  # kept: one fetch per platform


async def test_without_a_collateral_file_the_pccs_is_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    async def get_collateral(url: str, quote: bytes) -> Any:
        asked.append(url)
        raise ValueError("no network in tests")

    import dcap_qvl

    monkeypatch.setattr(dcap_qvl, "get_collateral", get_collateral)
    settings = Settings.model_validate({"attestation": {"pccs_url": "https://pccs.test/v4/"}})
    source = collateral_source(settings)
    assert source is not None
    with pytest.raises(AttestationError, match=r"pccs\.test"):
        await source(_fixture_quote())
    assert asked == ["https://pccs.test/v4/"]


def _fixture_quote() -> bytes:
    from proxy.attestation import parse_attestation

    for fixture in FIXTURES_BY_NAME.values():
        try:
            quote = parse_attestation(body_of(fixture)).intel_quote
        except (ProxyError, KeyError, ValueError):
            continue
        if quote:
            return bytes(quote)
    raise AssertionError("no fixture with an Intel quote")


def test_every_upstream_setting_reaches_the_client_and_the_chat_service(tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {
            "upstream": {
                "base_url": "https://venice.test/api/v1/",
                "connect_timeout_s": 3.0,
                "first_byte_timeout_s": 40.0,
                "idle_timeout_s": 50.0,
                "models_cache_ttl_s": 77.0,
                "retries": 5,
                "retry_max_delay_s": 1.5,
                "retry_max_total_s": 9.0,
                "max_read_ahead_bytes": 4096,
                "max_event_bytes": 8192,
                "max_json_bytes": 16384,
                "max_answer_chars": 2048,
            },
            "models": {"aliases": {"fast": "e2ee-a"}},
            "privacy": {
                "non_e2ee": "passthrough",
                "passthrough_models": ["plain-p"],
                "forward_fields": ["logit_bias"],
            },
            "signatures": {"mode": "strict"},
            "tools": {"mode": "refuse", "repair_attempts": 0, "disabled_models": ["e2ee-a"]},
            "attestation": {
                "cache_ttl_s": 600.0,
                "max_fetches_per_minute": 3,
                "failure_cache_size": 9,
                "state_dir": str(tmp_path),
                "nvidia": "nras",
                "nras_url": "https://nras.test/attest",
                "nras_jwks_url": "https://nras.test/jwks",
            },
            "logging": {"audit_log": str(tmp_path / "audit.jsonl")},
        }
    )
    services = build_services(settings, api_key=SecretStr("sk-x"), demo=True)
    up = services.upstream
    assert up.base_url == "https://venice.test/api/v1"
    assert up.has_api_key
    assert (up.timeouts.connect_s, up.timeouts.first_byte_s, up.timeouts.idle_s) == (3, 40, 50)
    assert up.max_json_bytes == 16384
    assert services.catalogue._ttl_s == 77.0
    assert services.verifiers._timeout_s == 33.0
    assert services.verifiers._max_json_bytes == 16384

    chat = services.chat
    assert chat.upstream is up
    assert chat.catalogue is services.catalogue
    assert chat.keys is services.keys
    assert chat.aliases == {"fast": "e2ee-a"}
    assert chat.non_e2ee == "passthrough"
    assert chat.passthrough_models == frozenset({"plain-p"})
    assert chat.forward_fields == frozenset({"logit_bias"})
    assert chat.read_to_end_after_stop is True
    assert (chat.retry.max_retries, chat.retry.max_delay_s, chat.retry.max_total_s) == (5, 1.5, 9)
    assert (chat.max_read_ahead_bytes, chat.max_event_bytes, chat.max_answer_chars) == (
        4096,
        8192,
        2048,
    )
    assert chat.tools == ToolsConfig.from_settings(settings.tools)
    assert chat.tools.mode == "refuse"

    attester = services.attester
    assert attester.policy == attestation_policy(settings)
    assert attester._ttl_s == 600.0
    assert attester._collateral is not None
    assert isinstance(attester._nras, NrasSource)
    assert attester._nras._client is services.verifiers
    assert attester._nras._url == "https://nras.test/attest"
    assert attester._nras._jwks_url == "https://nras.test/jwks"
    assert isinstance(attester._audit, AuditLog)
    assert attester._audit.path == tmp_path / "audit.jsonl"
    assert attester.trust_state is not None
    assert attester.trust_state.path == tmp_path / STATE_FILE
    assert services.keys._max_fetches == 3
    assert services.keys._history_size == 9

    assert services.signatures.mode == "strict"
    assert services.signatures._metrics is services.metrics
    assert services.settings is settings
    assert isinstance(services.drain, DrainController)
    assert services.demo is True
    assert services.background == set()


def test_without_nras_audit_or_key_nothing_of_those_is_built() -> None:
    settings = Settings.model_validate(
        {"attestation": {"nvidia": "nonce", "dcap": "off"}, "signatures": {"mode": "async"}}
    )
    services = build_services(settings, api_key=None)
    assert not services.upstream.has_api_key
    assert services.attester._nras is None
    assert services.attester._audit is None
    assert services.attester._collateral is None
    assert services.attester.trust_state is not None
    assert services.attester.trust_state.path is None  # remembered in memory only
    assert services.chat.read_to_end_after_stop is False
    assert services.signatures.mode == "async"
    assert services.demo is False


# --- against the simulator: what is counted and logged ---------------------------------------


async def test_the_catalogue_allows_its_models_and_the_aliases_as_metric_labels() -> None:
    services = sim_services(sim_settings(models={"aliases": {"fast": NEAR}}))
    assert services.metrics.model_label(NEAR) == "other"  # not fetched yet
    await services.catalogue.models()
    assert services.metrics.model_label(NEAR) == NEAR
    assert services.metrics.model_label(REASONING) == REASONING
    assert services.metrics.model_label("fast") == "fast"
    assert services.metrics.model_label("e2ee-unlisted") == "other"
    await services.aclose()


async def test_an_accepted_attestation_is_counted_and_logged(log_lines: Lines) -> None:
    services = sim_services(sim_settings())
    await services.catalogue.models()
    key = await services.keys.get(NEAR)
    assert sample(services, "attestation_fetches_total", model=NEAR, outcome="ok") == 1.0
    assert sample(services, "attestation_age_seconds", model=NEAR) is not None
    (line,) = events(log_lines, "attestation_accepted")
    assert line["model"] == NEAR
    assert line["signing_address"] == key.signing_address
    assert line["trust_level"] == key.report.trust_level == "enclave"
    assert "tcb_status" in line
    assert line["tcb_status"] == key.report.tcb_status
    assert events(log_lines, "attestation_failed") == []
    await services.aclose()


async def test_a_failed_verification_is_counted_by_check_and_logged(log_lines: Lines) -> None:
    state = SimulatorState()
    services = sim_services(sim_settings(), state)
    await services.catalogue.models()
    state.faults = Faults(wrong_nonce=True)
    with pytest.raises(AttestationError) as failed:
        await services.keys.get(NEAR)
    assert (
        sample(services, "attestation_fetches_total", model=NEAR, outcome="verification_failed")
        == 1.0
    )
    assert sample(services, "attestation_fetches_total", model=NEAR, outcome="fetch_error") is None
    assert sample(services, "attestation_verification_failures_total", check="nonce_echo") == 1.0
    assert (
        sample(services, "attestation_verification_failures_total", check="report_data_nonce")
        == 1.0
    )
    (line,) = events(log_lines, "attestation_failed")
    assert line["model"] == NEAR
    assert line["code"] == failed.value.log_code
    assert line["level"] == "warning"
    await services.aclose()


async def test_an_attestation_that_cannot_be_fetched_is_a_fetch_error(log_lines: Lines) -> None:
    services = sim_services(sim_settings())
    with pytest.raises(UpstreamStatusError) as failed:
        await services.keys.get("x" * 300)
    assert sample(services, "attestation_fetches_total", model="other", outcome="fetch_error") == 1
    assert (
        sample(services, "attestation_fetches_total", model="other", outcome="verification_failed")
        is None
    )
    (line,) = events(log_lines, "attestation_failed")
    assert line["code"] == failed.value.log_code
    assert len(line["model"]) < 300  # clipped
    await services.aclose()


async def test_a_retried_attempt_is_counted_and_the_answer_checked_against_the_upstream(
    log_lines: Lines,
) -> None:
    state = SimulatorState()
    services = sim_services(sim_settings(signatures={"mode": "async"}), state)
    state.faults = Faults(fail_status=503, fail_times=1)
    answer = await services.chat.start(
        {"model": NEAR, "messages": [{"role": "user", "content": "hi"}]}, request_id="req-a"
    )
    assert answer.attempts == 2
    assert answer.e2ee
    assert sample(services, "upstream_retries_total", reason="server_error") == 1.0
    rest = [batch async for batch in answer.rest]
    assert rest
    await answer.aclose()
    result = await services.signatures.check(answer, "req-a")
    assert result is not None
    assert result.ok
    assert sample(services, "signature_verifications_total", outcome="ok") == 1.0
    await services.aclose()


class FailingAttestation(httpx.AsyncBaseTransport):
    """The simulator, but its attestation endpoint answers 503."""

    def __init__(self) -> None:
        self.simulator = httpx.ASGITransport(app=create_simulator_app(SimulatorState()))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/tee/attestation"):
            return httpx.Response(503, json={"error": "busy"})
        return await self.simulator.handle_async_request(request)


async def test_a_catalogued_model_whose_attestation_cannot_be_fetched_is_counted_by_name() -> None:
    client = httpx.AsyncClient(transport=FailingAttestation())
    services = build_services(
        sim_settings(upstream={"retries": 0}), api_key=SecretStr("k"), http_client=client
    )
    await services.catalogue.models()
    with pytest.raises(ProxyError):
        await services.keys.get(NEAR)
    assert sample(services, "attestation_fetches_total", model=NEAR, outcome="fetch_error") == 1.0
    await services.aclose()


def test_the_attestation_observer_logs_each_key_and_each_failure(log_lines: Lines) -> None:
    services = sim_services(sim_settings())
    observer = services.keys._on_result
    assert observer is not None
    key = attested_key(NEAR, "gateway")
    observer(NEAR, key, None)
    observer(NEAR, None, None)  # no key and no error: still a failure, with no code
    (accepted,) = events(log_lines, "attestation_accepted")
    assert accepted["tcb_status"] == "UpToDate"
    assert accepted["trust_level"] == "gateway"
    assert accepted["signing_address"] == key.signing_address
    (failed,) = events(log_lines, "attestation_failed")
    assert failed["code"] is None
    assert failed["model"] == NEAR


# --- trust levels, background work, closing ---------------------------------------------------


class Keys:
    def __init__(self, keys: dict[str, Any]) -> None:
        self.keys = keys
        self.closed = 0

    def models(self) -> list[str]:
        return list(self.keys)

    def peek(self, model: str) -> Any:
        return self.keys[model]

    async def aclose(self) -> None:
        self.closed += 1


def trust_services(state: TrustState | None, keys: dict[str, Any]) -> Services:
    return cast(
        Services, SimpleNamespace(attester=SimpleNamespace(trust_state=state), keys=Keys(keys))
    )


def test_each_models_trust_is_its_current_keys_else_the_remembered_one(tmp_path: Path) -> None:
    state = TrustState(tmp_path)
    state.record("remembered", "gateway")
    state.record("renewed", "gateway")
    keys = {"renewed": attested_key("renewed", "enclave"), "expired": None}
    keys["fresh"] = attested_key("fresh", "gateway")
    assert model_trust(trust_services(state, keys)) == {
        "remembered": "gateway",
        "renewed": "enclave",
        "fresh": "gateway",
    }
    assert model_trust(trust_services(None, keys)) == {"renewed": "enclave", "fresh": "gateway"}


def test_an_unreadable_trust_state_still_lists_the_current_keys(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_text("not a state file", encoding="utf-8")
    keys = {"m": attested_key("m", "enclave")}
    assert model_trust(trust_services(TrustState(tmp_path), keys)) == {"m": "enclave"}


class Closable:
    """A connection pool: closed how often, and whether background work was still running."""

    def __init__(self, background: set[asyncio.Task[object]]) -> None:
        self.background = background
        self.closed = 0
        self.work_running_at_close: list[bool] = []

    async def aclose(self) -> None:
        self.closed += 1
        self.work_running_at_close.append(any(not task.done() for task in self.background))


def bare_services() -> tuple[Services, dict[str, Closable]]:
    background: set[asyncio.Task[object]] = set()
    parts = {name: Closable(background) for name in ("keys", "upstream", "verifiers")}
    services = Services(
        Settings(),
        cast(Any, parts["upstream"]),
        cast(Any, None),
        cast(Any, parts["keys"]),
        cast(Any, None),
        cast(Any, None),
        cast(Any, None),
        cast(Any, parts["verifiers"]),
        cast(Any, None),
        DrainController(),
        False,
        background,
    )
    return services, parts


async def test_background_work_is_kept_until_it_ends() -> None:
    services, _ = bare_services()
    release = asyncio.Event()
    done: list[str] = []

    async def work() -> None:
        await release.wait()
        done.append("work")

    services.spawn(work())
    (task,) = services.background
    assert not task.done()
    release.set()
    await task
    await asyncio.sleep(0)  # the done callback runs
    assert done == ["work"]
    assert services.background == set()


async def test_closing_cancels_background_work_and_closes_every_pool() -> None:
    services, parts = bare_services()
    cancelled: list[str] = []

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append("forever")
            raise

    services.spawn(forever())
    services.spawn(forever())
    tasks = list(services.background)
    await asyncio.sleep(0)
    await asyncio.wait_for(services.aclose(), timeout=2)
    assert cancelled == ["forever", "forever"]
    assert all(task.cancelled() for task in tasks)
    # the background work (a signature check, a refresh) had ended before any pool closed
    assert [part.work_running_at_close for part in parts.values()] == [[False]] * 3
    assert services.background == set()
    assert {name: part.closed for name, part in parts.items()} == {
        "keys": 1,
        "upstream": 1,
        "verifiers": 1,
    }


# --- keeping a warm-up model attested ----------------------------------------------------------


class WarmKeys:
    """``keys.get``: fails or hands out a key, as scripted."""

    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.asked: list[str] = []

    async def get(self, model: str) -> Any:
        self.asked.append(model)
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step


class StopError(Exception):
    pass


async def run_warm(script: list[Any], sleeps: int, now: float = 1000.0) -> tuple[list[float], Any]:
    keys = WarmKeys(script)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == sleeps:
            raise StopError

    services = cast(Services, SimpleNamespace(keys=keys))
    with pytest.raises(StopError):
        await keep_warm(services, "warm-m", clock=lambda: now, sleep=sleep)
    return slept, keys


def key_refreshing_at(refresh_at: float) -> Any:
    return SimpleNamespace(refresh_at=refresh_at)


async def test_warm_up_sleeps_until_the_refresh_window_opens() -> None:
    slept, keys = await run_warm(
        [key_refreshing_at(1600.0), key_refreshing_at(1000.5), key_refreshing_at(900.0)], 3
    )
    assert slept == [600.0, 1.0, 1.0]  # at least a second inside the window
    assert keys.asked == ["warm-m"] * 3


async def test_warm_up_retries_failures_with_backoff_from_5_s_to_5_min() -> None:
    failure = AttestationError("no", code="nope")
    slept, _ = await run_warm([failure] * 9, 9)
    assert slept == [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0, 300.0]
    assert (WARM_RETRY_MIN_S, WARM_RETRY_MAX_S) == (5.0, 300.0)


async def test_warm_up_starts_the_backoff_over_after_a_success() -> None:
    failure = AttestationError("no", code="nope")
    script = [failure, failure, key_refreshing_at(1010.0), failure, failure]
    slept, _ = await run_warm(script, 5)
    assert slept == [5.0, 10.0, 10.0, 5.0, 10.0]


async def test_warm_up_outlives_an_unforeseen_error_and_logs_its_type_only(
    log_lines: Lines,
) -> None:
    # Not an attestation's verdict but a bug below: ended, the loop would let the key expire
    # and /readyz turn 503 with nothing left to attest again.
    bug = RuntimeError("secret detail " + "x" * 10)
    script = [bug, bug, bug, key_refreshing_at(1010.0), bug]
    slept, keys = await run_warm(script, 5)
    assert slept == [5.0, 10.0, 20.0, 10.0, 5.0]  # the failures' backoff, started over after
    assert keys.asked == ["warm-m"] * 5
    entries = [json.loads(line) for line in log_lines()]
    errors = [e for e in entries if e.get("event") == "warm_up_error"]
    assert [(e["level"], e["model"], e["error_type"]) for e in errors] == [
        ("error", "warm-m", "RuntimeError")
    ] * 4
    assert not any("secret detail" in line for line in log_lines())
