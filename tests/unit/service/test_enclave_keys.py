"""The attested-key cache over time: single flight, refresh ahead of expiry, rotation, failures.

A fake attester stands in for the network; time is a variable the test moves.
"""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from proxy.attestation import AttestationPolicy, AttestationReport, enclave_key
from proxy.core.errors import (
    AttestationError,
    AttestationRateLimitedError,
    ProxyError,
    UpstreamConnectError,
)
from proxy.observability.audit import AuditLog, audit_record
from proxy.service.enclave_keys import AttestedKey, AttestedKeyCache, Attester
from proxy.service.trust_state import STATE_FILE, TrustState
from tests.support.attestation_helpers import (
    FIXTURES_BY_NAME,
    body_of,
    collateral_of,
    evidence_of,
    nonce_of,
    policy_for,
    time_of,
)

TTL = 100.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _report(model: str) -> AttestationReport:
    return AttestationReport(
        model=model,
        nonce="00" * 32,
        shape="near",
        signing_address="0x" + "11" * 20,
        signing_public_key=None,
        tcb_status="UpToDate",
        checks=(),
    )


class FakeAttester:
    """Hands out a new key per call (or fails on demand); can be held to test concurrency."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.calls = 0
        self.fail: Exception | None = None
        self.gate: asyncio.Event | None = None

    async def __call__(self, model: str) -> AttestedKey:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        now = self.clock()
        return AttestedKey(
            model=model,
            public_key=bytes([4]) + self.calls.to_bytes(64, "big"),
            signing_address="0x" + "11" * 20,
            report=_report(model),
            verified_at=now,
            refresh_at=now + TTL * 0.8,
            expires_at=now + TTL,
        )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def attester(clock: Clock) -> FakeAttester:
    return FakeAttester(clock)


async def test_many_waiters_share_one_fetch(clock: Clock, attester: FakeAttester) -> None:
    cache = AttestedKeyCache(attester, clock=clock)
    attester.gate = asyncio.Event()
    waiters = [asyncio.create_task(cache.get("m")) for _ in range(50)]
    await asyncio.sleep(0)
    attester.gate.set()
    keys = await asyncio.gather(*waiters)
    assert attester.calls == 1
    assert len({key.public_key for key in keys}) == 1


async def test_a_waiter_going_away_does_not_cancel_the_fetch(
    clock: Clock, attester: FakeAttester
) -> None:
    cache = AttestedKeyCache(attester, clock=clock)
    attester.gate = asyncio.Event()
    impatient = asyncio.create_task(cache.get("m"))
    patient = asyncio.create_task(cache.get("m"))
    await asyncio.sleep(0)
    impatient.cancel()
    attester.gate.set()
    key = await patient
    assert key.model == "m"
    assert attester.calls == 1


async def test_warm_key_is_served_and_refreshed_in_the_background(
    clock: Clock, attester: FakeAttester
) -> None:
    cache = AttestedKeyCache(attester, clock=clock)
    first = await cache.get("m")
    clock.now += TTL * 0.5
    assert await cache.get("m") is first
    assert attester.calls == 1
    clock.now += TTL * 0.4  # inside the refresh window, still valid
    attester.gate = asyncio.Event()
    served = await cache.get("m")
    assert served is first  # no waiting on a warm model
    await asyncio.sleep(0)
    assert attester.calls == 2  # one background refresh started
    await cache.get("m")
    assert attester.calls == 2  # and only one
    attester.gate.set()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    rotated = await cache.get("m")
    assert rotated.public_key != first.public_key  # switched to the new key


async def test_failed_refresh_keeps_the_old_key_until_expiry_then_fails_closed(
    clock: Clock, attester: FakeAttester
) -> None:
    cache = AttestedKeyCache(attester, clock=clock, failure_backoff_s=0)
    first = await cache.get("m")
    attester.fail = AttestationError("nope", code="report_data_nonce")
    clock.now += TTL * 0.9
    assert await cache.get("m") is first  # refresh fails in the background
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert cache.refresh_failures == 1
    assert await cache.get("m") is first  # still valid: keep serving it
    clock.now += TTL * 0.2  # past expiry
    with pytest.raises(AttestationError):
        await cache.get("m")
    assert cache.peek("m") is None


async def test_failures_back_off(clock: Clock, attester: FakeAttester) -> None:
    cache = AttestedKeyCache(attester, clock=clock, failure_backoff_s=5)
    attester.fail = UpstreamConnectError()
    for _ in range(3):
        with pytest.raises(UpstreamConnectError):
            await cache.get("m")
    assert attester.calls == 1  # the burst reused the recent failure
    clock.now += 6
    attester.fail = None
    assert (await cache.get("m")).model == "m"
    assert attester.calls == 2


async def test_invalidate_only_drops_the_rejected_key(clock: Clock, attester: FakeAttester) -> None:
    cache = AttestedKeyCache(attester, clock=clock)
    key = await cache.get("m")
    cache.invalidate("m", public_key=b"\x04" + bytes(64))  # some other key: ignored
    assert cache.peek("m") is key
    cache.invalidate_key(key.public_key)
    assert cache.peek("m") is None
    assert (await cache.get("m")).public_key != key.public_key


async def test_expired_key_is_never_served(clock: Clock, attester: FakeAttester) -> None:
    cache = AttestedKeyCache(attester, clock=clock)
    key = await cache.get("m")
    clock.now = key.expires_at
    assert cache.peek("m") is None
    fresh = await cache.get("m")
    assert fresh is not key
    assert replace(fresh, model="m").expires_at > clock.now


async def test_remembered_failures_are_bounded_least_recently_used_first(
    clock: Clock, attester: FakeAttester
) -> None:
    cache = AttestedKeyCache(attester, clock=clock, failure_cache_size=100)
    attester.fail = AttestationError("no such model", code="attestation_fetch_failed")
    for index in range(1500):
        with pytest.raises(AttestationError):
            await cache.get(f"made-up-{index}")
    assert len(cache._failures) == 100
    assert len(cache._fetch_times) == 100
    assert "made-up-1499" in cache._failures
    assert "made-up-0" not in cache._failures
    # a remembered failure that is used again becomes the most recent
    with pytest.raises(AttestationError):
        await cache.get("made-up-1400")
    assert list(cache._failures)[-1] == "made-up-1400"


async def test_fetches_per_model_are_rate_limited(clock: Clock, attester: FakeAttester) -> None:
    cache = AttestedKeyCache(attester, clock=clock, failure_backoff_s=0, max_fetches_per_minute=3)
    for _ in range(3):
        key = await cache.get("m")
        cache.invalidate_key(key.public_key)  # e.g. the upstream rejected it
        clock.now += 1
    with pytest.raises(AttestationRateLimitedError) as info:
        await cache.get("m")
    assert info.value.http_status == 503
    assert info.value.message == (
        "the model was attested 3 times in the last minute "
        "(attestation.max_fetches_per_minute); retry in 57 s"
    )
    assert info.value.retry_after == "57"  # the first fetch leaves the window in 57 s
    assert attester.calls == 3
    assert (await cache.get("other")).model == "other"  # per model
    clock.now += 58  # the first fetch is now more than a minute old
    assert (await cache.get("m")).model == "m"
    assert attester.calls == 5


async def test_a_rate_limited_model_answers_with_its_last_failure(
    clock: Clock, attester: FakeAttester
) -> None:
    cache = AttestedKeyCache(attester, clock=clock, failure_backoff_s=1, max_fetches_per_minute=2)
    attester.fail = UpstreamConnectError()
    for _ in range(2):
        with pytest.raises(UpstreamConnectError):
            await cache.get("m")
        clock.now += 2  # past the backoff
    with pytest.raises(UpstreamConnectError):
        await cache.get("m")
    assert attester.calls == 2


async def test_a_rate_limited_refresh_waits_and_the_old_key_serves(
    clock: Clock, attester: FakeAttester
) -> None:
    cache = AttestedKeyCache(attester, clock=clock, failure_backoff_s=0, max_fetches_per_minute=1)
    first = await cache.get("m")
    clock.now += TTL * 0.8  # due for refresh
    attester.fail = UpstreamConnectError()
    assert await cache.get("m") is first  # the background refresh starts and fails
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert attester.calls == 2
    clock.now += 1
    assert await cache.get("m") is first  # still valid; the refresh waits for the limit
    await asyncio.sleep(0)
    assert attester.calls == 2


# --- the cache's edges: exact boundaries, bounded histories, what the next layer reads -------


def _key_of(cache: AttestedKeyCache, model: str) -> AttestedKey:
    key = cache.peek(model)
    assert key is not None
    return key


async def test_every_fetch_and_outcome_is_reported_with_its_model(
    clock: Clock, attester: FakeAttester
) -> None:
    results: list[tuple[str, AttestedKey | None, ProxyError | None]] = []
    cache = AttestedKeyCache(
        attester, clock=clock, failure_backoff_s=0, on_result=lambda *r: results.append(r)
    )
    key = await cache.get("m")
    assert results == [("m", key, None)]
    failure = AttestationError("nope", code="report_data_nonce")
    attester.fail = failure
    for _ in range(2):
        with pytest.raises(AttestationError):
            await cache.get("other")
    assert results[1:] == [("other", None, failure), ("other", None, failure)]
    assert cache.fetches == 3  # what the status page shows
    assert cache.refresh_failures == 2


async def test_last_failure_is_kept_until_the_model_attests(
    clock: Clock, attester: FakeAttester
) -> None:
    cache = AttestedKeyCache(attester, clock=clock, failure_backoff_s=0)
    assert cache.last_failure("m") is None
    assert cache.failed_models() == []
    failure = AttestationError("nope", code="report_data_nonce")
    attester.fail = failure
    with pytest.raises(AttestationError):
        await cache.get("m")
    assert cache.last_failure("m") is failure
    assert cache.last_failure("other") is None
    assert cache.failed_models() == ["m"]
    assert cache.models() == []
    attester.fail = None
    await cache.get("m")
    assert cache.last_failure("m") is None  # the status page no longer shows it failing
    assert cache.failed_models() == []
    assert cache.models() == ["m"]


async def test_the_backoff_ends_exactly_when_it_says(clock: Clock, attester: FakeAttester) -> None:
    cache = AttestedKeyCache(attester, clock=clock)  # the default backoff: 5 s
    attester.fail = UpstreamConnectError()
    with pytest.raises(UpstreamConnectError):
        await cache.get("m")
    clock.now += 4.999
    with pytest.raises(UpstreamConnectError):
        await cache.get("m")
    assert attester.calls == 1
    clock.now += 0.001  # 5 s after the failure: a new attestation
    attester.fail = None
    assert (await cache.get("m")).model == "m"
    assert attester.calls == 2


async def test_a_fetch_leaves_the_rate_window_exactly_a_minute_later(
    clock: Clock, attester: FakeAttester
) -> None:
    cache = AttestedKeyCache(attester, clock=clock, max_fetches_per_minute=1)
    cache.invalidate_key((await cache.get("m")).public_key)
    clock.now += 59.5
    with pytest.raises(AttestationRateLimitedError) as info:
        await cache.get("m")
    assert info.value.message.endswith("retry in 1 s")  # never "retry in 0 s"
    assert info.value.retry_after == "1"
    clock.now += 0.5  # exactly 60 s after the fetch
    assert (await cache.get("m")).model == "m"
    assert attester.calls == 2


async def test_the_rate_history_forgets_the_least_recently_fetched_model(
    clock: Clock, attester: FakeAttester
) -> None:
    cache = AttestedKeyCache(attester, clock=clock, max_fetches_per_minute=1, failure_cache_size=2)
    for model in ("a", "b", "c"):
        cache.invalidate(model, (await cache.get(model)).public_key)
    with pytest.raises(AttestationRateLimitedError):
        await cache.get("c")  # the newest is remembered
    with pytest.raises(AttestationRateLimitedError):
        await cache.get("b")
    assert (await cache.get("a")).model == "a"  # the oldest was dropped to stay bounded
    assert attester.calls == 4


@pytest.mark.parametrize("size", [0, 1])
async def test_a_history_size_below_one_still_remembers_one(
    clock: Clock, attester: FakeAttester, size: int
) -> None:
    cache = AttestedKeyCache(attester, clock=clock, failure_cache_size=size)
    attester.fail = AttestationError("no such model", code="attestation_fetch_failed")
    for model in ("a", "b", "c"):
        with pytest.raises(AttestationError):
            await cache.get(model)
    assert cache.failed_models() == ["c"]


async def test_invalidate_drops_the_models_key_when_it_is_still_the_one_rejected(
    clock: Clock, attester: FakeAttester
) -> None:
    cache = AttestedKeyCache(attester, clock=clock)
    cache.invalidate("never-fetched")  # nothing to drop: no error
    cache.invalidate("never-fetched", b"\x04" + bytes(64))
    key = await cache.get("m")
    cache.invalidate("m", key.public_key)
    assert cache.peek("m") is None
    rotated = await cache.get("m")
    await cache.get("n")
    cache.invalidate("m")  # no key given: whatever it is
    assert cache.peek("m") is None
    assert cache.models() == ["n"]
    assert rotated.public_key != key.public_key


def test_age_is_the_time_since_verification_never_negative() -> None:
    key = AttestedKey(
        model="m",
        public_key=b"\x04" + bytes(64),
        signing_address="0x" + "11" * 20,
        report=_report("m"),
        verified_at=1000.0,
        refresh_at=1080.0,
        expires_at=1100.0,
    )
    assert key.age_s(1012.5) == 12.5
    assert key.age_s(1000.0) == 0.0
    assert key.age_s(990.0) == 0.0  # a clock stepped back


async def test_the_fetch_runs_as_a_named_task(clock: Clock, attester: FakeAttester) -> None:
    cache = AttestedKeyCache(attester, clock=clock)
    attester.gate = asyncio.Event()
    waiter = asyncio.create_task(cache.get("e2ee-m"))
    await asyncio.sleep(0)
    names = {task.get_name() for task in asyncio.all_tasks()}
    assert "attest:e2ee-m" in names  # what a task dump shows
    attester.gate.set()
    await waiter


async def test_a_failed_background_refresh_and_a_shutdown_report_nothing_to_the_loop(
    clock: Clock, attester: FakeAttester
) -> None:
    # Nobody awaits a background refresh: its failure must still count as seen, or asyncio
    # logs "Task exception was never retrieved" (and a cancelled one must not raise either).
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        cache = AttestedKeyCache(attester, clock=clock, failure_backoff_s=0)
        first = await cache.get("m")
        clock.now += TTL * 0.9
        attester.fail = AttestationError("nope", code="report_data_nonce")
        assert await cache.get("m") is first
        for _ in range(3):
            await asyncio.sleep(0)
        assert cache.refresh_failures == 1
        attester.fail = None
        attester.gate = asyncio.Event()
        clock.now += TTL  # expired: a foreground fetch, held, then shut down
        waiter = asyncio.create_task(cache.get("m"))
        await asyncio.sleep(0)
        await cache.aclose()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        for _ in range(3):
            await asyncio.sleep(0)
        gc.collect()
        await asyncio.sleep(0)
        assert reported == []
    finally:
        loop.set_exception_handler(None)


async def test_aclose_cancels_running_fetches_and_waits_for_them(
    clock: Clock, attester: FakeAttester
) -> None:
    attester.gate = asyncio.Event()
    stopped: list[str] = []

    async def attest(model: str) -> AttestedKey:
        try:
            return await attester(model)
        finally:
            stopped.append(model)

    cache = AttestedKeyCache(attest, clock=clock)
    waiters = [asyncio.create_task(cache.get(model)) for model in ("a", "b")]
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # both fetches are running, held by the upstream
    assert attester.calls == 2
    await cache.aclose()  # returns normally, with both fetches stopped
    assert sorted(stopped) == ["a", "b"]
    await cache.aclose()  # nothing left: a no-op
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(result, asyncio.CancelledError) for result in results)


# --- the Attester on a real capture: what it asks for, what it keys, what it writes -------------


GLM = FIXTURES_BY_NAME["glm_5_1"]


class Sources:
    """The attestation, collateral and NRAS sources, recording what each was asked."""

    def __init__(self, body: Any = None) -> None:
        self.body = body_of(GLM) if body is None else body
        self.fetched: list[tuple[str, str]] = []
        self.quotes: list[bytes] = []
        self.nras_payloads: list[Any] = []

    async def fetch(self, model: str, nonce_hex: str) -> Any:
        self.fetched.append((model, nonce_hex))
        return self.body

    async def collateral(self, quote: bytes) -> Mapping[str, Any]:
        self.quotes.append(quote)
        return collateral_of(GLM)

    async def nras(self, payload: Mapping[str, Any]) -> Any:
        self.nras_payloads.append(payload)
        raise AssertionError("NRAS is not asked under this policy")


def _glm_attester(sources: Sources, policy: AttestationPolicy, **kwargs: Any) -> Attester:
    return Attester(
        sources.fetch,
        policy,
        ttl_s=600,
        collateral=sources.collateral,
        nras=sources.nras,
        make_nonce=lambda: nonce_of(GLM),
        clock=lambda: float(time_of(GLM)) + 0.25,
        **kwargs,
    )


async def test_an_accepted_attestation_keys_the_model_and_is_audited_once(tmp_path: Path) -> None:
    sources = Sources()
    failed: list[tuple[str, ...]] = []
    audit = AuditLog(tmp_path / "audit.jsonl")
    attester = _glm_attester(sources, policy_for(GLM), audit=audit, on_failed_checks=failed.append)
    key = await attester.attest(GLM.model)
    now = time_of(GLM) + 0.25
    assert sources.fetched == [(GLM.model, nonce_of(GLM).hex())]  # our fresh nonce, this model
    assert sources.quotes == [evidence_of(GLM).intel_quote]  # its own quote's collateral
    assert sources.nras_payloads == []  # policy nvidia = "nonce"
    assert failed == []
    assert key.model == GLM.model
    assert key.public_key == enclave_key(key.report)
    assert key.signing_address == GLM.address
    assert (key.verified_at, key.refresh_at, key.expires_at) == (now, now + 480, now + 600)
    (line,) = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert json.loads(line) == audit_record(key.report, evidence_of(GLM).intel_quote, now)
    assert json.loads(line)["model"] == GLM.model


async def test_a_failed_attestation_reports_its_failed_checks_and_keys_nothing(
    tmp_path: Path,
) -> None:
    sources = Sources()
    failed: list[tuple[str, ...]] = []
    audit = AuditLog(tmp_path / "audit.jsonl")
    attester = Attester(
        sources.fetch,
        policy_for(GLM),
        ttl_s=600,
        collateral=sources.collateral,
        make_nonce=lambda: bytes(32),  # not the nonce the capture answers
        clock=lambda: float(time_of(GLM)),
        audit=audit,
        on_failed_checks=failed.append,
    )
    with pytest.raises(AttestationError) as info:
        await attester.attest(GLM.model)
    (codes,) = failed
    assert "report_data_nonce" in codes
    assert info.value.code == codes[0]
    assert not (tmp_path / "audit.jsonl").exists()
    report = await attester.report(GLM.model)  # `verify`: the full report, failed or not
    assert report.model == GLM.model
    assert not report.passed
    assert sources.fetched[-1][0] == GLM.model


async def test_collateral_and_nras_are_asked_only_when_the_policy_uses_them() -> None:
    sources = Sources()
    off = replace(policy_for(GLM), dcap="off")
    await _glm_attester(sources, off).attest(GLM.model)
    assert sources.quotes == []
    assert sources.nras_payloads == []
    # nvidia = "nras" without an NRAS source: the GPU check fails closed, nothing is called
    no_nras = Attester(
        sources.fetch,
        replace(policy_for(GLM), nvidia="nras"),
        ttl_s=600,
        collateral=sources.collateral,
        make_nonce=lambda: nonce_of(GLM),
        clock=lambda: float(time_of(GLM)),
    )
    with pytest.raises(AttestationError) as info:
        await no_nras.attest(GLM.model)
    assert "gpu_nras" in info.value.message


@pytest.mark.parametrize("body", [[], "attestation", 7])
async def test_an_answer_that_is_not_a_json_object_is_refused(body: Any) -> None:
    attester = _glm_attester(Sources(body), policy_for(GLM))
    with pytest.raises(AttestationError) as info:
        await attester.attest(GLM.model)
    assert info.value.code == "attestation_shape_unknown"
    assert info.value.message == "the attestation response is not a JSON object"


async def test_without_a_trust_state_nothing_is_remembered_and_nothing_fails() -> None:
    key = await _glm_attester(Sources(), policy_for(GLM)).attest(GLM.model)
    assert key.report.trust_level == "enclave"


async def test_an_unwritable_trust_state_is_logged_with_the_model_and_the_consequence(
    tmp_path: Path, log_lines: Any
) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    state = TrustState(blocked / "sub")
    await _glm_attester(Sources(), policy_for(GLM), trust_state=state).attest(GLM.model)
    (line,) = [json.loads(line) for line in log_lines() if "trust_state_write_failed" in line]
    assert line["event"] == "trust_state_write_failed"
    assert line["level"] == "error"
    assert line["model"] == GLM.model
    assert line["detail"] == f"cannot write {blocked / 'sub' / STATE_FILE}: Not a directory"
    assert line["consequence"] == "this model's trust level is not remembered across restarts"
