"""Attested enclave keys: fetch, verify, cache per model, refresh ahead of expiry.

- :class:`Attester` fetches a fresh attestation (new random 32-byte nonce each time), gathers what
  the policy needs (DCAP collateral, the NVIDIA NRAS verdict), verifies everything as a pure
  function of (evidence, nonce, policy, now) and returns the key only if every enforced check
  passed; otherwise an :class:`~proxy.core.errors.AttestationError` naming the failed checks. An
  accepted attestation is written once to the audit log, when one is configured. The trust level
  remembered for the model (:mod:`proxy.service.trust_state`) goes into the checks, and the
  level of every accepted attestation is remembered; a state file that cannot be written is
  logged loudly and the level kept in memory, one that cannot be read fails the attestation.
- :class:`AttestedKeyCache` keeps one verified key per model:
  - a key is served until ``expires_at``; from ``refresh_at`` (the last fifth of its life) a
    request still gets it at once while one background task re-attests, so a warm model never
    makes a request wait; a new key (rotation) replaces the old one in one assignment;
  - a failed background refresh leaves the old key in place until its own expiry, then requests
    fail closed (they try a fresh attestation and get its error);
  - many concurrent requests for a cold model share one fetch (single flight), and a waiter that
    goes away does not cancel it for the others;
  - a failed attestation is remembered for ``failure_backoff_s`` so a burst of requests does not
    hammer the upstream (Venice allows about 10 attestations a minute); at most
    ``failure_cache_size`` failures are remembered (least recently used dropped first), so
    failing names cannot grow memory without bound;
  - at most ``max_fetches_per_minute`` attestations of one model start in any 60 s; past that a
    request gets the model's last failure if one is remembered, else
    :class:`~proxy.core.errors.AttestationRateLimitedError` (503, code
    ``attestation_rate_limited``, with the seconds to wait), and a due background refresh is
    skipped (the old key serves until its expiry). The per-model history is bounded by
    ``failure_cache_size`` too;
  - :meth:`AttestedKeyCache.invalidate` drops a key the upstream rejected.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from proxy.attestation import (
    AttestationPolicy,
    AttestationReport,
    enclave_key,
    parse_attestation,
    verify_evidence,
)
from proxy.core.errors import AttestationError, AttestationRateLimitedError, ProxyError
from proxy.observability.audit import AuditLog, audit_record
from proxy.observability.logs import get_logger
from proxy.service.trust_state import TrustState, TrustStateError

log = get_logger("proxy.attestation")

NONCE_BYTES = 32
REFRESH_FRACTION = 0.8
RATE_WINDOW_S = 60.0
DEFAULT_MAX_FETCHES_PER_MINUTE = 6
DEFAULT_FAILURE_CACHE_SIZE = 256

AttestationFetcher = Callable[[str, str], Awaitable[Any]]
CollateralSource = Callable[[bytes], Awaitable[Mapping[str, Any]]]
GpuVerdictSource = Callable[[Mapping[str, Any]], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class AttestedKey:
    """A verified enclave key and the report that vouches for it."""

    model: str
    public_key: bytes
    signing_address: str
    report: AttestationReport
    verified_at: float
    refresh_at: float
    expires_at: float

    def age_s(self, now: float) -> float:
        """Seconds since verification."""
        return max(0.0, now - self.verified_at)


class Attester:
    """Fetch and verify one model's attestation."""

    def __init__(
        self,
        fetch_attestation: AttestationFetcher,
        policy: AttestationPolicy,
        *,
        ttl_s: float,
        collateral: CollateralSource | None = None,
        nras: GpuVerdictSource | None = None,
        audit: AuditLog | None = None,
        clock: Callable[[], float] = time.time,
        make_nonce: Callable[[], bytes] = lambda: os.urandom(NONCE_BYTES),
        on_failed_checks: Callable[[tuple[str, ...]], None] | None = None,
        trust_state: TrustState | None = None,
    ) -> None:
        self._fetch_attestation = fetch_attestation
        self.trust_state = trust_state
        self._make_nonce = make_nonce
        self._on_failed_checks = on_failed_checks
        self._collateral = collateral
        self._nras = nras
        self._audit = audit
        self.policy = policy
        self._ttl_s = ttl_s
        self._clock = clock

    async def attest(self, model: str) -> AttestedKey:
        """A verified key for ``model`` or :class:`AttestationError`."""
        report, quote, now = await self._verify(model)
        if not report.passed and self._on_failed_checks is not None:
            self._on_failed_checks(tuple(check.code for check in report.failures))
        report.raise_for_failure()
        key = AttestedKey(
            model=model,
            public_key=enclave_key(report),
            signing_address=report.signing_address,
            report=report,
            verified_at=now,
            refresh_at=now + self._ttl_s * REFRESH_FRACTION,
            expires_at=now + self._ttl_s,
        )
        if self._audit is not None:
            self._audit.append(audit_record(report, quote, now))
        self._remember(model, report)
        return key

    def _remember(self, model: str, report: AttestationReport) -> None:
        level = report.trust_level
        if self.trust_state is None or level not in ("enclave", "gateway"):
            return
        try:
            self.trust_state.record(model, "gateway" if level == "gateway" else "enclave")
        except TrustStateError as exc:
            log.error(
                "trust_state_write_failed",
                model=model,
                detail=exc.message,
                consequence="this model's trust level is not remembered across restarts",
            )

    async def report(self, model: str) -> AttestationReport:
        """The full report for a fresh attestation, passed or not (for ``verify``)."""
        report, _, _ = await self._verify(model)
        return report

    async def _verify(self, model: str) -> tuple[AttestationReport, bytes, float]:
        nonce = self._make_nonce()
        body = await self._fetch_attestation(model, nonce.hex())
        if not isinstance(body, Mapping):
            raise AttestationError(
                "the attestation response is not a JSON object", code="attestation_shape_unknown"
            )
        evidence = parse_attestation(body)
        extra: dict[str, Any] = {}
        if self.policy.dcap == "require" and self._collateral is not None:
            extra["collateral"] = await self._collateral(evidence.intel_quote)
        if self.policy.nvidia == "nras" and self._nras is not None and evidence.nvidia_payload:
            extra["nras"] = await self._nras(evidence.nvidia_payload)
        if self.trust_state is not None:
            extra["remembered_trust"] = self.trust_state.get(model)
            extra["remembered_source"] = f"remembered in {self.trust_state.where}"
        now = self._clock()
        report = verify_evidence(
            evidence, expected_model=model, nonce=nonce, policy=self.policy, now=int(now), **extra
        )
        return report, evidence.intel_quote, now


def _retrieve_exception(task: asyncio.Task[AttestedKey]) -> None:
    # Mark the outcome as seen even when every waiter has gone away.
    if not task.cancelled():
        task.exception()


class AttestedKeyCache:
    """One verified key per model: TTL, refresh ahead of expiry, single flight."""

    def __init__(
        self,
        attest: Callable[[str], Awaitable[AttestedKey]],
        *,
        failure_backoff_s: float = 5.0,
        max_fetches_per_minute: int = DEFAULT_MAX_FETCHES_PER_MINUTE,
        failure_cache_size: int = DEFAULT_FAILURE_CACHE_SIZE,
        clock: Callable[[], float] = time.time,
        on_result: Callable[[str, AttestedKey | None, ProxyError | None], None] | None = None,
    ) -> None:
        self._attest = attest
        self._on_result = on_result
        self._clock = clock
        self._failure_backoff_s = failure_backoff_s
        self._max_fetches = max(1, max_fetches_per_minute)
        self._history_size = max(1, failure_cache_size)
        self._keys: dict[str, AttestedKey] = {}
        # Both least recently used first, at most failure_cache_size entries each.
        self._failures: OrderedDict[str, tuple[float, ProxyError]] = OrderedDict()
        self._fetch_times: OrderedDict[str, deque[float]] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[AttestedKey]] = {}
        self.fetches = 0
        self.refresh_failures = 0

    def peek(self, model: str) -> AttestedKey | None:
        """The cached key if still valid, without fetching."""
        key = self._keys.get(model)
        if key is not None and key.expires_at > self._clock():
            return key
        return None

    def models(self) -> list[str]:
        """Models with a cached key (valid or not)."""
        return list(self._keys)

    def last_failure(self, model: str) -> ProxyError | None:
        """The error of ``model``'s most recent failed attestation, until one succeeds."""
        failure = self._failures.get(model)
        return failure[1] if failure is not None else None

    def failed_models(self) -> list[str]:
        """Models whose most recent attestation failed."""
        return list(self._failures)

    async def get(self, model: str) -> AttestedKey:
        """A valid verified key, fetching (once for all concurrent callers) on a miss."""
        now = self._clock()
        key = self._keys.get(model)
        if key is not None and key.expires_at > now:
            if key.refresh_at <= now and model not in self._inflight and self._may_fetch(model):
                self._start(model)
            return key
        task = self._inflight.get(model)
        if task is None:
            failure = self._failures.get(model)
            if failure is not None:
                self._failures.move_to_end(model)
                if failure[0] > now:
                    raise failure[1]
            wait_s = self._rate_limited_for(model, now)
            if wait_s is not None:
                if failure is not None:
                    raise failure[1]
                raise AttestationRateLimitedError(
                    f"the model was attested {self._max_fetches} times in the last minute "
                    f"(attestation.max_fetches_per_minute); retry in {math.ceil(wait_s)} s",
                    retry_after_s=wait_s,
                )
            task = self._start(model)
        # shield: one caller's disconnect must not cancel the fetch the others wait on.
        return await asyncio.shield(task)

    def _rate_limited_for(self, model: str, now: float) -> float | None:
        """Seconds until ``model`` may be fetched again, or None if it may be now."""
        times = self._fetch_times.get(model)
        if times is None:
            return None
        while times and times[0] <= now - RATE_WINDOW_S:
            times.popleft()
        if len(times) < self._max_fetches:
            return None
        return max(1.0, times[0] + RATE_WINDOW_S - now)

    def _may_fetch(self, model: str) -> bool:
        return self._rate_limited_for(model, self._clock()) is None

    def _record_fetch(self, model: str) -> None:
        times = self._fetch_times.get(model)
        if times is None:
            times = self._fetch_times[model] = deque()
        self._fetch_times.move_to_end(model)
        times.append(self._clock())
        while len(self._fetch_times) > self._history_size:
            self._fetch_times.popitem(last=False)

    def _remember_failure(self, model: str, error: ProxyError) -> None:
        self._failures[model] = (self._clock() + self._failure_backoff_s, error)
        self._failures.move_to_end(model)
        while len(self._failures) > self._history_size:
            self._failures.popitem(last=False)

    def _start(self, model: str) -> asyncio.Task[AttestedKey]:
        self._record_fetch(model)
        task = asyncio.create_task(self._refresh(model), name=f"attest:{model}")
        task.add_done_callback(_retrieve_exception)
        self._inflight[model] = task
        return task

    async def _refresh(self, model: str) -> AttestedKey:
        self.fetches += 1
        try:
            key = await self._attest(model)
        except ProxyError as exc:
            # The old key (if any) stays until its own expiry; peek() ignores it after that.
            self.refresh_failures += 1
            self._remember_failure(model, exc)
            if self._on_result is not None:
                self._on_result(model, None, exc)
            raise
        finally:
            self._inflight.pop(model, None)
        self._failures.pop(model, None)
        self._keys[model] = key
        if self._on_result is not None:
            self._on_result(model, key, None)
        return key

    def invalidate(self, model: str, public_key: bytes | None = None) -> None:
        """Forget ``model``'s key (only if it is still ``public_key``, when given)."""
        key = self._keys.get(model)
        if key is not None and (public_key is None or key.public_key == public_key):
            del self._keys[model]

    def invalidate_key(self, public_key: bytes) -> None:
        """Forget every model whose cached key is ``public_key`` (the upstream rejected it)."""
        for model, key in list(self._keys.items()):
            if key.public_key == public_key:
                del self._keys[model]

    async def aclose(self) -> None:
        """Cancel fetches still running (shutdown)."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._inflight.clear()
