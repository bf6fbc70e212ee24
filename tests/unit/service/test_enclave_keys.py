"""The attested-key cache over time: single flight, refresh ahead of expiry, rotation, failures.

A fake attester stands in for the network; time is a variable the test moves.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from proxy.attestation import AttestationReport
from proxy.core.errors import AttestationError, AttestationRateLimitedError, UpstreamConnectError
from proxy.service.enclave_keys import AttestedKey, AttestedKeyCache

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
