"""Attested enclave keys: fetch, verify, cache per model.

- :class:`Attester` fetches a fresh attestation (new random 32-byte nonce each time), verifies it
  as a pure function of (evidence, nonce, policy, now) and returns the key only if every enforced
  check passed. It never returns a key from a failed report: the caller gets an
  :class:`~proxy.errors.AttestationError` naming the failed checks.
- :class:`AttestedKeyCache` keeps one verified key per model for ``ttl_s`` seconds. Many
  concurrent requests for a cold model share one fetch (single flight); a waiter that goes away
  does not cancel the fetch for the others. A failed fetch is not cached: the next request tries
  again. :meth:`AttestedKeyCache.invalidate` drops a key the upstream rejected (rotation).
"""

from __future__ import annotations

import asyncio
import os
import time
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
from proxy.errors import AttestationError, ProxyError

NONCE_BYTES = 32

AttestationFetcher = Callable[[str, str], Awaitable[Any]]
CollateralFetcher = Callable[[bytes], Awaitable[Mapping[str, Any]]]


@dataclass(frozen=True, slots=True)
class AttestedKey:
    """A verified enclave key and the report that vouches for it."""

    model: str
    public_key: bytes
    signing_address: str
    report: AttestationReport
    verified_at: float
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
        fetch_collateral: CollateralFetcher | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._fetch_attestation = fetch_attestation
        self._fetch_collateral = fetch_collateral
        self.policy = policy
        self._ttl_s = ttl_s
        self._clock = clock

    async def attest(self, model: str) -> AttestedKey:
        """A verified key for ``model`` or :class:`AttestationError`."""
        nonce = os.urandom(NONCE_BYTES)
        body = await self._fetch_attestation(model, nonce.hex())
        if not isinstance(body, Mapping):
            raise AttestationError(
                "the attestation response is not a JSON object", code="attestation_shape_unknown"
            )
        evidence = parse_attestation(body)
        collateral: Mapping[str, Any] | None = None
        if self.policy.dcap == "require" and self._fetch_collateral is not None:
            collateral = await self._fetch_collateral(evidence.intel_quote)
        now = self._clock()
        report = verify_evidence(
            evidence,
            expected_model=model,
            nonce=nonce,
            policy=self.policy,
            now=int(now),
            collateral=collateral,
        )
        report.raise_for_failure()
        return AttestedKey(
            model=model,
            public_key=enclave_key(report),
            signing_address=report.signing_address,
            report=report,
            verified_at=now,
            expires_at=now + self._ttl_s,
        )


def _retrieve_exception(task: asyncio.Task[AttestedKey]) -> None:
    # Mark the outcome as seen even when every waiter has gone away.
    if not task.cancelled():
        task.exception()


class AttestedKeyCache:
    """One verified key per model, with a TTL and single-flight refresh."""

    def __init__(
        self,
        attest: Callable[[str], Awaitable[AttestedKey]],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._attest = attest
        self._clock = clock
        self._keys: dict[str, AttestedKey] = {}
        self._inflight: dict[str, asyncio.Task[AttestedKey]] = {}
        self.fetches = 0

    def peek(self, model: str) -> AttestedKey | None:
        """The cached key if still valid, without fetching."""
        key = self._keys.get(model)
        if key is not None and key.expires_at > self._clock():
            return key
        return None

    async def get(self, model: str) -> AttestedKey:
        """A valid verified key, fetching (once for all concurrent callers) on a miss."""
        key = self.peek(model)
        if key is not None:
            return key
        task = self._inflight.get(model)
        if task is None:
            task = asyncio.create_task(self._refresh(model), name=f"attest:{model}")
            task.add_done_callback(_retrieve_exception)
            self._inflight[model] = task
        # shield: one caller's disconnect must not cancel the fetch the others wait on.
        return await asyncio.shield(task)

    async def _refresh(self, model: str) -> AttestedKey:
        self.fetches += 1
        try:
            key = await self._attest(model)
        except ProxyError:
            self._keys.pop(model, None)
            raise
        finally:
            self._inflight.pop(model, None)
        self._keys[model] = key
        return key

    def invalidate(self, model: str, public_key: bytes | None = None) -> None:
        """Forget ``model``'s key (only if it is still ``public_key``, when given)."""
        key = self._keys.get(model)
        if key is not None and (public_key is None or key.public_key == public_key):
            del self._keys[model]

    async def aclose(self) -> None:
        """Cancel fetches still running (shutdown)."""
        for task in list(self._inflight.values()):
            task.cancel()
        self._inflight.clear()
